//! What a worker knows of the checkpoints it was asked for: a pure table of requests, their
//! outcome and the operator's later notice (complete / abort). The HTTP layer asks it what to do
//! and performs the returned [`Effect`]s, so every transition is unit-tested without I/O.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::checkpoint::SubtaskHandle;

/// Where one checkpoint of this worker stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum CheckpointStatus {
    /// Captured; the upload is running.
    InProgress,
    /// The handle is written to the store.
    Completed {
        /// The handle as written.
        handle: Box<SubtaskHandle>,
    },
    /// Capture or upload failed; the checkpoint cannot complete.
    Failed {
        /// What went wrong.
        reason: String,
    },
}

/// What the operator said afterwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Notice {
    /// Every subtask's handle is in and `_metadata.json` is written.
    Complete,
    /// The checkpoint will never complete.
    Abort,
}

/// One requested checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    /// Checkpoint id.
    pub id: u64,
    /// Epoch it was requested for.
    pub epoch: u64,
    /// Whether processing was stopped for it (stop-with-checkpoint).
    pub stop: bool,
    /// Capture, upload and their outcome.
    #[serde(flatten)]
    pub status: CheckpointStatus,
    /// The operator's notice, once received.
    pub notice: Option<Notice>,
}

/// A request the table refuses, with its HTTP status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TableError {
    /// The id is already known with different parameters, or is older than a completed one.
    Conflict(String),
    /// No checkpoint of that id was requested from this worker.
    Unknown(u64),
    /// The checkpoint was requested before and failed here: it can never complete, and a
    /// repeated request is answered so, not as accepted.
    Failed {
        /// Checkpoint id.
        id: u64,
        /// Why it failed.
        reason: String,
    },
}

impl TableError {
    /// 409 for conflicts and failed checkpoints, 404 for unknown ids.
    pub fn status(&self) -> StatusCode {
        match self {
            TableError::Conflict(_) | TableError::Failed { .. } => StatusCode::CONFLICT,
            TableError::Unknown(_) => StatusCode::NOT_FOUND,
        }
    }

    /// A message for the response body.
    pub fn message(&self) -> String {
        match self {
            TableError::Conflict(m) => m.clone(),
            TableError::Unknown(id) => {
                format!("checkpoint {id} was never requested from this worker")
            }
            TableError::Failed { id, reason } => {
                format!("checkpoint {id} failed on this worker ({reason}); ask for a new id")
            }
        }
    }
}

/// The outcome of a checkpoint request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Begin {
    /// New: capture a snapshot and upload it.
    Start,
    /// The same request again: nothing to do, answer with the record as it stands.
    Repeat(CheckpointRecord),
}

/// Side effects the caller performs after a transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Tell the snapshotter the checkpoint completed (its uploads become reusable).
    NotifyComplete(u64),
    /// Tell the snapshotter the checkpoint was aborted (its uploads are never reused).
    NotifyAborted(u64),
    /// Nothing to do now.
    None,
}

/// Records kept: the newest ones. Older ones answer 404; a worker that runs for weeks must not
/// keep every handle it ever wrote.
pub const HISTORY: usize = 64;

/// The checkpoints this worker was asked for since it started (the newest [`HISTORY`]).
#[derive(Debug, Default)]
pub struct CheckpointTable {
    records: BTreeMap<u64, CheckpointRecord>,
    last_completed: Option<u64>,
    stopped_by: Option<u64>,
}

impl CheckpointTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// A request for checkpoint `id`: new, a repeat, a conflict, or one that failed before.
    pub fn begin(&mut self, id: u64, epoch: u64, stop: bool) -> Result<Begin, TableError> {
        if let Some(r) = self.records.get(&id) {
            if r.stop != stop || r.epoch != epoch {
                return Err(TableError::Conflict(format!(
                    "checkpoint {id} was already requested with stop={} at epoch {}; a checkpoint id is used once",
                    r.stop, r.epoch
                )));
            }
            if let CheckpointStatus::Failed { reason } = &r.status {
                return Err(TableError::Failed {
                    id,
                    reason: reason.clone(),
                });
            }
            return Ok(Begin::Repeat(r.clone()));
        }
        if let Some(done) = self.last_completed.filter(|&done| id <= done) {
            return Err(TableError::Conflict(format!(
                "checkpoint {id} is not newer than checkpoint {done}, which already completed; checkpoint ids increase"
            )));
        }
        if stop && self.stopped_by.is_none() {
            self.stopped_by = Some(id);
        }
        self.records.insert(
            id,
            CheckpointRecord {
                id,
                epoch,
                stop,
                status: CheckpointStatus::InProgress,
                notice: None,
            },
        );
        while self.records.len() > HISTORY {
            self.records.pop_first();
        }
        Ok(Begin::Start)
    }

    /// The capture or upload of `id` finished. Applies a notice that arrived meanwhile.
    pub fn finish(&mut self, id: u64, outcome: Result<SubtaskHandle, String>) -> Effect {
        let Some(r) = self.records.get_mut(&id) else {
            return Effect::None;
        };
        r.status = match outcome {
            Ok(handle) => CheckpointStatus::Completed {
                handle: Box::new(handle),
            },
            Err(reason) => CheckpointStatus::Failed { reason },
        };
        match (r.notice, &r.status) {
            (Some(Notice::Complete), CheckpointStatus::Completed { .. }) => {
                Effect::NotifyComplete(id)
            }
            (Some(Notice::Abort), CheckpointStatus::Completed { .. }) => Effect::NotifyAborted(id),
            _ => Effect::None,
        }
    }

    /// The operator's notice for `id`. A notice for a checkpoint whose upload still runs is
    /// remembered and applied by [`CheckpointTable::finish`]; repeating a notice is harmless.
    pub fn notify(&mut self, id: u64, notice: Notice) -> Result<Effect, TableError> {
        let r = self.records.get_mut(&id).ok_or(TableError::Unknown(id))?;
        match (r.notice, notice) {
            (Some(prev), n) if prev == n => return Ok(Effect::None),
            (Some(prev), n) => {
                return Err(TableError::Conflict(format!(
                    "checkpoint {id} was already notified {prev:?}, cannot be notified {n:?}"
                )));
            }
            (None, _) => {}
        }
        if notice == Notice::Complete {
            if let CheckpointStatus::Failed { reason } = &r.status {
                return Err(TableError::Conflict(format!(
                    "checkpoint {id} failed on this worker ({reason}); it cannot have completed"
                )));
            }
            self.last_completed = Some(self.last_completed.map_or(id, |l| l.max(id)));
        }
        r.notice = Some(notice);
        Ok(match (&r.status, notice) {
            (CheckpointStatus::Completed { .. }, Notice::Complete) => Effect::NotifyComplete(id),
            (CheckpointStatus::Completed { .. }, Notice::Abort) => Effect::NotifyAborted(id),
            _ => Effect::None,
        })
    }

    /// The record of `id`.
    pub fn get(&self, id: u64) -> Result<&CheckpointRecord, TableError> {
        self.records.get(&id).ok_or(TableError::Unknown(id))
    }

    /// The stop-with-checkpoint this worker took, if any.
    pub fn stopped_by(&self) -> Option<u64> {
        self.stopped_by
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(id: u64) -> SubtaskHandle {
        crate::checkpoint::testing::handle("t/j".parse().unwrap(), id, 8, 1, 0)
    }

    #[test]
    fn repeat_is_idempotent_and_changed_parameters_conflict() {
        let mut t = CheckpointTable::new();
        assert_eq!(t.begin(1, 1, false), Ok(Begin::Start));
        assert!(
            matches!(t.begin(1, 1, false), Ok(Begin::Repeat(r)) if r.status == CheckpointStatus::InProgress)
        );
        let e = t.begin(1, 1, true).unwrap_err();
        assert_eq!(e.status(), StatusCode::CONFLICT);
        assert!(e.message().contains("stop=false"), "{}", e.message());
        t.finish(1, Ok(handle(1)));
        assert!(
            matches!(t.begin(1, 1, false), Ok(Begin::Repeat(r)) if matches!(r.status, CheckpointStatus::Completed{..}))
        );
    }

    #[test]
    fn a_repeat_of_a_failed_checkpoint_says_it_failed() {
        let mut t = CheckpointTable::new();
        t.begin(2, 1, false).unwrap();
        t.finish(2, Err("store refused the upload".into()));
        let e = t.begin(2, 1, false).unwrap_err();
        assert_eq!(e.status(), StatusCode::CONFLICT);
        assert!(
            e.message().contains("checkpoint 2 failed") && e.message().contains("store refused"),
            "{}",
            e.message()
        );
    }

    #[test]
    fn ids_not_newer_than_a_completed_one_conflict() {
        let mut t = CheckpointTable::new();
        t.begin(5, 1, false).unwrap();
        t.finish(5, Ok(handle(5)));
        assert_eq!(t.notify(5, Notice::Complete), Ok(Effect::NotifyComplete(5)));
        assert_eq!(
            t.begin(4, 1, false).unwrap_err().status(),
            StatusCode::CONFLICT
        );
        assert_eq!(t.begin(6, 1, false), Ok(Begin::Start));
    }

    #[test]
    fn notice_during_upload_is_applied_when_it_finishes() {
        let mut t = CheckpointTable::new();
        t.begin(2, 1, false).unwrap();
        assert_eq!(t.notify(2, Notice::Complete), Ok(Effect::None));
        assert_eq!(t.finish(2, Ok(handle(2))), Effect::NotifyComplete(2));
        t.begin(3, 1, false).unwrap();
        assert_eq!(t.notify(3, Notice::Abort), Ok(Effect::None));
        assert_eq!(t.finish(3, Ok(handle(3))), Effect::NotifyAborted(3));
        t.begin(4, 1, false).unwrap();
        assert_eq!(t.notify(4, Notice::Abort), Ok(Effect::None));
        assert_eq!(t.finish(4, Err("store down".into())), Effect::None);
    }

    #[test]
    fn notices_are_checked() {
        let mut t = CheckpointTable::new();
        assert_eq!(t.notify(9, Notice::Complete), Err(TableError::Unknown(9)));
        assert_eq!(TableError::Unknown(9).status(), StatusCode::NOT_FOUND);
        t.begin(9, 1, false).unwrap();
        t.finish(9, Err("disk full".into()));
        let e = t.notify(9, Notice::Complete).unwrap_err();
        assert!(e.message().contains("disk full"));
        assert_eq!(t.notify(9, Notice::Abort), Ok(Effect::None));
        assert_eq!(t.notify(9, Notice::Abort), Ok(Effect::None));
        t.begin(10, 1, false).unwrap();
        t.finish(10, Ok(handle(10)));
        assert_eq!(t.notify(10, Notice::Abort), Ok(Effect::NotifyAborted(10)));
        assert_eq!(
            t.notify(10, Notice::Complete).unwrap_err().status(),
            StatusCode::CONFLICT
        );
    }

    #[test]
    fn history_is_bounded() {
        let mut t = CheckpointTable::new();
        for id in 1..=(HISTORY as u64 + 10) {
            t.begin(id, 1, false).unwrap();
            t.finish(id, Ok(handle(id)));
        }
        assert_eq!(t.records.len(), HISTORY);
        assert_eq!(t.get(10), Err(TableError::Unknown(10)));
        assert!(t.get(HISTORY as u64 + 10).is_ok());
    }

    #[test]
    fn stop_is_remembered() {
        let mut t = CheckpointTable::new();
        t.begin(1, 1, false).unwrap();
        assert_eq!(t.stopped_by(), None);
        t.begin(2, 1, true).unwrap();
        assert_eq!(t.stopped_by(), Some(2));
    }
}
