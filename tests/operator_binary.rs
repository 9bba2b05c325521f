//! `regroup operator` as processes against the real API server: two replicas with leader
//! election (one acts, the other waits), /healthz and /metrics, fail-over when the leader is
//! killed, lease release on SIGTERM.
//!
//! The pods are kwok's, so the workers' HTTP API does not answer here: checkpoints fail (and
//! the rescale falls back, as specified); the worker API is covered with fake workers in
//! operator_controller.rs.

mod support;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use regroup::operator::crd::{Phase, StatefulJob};
use support::operator::{TestNamespace, job_yaml, kube_with_crd};
use support::poll::eventually;

const LONG: Duration = Duration::from_secs(120);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Replica {
    child: Child,
    port: u16,
}

impl Replica {
    fn start(ns: &str, identity: &str, log: &std::path::Path) -> Self {
        let port = free_port();
        let log = std::fs::File::create(log).unwrap();
        let child = support::regroup_cmd()
            .args(["operator", "--leader-elect", "--lease-duration", "3s"])
            .args([
                "--namespace",
                ns,
                "--lease-namespace",
                ns,
                "--identity",
                identity,
            ])
            .args(["--metrics-address", &format!("127.0.0.1:{port}")])
            .args(["--worker-timeout", "2s"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("regroup operator starts");
        Self { child, port }
    }

    async fn get(&self, path: &str) -> Option<String> {
        let resp = reqwest::get(format!("http://127.0.0.1:{}{path}", self.port))
            .await
            .ok()?;
        resp.status().is_success().then_some(())?;
        resp.text().await.ok()
    }

    async fn leader_gauge(&self) -> Option<u32> {
        let text = self.get("/metrics").await?;
        text.lines()
            .find_map(|l| l.strip_prefix("regroup_operator_leader "))
            .and_then(|v| v.trim().parse().ok())
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn holder(api: &Api<Lease>) -> Option<String> {
    api.get_opt("regroup-operator")
        .await
        .ok()??
        .spec?
        .holder_identity
}

/// A cluster client, a fresh namespace, a directory for the replicas' logs and the namespace's
/// Leases; `None` when `test` is skipped.
async fn setup(test: &str) -> Option<(Client, TestNamespace, tempfile::TempDir, Api<Lease>)> {
    let client = kube_with_crd(test).await?;
    let ns = TestNamespace::new(&client, "regroup-bin").await;
    let logs = tempfile::tempdir().unwrap();
    let leases = Api::namespaced(client.clone(), &ns.name);
    Some((client, ns, logs, leases))
}

#[tokio::test]
async fn two_replicas_elect_one_leader_and_fail_over() {
    let Some((client, ns, logs, leases)) =
        setup("two_replicas_elect_one_leader_and_fail_over").await
    else {
        return;
    };

    let mut a = Replica::start(&ns.name, "replica-a", &logs.path().join("a.log"));
    eventually("replica a to lead", LONG, || async {
        (holder(&leases).await.as_deref() == Some("replica-a")).then_some(())
    })
    .await;
    assert_eq!(a.get("/healthz").await.as_deref(), Some("ok\n"));
    let b = Replica::start(&ns.name, "replica-b", &logs.path().join("b.log"));
    // The standby serves health and metrics but does not lead.
    let standby = eventually("replica b to serve /metrics", LONG, || b.leader_gauge()).await;
    assert_eq!(standby, 0);
    assert_eq!(a.leader_gauge().await, Some(1));

    // The leader acts on a job.
    let jobs: Api<StatefulJob> = Api::namespaced(client.clone(), &ns.name);
    let store = tempfile::tempdir().unwrap();
    let job: StatefulJob = serde_json::from_value(job_yaml(
        "bin",
        2,
        16,
        &format!("file://{}", store.path().display()),
    ))
    .unwrap();
    jobs.create(&PostParams::default(), &job).await.unwrap();
    eventually("the job running", LONG, || async {
        let s = jobs.get("bin").await.ok()?.status?;
        (s.phase == Some(Phase::Running) && s.parallelism == 2).then_some(())
    })
    .await;
    let metrics = a.get("/metrics").await.unwrap();
    assert!(
        metrics.contains("regroup_operator_reconciles_total"),
        "{metrics}"
    );
    assert_eq!(holder(&leases).await.as_deref(), Some("replica-a"));

    // The leader dies without a word: the standby takes over once the lease expires, and
    // finishes a rescale.
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    eventually("replica b to take over", LONG, || async {
        (holder(&leases).await.as_deref() == Some("replica-b")).then_some(())
    })
    .await;
    eventually("replica b's leader gauge", LONG, || async {
        (b.leader_gauge().await == Some(1)).then_some(())
    })
    .await;
    jobs.patch(
        "bin",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"parallelism": 3}})),
    )
    .await
    .unwrap();
    let status = eventually("the rescale to 3 by replica b", LONG, || async {
        let s = jobs.get("bin").await.ok()?.status?;
        (s.phase == Some(Phase::Running) && s.parallelism == 3).then_some(s)
    })
    .await;
    // No worker answers on kwok pods: the final checkpoint failed and the job says so.
    let degraded = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap();
    assert_eq!(degraded.status, "True", "{degraded:?}");

    // SIGTERM: a graceful stop that hands the lease back.
    let pid = b.child.id().to_string();
    let mut b = b;
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let code = b.child.wait().unwrap();
    assert!(
        code.success(),
        "exit status {code:?}; log:\n{}",
        std::fs::read_to_string(logs.path().join("b.log")).unwrap_or_default()
    );
    assert_eq!(
        holder(&leases).await,
        None,
        "the lease is released on shutdown"
    );
}

#[tokio::test]
async fn a_leader_whose_lease_is_taken_exits_at_once() {
    let Some((_, ns, logs, leases)) = setup("a_leader_whose_lease_is_taken_exits_at_once").await
    else {
        return;
    };
    let log = logs.path().join("a.log");
    let mut a = Replica::start(&ns.name, "replica-a", &log);
    eventually("replica a to lead", LONG, || async {
        (a.leader_gauge().await == Some(1)).then_some(())
    })
    .await;

    // Another writer takes the lease (a replace with the version read; retried on conflict).
    eventually("the lease written to another holder", LONG, || async {
        let mut lease = leases.get("regroup-operator").await.ok()?;
        lease.spec.as_mut()?.holder_identity = Some("intruder".into());
        leases
            .replace("regroup-operator", &PostParams::default(), &lease)
            .await
            .ok()
    })
    .await;
    let code = eventually("replica a to exit", LONG, || {
        let exited = a.child.try_wait().unwrap();
        async move { exited }
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!code.success(), "exit status {code:?}; log:\n{text}");
    assert!(
        text.contains("lost the leader lease") && text.contains("intruder"),
        "{text}"
    );
    assert_eq!(holder(&leases).await.as_deref(), Some("intruder"));
}
