//! `kubectl regroup checkpoint`: asks for a checkpoint now (a new `spec.checkpointTrigger`)
//! and follows it to the end. [`observe`] decides from the job's status alone.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use serde::Serialize;

use super::cluster::Cluster;
use crate::operator::crd::{StatefulJob, StatefulJobStatus};

/// Where the asked-for checkpoint is.
#[derive(Clone, Debug, PartialEq)]
pub enum Progress {
    /// The operator has not acted on the trigger yet (a checkpoint in flight or a rescale
    /// comes first).
    Waiting {
        /// status.phase.
        phase: String,
    },
    /// Checkpoint `id` is being taken.
    InFlight {
        /// Its id.
        id: u64,
    },
    /// It completed.
    Completed(Completed),
    /// It failed or was aborted.
    Failed {
        /// Its id.
        id: u64,
        /// Why.
        why: String,
    },
}

/// A completed checkpoint, as `checkpoint` prints it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Completed {
    /// Id.
    pub id: u64,
    /// Epoch of the workers that took it.
    pub epoch: u64,
    /// Bytes it references.
    pub bytes_total: u64,
    /// Bytes uploaded for it.
    pub bytes_new: u64,
    /// Seconds from trigger to completion.
    pub duration_seconds: f64,
}

/// The progress of the checkpoint asked for with `trigger` when the newest completed one was
/// `before`; `target` is its id once known.
pub fn observe(
    status: &StatefulJobStatus,
    trigger: &str,
    before: u64,
    target: Option<u64>,
) -> Progress {
    let last = status.last_checkpoint.as_ref();
    let target = match target {
        Some(t) => t,
        None if status.checkpoint_trigger.as_deref() != Some(trigger) => {
            return Progress::Waiting {
                phase: status
                    .phase
                    .map_or_else(|| "-".to_owned(), |p| p.to_string()),
            };
        }
        // The trigger was acted on: the checkpoint started then is pending, or already done.
        None => match (&status.pending_checkpoint, last) {
            (Some(p), _) if p.id > before => p.id,
            (_, Some(l)) if l.id > before => l.id,
            _ => {
                return Progress::Failed {
                    id: before + 1,
                    why: "the operator acted on the trigger but no checkpoint is in flight or completed; see the job's Events".to_owned(),
                };
            }
        },
    };
    if let Some(l) = last.filter(|l| l.id >= target) {
        return Progress::Completed(Completed {
            id: l.id,
            epoch: l.epoch,
            bytes_total: l.bytes_total,
            bytes_new: l.bytes_new,
            duration_seconds: l.duration_seconds,
        });
    }
    match &status.pending_checkpoint {
        Some(p) if p.id == target => match &p.failure {
            Some(f) => Progress::Failed {
                id: target,
                why: f.clone(),
            },
            None => Progress::InFlight { id: target },
        },
        _ => Progress::Failed {
            id: target,
            why: "it was aborted or failed (kubectl regroup status shows the Events)".to_owned(),
        },
    }
}

/// Where the checkpoint is, in words.
pub fn describe(p: &Progress) -> String {
    match p {
        Progress::Waiting { phase } => format!(
            "asked; waiting for the operator (phase {phase}; a checkpoint in flight or a rescale finishes first)"
        ),
        Progress::InFlight { id } => format!("checkpoint {id} in flight"),
        Progress::Completed(c) => format!(
            "checkpoint {} completed: {} bytes ({} new) in {:.1}s",
            c.id, c.bytes_total, c.bytes_new, c.duration_seconds
        ),
        Progress::Failed { id, why } => format!("checkpoint {id} failed: {why}"),
    }
}

/// The line printed when the progress changes.
pub fn progress_line(p: &Progress, elapsed: Duration) -> String {
    format!("[{:>3}s] {}", elapsed.as_secs(), describe(p))
}

/// Asks for a checkpoint of `name` and waits up to `timeout` for it; progress goes to stderr.
pub async fn run(cluster: &Cluster, name: &str, timeout: Duration) -> anyhow::Result<Completed> {
    let job = cluster.job(name).await?;
    let before = job
        .status
        .as_ref()
        .and_then(|s| s.last_checkpoint.as_ref())
        .map_or(0, |c| c.id);
    let trigger = format!("kubectl-regroup-{}", Timestamp::now().as_millisecond());
    let patch = serde_json::json!({"spec": {"checkpointTrigger": trigger}});
    cluster
        .api::<StatefulJob>()
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| {
            format!(
                "setting spec.checkpointTrigger of {}/{name}",
                cluster.namespace
            )
        })?;
    eprintln!(
        "asked {}/{name} for a checkpoint (spec.checkpointTrigger {trigger})",
        cluster.namespace
    );
    let start = Instant::now();
    let mut target = None;
    let mut shown: Option<Progress> = None;
    let mut last_line = Instant::now();
    loop {
        let job = cluster.job(name).await?;
        let status = job.status.unwrap_or_default();
        let p = observe(&status, &trigger, before, target);
        if let Progress::InFlight { id } = p {
            target = Some(id);
        }
        // A line per change, and every 10 s while nothing changes.
        if shown.as_ref() != Some(&p) || last_line.elapsed() >= Duration::from_secs(10) {
            eprintln!("{}", progress_line(&p, start.elapsed()));
            shown = Some(p.clone());
            last_line = Instant::now();
        }
        match p {
            Progress::Completed(c) => return Ok(c),
            Progress::Failed { id, why } => bail!(
                "checkpoint {id} of {}/{name} failed: {why}",
                cluster.namespace
            ),
            _ => {}
        }
        if start.elapsed() >= timeout {
            bail!(
                "no checkpoint of {}/{name} completed within {} ({}); the job may be rescaling or its workers busy: kubectl regroup status {name} shows why, or pass a longer --timeout",
                cluster.namespace,
                humantime::format_duration(timeout),
                describe(&p)
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::crd::{CheckpointRecord, PendingCheckpoint, Phase};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn t(s: i64) -> Time {
        Time(Timestamp::from_second(s).unwrap())
    }

    fn record(id: u64) -> CheckpointRecord {
        CheckpointRecord {
            id,
            time: t(100),
            epoch: 2,
            bytes_total: 1000,
            bytes_new: 10,
            duration_seconds: 1.5,
        }
    }

    fn pending(id: u64, failure: Option<&str>) -> PendingCheckpoint {
        PendingCheckpoint {
            id,
            epoch: 2,
            started: t(90),
            stop: false,
            failure: failure.map(str::to_owned),
        }
    }

    fn status(
        acted: Option<&str>,
        pending: Option<PendingCheckpoint>,
        last: u64,
    ) -> StatefulJobStatus {
        StatefulJobStatus {
            phase: Some(Phase::Running),
            checkpoint_trigger: acted.map(str::to_owned),
            pending_checkpoint: pending,
            last_checkpoint: Some(record(last)),
            ..Default::default()
        }
    }

    #[test]
    fn follows_the_triggered_checkpoint() {
        // Not acted on yet, even with a periodic one in flight.
        let s = status(Some("old"), Some(pending(5, None)), 4);
        assert_eq!(
            observe(&s, "new", 4, None),
            Progress::Waiting {
                phase: "Running".into()
            }
        );
        // Acted on: the pending one is ours.
        let s = status(Some("new"), Some(pending(6, None)), 5);
        assert_eq!(observe(&s, "new", 4, None), Progress::InFlight { id: 6 });
        // Completed while we looked away.
        let s = status(Some("new"), None, 6);
        assert!(matches!(observe(&s, "new", 5, None), Progress::Completed(c) if c.id == 6));
        assert!(matches!(observe(&s, "new", 5, Some(6)), Progress::Completed(c) if c.id == 6));
    }

    #[test]
    fn reports_a_failure() {
        let s = status(Some("new"), Some(pending(6, Some("worker 1 refused"))), 5);
        assert_eq!(
            observe(&s, "new", 5, Some(6)),
            Progress::Failed {
                id: 6,
                why: "worker 1 refused".into()
            }
        );
        // Aborted: the next one is pending and ours never completed.
        let s = status(Some("new"), Some(pending(7, None)), 5);
        assert!(matches!(
            observe(&s, "new", 5, Some(6)),
            Progress::Failed { id: 6, .. }
        ));
    }

    #[test]
    fn progress_lines_say_where_it_is() {
        let line = progress_line(&Progress::InFlight { id: 9 }, Duration::from_secs(3));
        assert_eq!(line, "[  3s] checkpoint 9 in flight");
        let done = Progress::Completed(Completed {
            id: 9,
            epoch: 1,
            bytes_total: 2048,
            bytes_new: 100,
            duration_seconds: 2.25,
        });
        assert_eq!(
            progress_line(&done, Duration::from_secs(12)),
            "[ 12s] checkpoint 9 completed: 2048 bytes (100 new) in 2.2s"
        );
    }
}
