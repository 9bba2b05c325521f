//! `kubectl regroup status`: one job on one screen (phase, workers, checkpoints, conditions,
//! Events), or one line per job. [`JobStatus::build`] and the renderers are pure; `gather`
//! reads the API and the store.

use k8s_openapi::api::core::v1::{Event, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::ListParams;
use serde::Serialize;

use super::cluster::Cluster;
use super::output::{age, bytes, table};
use crate::checkpoint::CheckpointMetadata;
use crate::operator::crd::{CheckpointRecord, StatefulJob};
use crate::operator::resources::{EPOCH_LABEL, JOB_LABEL, POD_INDEX_LABEL};
use crate::operator::status::{DEGRADED, READY};

/// Completed checkpoints read from the store for `status`.
pub const RECENT_CHECKPOINTS: usize = 5;
/// Events shown by `status`.
pub const RECENT_EVENTS: usize = 10;

/// Everything `status NAME` shows.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobStatus {
    /// Namespace.
    pub namespace: String,
    /// Job name.
    pub name: String,
    /// Healthy: Ready, not Degraded.
    pub healthy: bool,
    /// One line on the health: what is wrong, or that nothing is.
    pub health: String,
    /// status.phase.
    pub phase: String,
    /// The rescale in progress.
    pub rescale: Option<Rescale>,
    /// spec.parallelism.
    pub desired_parallelism: u32,
    /// status.parallelism.
    pub parallelism: u32,
    /// spec.maxParallelism.
    pub max_parallelism: u32,
    /// status.epoch.
    pub epoch: u64,
    /// status.restoreProgress.summary.
    pub restore_progress: Option<String>,
    /// The worker pods.
    pub pods: Vec<WorkerPod>,
    /// The checkpoint in flight.
    pub pending_checkpoint: Option<Pending>,
    /// Failed or aborted checkpoints in a row.
    pub consecutive_checkpoint_failures: u32,
    /// The newest completed checkpoints, newest first.
    pub checkpoints: Vec<Checkpoint>,
    /// Why the store could not be read (the checkpoints then come from status only).
    pub store_error: Option<String>,
    /// status.conditions.
    pub conditions: Vec<ConditionLine>,
    /// The newest Events about the job, newest first.
    pub events: Vec<EventLine>,
}

/// A rescale in progress.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rescale {
    /// Parallelism before.
    pub from: u32,
    /// Parallelism after.
    pub to: u32,
    /// The stage.
    pub stage: String,
    /// Why.
    pub reason: String,
    /// Seconds since the rescale started.
    pub age_seconds: i64,
    /// Seconds in the current stage.
    pub stage_age_seconds: i64,
}

/// A worker pod.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerPod {
    /// Pod name.
    pub name: String,
    /// Subtask (pod index).
    pub subtask: Option<u32>,
    /// The epoch of its generation.
    pub epoch: Option<u64>,
    /// Pod phase.
    pub phase: String,
    /// All containers ready.
    pub ready: bool,
    /// Container restarts.
    pub restarts: i32,
    /// Node.
    pub node: Option<String>,
    /// Pod IP.
    pub ip: Option<String>,
    /// Seconds since created.
    pub age_seconds: i64,
}

/// The checkpoint in flight.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Pending {
    /// Id.
    pub id: u64,
    /// Seconds since triggered.
    pub age_seconds: i64,
    /// Whether it is a rescale's final checkpoint.
    pub stop: bool,
    /// Why it failed, once it has.
    pub failure: Option<String>,
}

/// A completed checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    /// Id.
    pub id: u64,
    /// When it completed (RFC 3339).
    pub completed: String,
    /// Seconds since it completed.
    pub age_seconds: i64,
    /// Bytes it references.
    pub bytes_total: u64,
    /// Bytes uploaded for it.
    pub bytes_new: u64,
    /// Workers that took it.
    pub parallelism: Option<u32>,
    /// Seconds from trigger to completion (known for those in status).
    pub duration_seconds: Option<f64>,
}

/// A condition.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConditionLine {
    /// Type.
    #[serde(rename = "type")]
    pub type_: String,
    /// True, False or Unknown.
    pub status: String,
    /// Reason.
    pub reason: String,
    /// Message.
    pub message: String,
    /// Seconds since its last transition.
    pub age_seconds: i64,
}

/// An Event.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventLine {
    /// Normal or Warning.
    #[serde(rename = "type")]
    pub type_: String,
    /// Reason.
    pub reason: String,
    /// Seconds since last seen.
    pub age_seconds: i64,
    /// How often it was seen.
    pub count: i32,
    /// Message.
    pub message: String,
}

fn since(now: Timestamp, t: &Time) -> i64 {
    now.as_second() - t.0.as_second()
}

/// When an Event was last seen: whichever of its timestamps it has.
fn last_seen(e: &Event) -> Option<Timestamp> {
    e.series
        .as_ref()
        .and_then(|s| s.last_observed_time.as_ref().map(|t| t.0))
        .or_else(|| e.last_timestamp.as_ref().map(|t| t.0))
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

impl JobStatus {
    /// The status of `job` from its pods, Events and the completed checkpoints read from its
    /// store (newest first; `Err` says why none could be read).
    pub fn build(
        job: &StatefulJob,
        pods: &[Pod],
        events: &[Event],
        stored: Result<&[CheckpointMetadata], String>,
        now: Timestamp,
    ) -> Self {
        let status = job.status.clone().unwrap_or_default();
        let conditions: Vec<ConditionLine> = status
            .conditions
            .iter()
            .map(|c| ConditionLine {
                type_: c.type_.clone(),
                status: c.status.clone(),
                reason: c.reason.clone(),
                message: c.message.clone(),
                age_seconds: since(now, &c.last_transition_time),
            })
            .collect();
        let condition = |t: &str| conditions.iter().find(|c| c.type_ == t);
        let degraded = condition(DEGRADED).filter(|c| c.status == "True");
        let ready = condition(READY).is_some_and(|c| c.status == "True");
        let health = match (degraded, ready) {
            (Some(d), _) => format!("Degraded: {} ({})", d.reason, d.message),
            (None, true) => "Healthy: every worker ready, nothing Degraded".to_owned(),
            (None, false) => match condition(READY) {
                Some(r) => format!("Not ready: {} ({})", r.reason, r.message),
                None => "Not ready: the operator has not reported on the job yet".to_owned(),
            },
        };
        let mut pods: Vec<WorkerPod> = pods
            .iter()
            .map(|p| {
                let s = p.status.clone().unwrap_or_default();
                let containers = s.container_statuses.unwrap_or_default();
                let label = |k: &str| p.labels().get(k).cloned();
                WorkerPod {
                    name: p.name_any(),
                    subtask: label(POD_INDEX_LABEL).and_then(|v| v.parse().ok()),
                    epoch: label(EPOCH_LABEL).and_then(|v| v.parse().ok()),
                    phase: if p.metadata.deletion_timestamp.is_some() {
                        "Terminating".to_owned()
                    } else {
                        s.phase.unwrap_or_else(|| "Unknown".to_owned())
                    },
                    ready: !containers.is_empty() && containers.iter().all(|c| c.ready),
                    restarts: containers.iter().map(|c| c.restart_count).sum(),
                    node: p.spec.as_ref().and_then(|s| s.node_name.clone()),
                    ip: s.pod_ip,
                    age_seconds: p
                        .metadata
                        .creation_timestamp
                        .as_ref()
                        .map_or(0, |t| since(now, t)),
                }
            })
            .collect();
        pods.sort_by(|a, b| (a.subtask, &a.name).cmp(&(b.subtask, &b.name)));
        // Durations are known for the checkpoints status records.
        let recorded: Vec<&CheckpointRecord> = status
            .checkpoints
            .iter()
            .chain(status.last_checkpoint.as_ref())
            .collect();
        let duration = |id: u64| {
            recorded
                .iter()
                .find(|r| r.id == id)
                .map(|r| r.duration_seconds)
        };
        let (checkpoints, store_error) = match stored {
            Ok(metas) => (
                metas
                    .iter()
                    .take(RECENT_CHECKPOINTS)
                    .map(|m| Checkpoint {
                        id: m.checkpoint_id,
                        completed: m.completed_at.to_rfc3339(),
                        age_seconds: now.as_second() - m.completed_at.timestamp(),
                        bytes_total: m.bytes_total(),
                        bytes_new: m.bytes_uploaded(),
                        parallelism: Some(m.parallelism),
                        duration_seconds: duration(m.checkpoint_id),
                    })
                    .collect(),
                None,
            ),
            Err(e) => {
                let mut from_status: Vec<Checkpoint> = Vec::new();
                for r in &recorded {
                    if from_status.iter().all(|c| c.id != r.id) {
                        from_status.push(Checkpoint {
                            id: r.id,
                            completed: r.time.0.to_string(),
                            age_seconds: since(now, &r.time),
                            bytes_total: r.bytes_total,
                            bytes_new: r.bytes_new,
                            parallelism: None,
                            duration_seconds: Some(r.duration_seconds),
                        });
                    }
                }
                from_status.sort_by_key(|c| std::cmp::Reverse(c.id));
                (from_status, Some(e))
            }
        };
        let mut events: Vec<(Option<Timestamp>, EventLine)> = events
            .iter()
            .map(|e| {
                let seen = last_seen(e);
                let line = EventLine {
                    type_: e.type_.clone().unwrap_or_default(),
                    reason: e.reason.clone().unwrap_or_default(),
                    age_seconds: seen.map_or(0, |t| now.as_second() - t.as_second()),
                    count: e
                        .series
                        .as_ref()
                        .and_then(|s| s.count)
                        .or(e.count)
                        .unwrap_or(1),
                    message: e.message.clone().unwrap_or_default(),
                };
                (seen, line)
            })
            .collect();
        events.sort_by_key(|e| std::cmp::Reverse(e.0));
        Self {
            namespace: job.namespace().unwrap_or_default(),
            name: job.name_any(),
            healthy: ready && degraded.is_none(),
            health,
            phase: status
                .phase
                .map_or_else(|| "-".to_owned(), |p| p.to_string()),
            rescale: status.rescale.as_ref().map(|r| Rescale {
                from: r.from,
                to: r.to,
                stage: r.stage.as_str().to_owned(),
                reason: r.reason.as_str().to_owned(),
                age_seconds: since(now, &r.started),
                stage_age_seconds: since(now, &r.stage_started),
            }),
            desired_parallelism: job.spec.parallelism,
            parallelism: status.parallelism,
            max_parallelism: job.spec.max_parallelism,
            epoch: status.epoch,
            restore_progress: status.restore_progress.as_ref().map(|p| p.summary.clone()),
            pods,
            pending_checkpoint: status.pending_checkpoint.as_ref().map(|p| Pending {
                id: p.id,
                age_seconds: since(now, &p.started),
                stop: p.stop,
                failure: p.failure.clone(),
            }),
            consecutive_checkpoint_failures: status.consecutive_checkpoint_failures,
            checkpoints,
            store_error,
            conditions,
            events: events
                .into_iter()
                .take(RECENT_EVENTS)
                .map(|(_, e)| e)
                .collect(),
        }
    }

    /// The screen `status NAME` prints.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "StatefulJob {}/{}: {}",
            self.namespace, self.name, self.health
        );
        let _ = writeln!(
            out,
            "phase {}, parallelism {} (desired {}, max {}), epoch {}",
            self.phase,
            self.parallelism,
            self.desired_parallelism,
            self.max_parallelism,
            self.epoch
        );
        if let Some(r) = &self.rescale {
            let _ = writeln!(
                out,
                "rescale {} → {} ({}): stage {} for {}, started {} ago",
                r.from,
                r.to,
                r.reason,
                r.stage,
                age(r.stage_age_seconds),
                age(r.age_seconds)
            );
        }
        if let Some(p) = &self.restore_progress {
            let _ = writeln!(out, "restore progress: {p}");
        }
        out.push_str("\nWorkers:\n");
        let rows: Vec<Vec<String>> = self
            .pods
            .iter()
            .map(|p| {
                vec![
                    p.subtask.map_or("-".to_owned(), |s| s.to_string()),
                    p.name.clone(),
                    p.epoch.map_or("-".to_owned(), |e| e.to_string()),
                    p.phase.clone(),
                    if p.ready { "yes" } else { "no" }.to_owned(),
                    p.restarts.to_string(),
                    p.node.clone().unwrap_or_else(|| "-".to_owned()),
                    p.ip.clone().unwrap_or_else(|| "-".to_owned()),
                    age(p.age_seconds),
                ]
            })
            .collect();
        section(
            &mut out,
            "(no worker pods)",
            &[
                "SUBTASK", "POD", "EPOCH", "PHASE", "READY", "RESTARTS", "NODE", "IP", "AGE",
            ],
            &rows,
        );
        out.push_str("\nCheckpoints:\n");
        if let Some(p) = &self.pending_checkpoint {
            let _ = writeln!(
                out,
                "  in flight: {}{} for {}{}",
                p.id,
                if p.stop { " (final, stop)" } else { "" },
                age(p.age_seconds),
                p.failure
                    .as_ref()
                    .map_or(String::new(), |f| format!(", failed: {f}"))
            );
        }
        if self.consecutive_checkpoint_failures > 0 {
            let _ = writeln!(
                out,
                "  {} failed or aborted in a row",
                self.consecutive_checkpoint_failures
            );
        }
        if let Some(e) = &self.store_error {
            let _ = writeln!(out, "  store not read ({e}); from status only:");
        }
        let rows: Vec<Vec<String>> = self
            .checkpoints
            .iter()
            .map(|c| {
                vec![
                    c.id.to_string(),
                    age(c.age_seconds),
                    bytes(c.bytes_total),
                    bytes(c.bytes_new),
                    c.parallelism.map_or("-".to_owned(), |p| p.to_string()),
                    c.duration_seconds
                        .map_or("-".to_owned(), |d| format!("{d:.1}s")),
                ]
            })
            .collect();
        section(
            &mut out,
            "(none completed yet)",
            &["ID", "AGE", "BYTES", "NEW", "PARALLELISM", "DURATION"],
            &rows,
        );
        out.push_str("\nConditions:\n");
        let rows: Vec<Vec<String>> = self
            .conditions
            .iter()
            .map(|c| {
                vec![
                    c.type_.clone(),
                    c.status.clone(),
                    c.reason.clone(),
                    age(c.age_seconds),
                    c.message.clone(),
                ]
            })
            .collect();
        section(
            &mut out,
            "(none)",
            &["TYPE", "STATUS", "REASON", "SINCE", "MESSAGE"],
            &rows,
        );
        out.push_str("\nEvents:\n");
        let rows: Vec<Vec<String>> = self
            .events
            .iter()
            .map(|e| {
                vec![
                    age(e.age_seconds),
                    e.type_.clone(),
                    e.reason.clone(),
                    e.count.to_string(),
                    e.message.clone(),
                ]
            })
            .collect();
        section(
            &mut out,
            "(none)",
            &["AGE", "TYPE", "REASON", "COUNT", "MESSAGE"],
            &rows,
        );
        out
    }
}

/// One indented section of `status NAME`: its table, or `empty` when it has no rows.
fn section(out: &mut String, empty: &str, headers: &[&str], rows: &[Vec<String>]) {
    if rows.is_empty() {
        out.push_str("  ");
        out.push_str(empty);
        out.push('\n');
    } else {
        out.push_str(&indent(&table(headers, rows)));
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

/// One line of `status` without NAME.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobLine {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// status.phase.
    pub phase: String,
    /// Ready and not Degraded.
    pub healthy: bool,
    /// The Degraded reason, if any.
    pub degraded: Option<String>,
    /// spec.parallelism.
    pub desired_parallelism: u32,
    /// status.parallelism.
    pub parallelism: u32,
    /// status.epoch.
    pub epoch: u64,
    /// status.lastCheckpoint.id.
    pub last_checkpoint: Option<u64>,
    /// Seconds since it completed.
    pub last_checkpoint_age_seconds: Option<i64>,
}

impl JobLine {
    /// The line of `job`.
    pub fn of(job: &StatefulJob, now: Timestamp) -> Self {
        let status = job.status.clone().unwrap_or_default();
        let cond = |t: &str| status.conditions.iter().find(|c| c.type_ == t);
        let degraded = cond(DEGRADED)
            .filter(|c| c.status == "True")
            .map(|c| c.reason.clone());
        Self {
            namespace: job.namespace().unwrap_or_default(),
            name: job.name_any(),
            phase: status
                .phase
                .map_or_else(|| "-".to_owned(), |p| p.to_string()),
            healthy: degraded.is_none() && cond(READY).is_some_and(|c| c.status == "True"),
            degraded,
            desired_parallelism: job.spec.parallelism,
            parallelism: status.parallelism,
            epoch: status.epoch,
            last_checkpoint: status.last_checkpoint.as_ref().map(|c| c.id),
            last_checkpoint_age_seconds: status
                .last_checkpoint
                .as_ref()
                .map(|c| since(now, &c.time)),
        }
    }
}

/// The table of `status` without NAME.
pub fn render_lines(lines: &[JobLine]) -> String {
    if lines.is_empty() {
        return "no StatefulJobs\n".to_owned();
    }
    let rows: Vec<Vec<String>> = lines
        .iter()
        .map(|l| {
            vec![
                l.namespace.clone(),
                l.name.clone(),
                l.phase.clone(),
                match (&l.degraded, l.healthy) {
                    (Some(reason), _) => format!("Degraded ({reason})"),
                    (None, true) => "Healthy".to_owned(),
                    (None, false) => "NotReady".to_owned(),
                },
                format!("{}/{}", l.parallelism, l.desired_parallelism),
                l.epoch.to_string(),
                l.last_checkpoint.map_or("-".to_owned(), |c| c.to_string()),
                l.last_checkpoint_age_seconds.map_or("-".to_owned(), age),
            ]
        })
        .collect();
    table(
        &[
            "NAMESPACE",
            "NAME",
            "PHASE",
            "HEALTH",
            "WORKERS",
            "EPOCH",
            "CHECKPOINT",
            "CHECKPOINT AGE",
        ],
        &rows,
    )
}

/// The job's worker pods.
pub async fn worker_pods(cluster: &Cluster, name: &str) -> anyhow::Result<Vec<Pod>> {
    let lp = ListParams::default().labels(&format!("{JOB_LABEL}={name}"));
    Ok(cluster.api::<Pod>().list(&lp).await?.items)
}

/// The Events about the job (core/v1 shows those of events.k8s.io/v1 too).
pub async fn job_events(cluster: &Cluster, name: &str) -> anyhow::Result<Vec<Event>> {
    let lp = ListParams::default().fields(&format!(
        "involvedObject.kind=StatefulJob,involvedObject.name={name}"
    ));
    Ok(cluster.api::<Event>().list(&lp).await?.items)
}

/// The newest completed checkpoints of the job's store, newest first.
pub async fn recent_checkpoints(
    cluster: &Cluster,
    job: &StatefulJob,
    count: usize,
) -> anyhow::Result<Vec<CheckpointMetadata>> {
    let js = cluster.store(job).await?;
    js.within(async {
        let mut ids = js.store.completed_ids().await?;
        ids.sort_unstable_by(|a, b| b.cmp(a));
        let mut out = Vec::new();
        for id in ids.into_iter().take(count) {
            out.push(js.store.read_metadata(id).await?);
        }
        Ok(out)
    })
    .await
}

/// `status NAME`.
pub async fn one(cluster: &Cluster, name: &str) -> anyhow::Result<JobStatus> {
    let job = cluster.job(name).await?;
    let pods = worker_pods(cluster, name).await?;
    let events = job_events(cluster, name).await?;
    let stored = recent_checkpoints(cluster, &job, RECENT_CHECKPOINTS)
        .await
        .map_err(|e| format!("{e:#}"));
    Ok(JobStatus::build(
        &job,
        &pods,
        &events,
        stored.as_deref().map_err(Clone::clone),
        Timestamp::now(),
    ))
}

/// `status` without NAME: the jobs of the namespace, or of all with `-A`.
pub async fn all(cluster: &Cluster, all_namespaces: bool) -> anyhow::Result<Vec<JobLine>> {
    let api: kube::Api<StatefulJob> = if all_namespaces {
        kube::Api::all(cluster.client.clone())
    } else {
        cluster.api()
    };
    let now = Timestamp::now();
    let mut lines: Vec<JobLine> = api
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|j| JobLine::of(j, now))
        .collect();
    lines.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: i64 = 1_796_000_000;

    fn at(ago: i64) -> String {
        Timestamp::from_second(NOW - ago).unwrap().to_string()
    }

    fn job(degraded: Option<(&str, &str)>) -> StatefulJob {
        let mut conditions = vec![
            json!({"type": "Ready", "status": "True", "reason": "WorkersReady",
            "message": "2 workers of epoch 3 ready", "lastTransitionTime": at(600)}),
        ];
        if let Some((reason, message)) = degraded {
            conditions.push(
                json!({"type": "Degraded", "status": "True", "reason": reason,
                "message": message, "lastTransitionTime": at(30)}),
            );
        }
        serde_json::from_value(json!({
            "apiVersion": "regroup.dev/v1alpha1", "kind": "StatefulJob",
            "metadata": {"name": "wc", "namespace": "jobs"},
            "spec": {"parallelism": 3, "maxParallelism": 128, "storage": {"url": "s3://b/p"},
                "template": {"spec": {"containers": []}}},
            "status": {"phase": "Checkpointing", "parallelism": 2, "epoch": 3,
                "rescale": {"from": 2, "to": 3, "stage": "Checkpointing", "reason": "Scale",
                    "started": at(20), "stageStarted": at(5)},
                "lastCheckpoint": {"id": 41, "time": at(90), "epoch": 3, "bytesTotal": 4096,
                    "bytesNew": 512, "durationSeconds": 1.25},
                "pendingCheckpoint": {"id": 42, "epoch": 3, "started": at(4), "stop": true},
                "conditions": conditions}
        }))
        .unwrap()
    }

    fn pod(name: &str, index: &str, ready: bool) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "creationTimestamp": at(700),
                "labels": {"apps.kubernetes.io/pod-index": index, "regroup.dev/epoch": "3"}},
            "spec": {"nodeName": "node-a", "containers": [{"name": "worker"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.1",
                "containerStatuses": [{"name": "worker", "ready": ready, "restartCount": 1,
                    "image": "regroup", "imageID": ""}]}
        }))
        .unwrap()
    }

    fn event(reason: &str, ago: i64, message: &str) -> Event {
        serde_json::from_value(json!({
            "metadata": {"name": format!("e-{reason}")}, "involvedObject": {},
            "type": "Normal", "reason": reason, "message": message, "count": 2,
            "lastTimestamp": at(ago)
        }))
        .unwrap()
    }

    fn now() -> Timestamp {
        Timestamp::from_second(NOW).unwrap()
    }

    #[test]
    fn one_screen_shows_workers_checkpoints_conditions_and_events() {
        let pods = [pod("wc-1", "1", false), pod("wc-0", "0", true)];
        let events = [
            event("CheckpointTriggered", 300, "checkpoint 41 asked"),
            event("CheckpointCompleted", 90, "checkpoint 41 completed"),
        ];
        let s = JobStatus::build(&job(None), &pods, &events, Err("store down".into()), now());
        assert!(s.healthy);
        assert_eq!(s.health, "Healthy: every worker ready, nothing Degraded");
        assert_eq!(
            s.pods.iter().map(|p| p.subtask).collect::<Vec<_>>(),
            [Some(0), Some(1)]
        );
        assert_eq!(s.checkpoints.len(), 1);
        assert_eq!(s.checkpoints[0].duration_seconds, Some(1.25));
        assert_eq!(s.events[0].reason, "CheckpointCompleted", "newest first");
        let text = s.render();
        for want in [
            "StatefulJob jobs/wc: Healthy",
            "phase Checkpointing, parallelism 2 (desired 3, max 128), epoch 3",
            "rescale 2 → 3 (Scale): stage Checkpointing for 5s, started 20s ago",
            "  0        wc-0  3      Running  yes    1         node-a  10.0.0.1  11m",
            "  in flight: 42 (final, stop) for 4s",
            "  store not read (store down); from status only:",
            "  41  90s  4.0 KiB  512 B  -            1.2s",
            "  Ready  True    WorkersReady  10m    2 workers of epoch 3 ready",
            "  90s  Normal  CheckpointCompleted  2      checkpoint 41 completed",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }

    #[test]
    fn degraded_says_why_and_store_checkpoints_come_first() {
        let meta: CheckpointMetadata = serde_json::from_value(json!({
            "formatVersion": 1, "job": {"namespace": "jobs", "name": "wc"}, "checkpointId": 41,
            "epoch": 3, "parallelism": 2, "maxParallelism": 128, "completedAt": at(90), "handles": []
        }))
        .unwrap_or_else(|e| panic!("metadata fixture: {e}"));
        let job = job(Some((
            "NoCheckpointProgress",
            "no checkpoint completed for 30m",
        )));
        let s = JobStatus::build(&job, &[], &[], Ok(&[meta]), now());
        assert!(!s.healthy);
        assert_eq!(
            s.health,
            "Degraded: NoCheckpointProgress (no checkpoint completed for 30m)"
        );
        assert_eq!(s.checkpoints[0].parallelism, Some(2));
        assert_eq!(s.checkpoints[0].duration_seconds, Some(1.25));
        assert!(s.render().contains("(no worker pods)"));
        let line = JobLine::of(&job, now());
        assert_eq!(line.degraded.as_deref(), Some("NoCheckpointProgress"));
        let table = render_lines(&[line]);
        assert!(table.contains("jobs       wc    Checkpointing  Degraded (NoCheckpointProgress)  2/3      3      41          90s"), "{table}");
    }
}
