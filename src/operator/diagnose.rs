//! What is wrong with a generation's pods, read from their status alone (pure): a restore init
//! container that failed, a worker container that keeps failing, a worker lost, a pod stuck
//! terminating, a node that is not ready.
//! The controller shows the finding in the Degraded condition, with what the user can do.

use k8s_openapi::api::core::v1::{ContainerStatus, Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use super::crd::ReadyWorkers;
use super::resources::RESTORE_CONTAINER;

/// Waiting reasons that mean a container cannot run until something changes.
const STUCK_WAITING: [&str; 6] = [
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
];

/// Why `status`'s container failed, if it did: a waiting reason that cannot resolve by itself,
/// or a last (or current) termination with a non-zero exit code, with its message.
fn container_failure(status: &ContainerStatus) -> Option<String> {
    let terminated = status
        .state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .or_else(|| {
            status
                .last_state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
        })
        .filter(|t| t.exit_code != 0);
    let waiting = status
        .state
        .as_ref()
        .and_then(|s| s.waiting.as_ref())
        .filter(|w| {
            w.reason
                .as_deref()
                .is_some_and(|r| STUCK_WAITING.contains(&r))
        });
    if terminated.is_none() && waiting.is_none() {
        return None;
    }
    let mut parts = Vec::new();
    if let Some(w) = waiting {
        parts.push(w.reason.clone().unwrap_or_default());
        if let Some(m) = w.message.as_deref().filter(|m| !m.is_empty()) {
            parts.push(m.to_owned());
        }
    }
    if let Some(t) = terminated {
        let reason = t.reason.clone().unwrap_or_else(|| "Error".to_owned());
        parts.push(format!("{reason} (exit code {})", t.exit_code));
        if let Some(m) = t
            .message
            .as_deref()
            .map(str::trim)
            .filter(|m| !m.is_empty())
        {
            // The last lines of its log (FallbackToLogsOnError): the error is the last one.
            let last = m.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or(m);
            parts.push(last.trim().to_owned());
        }
    }
    Some(parts.join(": "))
}

/// The first of `pods` whose restore init container failed, and why.
pub fn restore_failure(pods: &[&Pod]) -> Option<String> {
    pods.iter().find_map(|p| {
        let status = p
            .status
            .as_ref()?
            .init_container_statuses
            .as_ref()?
            .iter()
            .find(|c| c.name == RESTORE_CONTAINER)?;
        container_failure(status)
            .map(|why| format!("restore of pod {} failed: {why}", p.name_any()))
    })
}

/// The first of `pods` whose worker (first) container or another init container keeps
/// failing, and why.
pub fn worker_failure(pods: &[&Pod]) -> Option<String> {
    pods.iter().find_map(|p| {
        let status = p.status.as_ref()?;
        let containers = status.container_statuses.iter().flatten();
        let inits = status
            .init_container_statuses
            .iter()
            .flatten()
            .filter(|c| c.name != RESTORE_CONTAINER);
        containers.chain(inits).find_map(|c| {
            container_failure(c).map(|why| {
                format!(
                    "container {} of pod {} is failing: {why}",
                    c.name,
                    p.name_any()
                )
            })
        })
    })
}

/// Whether `node` is known not to be ready (its Ready condition is False or Unknown).
pub fn node_not_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status != "True")
}

/// Why a worker of the running generation counts as lost, if one does: a recorded pod is gone
/// or terminating, a pod not recorded took a worker's place, or a worker container restarted.
/// `recorded` are the generation's pods when it became ready (none: nothing to check); `live`
/// are the generation's pods that are not terminating.
pub fn lost_worker(recorded: Option<&ReadyWorkers>, live: &[&Pod]) -> Option<String> {
    let recorded = recorded?;
    if (live.len() as u32) < recorded.count {
        return Some(gone(recorded.count, live));
    }
    let uids: Vec<String> = live
        .iter()
        .map(|p| p.metadata.uid.clone().unwrap_or_default())
        .collect();
    if ReadyWorkers::of(&uids) != *recorded {
        // The replacement is the pod created last: the others became ready together before it.
        let newest = live
            .iter()
            .max_by_key(|p| p.metadata.creation_timestamp.clone())
            .map(|p| p.name_any())
            .unwrap_or_default();
        return Some(format!(
            "worker pod {newest} was replaced (the generation's pods are not the {} that became ready)",
            recorded.count
        ));
    }
    for p in live {
        let restarts: i32 = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .map(|cs| cs.iter().map(|c| c.restart_count).sum())
            .unwrap_or(0);
        if restarts > 0 {
            return Some(format!(
                "worker pod {} restarted its containers {restarts} times",
                p.name_any()
            ));
        }
    }
    None
}

/// Which of the `count` worker pods that became ready is gone, named after the live ones
/// (StatefulSet pods are `<name>-<ordinal>`).
fn gone(count: u32, live: &[&Pod]) -> String {
    let ordinal = |p: &&Pod| {
        let name = p.name_any();
        let (prefix, n) = name.rsplit_once('-')?;
        Some((prefix.to_owned(), n.parse::<u32>().ok()?))
    };
    let named: Vec<(String, u32)> = live.iter().filter_map(ordinal).collect();
    let missing = (0..count).find(|k| !named.iter().any(|(_, n)| n == k));
    match (named.first(), missing) {
        (Some((prefix, _)), Some(k)) => format!(
            "worker pod {prefix}-{k} is gone ({} of {count} left)",
            live.len()
        ),
        _ => format!(
            "{} of the {count} worker pods that became ready are gone",
            count - live.len() as u32
        ),
    }
}

/// The first of `pods` still there a minute after its grace period ended (the API server sets
/// `deletionTimestamp` to the end of the grace period), with that grace period in seconds.
pub fn stuck_terminating<'a>(pods: &[&'a Pod], now: &Time) -> Option<(&'a Pod, i64)> {
    pods.iter().find_map(|p| {
        let end = p.metadata.deletion_timestamp.as_ref()?;
        let grace = p
            .metadata
            .deletion_grace_period_seconds
            .unwrap_or(30)
            .max(0);
        (super::lifecycle::elapsed(end, now).as_secs() > 60).then_some((*p, grace))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "j-0"},
            "spec": {"nodeName": "n1", "containers": [{"name": "worker"}]},
            "status": status,
        }))
        .unwrap()
    }

    fn container(
        name: &str,
        state: serde_json::Value,
        last: serde_json::Value,
    ) -> serde_json::Value {
        serde_json::json!({
            "name": name, "image": "i", "imageID": "", "ready": false, "restartCount": 2,
            "state": state, "lastState": last
        })
    }

    #[test]
    fn a_failed_restore_names_the_pod_and_its_last_log_line() {
        let p = pod(serde_json::json!({"initContainerStatuses": [container(
            RESTORE_CONTAINER,
            serde_json::json!({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s"}}),
            serde_json::json!({"terminated": {"exitCode": 1, "reason": "Error",
                "message": "INFO starting\nerror: corrupt file chk-9/private/0/x/CURRENT: checksum\n"}}),
        )]}));
        let why = restore_failure(&[&p]).unwrap();
        assert!(
            why.starts_with("restore of pod j-0 failed: CrashLoopBackOff"),
            "{why}"
        );
        assert!(
            why.contains("exit code 1") && why.ends_with("checksum"),
            "{why}"
        );
        assert_eq!(worker_failure(&[&p]), None, "the restore is not the worker");
    }

    #[test]
    fn running_and_completed_containers_are_fine() {
        let p = pod(serde_json::json!({
            "initContainerStatuses": [container(
                RESTORE_CONTAINER,
                serde_json::json!({"terminated": {"exitCode": 0, "reason": "Completed"}}),
                serde_json::json!({}),
            )],
            "containerStatuses": [container(
                "worker",
                serde_json::json!({"running": {}}),
                serde_json::json!({}),
            )],
        }));
        assert_eq!(restore_failure(&[&p]), None);
        assert_eq!(worker_failure(&[&p]), None);
        let crashing = pod(serde_json::json!({"containerStatuses": [container(
            "worker",
            serde_json::json!({"waiting": {"reason": "CrashLoopBackOff"}}),
            serde_json::json!({"terminated": {"exitCode": 2, "reason": "Error"}}),
        )]}));
        let why = worker_failure(&[&crashing]).unwrap();
        assert!(
            why.contains("worker of pod j-0") && why.contains("exit code 2"),
            "{why}"
        );
    }

    #[test]
    fn node_readiness() {
        let nodes: Vec<Node> = serde_json::from_value(serde_json::json!([
            {"metadata": {"name": "n1"}, "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}},
            {"metadata": {"name": "n2"}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}},
        ]))
        .unwrap();
        assert!(node_not_ready(&nodes[0]));
        assert!(!node_not_ready(&nodes[1]));
    }

    fn worker_pod(name: &str, uid: &str, restarts: i32) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "uid": uid},
            "status": {"containerStatuses": [{
                "name": "worker", "image": "i", "imageID": "", "ready": true,
                "restartCount": restarts
            }]}
        }))
        .unwrap()
    }

    #[test]
    fn lost_workers() {
        let recorded = ReadyWorkers::of(&["u0", "u1"]);
        let (a, b) = (worker_pod("j-0", "u0", 0), worker_pod("j-1", "u1", 0));
        assert_eq!(lost_worker(Some(&recorded), &[&a, &b]), None);
        assert_eq!(
            lost_worker(Some(&recorded), &[&b, &a]),
            None,
            "in any order"
        );
        assert_eq!(
            lost_worker(None, &[&a]),
            None,
            "nothing recorded, nothing to compare"
        );
        let gone = lost_worker(Some(&recorded), &[&a]).unwrap();
        assert!(gone.contains("j-1 is gone"), "{gone}");
        let gone = lost_worker(Some(&recorded), &[&b]).unwrap();
        assert!(gone.contains("j-0 is gone"), "{gone}");
        let mut replacement = worker_pod("j-1", "u9", 0);
        replacement.metadata.creation_timestamp = Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap(),
        ));
        let replaced = lost_worker(Some(&recorded), &[&a, &replacement]).unwrap();
        assert!(replaced.contains("j-1 was replaced"), "{replaced}");
        let extra = worker_pod("j-2", "u2", 0);
        assert!(lost_worker(Some(&recorded), &[&a, &b, &extra]).is_some());
        let restarted = worker_pod("j-1", "u1", 2);
        let msg = lost_worker(Some(&recorded), &[&a, &restarted]).unwrap();
        assert!(
            msg.contains("j-1 restarted its containers 2 times"),
            "{msg}"
        );
    }
}
