//! Leader election against the real API server: `LeaseLock`s on one Lease, a standby whose
//! wall clock runs an hour ahead, a leader whose lease is taken, a leader that cannot renew.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::jiff::SignedDuration;
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, Config};
use regroup::operator::lease::{LeadershipLost, LeaseLock, LeaseTimings, Round};
use support::operator::{TestNamespace, kube_with_crd};
use support::poll::poll;

const LEASE: &str = "regroup-operator";
const LONG: Duration = Duration::from_secs(60);

/// A 2 s lease: renew deadline 1.33 s, a round every 400 ms.
fn timings() -> LeaseTimings {
    LeaseTimings::new(Duration::from_secs(2), None, None).unwrap()
}

fn lock(client: &Client, ns: &str, identity: &str) -> LeaseLock {
    LeaseLock::new(client.clone(), ns, LEASE, identity, timings())
}

async fn read(api: &Api<Lease>) -> Lease {
    api.get(LEASE).await.expect("the lease exists")
}

fn holder(lease: &Lease) -> Option<String> {
    lease.spec.as_ref()?.holder_identity.clone()
}

/// A cluster client, a fresh namespace and its Leases; `None` when `test` is skipped.
async fn setup(test: &str) -> Option<(Client, TestNamespace, Api<Lease>)> {
    let client = kube_with_crd(test).await?;
    let ns = TestNamespace::new(&client, "regroup-lease").await;
    let leases = Api::namespaced(client.clone(), &ns.name);
    Some((client, ns, leases))
}

#[tokio::test]
async fn a_skewed_standby_waits_until_the_leader_stops_renewing() {
    let Some((client, ns, leases)) =
        setup("a_skewed_standby_waits_until_the_leader_stops_renewing").await
    else {
        return;
    };
    let t = timings();

    let leadership = lock(&client, &ns.name, "leader").acquire().await;
    // An hour ahead: by the leader's renewTime, its lease looks an hour overdue.
    let mut standby =
        lock(&client, &ns.name, "standby").with_wall_clock_skew(SignedDuration::from_hours(1));

    // Rounds of the standby over three lease durations while the leader renews: all wait.
    let mut versions = HashSet::new();
    let start = Instant::now();
    let mut round = 0;
    while start.elapsed() < 3 * t.duration {
        let outcome = standby.try_acquire_or_renew().await.unwrap();
        let lease = read(&leases).await;
        assert!(
            outcome == Round::HeldBy("leader".into())
                && holder(&lease).as_deref() == Some("leader"),
            "round {round}: the standby ({outcome:?}) took the lease from a renewing leader: {:?}",
            lease.spec
        );
        versions.insert(lease.metadata.resource_version.clone());
        round += 1;
        tokio::time::sleep(t.retry_period).await;
    }
    assert!(
        versions.len() >= 3,
        "the leader renewed while the standby waited (versions seen: {versions:?})"
    );

    // The leader stops renewing without a word, as if it crashed: the standby takes over.
    drop(leadership);
    let before = read(&leases)
        .await
        .spec
        .unwrap()
        .lease_transitions
        .unwrap_or(0);
    let _standby = tokio::time::timeout(LONG, standby.acquire())
        .await
        .expect("the standby takes over once the leader stopped renewing");
    let after = read(&leases).await;
    assert_eq!(holder(&after).as_deref(), Some("standby"));
    assert_eq!(after.spec.unwrap().lease_transitions, Some(before + 1));
}

#[tokio::test]
async fn a_leader_stops_once_another_replica_holds_the_lease() {
    let Some((client, ns, leases)) =
        setup("a_leader_stops_once_another_replica_holds_the_lease").await
    else {
        return;
    };
    let mut leadership = lock(&client, &ns.name, "leader").acquire().await;

    let mut lease = read(&leases).await;
    lease.spec.as_mut().unwrap().holder_identity = Some("intruder".into());
    // A conflict means the leader renewed in between: read and write again.
    loop {
        match leases.replace(LEASE, &PostParams::default(), &lease).await {
            Ok(_) => break,
            Err(kube::Error::Api(e)) if e.code == 409 => {
                lease = read(&leases).await;
                lease.spec.as_mut().unwrap().holder_identity = Some("intruder".into());
            }
            Err(e) => panic!("cannot write the lease: {e}"),
        }
    }
    let reason = tokio::time::timeout(LONG, leadership.lost())
        .await
        .expect("the leader notices");
    assert_eq!(reason, LeadershipLost::TakenBy("intruder".into()));
    assert_eq!(holder(&read(&leases).await).as_deref(), Some("intruder"));
}

/// The leader's client acts as a user whose right to the lease is withdrawn after it led: every
/// renewal then fails. It must stop at its renew deadline, before a standby may take over.
#[tokio::test]
async fn a_leader_that_cannot_renew_stops_before_a_standby_takes_over() {
    let Some((client, ns, _)) =
        setup("a_leader_that_cannot_renew_stops_before_a_standby_takes_over").await
    else {
        return;
    };
    let user = format!("lease-leader-{}", ns.name);
    let roles: Api<Role> = Api::namespaced(client.clone(), &ns.name);
    let role: Role = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "lease"},
        "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                   "verbs": ["get", "create", "update"]}]
    }))
    .unwrap();
    roles.create(&PostParams::default(), &role).await.unwrap();
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), &ns.name);
    let binding: RoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "lease"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "lease"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]
    }))
    .unwrap();
    bindings
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    let mut config = Config::infer().await.unwrap();
    config.auth_info.impersonate = Some(user.clone());
    let limited = Client::try_from(config).unwrap();

    // RBAC applies the new binding once its informer has it: retry the first round until then.
    let mut leader = LeaseLock::new(limited, &ns.name, LEASE, "leader", timings());
    poll(
        "the leader to take the lease",
        LONG,
        Duration::from_millis(100),
        async || matches!(leader.try_acquire_or_renew().await, Ok(Round::Held)).then_some(()),
    )
    .await
    .expect("the leader takes the lease");
    let mut leadership = leader.acquire().await;

    let leader_stopped = Arc::new(AtomicBool::new(false));
    let standby = {
        let leader_stopped = leader_stopped.clone();
        let standby = lock(&client, &ns.name, "standby");
        tokio::spawn(async move {
            let held = standby.acquire().await;
            (leader_stopped.load(Ordering::SeqCst), held)
        })
    };
    bindings
        .delete("lease", &DeleteParams::default())
        .await
        .unwrap();
    let reason = tokio::time::timeout(LONG, leadership.lost())
        .await
        .expect("the leader stops");
    leader_stopped.store(true, Ordering::SeqCst);
    assert_eq!(
        reason,
        LeadershipLost::RenewDeadline(timings().renew_deadline)
    );
    let (stopped_first, _held) = tokio::time::timeout(LONG, standby)
        .await
        .expect("the standby takes over")
        .unwrap();
    assert!(
        stopped_first,
        "the standby took over while the leader still acted"
    );
}
