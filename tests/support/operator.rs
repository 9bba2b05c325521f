//! The operator tests' fixtures against a real kube-apiserver: the StatefulJob CRD installed,
//! a namespace per test, job specs, and workers that are not processes.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use regroup::checkpoint::metadata::SubtaskHandle;
use regroup::checkpoint::{CheckpointStore, JobId};
use regroup::operator::coordinator::{CheckpointRequest, Notice, WorkerClient, WorkerTarget};
use regroup::operator::crd::{Phase, StatefulJob};

use super::poll::eventually;
use super::{cluster, root};

/// A client for the test cluster with the StatefulJob CRD installed, or `None` when `test` is
/// skipped (see [`cluster`]).
pub async fn kube_with_crd(test: &str) -> Option<Client> {
    let client = cluster::kube(test).await?;
    install_crd(&client).await;
    Some(client)
}

/// `kubectl apply -f crds/` and waits until the CRDs are established.
///
/// The tests of one binary start at once: on a cluster without the CRD, concurrent applies
/// each see it missing and all but one create fails with AlreadyExists. So applies are
/// serialised within the process, and one that lost such a race to another process is run again
/// (it then updates the CRD).
pub async fn install_crd(client: &Client) {
    static APPLYING: Mutex<()> = Mutex::new(());
    let crds = root().join("crds");
    {
        let _one_at_a_time = APPLYING.lock().unwrap_or_else(|e| e.into_inner());
        let apply = || {
            Command::new("kubectl")
                .arg("apply")
                .arg("-f")
                .arg(&crds)
                .output()
                .unwrap_or_else(|e| panic!("cannot run kubectl apply: {e}"))
        };
        let first = apply();
        if !first.status.success() {
            let stderr = String::from_utf8_lossy(&first.stderr);
            assert!(
                stderr.contains("AlreadyExists"),
                "kubectl apply -f {} failed: {stderr}",
                crds.display()
            );
            let again = apply();
            assert!(
                again.status.success(),
                "kubectl apply -f {} failed again: {}",
                crds.display(),
                String::from_utf8_lossy(&again.stderr)
            );
        }
    }
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in [
        "statefuljobs.regroup.dev",
        "statefuljobsnapshots.regroup.dev",
    ] {
        eventually(
            &format!("CRD {name} to be established"),
            Duration::from_secs(60),
            || async {
                let crd = api.get(name).await.ok()?;
                let established = crd
                    .status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                established.then_some(())
            },
        )
        .await;
    }
}

/// A fresh namespace, deleted when dropped.
pub struct TestNamespace {
    pub name: String,
}

impl TestNamespace {
    pub async fn new(client: &Client, prefix: &str) -> Self {
        let name = format!(
            "{prefix}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let api: Api<Namespace> = Api::all(client.clone());
        let ns: Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
        api.create(&PostParams::default(), &ns).await.unwrap();
        Self { name }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // kubectl, synchronously: a task spawned here would die with the test's runtime, and a
        // namespace left behind keeps its jobs running under the e2e operator that comes next.
        // The finalizers go once the jobs are being deleted, when no operator can add them back.
        let kubectl = |args: &[&str]| Command::new("kubectl").args(args).output();
        let ns = self.name.as_str();
        let kinds = "statefuljobs.regroup.dev,statefuljobsnapshots.regroup.dev";
        let _ = kubectl(&["delete", kinds, "--all", "-n", ns, "--wait=false"]);
        if let Ok(out) = kubectl(&["get", kinds, "-n", ns, "-o", "name"]) {
            for object in String::from_utf8_lossy(&out.stdout).lines() {
                let patch = r#"{"metadata":{"finalizers":null}}"#;
                let _ = kubectl(&["patch", object, "-n", ns, "--type=merge", "-p", patch]);
            }
        }
        let _ = kubectl(&["delete", "namespace", ns, "--wait=false"]);
    }
}

/// A StatefulJob spec for tests: pod-local state (no volume provisioner in the test cluster).
pub fn job_yaml(
    name: &str,
    parallelism: u32,
    max_parallelism: u32,
    store_url: &str,
) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "regroup.dev/v1alpha1",
        "kind": "StatefulJob",
        "metadata": {"name": name},
        "spec": {
            "parallelism": parallelism,
            "maxParallelism": max_parallelism,
            "storage": {"url": store_url},
            "checkpointing": {"interval": "1h", "timeout": "10m", "retain": 2},
            "stateVolume": {"emptyDir": {}},
            "template": {"spec": {"containers": [{
                "name": "worker", "image": "regroup:test", "args": ["worker"]
            }]}}
        }
    })
}

/// Waits until the job's phase is `phase` and returns the job.
pub async fn wait_phase(api: &Api<StatefulJob>, name: &str, phase: Phase) -> StatefulJob {
    eventually(
        &format!("{name} in phase {phase}"),
        Duration::from_secs(120),
        || async {
            let j = api.get(name).await.ok()?;
            (j.status.as_ref()?.phase == Some(phase)).then_some(j)
        },
    )
    .await
}

/// Workers that are not processes: on a checkpoint request they write a (file-less) handle
/// of the right key group range to the real store, as a worker would after its upload. A gate
/// holds them back; a switch makes them refuse.
pub struct FakeWorkers {
    pub store_root: String,
    pub max_parallelism: u32,
    pub hold: AtomicBool,
    pub refuse: AtomicBool,
    pub triggers: AtomicUsize,
    pub notices: Mutex<Vec<(u64, u32, Notice)>>,
    held: Mutex<Vec<(WorkerTarget, CheckpointRequest)>>,
}

impl FakeWorkers {
    pub fn new(store_root: &Path, max_parallelism: u32) -> Arc<Self> {
        Arc::new(Self {
            store_root: format!("file://{}", store_root.display()),
            max_parallelism,
            hold: AtomicBool::new(false),
            refuse: AtomicBool::new(false),
            triggers: AtomicUsize::new(0),
            notices: Mutex::new(Vec::new()),
            held: Mutex::new(Vec::new()),
        })
    }

    /// Writes the handles of every held request.
    pub async fn release(&self) {
        self.hold.store(false, Ordering::SeqCst);
        let held: Vec<_> = std::mem::take(&mut *self.held.lock().unwrap());
        for (w, r) in held {
            self.write_handle(&w, &r).await;
        }
    }

    async fn write_handle(&self, worker: &WorkerTarget, request: &CheckpointRequest) {
        let store = CheckpointStore::from_url(&self.store_root, worker.job.clone()).unwrap();
        let handle = SubtaskHandle {
            epoch: request.epoch,
            instance_id: format!("fake-{}-{}", request.epoch, worker.subtask),
            ..regroup::checkpoint::testing::handle(
                worker.job.clone(),
                request.id,
                self.max_parallelism,
                worker.parallelism,
                worker.subtask,
            )
        };
        match store.write_handle(&handle).await {
            Ok(()) | Err(regroup::Error::AlreadyExists { .. }) => {}
            Err(e) => panic!("fake worker cannot write its handle: {e}"),
        }
    }
}

#[async_trait]
impl WorkerClient for FakeWorkers {
    async fn trigger(
        &self,
        worker: &WorkerTarget,
        token: &str,
        request: &CheckpointRequest,
    ) -> regroup::Result<()> {
        assert_eq!(token.len(), 64, "the operator sends the job's token");
        self.triggers.fetch_add(1, Ordering::SeqCst);
        if self.refuse.load(Ordering::SeqCst) {
            return Err(regroup::Error::Other(format!(
                "worker {} refuses (test)",
                worker.subtask
            )));
        }
        if self.hold.load(Ordering::SeqCst) {
            self.held
                .lock()
                .unwrap()
                .push((worker.clone(), request.clone()));
            return Ok(());
        }
        self.write_handle(worker, request).await;
        Ok(())
    }

    async fn notify(
        &self,
        worker: &WorkerTarget,
        _token: &str,
        id: u64,
        _epoch: u64,
        notice: Notice,
    ) -> regroup::Result<()> {
        self.notices
            .lock()
            .unwrap()
            .push((id, worker.subtask, notice));
        Ok(())
    }
}

/// The job id of `name` in `ns`.
pub fn job_id(ns: &str, name: &str) -> JobId {
    JobId::new(ns, name).unwrap()
}

/// The name of any object, for messages.
pub fn names<K: kube::Resource>(items: &[K]) -> Vec<String> {
    items.iter().map(|i| i.name_any()).collect()
}
