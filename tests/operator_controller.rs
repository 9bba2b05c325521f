//! The operator against a real kube-apiserver (+ controller-manager, scheduler, kwok pods):
//! owned objects, checkpoints, the rescale stages, suspend/resume, the fallback when the final
//! checkpoint fails, and restarts of the operator in every stage.
//!
//! The pods are kwok's (nothing runs in them), so the workers' HTTP API is replaced by
//! [`FakeWorkers`], which writes handles to a real file-system store; everything else (the
//! API server, the StatefulSet controller, the store, `_metadata.json`) is real.

mod support;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    PersistentVolume, PersistentVolumeClaim, Pod, ResourceQuota, Secret, Service,
};
use k8s_openapi::api::events::v1::Event as K8sEvent;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use regroup::checkpoint::CheckpointStore;
use regroup::operator::controller::Context;
use regroup::operator::crd::{Phase, Stage, StatefulJob};
use regroup::operator::metrics::OperatorMetrics;
use regroup::operator::resources::{EPOCH_LABEL, JOB_LABEL};
use regroup::operator::run_controller;
use support::operator::*;
use support::poll::{EVERY, eventually, poll};
use support::run;
use tokio::task::JoinHandle;

const M: u32 = 16;
const LONG: Duration = Duration::from_secs(120);

/// What every test here starts from: its own namespace (named after `prefix`), a `file://`
/// store in a temporary directory, fake workers writing to it, and an operator running on them;
/// `None` when `test` is skipped.
async fn setup(
    test: &str,
    prefix: &str,
) -> Option<(
    Client,
    TestNamespace,
    tempfile::TempDir,
    Arc<FakeWorkers>,
    Operator,
)> {
    let client = kube_with_crd(test).await?;
    let ns = TestNamespace::new(&client, prefix).await;
    let store_dir = tempfile::tempdir().unwrap();
    let workers = FakeWorkers::new(store_dir.path(), M);
    let operator = Operator::start(&client, &ns.name, workers.clone());
    Some((client, ns, store_dir, workers, operator))
}

/// An operator running in this process, killable.
struct Operator {
    task: JoinHandle<()>,
}

impl Operator {
    fn start(client: &Client, ns: &str, workers: Arc<FakeWorkers>) -> Self {
        let mut ctx = Context::new(
            client.clone(),
            workers,
            Arc::new(OperatorMetrics::default()),
            Some("test".into()),
        );
        ctx.busy_requeue = Duration::from_millis(300);
        // One reconcile at a time: nothing may depend on reconciles running side by side.
        ctx.limit_reconciles(1);
        let task = tokio::spawn(run_controller(
            client.clone(),
            Some(ns.to_owned()),
            Arc::new(ctx),
        ));
        Self { task }
    }

    /// Kills it wherever it is (mid-request included), like a crashed pod.
    async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

async fn create_job(
    client: &Client,
    ns: &str,
    name: &str,
    p: u32,
    store: &std::path::Path,
) -> Api<StatefulJob> {
    let api: Api<StatefulJob> = Api::namespaced(client.clone(), ns);
    let url = format!("file://{}", store.display());
    let job: StatefulJob = serde_json::from_value(job_yaml(name, p, M, &url)).unwrap();
    api.create(&PostParams::default(), &job).await.unwrap();
    api
}

async fn pods(client: &Client, ns: &str, name: &str) -> Vec<Pod> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default().labels(&format!("{JOB_LABEL}={name}")))
        .await
        .unwrap()
        .items
}

fn stage(j: &StatefulJob) -> Option<Stage> {
    j.status.as_ref()?.rescale.as_ref().map(|r| r.stage)
}

/// Waits until the job's rescale is in `stage` and returns the job.
async fn wait_stage(api: &Api<StatefulJob>, name: &str, want: Stage) -> StatefulJob {
    eventually(&format!("stage {want:?}"), LONG, || async {
        let j = api.get(name).await.ok()?;
        (stage(&j) == Some(want)).then_some(j)
    })
    .await
}

/// Patches the job's `spec.suspend`.
async fn set_suspend(api: &Api<StatefulJob>, name: &str, suspend: bool) {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"suspend": suspend}})),
    )
    .await
    .unwrap();
}

/// Waits until the job runs `p` workers of a later epoch than `after`, and the StatefulSet
/// agrees.
async fn wait_running(
    client: &Client,
    api: &Api<StatefulJob>,
    name: &str,
    p: u32,
    after: u64,
) -> StatefulJob {
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), &api_namespace(api));
    eventually(
        &format!("{name} running {p} workers after epoch {after}"),
        LONG,
        || async {
            let j = api.get(name).await.ok()?;
            let s = j.status.clone()?;
            let set = sts.get(name).await.ok()?;
            (s.phase == Some(Phase::Running)
                && s.parallelism == p
                && s.epoch > after
                && set.spec.replicas == Some(p as i32))
            .then_some(j)
        },
    )
    .await
}

fn api_namespace(api: &Api<StatefulJob>) -> String {
    // Api does not expose its namespace; the tests keep one namespace per Api.
    api.resource_url()
        .split('/')
        .nth(5)
        .unwrap_or_default()
        .to_owned()
}

fn env_value(sts: &StatefulSet, container: &str, name: &str, init: bool) -> Option<String> {
    let pod = sts.spec.template.spec.as_ref()?;
    let list = if init {
        pod.init_containers.as_ref()?
    } else {
        &pod.containers
    };
    let c = list.iter().find(|c| c.name == container)?;
    c.env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)?
        .value
        .clone()
}

/// The checkpoint the restore container of StatefulSet `name` is told to restore, if any.
async fn restore_checkpoint(sts: &Api<StatefulSet>, name: &str) -> Option<String> {
    let set = sts.get(name).await.unwrap();
    env_value(&set, "regroup-restore", "REGROUP_CHECKPOINT", true)
}

async fn events(client: &Client, ns: &str) -> Vec<(String, String)> {
    let api: Api<K8sEvent> = Api::namespaced(client.clone(), ns);
    let mut list: Vec<K8sEvent> = api.list(&ListParams::default()).await.unwrap().items;
    list.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
    list.into_iter()
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect()
}

#[tokio::test]
async fn a_job_runs_checkpoints_rescales_and_suspends() {
    let Some((client, ns, store_dir, workers, operator)) =
        setup("a_job_runs_checkpoints_rescales_and_suspends", "regroup-op").await
    else {
        return;
    };
    let api = create_job(&client, &ns.name, "orders", 3, store_dir.path()).await;

    // Start: epoch 1, three workers, nothing to restore.
    let job = wait_running(&client, &api, "orders", 3, 0).await;
    assert_eq!(job.status.as_ref().unwrap().epoch, 1);
    assert!(job.finalizers().contains(&"regroup.dev/cleanup".to_owned()));
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), &ns.name);
    let set = sts.get("orders").await.unwrap();
    let spec = set.spec.clone();
    assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
    assert_eq!(
        spec.update_strategy.as_ref().unwrap().type_.as_deref(),
        Some("OnDelete")
    );
    assert_eq!(spec.service_name.as_deref(), Some("orders"));
    assert_eq!(
        env_value(&set, "worker", "REGROUP_EPOCH", false).as_deref(),
        Some("1")
    );
    assert_eq!(
        env_value(&set, "worker", "REGROUP_PARALLELISM", false).as_deref(),
        Some("3")
    );
    assert_eq!(
        env_value(&set, "regroup-restore", "REGROUP_RESTORE_EMPTY", true).as_deref(),
        Some("true"),
        "nothing to restore at the first start: the restore container empties the volumes"
    );
    assert_eq!(
        env_value(&set, "regroup-restore", "REGROUP_CHECKPOINT", true),
        None
    );
    assert_eq!(set.owner_references()[0].kind, "StatefulJob");
    let svc: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    assert_eq!(
        svc.get("orders")
            .await
            .unwrap()
            .spec
            .unwrap()
            .cluster_ip
            .as_deref(),
        Some("None")
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let token = secrets.get("orders-token").await.unwrap().data.unwrap()["token"]
        .0
        .clone();
    assert_eq!(token.len(), 64);
    assert_eq!(
        job.status.as_ref().unwrap().selector.as_deref(),
        Some("regroup.dev/job=orders")
    );

    // The first periodic checkpoint completes in the store and is recorded.
    let first = eventually("a completed checkpoint in status", LONG, || async {
        api.get("orders").await.ok()?.status?.last_checkpoint
    })
    .await;
    let store = CheckpointStore::from_url(
        &format!("file://{}", store_dir.path().display()),
        job_id(&ns.name, "orders"),
    )
    .unwrap();
    let meta = store.read_metadata(first.id).await.unwrap();
    assert_eq!(
        (meta.epoch, meta.parallelism, meta.handles.len()),
        (1, 3, 3)
    );

    // An on-demand checkpoint through the trigger nonce.
    api.patch(
        "orders",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"checkpointTrigger": "now-1"}})),
    )
    .await
    .unwrap();
    let second = eventually("the on-demand checkpoint", LONG, || async {
        let s = api.get("orders").await.ok()?.status?;
        let last = s.last_checkpoint?;
        (s.checkpoint_trigger.as_deref() == Some("now-1") && last.id > first.id).then_some(last)
    })
    .await;

    // kubectl scale: through every stage to 5 workers at epoch 2, restored from the final checkpoint.
    run(Command::new("kubectl").args(["-n", &ns.name, "scale", "sj/orders", "--replicas=5"]));
    let mut seen: Vec<Phase> = Vec::new();
    let rescaled = poll(
        "a rescale to 5",
        LONG,
        Duration::from_millis(50),
        async || {
            let j = api.get("orders").await.unwrap();
            let s = j.status.clone().unwrap();
            if let Some(p) = s.phase
                && seen.last() != Some(&p)
            {
                seen.push(p);
            }
            (s.phase == Some(Phase::Running) && s.parallelism == 5).then_some(j)
        },
    )
    .await;
    let job = rescaled.unwrap_or_else(|e| panic!("{e}: phases {seen:?}"));
    let status = job.status.clone().unwrap();
    assert_eq!(status.epoch, 2);
    let last = status.last_checkpoint.clone().unwrap();
    assert!(last.id > second.id, "the final checkpoint is recorded");
    let final_meta = store.read_metadata(last.id).await.unwrap();
    assert_eq!(
        (final_meta.epoch, final_meta.parallelism),
        (1, 3),
        "taken by the old workers"
    );
    let set = sts.get("orders").await.unwrap();
    assert_eq!(set.spec.replicas, Some(5));
    assert_eq!(
        env_value(&set, "regroup-restore", "REGROUP_CHECKPOINT", true),
        Some(last.id.to_string())
    );
    assert_eq!(
        env_value(&set, "regroup-restore", "REGROUP_PARALLELISM", true).as_deref(),
        Some("5")
    );
    let live = pods(&client, &ns.name, "orders").await;
    let live: Vec<&Pod> = live
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    assert_eq!(live.len(), 5);
    assert!(
        live.iter().all(|p| p.labels()[EPOCH_LABEL] == "2"),
        "only the new epoch runs"
    );
    // Stages are recorded in order (a fast stage may pass between two polls).
    let order = [
        Phase::Running,
        Phase::Checkpointing,
        Phase::Stopping,
        Phase::Restoring,
        Phase::RollingForward,
        Phase::Running,
    ];
    let mut at = 0;
    for p in &seen {
        let i = order[at..]
            .iter()
            .position(|o| o == p)
            .map(|i| i + at)
            .unwrap_or_else(|| panic!("phases out of order: {seen:?}"));
        at = i;
    }
    let table =
        run(Command::new("kubectl").args(["-n", &ns.name, "get", "sj", "orders", "--no-headers"]));
    let cols: Vec<&str> = table.split_whitespace().collect();
    assert_eq!(&cols[..4], &["orders", "5", "5", "Running"], "{table}");
    let reasons: Vec<String> = events(&client, &ns.name)
        .await
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    for r in [
        "Starting",
        "Running",
        "CheckpointCompleted",
        "Checkpointing",
        "FinalCheckpointCompleted",
        "Restoring",
        "RollingForward",
    ] {
        assert!(
            reasons.iter().any(|x| x == r),
            "no {r} event in {reasons:?}"
        );
    }

    // The final checkpoint fails: fall back to the latest completed one, with a warning.
    workers.refuse.store(true, Ordering::SeqCst);
    run(Command::new("kubectl").args(["-n", &ns.name, "scale", "sj/orders", "--replicas=2"]));
    let job = wait_running(&client, &api, "orders", 2, 2).await;
    assert_eq!(
        restore_checkpoint(&sts, "orders").await,
        Some(last.id.to_string())
    );
    let degraded = job
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .cloned()
        .unwrap();
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "FinalCheckpointFailed")
    );
    let evs = events(&client, &ns.name).await;
    let warning = evs
        .iter()
        .find(|(r, _)| r == "FinalCheckpointFailed")
        .expect("a FinalCheckpointFailed event");
    assert!(
        warning
            .1
            .contains(&format!("latest completed checkpoint {}", last.id)),
        "{}",
        warning.1
    );
    workers.refuse.store(false, Ordering::SeqCst);

    // Suspend: final checkpoint, zero replicas; resume restores from it.
    set_suspend(&api, "orders", true).await;
    let job = wait_phase(&api, "orders", Phase::Suspended).await;
    let suspended = job.status.clone().unwrap();
    assert_eq!(suspended.parallelism, 0);
    assert_eq!(sts.get("orders").await.unwrap().spec.replicas, Some(0));
    let suspend_checkpoint = suspended.last_checkpoint.unwrap().id;
    assert!(suspend_checkpoint > last.id);
    set_suspend(&api, "orders", false).await;
    wait_running(&client, &api, "orders", 2, suspended.epoch).await;
    assert_eq!(
        restore_checkpoint(&sts, "orders").await,
        Some(suspend_checkpoint.to_string())
    );

    // A template change at the same parallelism replaces the workers from a checkpoint.
    let before = api.get("orders").await.unwrap().status.unwrap();
    api.patch(
        "orders",
        &PatchParams::default(),
        &Patch::Merge(
            serde_json::json!({"spec": {"template": {"metadata": {"labels": {"rev": "2"}}}}}),
        ),
    )
    .await
    .unwrap();
    wait_running(&client, &api, "orders", 2, before.epoch).await;
    let live = pods(&client, &ns.name, "orders").await;
    assert!(
        live.iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .all(|p| p.labels().get("rev").map(String::as_str) == Some("2"))
    );

    // A worker pod is lost while running: every worker restarts from the latest checkpoint at
    // a new epoch (the StatefulSet's replacement alone would hold older state than its peers).
    let before = api.get("orders").await.unwrap().status.unwrap();
    assert_eq!(
        before.ready_workers.as_ref().map(|r| r.count),
        Some(2),
        "{:?}",
        before.ready_workers
    );
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    pod_api
        .delete("orders-1", &DeleteParams::default())
        .await
        .unwrap();
    let job = wait_running(&client, &api, "orders", 2, before.epoch).await;
    let latest = before.last_checkpoint.unwrap().id;
    assert_eq!(
        restore_checkpoint(&sts, "orders").await,
        Some(latest.to_string())
    );
    assert_eq!(job.status.unwrap().epoch, before.epoch + 1);
    let evs = events(&client, &ns.name).await;
    assert!(
        evs.iter()
            .any(|(r, n)| r == "WorkerLost" && n.contains(&format!("checkpoint {latest}"))),
        "{evs:?}"
    );

    // Retention: the newest `retain` (2) completed checkpoints stay, older ones are collected.
    let completed = store.completed_ids().await.unwrap();
    let newest = api
        .get("orders")
        .await
        .unwrap()
        .status
        .unwrap()
        .last_checkpoint
        .unwrap()
        .id;
    assert_eq!(completed.len(), 2, "{completed:?}");
    assert_eq!(completed.last(), Some(&newest));

    // The operator never wrote the spec: only the test's field managers own spec fields.
    let job = api.get("orders").await.unwrap();
    for mf in job.metadata.managed_fields.unwrap_or_default() {
        let owns_spec = mf
            .fields_v1
            .as_ref()
            .is_some_and(|f| f.0.get("f:spec").is_some());
        if mf.manager.as_deref() == Some("regroup") {
            assert!(!owns_spec, "the operator owns spec fields: {mf:?}");
        }
    }

    operator.kill().await;
    api.delete("orders", &DeleteParams::default())
        .await
        .unwrap();
}

/// Holds the job in `stage` (see each arm), kills the operator there, lets the world move on,
/// starts a new operator and checks that it completes the same rescale.
#[tokio::test]
async fn an_operator_restarted_in_any_stage_completes_the_rescale() {
    let Some((client, ns, store_dir, workers, mut operator)) = setup(
        "an_operator_restarted_in_any_stage_completes_the_rescale",
        "regroup-restart",
    )
    .await
    else {
        return;
    };
    let api = create_job(&client, &ns.name, "restart", 2, store_dir.path()).await;
    wait_running(&client, &api, "restart", 2, 0).await;
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), &ns.name);

    let mut target = 2;
    for stage_to_kill in [
        Stage::Checkpointing,
        Stage::Stopping,
        Stage::Restoring,
        Stage::RollingForward,
    ] {
        let before = api.get("restart").await.unwrap().status.unwrap();
        target += 1;
        // Hold the job in the stage.
        match stage_to_kill {
            // The workers accept the final checkpoint but do not finish it.
            Stage::Checkpointing => workers.hold.store(true, Ordering::SeqCst),
            // An old pod cannot go away (a finalizer of the test's, and kwok told to keep off).
            Stage::Stopping => {
                let victim = "restart-0";
                pod_api
                    .patch(
                        victim,
                        &PatchParams::default(),
                        &Patch::Merge(serde_json::json!({"metadata": {
                            "finalizers": ["test.regroup.dev/hold"],
                            // kwok drops finalizers of deleted pods, except of pods run locally.
                            "labels": {"regroup.dev/run-locally": "true"}
                        }})),
                    )
                    .await
                    .unwrap();
            }
            // No pod may be created.
            Stage::Restoring | Stage::RollingForward => {
                hold_pods(&client, &ns.name).await;
            }
        }
        api.patch(
            "restart",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"parallelism": target}})),
        )
        .await
        .unwrap();
        let wait_for = if stage_to_kill == Stage::RollingForward {
            Stage::Restoring
        } else {
            stage_to_kill
        };
        let held = wait_stage(&api, "restart", wait_for).await;
        if stage_to_kill == Stage::RollingForward {
            // The operator records Restoring before it applies the StatefulSet of the new
            // epoch; the pods this arm waits for without an operator need that StatefulSet.
            let epoch = held.status.as_ref().unwrap().epoch.to_string();
            let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns.name);
            eventually("the StatefulSet of the new epoch", LONG, || async {
                let set = sets.get("restart").await.ok()?;
                let spec = set.spec;
                let labels = spec.template.metadata?.labels?;
                (spec.replicas == Some(target as i32) && labels.get(EPOCH_LABEL) == Some(&epoch))
                    .then_some(())
            })
            .await;
        }
        operator.kill().await;
        let recorded = held.status.clone().unwrap().rescale.unwrap();
        assert_eq!(recorded.to, target);

        // The world moves on while no operator runs.
        match stage_to_kill {
            Stage::Checkpointing => workers.release().await,
            Stage::Stopping => {
                pod_api
                    .patch(
                        "restart-0",
                        &PatchParams::default(),
                        &Patch::Merge(serde_json::json!({"metadata": {
                            "finalizers": null,
                            // Back to kwok, which completes the deletion.
                            "labels": {"regroup.dev/run-locally": null}
                        }})),
                    )
                    .await
                    .unwrap();
            }
            Stage::Restoring => {
                release_hold(&client, &ns.name, "restart").await;
            }
            Stage::RollingForward => {
                // Pods come up and restore (kwok: initialized and ready at once); then the test
                // takes readiness away so that the new operator finds them initialized, not ready.
                release_hold(&client, &ns.name, "restart").await;
                let epoch = held.status.as_ref().unwrap().epoch.to_string();
                eventually("the new pods", LONG, || async {
                    let ps = pods(&client, &ns.name, "restart").await;
                    let ready = ps
                        .iter()
                        .filter(|p| p.labels().get(EPOCH_LABEL) == Some(&epoch))
                        .filter(|p| p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some())
                        .count();
                    (ready == target as usize).then_some(())
                })
                .await;
                for p in pods(&client, &ns.name, "restart").await {
                    set_ready(&pod_api, &p.name_any(), false).await;
                }
                operator = Operator::start(&client, &ns.name, workers.clone());
                wait_phase(&api, "restart", Phase::RollingForward).await;
                operator.kill().await;
                for p in pods(&client, &ns.name, "restart").await {
                    set_ready(&pod_api, &p.name_any(), true).await;
                }
            }
        }

        operator = Operator::start(&client, &ns.name, workers.clone());
        let job = wait_running(&client, &api, "restart", target, before.epoch).await;
        let status = job.status.unwrap();
        assert_eq!(
            status.epoch,
            before.epoch + 1,
            "{stage_to_kill:?}: one new generation, not two"
        );
        let checkpoint = recorded.checkpoint.or(recorded.final_checkpoint).unwrap();
        let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns.name);
        assert_eq!(
            restore_checkpoint(&sets, "restart").await,
            Some(checkpoint.to_string()),
            "{stage_to_kill:?}: restored from the checkpoint recorded before the restart"
        );
    }
    operator.kill().await;
}

/// Creates the pod quota "hold" (no pod may be created in `ns`) and waits until it is counted.
async fn hold_pods(client: &Client, ns: &str) {
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), ns);
    let quota: ResourceQuota = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "hold"}, "spec": {"hard": {"pods": "0"}}
    }))
    .unwrap();
    quotas.create(&PostParams::default(), &quota).await.unwrap();
    eventually("the quota to be counted", LONG, || async {
        let q = quotas.get("hold").await.ok()?;
        q.status?.hard.is_some().then_some(())
    })
    .await;
}

/// Deletes the pod quota "hold" that kept the StatefulSet `set` from creating pods, and touches
/// the set so that its controller tries again at once: while the quota refused its pods, the
/// controller's retries of that set backed off exponentially (minutes after a long hold).
async fn release_hold(client: &Client, ns: &str, set: &str) {
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), ns);
    quotas
        .delete("hold", &DeleteParams::default())
        .await
        .unwrap();
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    sets.patch(
        set,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {"annotations": {
            "regroup.test/hold-released": chrono::Utc::now().to_rfc3339()
        }}})),
    )
    .await
    .unwrap();
}

async fn set_ready(api: &Api<Pod>, name: &str, ready: bool) {
    let status = if ready { "True" } else { "False" };
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let patch = serde_json::json!({"status": {"conditions": [
        {"type": "Ready", "status": status, "lastTransitionTime": now},
        {"type": "ContainersReady", "status": status, "lastTransitionTime": now}
    ]}});
    api.patch_status(name, &PatchParams::default(), &Patch::Strategic(patch))
        .await
        .unwrap();
}

/// A claim of `name` in `ns` for the test: `labels`, no storage class (nothing provisions it;
/// the test's volumes are pre-bound).
fn test_claim(name: &str, labels: serde_json::Value) -> PersistentVolumeClaim {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "storageClassName": "",
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}}
        }
    }))
    .unwrap()
}

/// A hostPath volume pre-bound to claim `ns/claim` (the test cluster has no provisioner; kwok
/// pods mount nothing, the binding is what the scheduler needs).
fn prebound_volume(ns: &str, claim: &str, dir: &std::path::Path) -> PersistentVolume {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("{ns}-{claim}")},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "",
            "hostPath": {"path": dir.join(claim).display().to_string()},
            "claimRef": {"namespace": ns, "name": claim}
        }
    }))
    .unwrap()
}

/// name → uid of the claims in `ns` that are not being deleted.
async fn live_claims(client: &Client, ns: &str) -> std::collections::BTreeMap<String, String> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|c| c.metadata.deletion_timestamp.is_none())
        .map(|c| (c.name_any(), c.uid().unwrap_or_default()))
        .collect()
}

/// The claims named by the operator's StateClaimDeleted Events (related object and note
/// agree), sorted.
async fn claim_events(client: &Client, ns: &str) -> Vec<String> {
    let api: Api<K8sEvent> = Api::namespaced(client.clone(), ns);
    let mut names: Vec<String> = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("StateClaimDeleted"))
        .map(|e| {
            let related = e.related.and_then(|r| r.name).unwrap_or_default();
            let note = e.note.unwrap_or_default();
            assert!(
                note.starts_with(&format!("deleted state claim {related} ")),
                "{note} (related {related})"
            );
            related
        })
        .collect();
    names.sort();
    names
}

/// Waits until the StateClaimDeleted Events name exactly `want` (sorted).
async fn wait_claim_events(client: &Client, ns: &str, want: &[String]) {
    let mut named = Vec::new();
    let what = "the StateClaimDeleted events";
    let waited = poll(what, LONG, EVERY, async || {
        named = claim_events(client, ns).await;
        // More than wanted is a failure now, not a wait.
        (named == want || named.len() > want.len()).then_some(())
    })
    .await;
    assert!(
        waited.is_ok() && named == want,
        "StateClaimDeleted events name {named:?}, want {want:?}: {:?}",
        events(client, ns).await
    );
}

/// Scale-in 3→1 with the default claim template: the claims of ordinals 1 and 2 survive the
/// stopping and restoring stages (the restore may reuse their files) and are deleted once the
/// job runs at 1, with an Event naming them; the kept ordinal's claim and claims of other jobs
/// stay. A restarted operator deletes a leftover claim; a suspended job keeps its claims.
#[tokio::test]
async fn claims_of_removed_ordinals_are_deleted_after_the_scale_in() {
    let Some((client, ns, store_dir, workers, mut operator)) = setup(
        "claims_of_removed_ordinals_are_deleted_after_the_scale_in",
        "regroup-claims",
    )
    .await
    else {
        return;
    };
    let volume_dir = tempfile::tempdir().unwrap();
    let claim_api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns.name);
    let pv_api: Api<PersistentVolume> = Api::all(client.clone());
    let ours = |i: u32| format!("state-orders-{i}");
    for i in 0..3 {
        pv_api
            .create(
                &PostParams::default(),
                &prebound_volume(&ns.name, &ours(i), volume_dir.path()),
            )
            .await
            .unwrap();
    }
    // Look-alikes: job "orders-2"'s claim of ordinal 1 (named like ours plus "-1"), and a claim
    // with one of our names but another job's label.
    for (name, job) in [
        ("state-orders-2-1", "orders-2"),
        ("state-orders-5", "payments"),
    ] {
        claim_api
            .create(
                &PostParams::default(),
                &test_claim(name, serde_json::json!({ JOB_LABEL: job })),
            )
            .await
            .unwrap();
    }

    let api: Api<StatefulJob> = Api::namespaced(client.clone(), &ns.name);
    let url = format!("file://{}", store_dir.path().display());
    let mut value = job_yaml("orders", 3, M, &url);
    value["spec"]["stateVolume"] = serde_json::json!({"claim": {
        "storageClassName": "", "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "1Gi"}}
    }});
    let job: StatefulJob = serde_json::from_value(value).unwrap();
    api.create(&PostParams::default(), &job).await.unwrap();
    let running = wait_running(&client, &api, "orders", 3, 0).await;
    let before = live_claims(&client, &ns.name).await;
    for i in 0..3 {
        assert!(before.contains_key(&ours(i)), "{before:?}");
        let c = claim_api.get(&ours(i)).await.unwrap();
        assert_eq!(c.labels()[JOB_LABEL], "orders");
        assert_eq!(c.status.unwrap().phase.as_deref(), Some("Bound"));
    }

    // Scale in to 1, held in Restoring (no pod may be created) to look at the claims mid-way.
    hold_pods(&client, &ns.name).await;
    run(Command::new("kubectl").args(["-n", &ns.name, "scale", "sj/orders", "--replicas=1"]));
    wait_stage(&api, "orders", Stage::Restoring).await;
    // Several reconcile rounds (300 ms apart) in Restoring: every claim is still there.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let j = api.get("orders").await.unwrap();
    assert_eq!(stage(&j), Some(Stage::Restoring), "still held");
    assert_eq!(
        live_claims(&client, &ns.name).await,
        before,
        "no claim is deleted while the rescale restores"
    );
    release_hold(&client, &ns.name, "orders").await;
    let epoch = running.status.unwrap().epoch;
    let job = wait_running(&client, &api, "orders", 1, epoch).await;

    // Once running at 1: ordinals 1 and 2 go, ordinal 0 and the look-alikes stay.
    let after = eventually("the claims of ordinals 1 and 2 to go", LONG, || async {
        let now = live_claims(&client, &ns.name).await;
        (!now.contains_key(&ours(1)) && !now.contains_key(&ours(2))).then_some(now)
    })
    .await;
    assert_eq!(
        after.get(&ours(0)),
        before.get(&ours(0)),
        "the same claim 0"
    );
    for other in ["state-orders-2-1", "state-orders-5"] {
        assert_eq!(after.get(other), before.get(other), "{other} untouched");
    }
    assert_eq!(after.len(), 3, "{after:?}");
    // One Event per deleted claim, naming it (published right after its delete).
    wait_claim_events(&client, &ns.name, &[ours(1), ours(2)]).await;

    // An operator restarted while the job runs deletes a claim left over above the parallelism
    // (e.g. one whose deletion an earlier operator did not get to).
    operator.kill().await;
    claim_api
        .create(
            &PostParams::default(),
            &test_claim(&ours(3), serde_json::json!({ JOB_LABEL: "orders" })),
        )
        .await
        .unwrap();
    operator = Operator::start(&client, &ns.name, workers.clone());
    eventually("the leftover claim to go", LONG, || async {
        (!live_claims(&client, &ns.name).await.contains_key(&ours(3))).then_some(())
    })
    .await;
    assert_eq!(live_claims(&client, &ns.name).await, after);
    wait_claim_events(&client, &ns.name, &[ours(1), ours(2), ours(3)]).await;

    // Suspended (zero workers) and resumed: the claim of ordinal 0 is the same throughout.
    set_suspend(&api, "orders", true).await;
    let suspended = wait_phase(&api, "orders", Phase::Suspended).await;
    assert_eq!(live_claims(&client, &ns.name).await, after);
    set_suspend(&api, "orders", false).await;
    wait_running(&client, &api, "orders", 1, suspended.status.unwrap().epoch).await;
    assert_eq!(live_claims(&client, &ns.name).await, after);
    let _ = job;

    operator.kill().await;
    for i in 0..3 {
        let _ = pv_api
            .delete(
                &format!("{}-{}", ns.name, ours(i)),
                &DeleteParams::default(),
            )
            .await;
    }
}

/// A claim that gives only its size gets the documented defaults (ReadWriteOnce), and a claim the
/// API server refuses shows as Degraded with the server's message, not only in the operator's log.
#[tokio::test]
async fn a_partial_claim_gets_defaults_and_a_refused_one_is_degraded() {
    let Some((client, ns, store_dir, _workers, operator)) = setup(
        "a_partial_claim_gets_defaults_and_a_refused_one_is_degraded",
        "regroup-claimspec",
    )
    .await
    else {
        return;
    };
    let api: Api<StatefulJob> = Api::namespaced(client.clone(), &ns.name);
    let url = format!("file://{}", store_dir.path().display());
    let create = |name: &'static str, claim: serde_json::Value| {
        let mut y = job_yaml(name, 1, M, &url);
        y["spec"]["stateVolume"] = serde_json::json!({ "claim": claim });
        let job: StatefulJob = serde_json::from_value(y).unwrap();
        let api = api.clone();
        async move { api.create(&PostParams::default(), &job).await.unwrap() }
    };
    create(
        "sized",
        serde_json::json!({"resources": {"requests": {"storage": "5Gi"}}}),
    )
    .await;
    create(
        "refused",
        serde_json::json!({"accessModes": ["ReadWriteSometimes"]}),
    )
    .await;
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), &ns.name);
    let claim = eventually("the StatefulSet of sized", LONG, || async {
        let set = sts.get("sized").await.ok()?;
        set.spec.volume_claim_templates?.into_iter().next()?.spec
    })
    .await;
    assert_eq!(claim.access_modes, Some(vec!["ReadWriteOnce".to_owned()]));
    assert_eq!(
        claim.resources.unwrap().requests.unwrap()["storage"].0,
        "5Gi"
    );
    let message = eventually("refused to be Degraded", LONG, || async {
        let j = api.get("refused").await.ok()?;
        let c = j
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Degraded" && c.status == "True")?;
        (c.reason == "InvalidSpec").then_some(c.message)
    })
    .await;
    assert!(
        message.contains("ReadWriteSometimes") && message.contains("accessModes"),
        "{message}"
    );
    // Degraded once, not rewritten in every round: each write would start the next at once.
    // A round still under way may write once more; a loop writes every few milliseconds.
    let mut versions = std::collections::BTreeSet::new();
    for _ in 0..30 {
        versions.insert(api.get("refused").await.unwrap().resource_version());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        versions.len() <= 2,
        "the status of a refused job was written {} times in 3 s while nothing changed",
        versions.len() - 1
    );
    // A refusal of a field that can change clears once the spec is fixed.
    let mut y = job_yaml("relabelled", 1, M, &url);
    y["spec"]["template"]["metadata"] = serde_json::json!({"labels": {"team": "not valid!"}});
    let job: StatefulJob = serde_json::from_value(y).unwrap();
    api.create(&PostParams::default(), &job).await.unwrap();
    eventually("relabelled to be Degraded", LONG, || async {
        let j = api.get("relabelled").await.ok()?;
        let c = j
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Degraded")?;
        (c.status == "True" && c.reason == "InvalidSpec").then_some(())
    })
    .await;
    let fix =
        serde_json::json!({"spec": {"template": {"metadata": {"labels": {"team": "valid"}}}}});
    api.patch("relabelled", &PatchParams::default(), &Patch::Merge(&fix))
        .await
        .unwrap();
    eventually("the fixed job's StatefulSet", LONG, || async {
        sts.get("relabelled").await.ok()
    })
    .await;
    eventually(
        "the fixed job to be no longer InvalidSpec",
        LONG,
        || async {
            let j = api.get("relabelled").await.ok()?;
            let invalid =
                j.status?.conditions.into_iter().any(|c| {
                    c.type_ == "Degraded" && c.status == "True" && c.reason == "InvalidSpec"
                });
            (!invalid).then_some(())
        },
    )
    .await;
    operator.kill().await;
}
