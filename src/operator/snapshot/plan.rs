//! What a job's round does for the job's snapshots. Pure: from each snapshot's recorded status,
//! what the store holds of its checkpoint and the job's recorded status, the status to record
//! and the checkpoint to pin.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::{SnapshotPhase, SnapshotStore, StatefulJobSnapshotStatus};
use crate::operator::crd::{Phase, StatefulJobStatus};

/// A snapshot of the job, as the round saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct Seen {
    /// Its name.
    pub name: String,
    /// Its UID: the key of its pin.
    pub uid: String,
    /// Its recorded status.
    pub status: StatefulJobSnapshotStatus,
    /// Its checkpoint, when complete in the store.
    pub stored: Option<Summary>,
}

/// A completed checkpoint, as a snapshot records it.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// Checkpoint id.
    pub id: u64,
    /// Bytes of all its files.
    pub bytes: u64,
    /// Workers that took it.
    pub parallelism: u32,
    /// Key groups.
    pub max_parallelism: u32,
    /// When it completed.
    pub time: Time,
}

/// A snapshot's status to record, and the checkpoint to pin first.
#[derive(Clone, Debug, PartialEq)]
pub struct Update {
    /// The snapshot.
    pub name: String,
    /// Its UID.
    pub uid: String,
    /// The checkpoint to pin before recording the status.
    pub pin: Option<u64>,
    /// The status.
    pub status: StatefulJobSnapshotStatus,
}

/// Whether a snapshot waits for a checkpoint of the running job.
pub fn waiting(snapshots: &[Seen]) -> bool {
    snapshots
        .iter()
        .any(|s| matches!(s.status.phase, None | Some(SnapshotPhase::Pending)))
}

/// The updates of the job's snapshots, given the job's `status` as this round records it and
/// the checkpoint it commits (`committing`), if any.
pub fn updates(
    snapshots: &[Seen],
    status: &StatefulJobStatus,
    committing: Option<u64>,
    store: &SnapshotStore,
    now: &Time,
) -> Vec<Update> {
    let pending = status
        .pending_checkpoint
        .as_ref()
        .filter(|p| p.failure.is_none());
    let steady = status.rescale.is_none();
    let mut out = Vec::new();
    for s in snapshots {
        let mut next = s.status.clone();
        let mut pin = None;
        match (s.status.phase, s.status.checkpoint_id) {
            (None | Some(SnapshotPhase::Pending), _) => {
                if let Some(p) = pending {
                    // The checkpoint in flight (periodic, asked for, or a rescale's final one).
                    next = taking(p.id, store);
                    pin = Some(p.id);
                } else if steady && status.phase == Some(Phase::Suspended) {
                    // A suspended job's state is its last checkpoint.
                    match &status.last_checkpoint {
                        Some(last) => {
                            next = taking(last.id, store);
                            pin = Some(last.id);
                        }
                        None => {
                            next = failed(
                                &next,
                                "the job is suspended and has no completed checkpoint".into(),
                            )
                        }
                    }
                } else {
                    next.phase = Some(SnapshotPhase::Pending);
                }
            }
            (Some(SnapshotPhase::InProgress), Some(id)) => {
                if let Some(done) = s.stored.as_ref().filter(|d| d.id == id) {
                    next = completed(&next, done);
                    pin = Some(id);
                } else if let Some(p) = status.pending_checkpoint.as_ref().filter(|p| p.id == id) {
                    if let Some(why) = &p.failure {
                        next = failed(&next, format!("checkpoint {id} failed: {why}"));
                    }
                } else if committing != Some(id)
                    && status.last_checkpoint.as_ref().is_none_or(|c| c.id != id)
                {
                    next = failed(
                        &next,
                        format!(
                            "checkpoint {id} was aborted or failed; see the job's CheckpointAborted and CheckpointFailed events, then create a new snapshot"
                        ),
                    );
                }
            }
            _ => {}
        }
        next.conditions = ready_condition(&s.status.conditions, &next, now);
        if next != s.status {
            out.push(Update {
                name: s.name.clone(),
                uid: s.uid.clone(),
                pin,
                status: next,
            });
        }
    }
    out
}

fn taking(id: u64, store: &SnapshotStore) -> StatefulJobSnapshotStatus {
    StatefulJobSnapshotStatus {
        phase: Some(SnapshotPhase::InProgress),
        checkpoint_id: Some(id),
        store: Some(store.clone()),
        ..Default::default()
    }
}

/// `status` completed with `done`.
pub fn completed(status: &StatefulJobSnapshotStatus, done: &Summary) -> StatefulJobSnapshotStatus {
    StatefulJobSnapshotStatus {
        phase: Some(SnapshotPhase::Completed),
        checkpoint_id: Some(done.id),
        bytes: Some(done.bytes),
        parallelism: Some(done.parallelism),
        max_parallelism: Some(done.max_parallelism),
        time: Some(done.time.clone()),
        failure_reason: None,
        ..status.clone()
    }
}

/// `status` failed for `why`.
pub fn failed(status: &StatefulJobSnapshotStatus, why: String) -> StatefulJobSnapshotStatus {
    StatefulJobSnapshotStatus {
        phase: Some(SnapshotPhase::Failed),
        failure_reason: Some(why),
        ..status.clone()
    }
}

/// The Ready condition for `status`, keeping the transition time while it holds.
pub fn ready_condition(
    previous: &[Condition],
    status: &StatefulJobSnapshotStatus,
    now: &Time,
) -> Vec<Condition> {
    let phase = status.phase.unwrap_or(SnapshotPhase::Pending);
    let (value, reason, message) = match phase {
        SnapshotPhase::Completed => (
            "True",
            "Completed",
            format!(
                "checkpoint {} is complete and held",
                status.checkpoint_id.unwrap_or_default()
            ),
        ),
        SnapshotPhase::Failed => (
            "False",
            "Failed",
            status.failure_reason.clone().unwrap_or_default(),
        ),
        SnapshotPhase::InProgress => (
            "False",
            "InProgress",
            format!(
                "checkpoint {} is being taken",
                status.checkpoint_id.unwrap_or_default()
            ),
        ),
        SnapshotPhase::Pending => (
            "False",
            "Pending",
            "waiting for the job to run (a rescale, start or restore in progress)".to_owned(),
        ),
    };
    let kept = previous
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == value)
        .map(|c| c.last_transition_time.clone());
    vec![Condition {
        type_: "Ready".to_owned(),
        status: value.to_owned(),
        reason: reason.to_owned(),
        message,
        last_transition_time: kept.unwrap_or_else(|| now.clone()),
        observed_generation: None,
    }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::crd::{CheckpointRecord, PendingCheckpoint};
    use k8s_openapi::jiff::Timestamp;

    fn now() -> Time {
        Time(Timestamp::from_second(1_000_000).unwrap())
    }

    fn store() -> SnapshotStore {
        SnapshotStore {
            url: "s3://b/jobs".into(),
            job: "prod/orders".into(),
            secret: None,
        }
    }

    fn seen(phase: Option<SnapshotPhase>, id: Option<u64>) -> Seen {
        Seen {
            name: "before-release".into(),
            uid: "u1".into(),
            status: StatefulJobSnapshotStatus {
                phase,
                checkpoint_id: id,
                ..Default::default()
            },
            stored: None,
        }
    }

    fn running(pending: Option<u64>) -> StatefulJobStatus {
        StatefulJobStatus {
            phase: Some(Phase::Running),
            pending_checkpoint: pending.map(|id| PendingCheckpoint {
                id,
                epoch: 1,
                started: now(),
                stop: false,
                failure: None,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_new_snapshot_adopts_the_checkpoint_in_flight_and_pins_it() {
        let s = [seen(None, None)];
        assert!(waiting(&s));
        let u = updates(&s, &running(Some(7)), None, &store(), &now());
        assert_eq!(u.len(), 1);
        assert_eq!(u[0].pin, Some(7));
        assert_eq!(u[0].status.phase, Some(SnapshotPhase::InProgress));
        assert_eq!(u[0].status.checkpoint_id, Some(7));
        let none = updates(&s, &running(None), None, &store(), &now());
        assert_eq!(none[0].status.phase, Some(SnapshotPhase::Pending));
        assert_eq!(
            none[0].pin, None,
            "nothing to pin before a checkpoint is asked for"
        );
    }

    #[test]
    fn completes_from_the_store_and_fails_when_its_checkpoint_is_gone() {
        let mut s = seen(Some(SnapshotPhase::InProgress), Some(7));
        assert!(
            updates(&[s.clone()], &running(Some(7)), None, &store(), &now())[0]
                .status
                .phase
                == Some(SnapshotPhase::InProgress)
        );
        let committing = updates(&[s.clone()], &running(None), Some(7), &store(), &now());
        assert_eq!(committing[0].status.phase, Some(SnapshotPhase::InProgress));
        let aborted = updates(&[s.clone()], &running(Some(8)), None, &store(), &now());
        assert_eq!(aborted[0].status.phase, Some(SnapshotPhase::Failed));
        assert!(
            aborted[0]
                .status
                .failure_reason
                .as_deref()
                .unwrap()
                .contains("checkpoint 7")
        );
        s.stored = Some(Summary {
            id: 7,
            bytes: 42,
            parallelism: 2,
            max_parallelism: 16,
            time: now(),
        });
        let done = updates(&[s], &running(None), None, &store(), &now());
        assert_eq!(done[0].status.phase, Some(SnapshotPhase::Completed));
        assert_eq!((done[0].status.bytes, done[0].pin), (Some(42), Some(7)));
        assert_eq!(done[0].status.conditions[0].status, "True");
    }

    #[test]
    fn a_suspended_job_is_snapshotted_at_its_last_checkpoint() {
        let mut status = StatefulJobStatus {
            phase: Some(Phase::Suspended),
            ..Default::default()
        };
        let s = [seen(None, None)];
        let u = updates(&s, &status, None, &store(), &now());
        assert_eq!(u[0].status.phase, Some(SnapshotPhase::Failed));
        status.last_checkpoint = Some(CheckpointRecord {
            id: 4,
            time: now(),
            epoch: 1,
            bytes_total: 1,
            bytes_new: 1,
            duration_seconds: 0.1,
        });
        let u = updates(&s, &status, None, &store(), &now());
        assert_eq!((u[0].status.checkpoint_id, u[0].pin), (Some(4), Some(4)));
    }
}
