//! The watch over pods: a supervisor task per pod to run, fed with the pod's updates.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::spec::BinaryTable;
use super::supervisor::{Shared, StopWatch, supervise};
use crate::{Error, Result};

/// How the runner is set up (the flags of `regroup-pod-runner`).
#[derive(Clone, Debug)]
pub struct RunnerConfig {
    /// Local binaries standing in for container commands.
    pub binaries: BinaryTable,
    /// Where pod volumes (`pods/`) and claims (`claims/`) live.
    pub state_dir: PathBuf,
    /// Where process output goes: `<log dir>/<namespace>/<pod>/<container>.log`.
    pub log_dir: PathBuf,
    /// Only pods in this namespace (all namespaces when `None`).
    pub namespace: Option<String>,
    /// Label selector of the pods to run.
    pub pod_selector: String,
    /// `key=value` labels a pod's node must have for the runner to run it.
    pub node_labels: BTreeMap<String, String>,
    /// Variables of the runner's own environment passed on to every process (e.g. PATH).
    pub pass_env: Vec<String>,
    /// First restart delay of a crashed container.
    pub backoff_initial: Duration,
    /// Longest restart delay.
    pub backoff_max: Duration,
    /// StorageClass whose claims the runner provisions (as claim directories); `None`: none.
    pub storage_class: Option<String>,
    /// Mark that StorageClass as the cluster's default.
    pub default_storage_class: bool,
    /// The API server's address for processes (their service account's kubeconfig); `None`:
    /// processes get no kubeconfig from the runner.
    pub api_server: Option<String>,
}

/// Parses a node selector `key=value[,key=value...]`.
pub fn parse_node_labels(s: &str) -> Result<BTreeMap<String, String>> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| Error::invalid("--node-selector", s, "key=value[,key=value...]"))
        })
        .collect()
}

struct PodTask {
    updates: watch::Sender<Option<Pod>>,
    node: String,
    lost: watch::Sender<bool>,
}

/// Label a test puts on a node to make it crash: the runner kills the processes of its pods at
/// once and acts for them no more (no status, no finished deletion).
pub const LOST_NODE_LABEL: &str = "regroup.dev/pod-runner-lost";

/// Runs the pods until `shutdown` completes, then stops their processes (pods stay, marked
/// not ready) and returns.
pub async fn run(
    client: kube::Client,
    config: RunnerConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let pods: Api<Pod> = match &config.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let nodes: Api<Node> = Api::all(client.clone());
    let watch_config = watcher::Config::default()
        .labels(&config.pod_selector)
        .fields("spec.nodeName!=");
    let node_labels = config.node_labels.clone();
    info!(
        selector = %config.pod_selector,
        namespace = config.namespace.as_deref().unwrap_or("(all)"),
        binaries = %config.binaries.names(),
        state_dir = %config.state_dir.display(),
        log_dir = %config.log_dir.display(),
        "pod runner started"
    );
    let provisioner = config.storage_class.clone().map(|class| {
        tokio::spawn(super::claims::provision(
            client.clone(),
            config.namespace.clone(),
            class,
            config.default_storage_class,
            config.state_dir.clone(),
        ))
    });
    let shared = Arc::new(Shared { client, config });
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (done_tx, mut done) = mpsc::unbounded_channel::<String>();
    let mut tasks: HashMap<String, PodTask> = HashMap::new();
    let mut handles = tokio::task::JoinSet::new();
    let mut node_ok: HashMap<String, bool> = HashMap::new();
    let mut listed: HashSet<String> = HashSet::new();
    // Pods already seen to the end: late events about them must not start them again.
    let mut finished: HashSet<String> = HashSet::new();

    let stream = watcher(pods, watch_config).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let lost_nodes = watcher(
        nodes.clone(),
        watcher::Config::default().labels(&format!("{LOST_NODE_LABEL}=true")),
    )
    .default_backoff()
    .applied_objects();
    let mut lost_nodes = std::pin::pin!(lost_nodes);
    let mut lost: HashSet<String> = HashSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let event = tokio::select! {
            _ = &mut shutdown => break,
            Some(uid) = done.recv() => {
                tasks.remove(&uid);
                finished.insert(uid);
                continue;
            }
            Some(_) = handles.join_next(), if !handles.is_empty() => continue,
            Some(node) = lost_nodes.next() => {
                let Ok(node) = node else { continue };
                let name = node.metadata.name.unwrap_or_default();
                if lost.insert(name.clone()) {
                    warn!(node = %name, "node marked lost: killing its pods' processes");
                }
                node_ok.insert(name.clone(), false);
                for task in tasks.values().filter(|t| t.node == name) {
                    task.lost.send_replace(true);
                }
                continue;
            }
            event = stream.next() => event,
        };
        let event = match event {
            Some(Ok(e)) => e,
            Some(Err(e)) => {
                warn!(error = %e, "pod watch failed; retrying");
                continue;
            }
            None => anyhow::bail!("the pod watch ended"),
        };
        let pod = match event {
            watcher::Event::Init => {
                listed.clear();
                continue;
            }
            watcher::Event::InitDone => {
                // Pods that went away while the watch was down.
                for (uid, task) in &tasks {
                    if !listed.contains(uid) {
                        task.updates.send_replace(None);
                    }
                }
                continue;
            }
            watcher::Event::Delete(pod) => {
                if let Some(task) = pod.metadata.uid.as_ref().and_then(|u| tasks.get(u)) {
                    task.updates.send_replace(None);
                }
                continue;
            }
            watcher::Event::InitApply(pod) => {
                listed.extend(pod.metadata.uid.clone());
                pod
            }
            watcher::Event::Apply(pod) => pod,
        };
        let Some(uid) = pod.metadata.uid.clone() else {
            continue;
        };
        if let Some(task) = tasks.get(&uid) {
            task.updates.send_replace(Some(pod));
            continue;
        }
        if finished.contains(&uid) {
            continue;
        }
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            continue;
        };
        if !node_ok.contains_key(&node) {
            match nodes.get_opt(&node).await {
                Ok(found) => {
                    let ok = found.is_some_and(|n| {
                        let labels = n.metadata.labels.unwrap_or_default();
                        node_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
                    });
                    node_ok.insert(node.clone(), ok);
                }
                Err(e) => {
                    warn!(%node, error = %e, "cannot read node; will retry on the pod's next update");
                    continue;
                }
            }
        }
        if !node_ok[&node] {
            continue;
        }
        let (updates, rx) = watch::channel(Some(pod));
        let (lost_tx, lost_rx) = watch::channel(lost.contains(&node));
        let stops = StopWatch::new(rx, shutdown_rx.clone(), lost_rx);
        handles.spawn(supervise(shared.clone(), stops, done_tx.clone()));
        tasks.insert(
            uid,
            PodTask {
                updates,
                node,
                lost: lost_tx,
            },
        );
    }
    info!(
        pods = tasks.len(),
        "pod runner stopping: stopping every pod's processes"
    );
    let _ = shutdown_tx.send(true);
    if let Some(p) = provisioner {
        p.abort();
    }
    while handles.join_next().await.is_some() {}
    info!("pod runner stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_labels_parse() {
        let m = parse_node_labels("type=kwok, zone=a").unwrap();
        assert_eq!(m.get("type").map(String::as_str), Some("kwok"));
        assert_eq!(m.get("zone").map(String::as_str), Some("a"));
        assert!(parse_node_labels("").unwrap().is_empty());
        let err = parse_node_labels("type").unwrap_err().to_string();
        assert!(err.contains("--node-selector = type"), "{err}");
    }
}
