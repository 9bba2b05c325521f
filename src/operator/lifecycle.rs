//! The job lifecycle as pure transitions: what the next recorded state is, given the recorded
//! state, the spec and what the operator observed.
//!
//! A rescale (and start, suspend, resume, template change) runs the stages of docs/architecture.md:
//! `Checkpointing` (final checkpoint of the running workers; on failure the latest completed
//! one) → `Stopping` (no worker of the old epoch left) → `Restoring` (epoch + 1, new workers
//! restore their key group ranges) → `RollingForward` (all new workers ready) → `Running`.
//! The controller records the state [`next`] returns *before* it acts on it, and what it does
//! depends only on that recorded state ([`JobState::work`]), so an operator restarted at any
//! point resumes the same rescale.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::crd::{Phase, RescaleReason, RescaleStatus, Stage, StatefulJobStatus};
use super::reasons;

/// The part of the status the lifecycle owns.
#[derive(Clone, Debug, PartialEq)]
pub struct JobState {
    /// Current phase; `Pending` before anything ran.
    pub phase: Phase,
    /// Workers of the current generation (0 while none runs).
    pub parallelism: u32,
    /// Fencing epoch of the current (or upcoming, while restoring) generation.
    pub epoch: u64,
    /// Hash of the pod template of the current generation.
    pub template_hash: Option<String>,
    /// The rescale in progress.
    pub rescale: Option<RescaleStatus>,
    /// When the workers were restarted after a lost worker (see [`Desired::restart_limit`]).
    pub restarts: Vec<Time>,
    /// The spec.restartNonce acted on.
    pub restart_nonce: Option<String>,
}

impl JobState {
    /// The lifecycle part of a recorded status (an absent status is `Pending`).
    pub fn from_status(status: Option<&StatefulJobStatus>) -> Self {
        match status {
            Some(s) => Self {
                phase: s.phase.unwrap_or(Phase::Pending),
                parallelism: s.parallelism,
                epoch: s.epoch,
                template_hash: s.template_hash.clone(),
                rescale: s.rescale.clone(),
                restarts: s.restarts.clone(),
                restart_nonce: s.restart_nonce.clone(),
            },
            None => Self::pending(),
        }
    }

    /// A job nothing has been done for yet.
    pub fn pending() -> Self {
        Self {
            phase: Phase::Pending,
            parallelism: 0,
            epoch: 0,
            template_hash: None,
            rescale: None,
            restarts: Vec::new(),
            restart_nonce: None,
        }
    }

    /// Writes the lifecycle part into `status`.
    pub fn write_to(&self, status: &mut StatefulJobStatus) {
        status.phase = Some(self.phase);
        status.parallelism = self.parallelism;
        status.epoch = self.epoch;
        status.template_hash = self.template_hash.clone();
        status.rescale = self.rescale.clone();
        status.restarts = self.restarts.clone();
        status.restart_nonce = self.restart_nonce.clone();
    }

    /// What the recorded state asks the controller to make true.
    pub fn work(&self) -> Work {
        match &self.rescale {
            Some(r) => match r.stage {
                Stage::Checkpointing => Work::FinalCheckpoint {
                    id: r.final_checkpoint.unwrap_or_default(),
                    epoch: self.epoch,
                    parallelism: self.parallelism,
                },
                Stage::Stopping => Work::StopWorkers,
                Stage::Restoring | Stage::RollingForward => Work::RunWorkers {
                    epoch: self.epoch,
                    parallelism: r.to,
                    checkpoint: r.checkpoint,
                },
            },
            None => match self.phase {
                Phase::Running => Work::Checkpoints {
                    epoch: self.epoch,
                    parallelism: self.parallelism,
                },
                Phase::Suspended | Phase::Failed => Work::StopWorkers,
                _ => Work::Nothing,
            },
        }
    }
}

/// What the recorded state requires of the world.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Work {
    /// Nothing yet.
    Nothing,
    /// The running workers take checkpoint `id` and stop.
    FinalCheckpoint {
        /// Checkpoint id recorded for the final checkpoint.
        id: u64,
        /// Epoch of the workers.
        epoch: u64,
        /// Number of workers.
        parallelism: u32,
    },
    /// The StatefulSet has zero replicas.
    StopWorkers,
    /// The StatefulSet runs `parallelism` workers of `epoch` restoring from `checkpoint`.
    RunWorkers {
        /// Epoch of the generation.
        epoch: u64,
        /// Number of workers.
        parallelism: u32,
        /// Checkpoint to restore (none: start empty).
        checkpoint: Option<u64>,
    },
    /// Periodic and on-demand checkpoints of the running workers.
    Checkpoints {
        /// Epoch of the workers.
        epoch: u64,
        /// Number of workers.
        parallelism: u32,
    },
}

/// What the user asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    /// spec.parallelism.
    pub parallelism: u32,
    /// spec.suspend.
    pub suspend: bool,
    /// Hash of spec.template (see `resources::template_hash`).
    pub template_hash: String,
    /// spec.restore.timeout: a restore not finished by then falls back to an older checkpoint.
    pub restore_timeout: Duration,
    /// spec.restartPolicy.limit: restarts after a lost worker allowed within the window.
    pub restart_limit: u32,
    /// spec.restartPolicy.window.
    pub restart_window: Duration,
    /// spec.restartNonce.
    pub restart_nonce: Option<String>,
}

impl Desired {
    /// Workers wanted: 0 while suspended.
    pub fn target(&self) -> u32 {
        if self.suspend { 0 } else { self.parallelism }
    }

    /// Whether spec.restartNonce asks for a restart that `s` has not made yet (removing the
    /// nonce asks for nothing).
    fn restart_requested(&self, s: &JobState) -> bool {
        self.restart_nonce.is_some() && self.restart_nonce != s.restart_nonce
    }

    /// Of `restarts`, those within the restart window before `now`.
    fn recent(&self, restarts: &[Time], now: &Time) -> Vec<Time> {
        restarts
            .iter()
            .filter(|t| elapsed(t, now) < self.restart_window)
            .cloned()
            .collect()
    }
}

/// First delay of a restart after a lost worker; each further restart within the window
/// doubles it, up to [`RESTART_BACKOFF_CAP`].
pub const RESTART_BACKOFF: Duration = Duration::from_secs(10);
/// Longest delay of a restart after a lost worker.
pub const RESTART_BACKOFF_CAP: Duration = Duration::from_secs(300);

/// How long the `n`th restart within the window (from 1) waits after the loss.
pub fn restart_backoff(n: usize) -> Duration {
    let doublings = n.saturating_sub(1).min(16) as u32;
    RESTART_BACKOFF
        .saturating_mul(1 << doublings)
        .min(RESTART_BACKOFF_CAP)
}

/// The outcome of the final checkpoint, as the coordinator observed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FinalCheckpoint {
    /// Not all handles are in yet and the timeout has not passed.
    InProgress,
    /// `_metadata.json` of the checkpoint exists.
    Completed(u64),
    /// It timed out or a worker reported failure.
    Failed(String),
}

/// What the operator observed this round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// Pods of the job that exist, of any epoch (terminating ones included).
    pub pods: u32,
    /// Pods of the current epoch whose init containers (the restore) have finished.
    pub initialized: u32,
    /// Pods of the current epoch that are ready.
    pub ready: u32,
    /// Outcome of the final checkpoint, when one is being taken.
    pub final_checkpoint: FinalCheckpoint,
    /// Newest completed checkpoint in the store.
    pub latest_completed: Option<u64>,
    /// Every completed checkpoint in the store, ascending.
    pub completed: Vec<u64>,
    /// Why a restore of the current epoch failed, when one did (its container's reason and
    /// message).
    pub restore_failure: Option<String>,
    /// Id the next checkpoint gets (above every id in the store and in status).
    pub next_checkpoint_id: u64,
    /// A worker of the running generation is gone, replaced or restarted (see
    /// `diagnose::lost_worker`): the others hold state the replacement cannot have.
    pub worker_lost: Option<String>,
    /// spec.initialState was applied again (spec.restoreNonce): what from; every running
    /// worker restarts from the latest completed checkpoint that counts.
    pub reset: Option<String>,
}

/// A transition worth a Kubernetes Event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// PascalCase reason.
    pub reason: &'static str,
    /// What happened, for humans.
    pub message: String,
    /// Warning (true) or Normal.
    pub warning: bool,
}

impl Note {
    fn normal(reason: &'static str, message: String) -> Self {
        Self {
            reason,
            message,
            warning: false,
        }
    }

    fn warning(reason: &'static str, message: String) -> Self {
        Self {
            reason,
            message,
            warning: true,
        }
    }
}

/// The next state and the transitions that led to it.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// The state to record.
    pub state: JobState,
    /// One note per transition taken.
    pub notes: Vec<Note>,
}

/// Takes every transition that applies now, in order (a start goes straight to `Restoring`; a
/// stage whose condition already holds is passed through in the same step, up to the start of
/// a new epoch, whose pods were not observed yet), and returns the state to record.
pub fn next(state: &JobState, desired: &Desired, observed: &Observed, now: &Time) -> Step {
    let mut current = state.clone();
    let mut notes = Vec::new();
    // Each transition strictly advances; the bound guards against a cycle introduced by a bug.
    for _ in 0..8 {
        match transition(&current, desired, observed, now) {
            Some((s, note)) => {
                notes.push(note);
                let new_epoch = s.epoch != current.epoch;
                current = s;
                // The pod counts observed were of the previous epoch: wait for a new look.
                if new_epoch {
                    break;
                }
            }
            None => break,
        }
    }
    Step {
        state: current,
        notes,
    }
}

fn rescale(
    from: u32,
    to: u32,
    stage: Stage,
    reason: RescaleReason,
    checkpoint: Option<u64>,
    final_checkpoint: Option<u64>,
    now: &Time,
) -> RescaleStatus {
    RescaleStatus {
        from,
        to,
        stage,
        reason,
        checkpoint,
        final_checkpoint,
        started: now.clone(),
        stage_started: now.clone(),
    }
}

/// One transition, or `None` when the state stays: a function per stage of a rescale.
fn transition(
    s: &JobState,
    desired: &Desired,
    observed: &Observed,
    now: &Time,
) -> Option<(JobState, Note)> {
    let Some(r) = &s.rescale else {
        return steady(s, desired, observed, now);
    };
    let at = At {
        s,
        r,
        desired,
        observed,
        now,
    };
    match r.stage {
        Stage::Checkpointing => checkpointing(at),
        Stage::Stopping => stopping(at),
        Stage::Restoring => restarted(at).or_else(|| restoring(at)),
        Stage::RollingForward => restarted(at).or_else(|| rolling_forward(at)),
    }
}

/// What a stage of a rescale decides from: the recorded state and its rescale, the spec, what
/// was observed, and the time.
#[derive(Clone, Copy)]
struct At<'a> {
    s: &'a JobState,
    r: &'a RescaleStatus,
    desired: &'a Desired,
    observed: &'a Observed,
    now: &'a Time,
}

/// `s` with rescale `r` entering `stage` (and its phase) now.
fn entered(s: &JobState, mut r: RescaleStatus, stage: Stage, now: &Time) -> JobState {
    r.stage = stage;
    r.stage_started = now.clone();
    JobState {
        phase: stage.phase(),
        rescale: Some(r),
        ..s.clone()
    }
}

/// The same stage with a new `target`, or `None` when it is the rescale's already.
fn retargeted(s: &JobState, r: &RescaleStatus, target: u32) -> Option<(JobState, Note)> {
    if target == r.to {
        return None;
    }
    let next = JobState {
        rescale: Some(RescaleStatus {
            to: target,
            ..r.clone()
        }),
        ..s.clone()
    };
    Some((next, retarget(r, target)))
}

/// Waits for the final checkpoint, then stops the workers: from that checkpoint, or from the
/// latest completed one when it failed. A new target only changes where the rescale ends.
fn checkpointing(at: At<'_>) -> Option<(JobState, Note)> {
    let At {
        s,
        r,
        observed,
        now,
        ..
    } = at;
    let target = at.desired.target();
    let stop_from = |checkpoint| {
        let r2 = RescaleStatus {
            to: target,
            checkpoint,
            ..r.clone()
        };
        entered(s, r2, Stage::Stopping, now)
    };
    match &observed.final_checkpoint {
        FinalCheckpoint::InProgress => retargeted(s, r, target),
        FinalCheckpoint::Completed(id) => Some((
            stop_from(Some(*id)),
            Note::normal(
                reasons::FINAL_CHECKPOINT_COMPLETED,
                format!(
                    "final checkpoint {id} completed; stopping the workers of epoch {}",
                    s.epoch
                ),
            ),
        )),
        FinalCheckpoint::Failed(why) => {
            let fallback = match observed.latest_completed {
                Some(id) => format!("falling back to the latest completed checkpoint {id}"),
                None => "no checkpoint ever completed: the new workers start with empty state"
                    .to_owned(),
            };
            Some((
                stop_from(observed.latest_completed),
                Note::warning(
                    reasons::FINAL_CHECKPOINT_FAILED,
                    format!(
                        "final checkpoint {} failed ({why}); {fallback}",
                        r.final_checkpoint.unwrap_or_default()
                    ),
                ),
            ))
        }
    }
}

/// Waits until no pod of the old epoch is left, then starts the next epoch's restore (or, for
/// a target of 0, suspends).
fn stopping(at: At<'_>) -> Option<(JobState, Note)> {
    let At {
        s,
        r,
        desired,
        observed,
        now,
    } = at;
    let target = desired.target();
    if observed.pods > 0 {
        return retargeted(s, r, target);
    }
    if target > 0 && r.reason == RescaleReason::Recovery {
        // Back off: the restarts recorded in the window up to this one (itself included).
        let n = desired.recent(&s.restarts, &r.started).len().max(1);
        if elapsed(&r.started, now) < restart_backoff(n) {
            return retargeted(s, r, target);
        }
    }
    if target == 0 {
        let next = JobState {
            phase: Phase::Suspended,
            parallelism: 0,
            rescale: None,
            ..s.clone()
        };
        let message = format!(
            "all workers stopped; resuming restores from checkpoint {}",
            describe(r.checkpoint)
        );
        return Some((next, Note::normal(reasons::SUSPENDED, message)));
    }
    let r2 = RescaleStatus {
        to: target,
        ..r.clone()
    };
    let message = format!(
        "epoch {}: {} workers restore from checkpoint {}",
        s.epoch + 1,
        r2.to,
        describe(r2.checkpoint)
    );
    let next = JobState {
        parallelism: 0,
        epoch: s.epoch + 1,
        template_hash: Some(desired.template_hash.clone()),
        restart_nonce: desired.restart_nonce.clone(),
        ..entered(s, r2, Stage::Restoring, now)
    };
    Some((next, Note::normal(Stage::Restoring.as_str(), message)))
}

/// While restoring or rolling forward: the workers starting now were built for another target
/// or template, so they stop and restore again from the same checkpoint (never two generations
/// at once). `None` when they were built for this one.
fn restarted(at: At<'_>) -> Option<(JobState, Note)> {
    let At {
        s, r, desired, now, ..
    } = at;
    let target = desired.target();
    let template_changed = s.template_hash.as_deref() != Some(desired.template_hash.as_str());
    let restart = desired.restart_requested(s);
    if target == r.to && !template_changed && !restart {
        return None;
    }
    let why = if target != r.to {
        format!("target changed from {} to {target}", r.to)
    } else if template_changed {
        "pod template changed".to_owned()
    } else {
        "spec.restartNonce changed".to_owned()
    };
    let message = format!(
        "{why} during {}; stopping epoch {} and restoring again from checkpoint {}",
        r.stage.as_str(),
        s.epoch,
        describe(r.checkpoint)
    );
    let r2 = RescaleStatus {
        to: target,
        ..r.clone()
    };
    let next = entered(s, r2, Stage::Stopping, now);
    Some((next, Note::normal(reasons::RESCALE_RESTARTED, message)))
}

/// Waits until every new worker restored its state, then rolls forward; past
/// `spec.restore.timeout` it falls back to the previous retained checkpoint.
fn restoring(at: At<'_>) -> Option<(JobState, Note)> {
    let At {
        s,
        r,
        desired,
        observed,
        now,
    } = at;
    if observed.initialized >= r.to || observed.ready >= r.to {
        let message = format!(
            "all {} workers of epoch {} restored their state",
            r.to, s.epoch
        );
        let next = entered(s, r.clone(), Stage::RollingForward, now);
        return Some((next, Note::normal(Stage::RollingForward.as_str(), message)));
    }
    if elapsed(&r.stage_started, now) < desired.restore_timeout {
        return None;
    }
    // Overdue: the checkpoint may be damaged; an older retained one is not.
    let current = r.checkpoint?;
    let older = observed
        .completed
        .iter()
        .rev()
        .copied()
        .find(|&c| c < current)?;
    let why = observed
        .restore_failure
        .as_ref()
        .map(|f| format!(" ({f})"))
        .unwrap_or_default();
    let message = format!(
        "the restore from checkpoint {current} did not finish within {}{why}; stopping epoch {} and restoring from the previous retained checkpoint {older}",
        humantime::format_duration(desired.restore_timeout),
        s.epoch
    );
    let r2 = RescaleStatus {
        checkpoint: Some(older),
        ..r.clone()
    };
    let next = entered(s, r2, Stage::Stopping, now);
    Some((next, Note::warning(reasons::RESTORE_FALLBACK, message)))
}

/// Waits until every new worker is ready: the rescale is complete.
fn rolling_forward(at: At<'_>) -> Option<(JobState, Note)> {
    let At { s, r, observed, .. } = at;
    if observed.ready < r.to {
        return None;
    }
    let next = JobState {
        phase: Phase::Running,
        parallelism: r.to,
        rescale: None,
        ..s.clone()
    };
    let message = format!(
        "{} complete: {} workers of epoch {} ready (was {})",
        r.reason.as_str(),
        r.to,
        s.epoch,
        r.from
    );
    Some((next, Note::normal(Phase::Running.as_str(), message)))
}

/// Transitions out of a state without a rescale in progress.
fn steady(
    s: &JobState,
    desired: &Desired,
    observed: &Observed,
    now: &Time,
) -> Option<(JobState, Note)> {
    let target = desired.target();
    let mut next = s.clone();
    // Straight to Restoring: nothing runs that could be checkpointed or stopped.
    let start = |next: &mut JobState, reason: RescaleReason| {
        let checkpoint = observed.latest_completed;
        next.epoch = s.epoch + 1;
        next.phase = Phase::Restoring;
        next.parallelism = 0;
        next.template_hash = Some(desired.template_hash.clone());
        next.restart_nonce = desired.restart_nonce.clone();
        next.rescale = Some(rescale(
            0,
            target,
            Stage::Restoring,
            reason,
            checkpoint,
            None,
            now,
        ));
        Note::normal(
            match reason {
                RescaleReason::Start => "Starting",
                RescaleReason::Restart => reasons::RESTART_REQUESTED,
                RescaleReason::TemplateChange => "Restarting",
                _ => "Resuming",
            },
            format!(
                "epoch {}: {target} workers restore from checkpoint {}",
                s.epoch + 1,
                describe(checkpoint)
            ),
        )
    };
    match s.phase {
        Phase::Pending => {
            if target == 0 {
                next.phase = Phase::Suspended;
                return Some((
                    next,
                    Note::normal(
                        reasons::SUSPENDED,
                        "created suspended; no worker started".to_owned(),
                    ),
                ));
            }
            let note = start(&mut next, RescaleReason::Start);
            Some((next, note))
        }
        Phase::Suspended => {
            if target == 0 {
                return None;
            }
            let note = start(&mut next, RescaleReason::Resume);
            Some((next, note))
        }
        // Stopped by the restart limit: a new nonce or template starts it again, once no pod
        // of the failed generation is left (two generations never overlap); the limit resets.
        Phase::Failed => {
            if observed.pods > 0 {
                return None;
            }
            next.restarts.clear();
            if target == 0 {
                next.phase = Phase::Suspended;
                let note = Note::normal(
                    reasons::SUSPENDED,
                    "suspended after the restart limit; resuming restores from the latest checkpoint"
                        .to_owned(),
                );
                return Some((next, note));
            }
            let reason = if desired.restart_requested(s) {
                RescaleReason::Restart
            } else if s.template_hash.as_deref() != Some(desired.template_hash.as_str()) {
                RescaleReason::TemplateChange
            } else {
                return None;
            };
            let note = start(&mut next, reason);
            Some((next, note))
        }
        // Running; also a stage phase left without a rescale record, which only a hand-edited
        // status produces: treat it as running workers.
        _ => {
            if let Some(what) = &observed.worker_lost
                && s.phase == Phase::Running
            {
                return Some(recover(s, desired, observed, what, now));
            }
            let reset = observed
                .reset
                .as_ref()
                .filter(|_| s.phase == Phase::Running);
            if desired.restart_requested(s) || reset.is_some() {
                // Asked for by the user: no final checkpoint, which broken workers may not
                // manage (a reset discards the state since on purpose); the limit starts over.
                let checkpoint = observed.latest_completed;
                next.phase = Phase::Stopping;
                next.restarts.clear();
                let reason = match reset {
                    Some(_) => RescaleReason::Reset,
                    None => RescaleReason::Restart,
                };
                next.rescale = Some(rescale(
                    s.parallelism,
                    target,
                    Stage::Stopping,
                    reason,
                    checkpoint,
                    None,
                    now,
                ));
                let (note, what) = match reset {
                    Some(what) => (reasons::INITIAL_STATE, what.clone()),
                    None => (
                        reasons::RESTART_REQUESTED,
                        format!(
                            "spec.restartNonce changed to {:?}",
                            desired.restart_nonce.as_deref().unwrap_or_default()
                        ),
                    ),
                };
                let message = format!(
                    "{what}; restarting all workers of epoch {} from checkpoint {}",
                    s.epoch,
                    describe(checkpoint)
                );
                return Some((next, Note::normal(note, message)));
            }
            let template_changed =
                s.template_hash.as_deref() != Some(desired.template_hash.as_str());
            let reason = if desired.suspend {
                RescaleReason::Suspend
            } else if target != s.parallelism {
                RescaleReason::Scale
            } else if template_changed {
                RescaleReason::TemplateChange
            } else {
                if s.phase != Phase::Running {
                    next.phase = Phase::Running;
                    return Some((next, Note::normal("Running", "workers running".to_owned())));
                }
                return None;
            };
            let id = observed.next_checkpoint_id;
            next.phase = Phase::Checkpointing;
            next.rescale = Some(rescale(
                s.parallelism,
                target,
                Stage::Checkpointing,
                reason,
                None,
                Some(id),
                now,
            ));
            let what = match reason {
                RescaleReason::Suspend => "suspending".to_owned(),
                RescaleReason::TemplateChange => {
                    format!("pod template changed; restarting {} workers", s.parallelism)
                }
                _ => format!("rescaling from {} to {target} workers", s.parallelism),
            };
            Some((
                next,
                Note::normal(
                    "Checkpointing",
                    format!("{what}: final checkpoint {id} of epoch {}", s.epoch),
                ),
            ))
        }
    }
}

/// A worker of the running generation was lost: every worker restarts from the latest completed
/// checkpoint (a final checkpoint cannot succeed without the lost one) after a backoff, or, past
/// the restart limit, all stop.
fn recover(
    s: &JobState,
    desired: &Desired,
    observed: &Observed,
    what: &str,
    now: &Time,
) -> (JobState, Note) {
    let checkpoint = observed.latest_completed;
    let mut recent = desired.recent(&s.restarts, now);
    let window = humantime::format_duration(desired.restart_window);
    let limit = desired.restart_limit;
    if recent.len() >= limit as usize {
        let next = JobState {
            phase: Phase::Failed,
            parallelism: 0,
            rescale: None,
            restarts: recent,
            ..s.clone()
        };
        let message = format!(
            "{what}; the workers were restarted {limit} times within {window} (spec.restartPolicy): stopping all workers of epoch {} instead of restarting them again. The latest completed checkpoint {} is kept. Find why they fail (kubectl logs, the job's WorkerLost Events), fix it (spec.template, the store, the nodes), then set a new spec.restartNonce to restart from the latest checkpoint",
            s.epoch,
            describe(checkpoint)
        );
        return (next, Note::warning(reasons::RESTART_LIMIT_REACHED, message));
    }
    recent.push(now.clone());
    let backoff = restart_backoff(recent.len());
    let message = format!(
        "{what}; restarting all workers of epoch {} from checkpoint {} in {} (restart {} of at most {limit} within {window})",
        s.epoch,
        describe(checkpoint),
        humantime::format_duration(backoff),
        recent.len()
    );
    let next = JobState {
        phase: Phase::Stopping,
        rescale: Some(rescale(
            s.parallelism,
            desired.target(),
            Stage::Stopping,
            RescaleReason::Recovery,
            checkpoint,
            None,
            now,
        )),
        restarts: recent,
        ..s.clone()
    };
    (next, Note::warning(reasons::WORKER_LOST, message))
}

/// Time from `since` to `now` (zero when `now` is earlier).
pub fn elapsed(since: &Time, now: &Time) -> Duration {
    Duration::try_from(now.0.duration_since(since.0)).unwrap_or_default()
}

fn retarget(r: &RescaleStatus, target: u32) -> Note {
    Note::normal(
        reasons::RESCALE_RETARGETED,
        format!(
            "target changed from {} to {target} during {}",
            r.to,
            r.stage.as_str()
        ),
    )
}

fn describe(checkpoint: Option<u64>) -> String {
    match checkpoint {
        Some(id) => id.to_string(),
        None => "none (empty state)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn now() -> Time {
        Time(Timestamp::from_second(1_800_000_000).unwrap())
    }

    fn later() -> Time {
        Time(Timestamp::from_second(1_800_000_060).unwrap())
    }

    fn desired(p: u32) -> Desired {
        Desired {
            parallelism: p,
            suspend: false,
            template_hash: "t1".into(),
            restore_timeout: Duration::from_secs(600),
            restart_limit: 10,
            restart_window: Duration::from_secs(600),
            restart_nonce: None,
        }
    }

    fn observed() -> Observed {
        Observed {
            pods: 0,
            initialized: 0,
            ready: 0,
            final_checkpoint: FinalCheckpoint::InProgress,
            latest_completed: None,
            completed: Vec::new(),
            restore_failure: None,
            next_checkpoint_id: 1,
            worker_lost: None,
            reset: None,
        }
    }

    fn running(p: u32, epoch: u64) -> JobState {
        JobState {
            phase: Phase::Running,
            parallelism: p,
            epoch,
            template_hash: Some("t1".into()),
            rescale: None,
            restarts: Vec::new(),
            restart_nonce: None,
        }
    }

    /// A rescale `from` → `to` (with `from` workers) of epoch `epoch` in `stage` since now,
    /// restoring from `checkpoint`, its final checkpoint `final_checkpoint`.
    fn rescaling(
        stage: Stage,
        from: u32,
        to: u32,
        epoch: u64,
        checkpoint: Option<u64>,
        final_checkpoint: Option<u64>,
    ) -> JobState {
        let rescale = rescale(
            from,
            to,
            stage,
            RescaleReason::Scale,
            checkpoint,
            final_checkpoint,
            &now(),
        );
        JobState {
            phase: stage.phase(),
            rescale: Some(rescale),
            ..running(from, epoch)
        }
    }

    fn stage(s: &JobState) -> Option<Stage> {
        s.rescale.as_ref().map(|r| r.stage)
    }

    /// The phase always agrees with the rescale stage.
    fn consistent(s: &JobState) {
        match &s.rescale {
            Some(r) => assert_eq!(s.phase, r.stage.phase(), "{s:?}"),
            None => assert!(
                matches!(
                    s.phase,
                    Phase::Running | Phase::Suspended | Phase::Pending | Phase::Failed
                ),
                "{s:?}"
            ),
        }
    }

    #[test]
    fn start_goes_straight_to_restoring_then_runs() {
        let d = desired(3);
        let mut o = observed();
        o.latest_completed = None;
        let step = next(&JobState::pending(), &d, &o, &now());
        let s = step.state;
        consistent(&s);
        assert_eq!(s.phase, Phase::Restoring);
        assert_eq!(s.epoch, 1);
        let r = s.rescale.clone().unwrap();
        assert_eq!(
            (r.from, r.to, r.reason, r.checkpoint),
            (0, 3, RescaleReason::Start, None)
        );
        assert_eq!(
            s.work(),
            Work::RunWorkers {
                epoch: 1,
                parallelism: 3,
                checkpoint: None
            }
        );
        assert_eq!(step.notes[0].reason, "Starting");
        // Two of three restored: stays.
        o.pods = 3;
        o.initialized = 2;
        assert_eq!(next(&s, &d, &o, &now()).state, s);
        o.initialized = 3;
        let s = next(&s, &d, &o, &now()).state;
        assert_eq!(s.phase, Phase::RollingForward);
        consistent(&s);
        o.ready = 3;
        let step = next(&s, &d, &o, &now());
        assert_eq!(step.state, running(3, 1));
        assert_eq!(step.notes.last().unwrap().reason, "Running");
        assert_eq!(
            step.state.work(),
            Work::Checkpoints {
                epoch: 1,
                parallelism: 3
            }
        );
    }

    #[test]
    fn a_recreated_job_starts_from_the_stores_latest_checkpoint() {
        let mut o = observed();
        o.latest_completed = Some(41);
        let s = next(&JobState::pending(), &desired(2), &o, &now()).state;
        assert_eq!(s.rescale.unwrap().checkpoint, Some(41));
    }

    #[test]
    fn full_rescale_walks_every_stage_in_order() {
        let d = desired(5);
        let mut o = observed();
        o.pods = 3;
        o.ready = 3;
        o.initialized = 3;
        o.next_checkpoint_id = 8;
        o.latest_completed = Some(7);
        let s0 = running(3, 4);
        let step = next(&s0, &d, &o, &now());
        let s1 = step.state;
        consistent(&s1);
        assert_eq!(s1.phase, Phase::Checkpointing);
        let r = s1.rescale.clone().unwrap();
        assert_eq!((r.from, r.to, r.reason), (3, 5, RescaleReason::Scale));
        assert_eq!(r.final_checkpoint, Some(8));
        assert_eq!(
            s1.work(),
            Work::FinalCheckpoint {
                id: 8,
                epoch: 4,
                parallelism: 3
            }
        );
        // In progress: nothing moves, even a round later.
        assert_eq!(next(&s1, &d, &o, &later()).state, s1);
        o.final_checkpoint = FinalCheckpoint::Completed(8);
        let s2 = next(&s1, &d, &o, &later()).state;
        consistent(&s2);
        assert_eq!(stage(&s2), Some(Stage::Stopping));
        assert_eq!(s2.rescale.as_ref().unwrap().checkpoint, Some(8));
        assert_eq!(s2.rescale.as_ref().unwrap().stage_started, later());
        assert_eq!(s2.rescale.as_ref().unwrap().started, now());
        assert_eq!(s2.work(), Work::StopWorkers);
        assert_eq!(
            s2.epoch, 4,
            "the epoch moves only when the old workers are gone"
        );
        // Old pods still there (terminating): stays.
        assert_eq!(next(&s2, &d, &o, &later()).state, s2);
        o.pods = 0;
        o.ready = 0;
        o.initialized = 0;
        let s3 = next(&s2, &d, &o, &later()).state;
        consistent(&s3);
        assert_eq!(stage(&s3), Some(Stage::Restoring));
        assert_eq!(s3.epoch, 5);
        assert_eq!(s3.parallelism, 0);
        assert_eq!(
            s3.work(),
            Work::RunWorkers {
                epoch: 5,
                parallelism: 5,
                checkpoint: Some(8)
            }
        );
        o.pods = 5;
        o.initialized = 5;
        let s4 = next(&s3, &d, &o, &later()).state;
        assert_eq!(stage(&s4), Some(Stage::RollingForward));
        assert_eq!(
            s4.work(),
            s3.work(),
            "rolling forward keeps the same StatefulSet"
        );
        o.ready = 4;
        assert_eq!(next(&s4, &d, &o, &later()).state, s4);
        o.ready = 5;
        let s5 = next(&s4, &d, &o, &later()).state;
        assert_eq!(s5, running(5, 5));
    }

    #[test]
    fn one_step_passes_through_stages_whose_condition_already_holds() {
        // Restarted operator: the final checkpoint completed and the pods are gone already.
        let d = desired(2);
        let mut o = observed();
        o.final_checkpoint = FinalCheckpoint::Completed(3);
        o.latest_completed = Some(3);
        let s = rescaling(Stage::Checkpointing, 4, 2, 2, None, Some(3));
        let step = next(&s, &d, &o, &later());
        assert_eq!(stage(&step.state), Some(Stage::Restoring));
        assert_eq!(step.state.epoch, 3);
        let said: Vec<_> = step.notes.iter().map(|n| n.reason).collect();
        assert_eq!(said, [reasons::FINAL_CHECKPOINT_COMPLETED, "Restoring"]);
    }

    #[test]
    fn failed_final_checkpoint_falls_back_to_latest_completed() {
        let d = desired(2);
        let mut o = observed();
        o.pods = 4;
        o.latest_completed = Some(6);
        o.final_checkpoint = FinalCheckpoint::Failed("timed out after 10m".into());
        let s = rescaling(Stage::Checkpointing, 4, 2, 2, None, Some(9));
        let step = next(&s, &d, &o, &later());
        assert_eq!(stage(&step.state), Some(Stage::Stopping));
        assert_eq!(step.state.rescale.as_ref().unwrap().checkpoint, Some(6));
        let note = &step.notes[0];
        assert!(note.warning);
        assert!(
            note.message
                .contains("checkpoint 9 failed (timed out after 10m)"),
            "{}",
            note.message
        );
        assert!(note.message.contains("latest completed checkpoint 6"));
        // Without any completed checkpoint the new workers start empty, and say so.
        o.latest_completed = None;
        let step = next(&s, &d, &o, &later());
        assert_eq!(step.state.rescale.as_ref().unwrap().checkpoint, None);
        assert!(step.notes[0].message.contains("empty state"));
    }

    #[test]
    fn new_target_mid_rescale() {
        let mut o = observed();
        o.pods = 3;
        // During the final checkpoint: the target moves, the checkpoint stands.
        let s = rescaling(Stage::Checkpointing, 3, 5, 1, None, Some(2));
        let step = next(&s, &desired(6), &o, &later());
        let r = step.state.rescale.clone().unwrap();
        assert_eq!(
            (r.stage, r.to, r.final_checkpoint, r.started),
            (Stage::Checkpointing, 6, Some(2), now())
        );
        assert_eq!(step.notes[0].reason, reasons::RESCALE_RETARGETED);
        // During stopping: the same.
        let mut s = step.state;
        s.phase = Phase::Stopping;
        s.rescale.as_mut().unwrap().stage = Stage::Stopping;
        s.rescale.as_mut().unwrap().checkpoint = Some(2);
        let step = next(&s, &desired(7), &o, &later());
        assert_eq!(step.state.rescale.as_ref().unwrap().to, 7);
        assert_eq!(stage(&step.state), Some(Stage::Stopping));
        // During restoring and rolling forward: stop the new workers, restore again from the
        // same checkpoint at a later epoch.
        for st in [Stage::Restoring, Stage::RollingForward] {
            let mut s = running(0, 2);
            s.phase = st.phase();
            s.rescale = Some(rescale(
                3,
                5,
                st,
                RescaleReason::Scale,
                Some(2),
                Some(2),
                &now(),
            ));
            let mut o = observed();
            o.pods = 5;
            o.initialized = 5;
            o.ready = 5;
            let step = next(&s, &desired(4), &o, &later());
            assert_eq!(stage(&step.state), Some(Stage::Stopping), "{st:?}");
            assert_eq!(step.state.rescale.as_ref().unwrap().to, 4);
            assert_eq!(step.state.epoch, 2);
            assert_eq!(step.notes[0].reason, reasons::RESCALE_RESTARTED);
            o.pods = 0;
            let s = next(&step.state, &desired(4), &o, &later()).state;
            assert_eq!(stage(&s), Some(Stage::Restoring));
            assert_eq!(s.epoch, 3);
            assert_eq!(
                s.work(),
                Work::RunWorkers {
                    epoch: 3,
                    parallelism: 4,
                    checkpoint: Some(2)
                }
            );
        }
    }

    #[test]
    fn an_overdue_restore_falls_back_to_the_previous_retained_checkpoint() {
        let s = JobState {
            parallelism: 0,
            ..rescaling(Stage::Restoring, 2, 3, 5, Some(9), Some(9))
        };
        let mut o = observed();
        o.pods = 3;
        o.initialized = 1;
        o.completed = vec![4, 6, 9];
        o.restore_failure = Some("pod j-0: corrupt file chk-9/x".into());
        let d = desired(3);
        let in_time = Time(Timestamp::from_second(1_800_000_599).unwrap());
        assert!(
            next(&s, &d, &o, &in_time).notes.is_empty(),
            "not overdue yet"
        );
        let overdue = Time(Timestamp::from_second(1_800_000_600).unwrap());
        let step = next(&s, &d, &o, &overdue);
        let r = step.state.rescale.clone().unwrap();
        assert_eq!(
            (r.stage, r.checkpoint, step.state.epoch),
            (Stage::Stopping, Some(6), 5)
        );
        let note = &step.notes[0];
        assert!(note.warning && note.reason == reasons::RESTORE_FALLBACK);
        assert!(
            note.message.contains("checkpoint 9") && note.message.contains("corrupt file"),
            "{}",
            note.message
        );
        // Stopped, it restores from 6 at the next epoch.
        o.pods = 0;
        let s2 = next(&step.state, &d, &o, &overdue).state;
        assert_eq!(
            s2.work(),
            Work::RunWorkers {
                epoch: 6,
                parallelism: 3,
                checkpoint: Some(6)
            }
        );
        // Nothing older to fall back to: it stays (Degraded says why).
        o.pods = 3;
        o.completed = vec![9];
        assert!(next(&s, &d, &o, &overdue).notes.is_empty());
    }

    #[test]
    fn suspend_and_resume() {
        let mut o = observed();
        o.pods = 2;
        o.ready = 2;
        o.next_checkpoint_id = 5;
        let mut d = desired(2);
        d.suspend = true;
        let s = next(&running(2, 3), &d, &o, &now()).state;
        let r = s.rescale.clone().unwrap();
        assert_eq!(
            (r.stage, r.to, r.reason),
            (Stage::Checkpointing, 0, RescaleReason::Suspend)
        );
        o.final_checkpoint = FinalCheckpoint::Completed(5);
        o.latest_completed = Some(5);
        o.pods = 0;
        let step = next(&s, &d, &o, &now());
        let s = step.state;
        assert_eq!(s.phase, Phase::Suspended);
        assert_eq!((s.parallelism, s.epoch, s.rescale.clone()), (0, 3, None));
        assert_eq!(s.work(), Work::StopWorkers);
        assert_eq!(step.notes.last().unwrap().reason, reasons::SUSPENDED);
        // Stays suspended; a template change while suspended waits for the resume.
        d.template_hash = "t2".into();
        assert!(next(&s, &d, &o, &now()).notes.is_empty());
        // Resume with a new parallelism: straight to restoring from the final checkpoint.
        d.suspend = false;
        d.parallelism = 3;
        let step = next(&s, &d, &o, &later());
        let s = step.state;
        let r = s.rescale.clone().unwrap();
        assert_eq!(
            (r.stage, r.from, r.to, r.reason, r.checkpoint),
            (Stage::Restoring, 0, 3, RescaleReason::Resume, Some(5))
        );
        assert_eq!(s.epoch, 4);
        assert_eq!(s.template_hash.as_deref(), Some("t2"));
        assert_eq!(step.notes[0].reason, "Resuming");
    }

    #[test]
    fn created_suspended_starts_nothing() {
        let mut d = desired(3);
        d.suspend = true;
        let s = next(&JobState::pending(), &d, &observed(), &now()).state;
        assert_eq!(
            (s.phase, s.epoch, s.work()),
            (Phase::Suspended, 0, Work::StopWorkers)
        );
    }

    #[test]
    fn suspend_mid_rescale_ends_suspended() {
        let mut d = desired(5);
        d.suspend = true;
        let s = JobState {
            parallelism: 0,
            ..rescaling(Stage::Restoring, 3, 5, 2, Some(2), Some(2))
        };
        let mut o = observed();
        o.pods = 5;
        let s = next(&s, &d, &o, &now()).state;
        assert_eq!(
            (stage(&s), s.rescale.as_ref().unwrap().to),
            (Some(Stage::Stopping), 0)
        );
        o.pods = 0;
        let s = next(&s, &d, &o, &now()).state;
        assert_eq!((s.phase, s.epoch), (Phase::Suspended, 2));
    }

    #[test]
    fn template_change_at_same_parallelism_restarts_from_a_checkpoint() {
        let mut d = desired(3);
        d.template_hash = "t2".into();
        let mut o = observed();
        o.pods = 3;
        o.ready = 3;
        o.next_checkpoint_id = 12;
        let s = next(&running(3, 7), &d, &o, &now()).state;
        let r = s.rescale.clone().unwrap();
        assert_eq!(
            (r.stage, r.from, r.to, r.reason, r.final_checkpoint),
            (
                Stage::Checkpointing,
                3,
                3,
                RescaleReason::TemplateChange,
                Some(12)
            )
        );
        assert_eq!(
            s.template_hash.as_deref(),
            Some("t1"),
            "recorded only when applied"
        );
        o.final_checkpoint = FinalCheckpoint::Completed(12);
        o.pods = 0;
        let s = next(&s, &d, &o, &now()).state;
        assert_eq!((stage(&s), s.epoch), (Some(Stage::Restoring), 8));
        assert_eq!(s.template_hash.as_deref(), Some("t2"));
        // A further template change while restoring restarts the restore.
        d.template_hash = "t3".into();
        o.pods = 3;
        let s = next(&s, &d, &o, &now()).state;
        assert_eq!(stage(&s), Some(Stage::Stopping));
    }

    #[test]
    fn a_lost_worker_restarts_every_worker_from_the_latest_checkpoint() {
        let mut o = observed();
        o.pods = 3;
        o.ready = 2;
        o.latest_completed = Some(4);
        o.worker_lost = Some("pod x-1 was replaced".into());
        let step = next(&running(3, 2), &desired(3), &o, &now());
        let r = step.state.rescale.clone().unwrap();
        assert_eq!(
            (r.stage, r.reason, r.checkpoint, r.from, r.to),
            (Stage::Stopping, RescaleReason::Recovery, Some(4), 3, 3)
        );
        assert!(step.notes[0].warning && step.notes[0].message.contains("x-1"));
        // Stopping, then (after the first backoff) a new epoch from checkpoint 4.
        o.pods = 0;
        o.worker_lost = None;
        let s = next(&step.state, &desired(3), &o, &later()).state;
        assert_eq!((stage(&s), s.epoch), (Some(Stage::Restoring), 3));
        assert_eq!(
            s.work(),
            Work::RunWorkers {
                epoch: 3,
                parallelism: 3,
                checkpoint: Some(4)
            }
        );
        // Lost workers mid-rescale are the rescale's business (the new generation replaces them).
        o.worker_lost = Some("x".into());
        o.pods = 3;
        assert_eq!(next(&s, &desired(3), &o, &now()).state, s);
    }

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(1_800_000_000 + seconds).unwrap())
    }

    #[test]
    fn restart_backoff_doubles_up_to_its_cap() {
        let secs = |n| restart_backoff(n).as_secs();
        assert_eq!([secs(1), secs(2), secs(3), secs(4)], [10, 20, 40, 80]);
        assert_eq!([secs(6), secs(100)], [300, 300]);
        assert_eq!(secs(0), 10);
    }

    /// Loses a worker of `s` (running `p` workers) at `t`; returns the state once the stopped
    /// workers' restart has begun (the earliest second at or after `t` it may), and that second.
    fn lose_and_restart(s: &JobState, d: &Desired, t: i64) -> (JobState, i64) {
        let mut o = observed();
        o.pods = 3;
        o.ready = 2;
        o.latest_completed = Some(4);
        o.worker_lost = Some("worker pod x-1 restarted its containers 1 times".into());
        let step = next(s, d, &o, &at(t));
        assert_eq!(step.notes[0].reason, reasons::WORKER_LOST);
        let stopping = step.state;
        o.pods = 0;
        o.worker_lost = None;
        let mut when = t;
        loop {
            let n = next(&stopping, d, &o, &at(when)).state;
            if stage(&n) == Some(Stage::Restoring) {
                return (n, when);
            }
            assert_eq!(n, stopping, "waits in Stopping, unchanged");
            when += 1;
        }
    }

    #[test]
    fn lost_workers_restart_after_a_growing_backoff_and_stop_at_the_limit() {
        let mut d = desired(3);
        d.restart_limit = 2;
        let mut o = observed();
        o.pods = 3;
        o.ready = 3;
        o.latest_completed = Some(4);
        let s = running(3, 2);
        let (s, started) = lose_and_restart(&s, &d, 0);
        assert_eq!(started, 10, "the first restart waits 10s");
        assert_eq!(s.restarts, [at(0)]);
        assert_eq!(s.rescale.as_ref().unwrap().checkpoint, Some(4));
        let s = next(&s, &d, &o, &at(15)).state;
        assert_eq!((s.phase, s.epoch), (Phase::Running, 3));
        let (s, started) = lose_and_restart(&s, &d, 100);
        assert_eq!(started, 120, "the second one 20s");
        assert_eq!(s.restarts, [at(0), at(100)]);
        let s = next(&s, &d, &o, &at(125)).state;
        // A third loss within the window: every worker stops, the job is Failed.
        o.worker_lost = Some("worker pod x-0 is gone".into());
        let step = next(&s, &d, &o, &at(200));
        let failed = step.state;
        assert_eq!(
            (failed.phase, failed.parallelism, failed.rescale.clone()),
            (Phase::Failed, 0, None)
        );
        assert_eq!(failed.work(), Work::StopWorkers);
        let note = &step.notes[0];
        assert!(note.warning && note.reason == reasons::RESTART_LIMIT_REACHED);
        assert!(
            note.message.contains("x-0") && note.message.contains("spec.restartNonce"),
            "{}",
            note.message
        );
        // It stays stopped, whatever else is observed, until the nonce changes.
        o.worker_lost = None;
        o.pods = 0;
        assert!(next(&failed, &d, &o, &at(900)).notes.is_empty());
        d.restart_nonce = Some("fixed".into());
        o.pods = 1;
        assert!(
            next(&failed, &d, &o, &at(900)).notes.is_empty(),
            "not while a pod of the failed generation is left"
        );
        o.pods = 0;
        let step = next(&failed, &d, &o, &at(900));
        let s = step.state;
        let r = s.rescale.clone().unwrap();
        assert_eq!(
            (r.stage, r.reason, r.checkpoint, r.to),
            (Stage::Restoring, RescaleReason::Restart, Some(4), 3)
        );
        assert_eq!(step.notes[0].reason, reasons::RESTART_REQUESTED);
        assert_eq!((s.epoch, s.restart_nonce.as_deref()), (5, Some("fixed")));
        assert!(s.restarts.is_empty(), "the limit starts over");
        // A changed template starts a failed job again too.
        let mut d2 = desired(3);
        d2.template_hash = "t2".into();
        let s = next(&failed, &d2, &o, &at(900)).state;
        assert_eq!(
            s.rescale.map(|r| r.reason),
            Some(RescaleReason::TemplateChange)
        );
    }

    #[test]
    fn restarts_outside_the_window_do_not_count() {
        let mut d = desired(3);
        d.restart_limit = 1;
        let s = JobState {
            restarts: vec![at(0)],
            ..running(3, 2)
        };
        let (s, started) = lose_and_restart(&s, &d, 600);
        assert_eq!(started, 610, "a first restart again");
        assert_eq!(s.restarts, [at(600)]);
        // Limit 0: the first loss stops the job.
        d.restart_limit = 0;
        let mut o = observed();
        o.pods = 3;
        o.worker_lost = Some("x".into());
        let s = next(&running(3, 2), &d, &o, &now()).state;
        assert_eq!(s.phase, Phase::Failed);
    }

    #[test]
    fn a_new_restart_nonce_restarts_every_worker_from_the_latest_checkpoint() {
        let mut o = observed();
        o.pods = 3;
        o.ready = 3;
        o.latest_completed = Some(7);
        o.next_checkpoint_id = 9;
        let mut d = desired(3);
        // Created with a nonce: recorded at the start, no restart once running.
        d.restart_nonce = Some("a".into());
        let s = next(&JobState::pending(), &d, &o, &now()).state;
        assert_eq!(s.restart_nonce.as_deref(), Some("a"));
        let s = next(&s, &d, &o, &now()).state;
        assert_eq!(s.phase, Phase::Running);
        assert!(next(&s, &d, &o, &now()).notes.is_empty());
        // A new value: no final checkpoint, straight to stopping; the restarts are forgotten.
        let s = JobState {
            restarts: vec![now()],
            ..s
        };
        d.restart_nonce = Some("b".into());
        let step = next(&s, &d, &o, &now());
        let r = step.state.rescale.clone().unwrap();
        assert_eq!(
            (r.stage, r.reason, r.checkpoint, r.final_checkpoint),
            (Stage::Stopping, RescaleReason::Restart, Some(7), None)
        );
        assert!(step.state.restarts.is_empty());
        assert_eq!(step.notes[0].reason, reasons::RESTART_REQUESTED);
        // No backoff for a restart the user asked for.
        o.pods = 0;
        let s = next(&step.state, &d, &o, &now()).state;
        assert_eq!((stage(&s), s.epoch), (Some(Stage::Restoring), 2));
        assert_eq!(s.restart_nonce.as_deref(), Some("b"));
        // A newer nonce while restoring restores again.
        d.restart_nonce = Some("c".into());
        o.pods = 3;
        let step = next(&s, &d, &o, &now());
        assert_eq!(stage(&step.state), Some(Stage::Stopping));
        assert!(step.notes[0].message.contains("restartNonce"));
        // Removing the nonce asks for nothing.
        d.restart_nonce = None;
        o.ready = 3;
        let s = JobState {
            restart_nonce: Some("b".into()),
            ..running(3, 2)
        };
        assert!(next(&s, &d, &o, &now()).notes.is_empty());
    }

    #[test]
    fn a_reset_restarts_every_worker_without_a_final_checkpoint() {
        let mut o = observed();
        o.pods = 3;
        o.ready = 3;
        o.latest_completed = Some(12);
        o.reset = Some("spec.restoreNonce r1: snapshot s (checkpoint 4 of prod/a)".into());
        let step = next(&running(3, 2), &desired(3), &o, &now());
        let r = step.state.rescale.clone().unwrap();
        assert_eq!(
            (r.stage, r.reason, r.checkpoint, r.final_checkpoint),
            (Stage::Stopping, RescaleReason::Reset, Some(12), None)
        );
        assert!(!step.notes[0].warning && step.notes[0].message.contains("r1"));
        // A suspended job has nothing to restart: it resumes from the state later.
        let suspended = JobState {
            phase: Phase::Suspended,
            parallelism: 0,
            ..running(3, 2)
        };
        assert_eq!(next(&suspended, &desired(0), &o, &now()).state, suspended);
    }

    #[test]
    fn steady_running_does_nothing() {
        let mut o = observed();
        o.pods = 3;
        o.ready = 3;
        let step = next(&running(3, 1), &desired(3), &o, &now());
        assert_eq!(step.state, running(3, 1));
        assert!(step.notes.is_empty());
    }

    #[test]
    fn status_round_trip() {
        let s = rescaling(Stage::Stopping, 3, 4, 2, Some(1), Some(1));
        let mut status = StatefulJobStatus::default();
        s.write_to(&mut status);
        assert_eq!(JobState::from_status(Some(&status)), s);
        assert_eq!(JobState::from_status(None), JobState::pending());
    }

    /// Every reachable state, driven by every sequence of a small alphabet of events, keeps the
    /// invariants: the phase agrees with the stage, the epoch never decreases and only moves on
    /// entering Restoring, Running means the target is met by ready workers, and no two
    /// generations overlap (Restoring is only entered with no pod left).
    #[test]
    fn exhaustive_invariants() {
        #[derive(Clone, Copy, Debug)]
        enum Ev {
            Target(u32),
            Suspend(bool),
            Template(u8),
            Pods(u32),
            Init,
            Ready,
            FinalOk,
            FinalFail,
            Lost,
            Nonce(u8),
        }
        let alphabet = [
            Ev::Target(1),
            Ev::Target(3),
            Ev::Suspend(true),
            Ev::Suspend(false),
            Ev::Template(2),
            Ev::Pods(0),
            Ev::Init,
            Ev::Ready,
            Ev::FinalOk,
            Ev::FinalFail,
            Ev::Lost,
            Ev::Nonce(1),
        ];
        let mut runs = 0;
        let len = 5;
        let total = alphabet.len().pow(len);
        for mut code in 0..total {
            let mut d = desired(2);
            // One restart allowed: a second loss reaches Failed within five events.
            d.restart_limit = 1;
            let mut o = observed();
            let mut s = JobState::pending();
            for i in 0..len {
                // A minute per event: restart backoffs pass, restore timeouts do not.
                let now = at(60 * i as i64);
                let ev = alphabet[code % alphabet.len()];
                code /= alphabet.len();
                match ev {
                    Ev::Target(p) => d.parallelism = p,
                    Ev::Suspend(b) => d.suspend = b,
                    Ev::Template(t) => d.template_hash = format!("t{t}"),
                    Ev::Pods(n) => {
                        o.pods = n;
                        o.initialized = o.initialized.min(n);
                        o.ready = o.ready.min(n);
                    }
                    Ev::Init => {
                        if let Work::RunWorkers { parallelism, .. } = s.work() {
                            o.pods = parallelism;
                            o.initialized = parallelism;
                        }
                    }
                    Ev::Ready => {
                        if let Work::RunWorkers { parallelism, .. } = s.work() {
                            o.pods = parallelism;
                            o.initialized = parallelism;
                            o.ready = parallelism;
                        }
                    }
                    Ev::FinalOk => {
                        if let Work::FinalCheckpoint { id, .. } = s.work() {
                            o.final_checkpoint = FinalCheckpoint::Completed(id);
                            o.latest_completed = Some(id);
                            o.next_checkpoint_id = id + 1;
                        }
                    }
                    Ev::FinalFail => o.final_checkpoint = FinalCheckpoint::Failed("x".into()),
                    Ev::Lost => o.worker_lost = Some("lost".into()),
                    Ev::Nonce(n) => d.restart_nonce = Some(format!("n{n}")),
                }
                let step = next(&s, &d, &o, &now);
                let n = &step.state;
                consistent(n);
                assert!(n.epoch >= s.epoch);
                if n.epoch != s.epoch {
                    assert_eq!(n.epoch, s.epoch + 1);
                    assert_eq!(stage(n), Some(Stage::Restoring));
                    assert_eq!(o.pods, 0, "two generations would overlap: {s:?} -> {n:?}");
                }
                if n.phase == Phase::Running && s.phase != Phase::Running {
                    assert_eq!(n.parallelism, d.target());
                    assert!(o.ready >= n.parallelism);
                }
                if n.phase == Phase::Suspended {
                    assert_eq!(n.parallelism, 0);
                    assert!(d.suspend);
                }
                if n.phase == Phase::Failed {
                    assert_eq!((n.parallelism, n.work()), (0, Work::StopWorkers));
                    assert!(n.restarts.len() >= d.restart_limit as usize);
                }
                // Every change of state is explained by a note.
                assert_eq!(n != &s, !step.notes.is_empty(), "{s:?} -> {n:?}");
                if stage(&s).is_some_and(|x| x == Stage::Checkpointing)
                    && stage(n) == Some(Stage::Checkpointing)
                {
                    assert_eq!(
                        n.rescale.as_ref().unwrap().final_checkpoint,
                        s.rescale.as_ref().unwrap().final_checkpoint
                    );
                }
                s = step.state;
                o.worker_lost = None;
                // Outcomes refer to one final checkpoint; a new one starts fresh.
                if !matches!(s.work(), Work::FinalCheckpoint { .. }) {
                    o.final_checkpoint = FinalCheckpoint::InProgress;
                }
            }
            runs += 1;
        }
        assert_eq!(runs, total);
    }
}
