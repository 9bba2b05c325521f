//! The pure middle of a round: from the job and what [`super::observe`] saw, the status to
//! record and what to do after recording it, in order. Nothing here reads a clock or the
//! network, so every decision of the controller is a unit test away.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use super::super::coordinator::{self, CheckpointInputs, Decision, Notice, WorkerFailure};
use super::super::crd::{
    CheckpointRecord, PendingCheckpoint, Phase, ReadyWorkers, RescaleReason, RolledBack, Stage,
    StatefulJob, StatefulJobStatus,
};
use super::super::diagnose;
use super::super::initial_state::{self, Initial, Source};
use super::super::lifecycle::{self, Desired, FinalCheckpoint, JobState, Note, Observed, Work};
use super::super::metrics::failure;
use super::super::progress;
use super::super::reasons;
use super::super::resources::{self, EPOCH_LABEL, Generation};
use super::super::rollout;
use super::super::snapshot::{self, SnapshotStore};
use super::super::status::{self, Problem};
use crate::checkpoint::CheckpointMetadata;
use crate::checkpoint::progress::RestoreProgress;

/// The most consecutive checkpoint failures status counts (the largest tolerable number).
const MAX_COUNTED_FAILURES: u32 = 1000;

/// What a round saw; [`super::observe`] fills it, reading only.
#[derive(Clone, Debug)]
pub struct World {
    /// When the round looked.
    pub now: Time,
    /// The job's pods, of every epoch.
    pub pods: Vec<Pod>,
    /// The job's token Secret.
    pub token: Token,
    /// Every checkpoint id in the store, ascending, with whether it completed.
    pub store_ids: Vec<(u64, bool)>,
    /// The checkpoint in flight (the final one of a rescale, or the pending periodic one).
    pub in_flight: Option<InFlight>,
    /// The checkpoint this process last asked the job's workers for: a pending checkpoint
    /// other than this one was recorded by an earlier process, which may have stopped before
    /// asking.
    pub asked: Option<Asked>,
    /// What is wrong with the job's pods in the recorded stage, with what the user can do.
    pub pod_problem: Option<Problem>,
    /// The job's snapshots not being deleted.
    pub snapshots: Vec<snapshot::plan::Seen>,
    /// Those of them its schedule created.
    pub scheduled: Vec<snapshot::schedule::Scheduled>,
    /// While the recorded epoch restores: the progress its restores reported.
    pub restore_progress: Vec<RestoreProgress>,
    /// The snapshot spec.initialState names, resolved, when the initial state is not in place.
    pub initial_snapshot: Option<Result<Source, String>>,
}

/// A checkpoint this process asked the job's workers for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Asked {
    /// Its id.
    pub id: u64,
    /// Why the workers refused it, if they did.
    pub refusal: Option<String>,
}

/// The job's token Secret, as observed (one not controlled by the job is an error).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Token {
    /// None exists: one is created.
    Missing,
    /// It holds no token: one is written.
    Empty,
    /// The token.
    Held(String),
}

/// What the store and the workers say about the checkpoint in flight.
#[derive(Clone, Debug, PartialEq)]
pub struct InFlight {
    /// Its id.
    pub id: u64,
    /// How far it got in the store.
    pub completion: Completion,
    /// Why a worker failed it or no longer knows it (asked only when this process triggered
    /// it and it is not complete).
    pub worker_failure: Option<WorkerFailure>,
    /// How long the round waited for the workers' uploads to end (a final checkpoint's).
    pub waited: Duration,
}

/// How far a checkpoint got in the store.
#[derive(Clone, Debug, PartialEq)]
pub enum Completion {
    /// `_metadata.json` is in the store.
    Stored(CheckpointMetadata),
    /// Every handle and file is in: writing this metadata completes it.
    Ready(CheckpointMetadata),
    /// Handles are missing.
    Waiting,
    /// Stored data make it impossible, with why.
    Impossible(String),
}

/// What the round does after recording the status, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Act {
    /// Ask every worker of `epoch` for checkpoint `id`.
    Trigger {
        /// Checkpoint id.
        id: u64,
        /// Epoch of the workers.
        epoch: u64,
        /// Number of workers.
        parallelism: u32,
        /// A stop-with-checkpoint.
        stop: bool,
    },
    /// Tell the workers of `epoch` the outcome of checkpoint `id` (best effort).
    Notify {
        /// Checkpoint id.
        id: u64,
        /// Epoch of the workers.
        epoch: u64,
        /// Number of workers.
        parallelism: u32,
        /// Completed or aborted.
        notice: Notice,
    },
    /// Apply the job's retention and collect garbage (best effort).
    Retain,
    /// Scale the StatefulSet to zero.
    StopWorkers,
    /// Apply the StatefulSet of a generation.
    RunWorkers(Generation),
    /// Delete the state claims no worker of the settled generation uses (best effort).
    DeleteUnusedClaims(JobState),
    /// Create the state claims of the ordinals `from..to` a scale-out adds, while the final
    /// checkpoint runs, so their volumes are ready when the pods come (best effort: else the
    /// StatefulSet creates them with the pods).
    PrepareClaims {
        /// First new ordinal (the old parallelism).
        from: u32,
        /// End of the new ordinals (the new parallelism).
        to: u32,
    },
    /// Delete the restores' progress reports of every epoch up to `epoch` (best effort).
    ClearProgress(u64),
    /// Create the scheduled StatefulJobSnapshot `name`, owned by the job.
    CreateSnapshot(String),
    /// Delete the scheduled StatefulJobSnapshot `name`.
    DeleteSnapshot(String),
    /// Copy a completed checkpoint into the job's store as checkpoint `into`.
    Import {
        /// The checkpoint.
        from: Source,
        /// Its id in the job's store.
        into: u64,
    },
}

/// A metric the round moves.
#[derive(Clone, Debug, PartialEq)]
pub enum Tally {
    /// A rescale left `stage` after `seconds`.
    StageEnded {
        /// The stage left.
        stage: Stage,
        /// Time spent in it.
        seconds: f64,
    },
    /// A rescale ended.
    RescaleEnded(RescaleReason),
    /// A periodic checkpoint due at this time is being triggered.
    CheckpointDue(Time),
    /// A checkpoint completed.
    CheckpointCompleted(CheckpointRecord),
    /// A checkpoint ended otherwise.
    CheckpointEnded {
        /// "failed" or "aborted".
        outcome: &'static str,
        /// Why, when this counts as a failure (one of [`failure`]; none for a failed
        /// checkpoint given up later, or one dropped on purpose).
        failure: Option<&'static str>,
    },
}

/// The outcome of [`decide`].
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// `_metadata.json` to write before anything else: a checkpoint is complete in the store
    /// before status says so.
    pub commit: Option<CheckpointMetadata>,
    /// The status to record (conditions aside), before any action.
    pub status: StatefulJobStatus,
    /// The Degraded condition's problem.
    pub problem: Option<Problem>,
    /// Events to publish, in order.
    pub events: Vec<Note>,
    /// Metrics to move.
    pub tallies: Vec<Tally>,
    /// Snapshot statuses to record (after pinning their checkpoints), before any action.
    pub snapshots: Vec<snapshot::plan::Update>,
    /// What to do once the status is recorded, in order.
    pub actions: Vec<Act>,
    /// When to look again.
    pub requeue: Duration,
}

/// The round's decision: the next lifecycle state ([`lifecycle::next`]) and the checkpoint
/// protocol ([`coordinator::periodic`]) applied to the recorded status and the `world`;
/// `busy` is the requeue while something is in progress.
pub fn decide(job: &StatefulJob, world: &World, busy: Duration) -> crate::Result<Plan> {
    let spec = &job.spec;
    let interval = spec.checkpointing.interval()?;
    let timeout = spec.checkpointing.timeout()?;
    let progress_deadline = spec.checkpointing.progress_deadline()?;
    let state = JobState::from_status(job.status.as_ref());
    let mut status = job.status.clone().unwrap_or_default();
    if !status.worker_pods.is_empty() {
        // Recorded by an earlier version: the digest of the same pods takes the list's place.
        let uids = std::mem::take(&mut status.worker_pods);
        status
            .ready_workers
            .get_or_insert_with(|| ReadyWorkers::of(&uids));
    }
    let generation = job.metadata.generation;
    let readiness_timeout = spec
        .rollout
        .as_ref()
        .map(|r| r.readiness_timeout())
        .transpose()?;
    let mut rolled_back_now = None;
    if rollout::in_force(&status, generation).is_none() {
        // A new spec ends a rollback; an overdue rollout starts one.
        status.rolled_back = rollout::overdue(
            &state,
            generation,
            &spec.template,
            status.last_ready_template.as_ref(),
            readiness_timeout,
            &world.now,
        );
        rolled_back_now = status.rolled_back.clone();
    }
    let rolled_back = rollout::in_force(&status, generation).cloned();
    let desired = Desired {
        // While a rollback holds, the lifecycle aims at what ran before, not at the spec.
        parallelism: rolled_back
            .as_ref()
            .map_or(spec.parallelism, |r| r.parallelism),
        suspend: spec.suspend,
        template_hash: rolled_back.as_ref().map_or_else(
            || resources::template_hash(&spec.template),
            |r| r.template_hash.clone(),
        ),
        restore_timeout: spec.restore.timeout()?,
        restart_limit: spec.restart_policy.limit,
        restart_window: spec.restart_policy.window()?,
        restart_nonce: spec.restart_nonce.clone(),
    };
    let mut d = Decider {
        job,
        world,
        since: 0,
        restart_window: desired.restart_window,
        plan: Plan {
            commit: None,
            problem: recorded_problem(&status),
            status,
            events: Vec::new(),
            tallies: Vec::new(),
            snapshots: Vec::new(),
            actions: Vec::new(),
            requeue: busy,
        },
    };
    let (hold, reset, unavailable) = d.initial_state(&state)?;
    let final_checkpoint = d.final_checkpoint(&state, timeout);
    let (mut observed, ready_pods) = d.observed(&state, final_checkpoint)?;
    observed.reset = reset;
    let step = if hold {
        lifecycle::Step {
            state: state.clone(),
            notes: Vec::new(),
        }
    } else {
        lifecycle::next(&state, &desired, &observed, &world.now)
    };
    d.take(
        &state,
        step.state.clone(),
        step.notes,
        &observed,
        ready_pods,
    );
    d.restore_progress(&step.state);
    d.rollout(&step.state, rolled_back_now, rolled_back.as_ref());
    if let Some(why) = unavailable {
        d.plan.problem = Some(Problem::new(reasons::INITIAL_STATE_UNAVAILABLE, why));
    }
    d.plan.requeue = d.work(&step.state, interval, timeout, busy)?;
    d.progress(&step.state, progress_deadline);
    if hold {
        d.plan.requeue = d.plan.requeue.min(busy.max(Duration::from_secs(5)));
    }
    d.snapshots();
    d.schedule()?;
    Ok(d.finish())
}

/// How long a round waits for the workers' final checkpoint uploads, and how often rounds look
/// for its completion: the workers stay paused until it is seen, and no Kubernetes event
/// announces it (the other stages end on pod events).
pub const FINAL_CHECKPOINT_POLL: Duration = Duration::from_millis(250);

/// The Degraded problem the recorded status shows. An invalid spec stays until a round's
/// actions all went through: clearing it before would rewrite the status twice a round, and
/// each write starts the next round at once.
fn recorded_problem(status: &StatefulJobStatus) -> Option<Problem> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == status::DEGRADED && c.status == "True")
        .map(|c| Problem::new(&c.reason, c.message.clone()))
}

/// Every checkpoint id `status` names: all were issued (or are about to be), none is issued
/// again.
pub fn issued_ids(status: &StatefulJobStatus) -> [Option<u64>; 5] {
    [
        status.last_issued_checkpoint,
        status.initial_state.as_ref().and_then(|s| s.checkpoint),
        status.last_checkpoint.as_ref().map(|c| c.id),
        status.pending_checkpoint.as_ref().map(|c| c.id),
        status.rescale.as_ref().and_then(|r| r.final_checkpoint),
    ]
}

struct Decider<'a> {
    job: &'a StatefulJob,
    world: &'a World,
    /// Checkpoints of the store below this id predate the job's initial state.
    since: u64,
    /// spec.restartPolicy.window: older restarts are dropped from status.
    restart_window: Duration,
    plan: Plan,
}

impl<'a> Decider<'a> {
    fn now(&self) -> &Time {
        &self.world.now
    }

    fn status(&mut self) -> &mut StatefulJobStatus {
        &mut self.plan.status
    }

    /// What the status recorded before this round asked of the world.
    fn recorded_work(&self) -> Work {
        JobState::from_status(self.job.status.as_ref()).work()
    }

    fn act(&mut self, act: Act) {
        self.plan.actions.push(act);
    }

    fn event(&mut self, warning: bool, reason: &'static str, message: String) {
        self.plan.events.push(Note {
            reason,
            message,
            warning,
        });
    }

    fn in_flight(&self, id: u64) -> Option<&'a InFlight> {
        self.world.in_flight.as_ref().filter(|f| f.id == id)
    }

    fn asked_here(&self, id: u64) -> bool {
        self.world.asked.as_ref().is_some_and(|a| a.id == id)
    }

    /// Why a worker no longer knows checkpoint `id`, which this process asked it for.
    fn forgotten(&self, id: u64) -> Option<String> {
        match &self.in_flight(id)?.worker_failure {
            Some(WorkerFailure::Forgot(why)) if self.asked_here(id) => Some(why.clone()),
            _ => None,
        }
    }

    /// The outcome of the recorded state's final checkpoint, committing it when it is ready.
    fn final_checkpoint(&mut self, state: &JobState, timeout: Duration) -> FinalCheckpoint {
        let (
            Work::FinalCheckpoint {
                id,
                epoch,
                parallelism,
            },
            Some(r),
        ) = (state.work(), &state.rescale)
        else {
            return FinalCheckpoint::InProgress;
        };
        let completed = match self.in_flight(id).map(|f| &f.completion) {
            Some(Completion::Ready(meta)) => {
                self.plan.commit = Some(meta.clone());
                true
            }
            Some(Completion::Stored(_)) => true,
            _ => false,
        };
        if completed {
            self.act(Act::Notify {
                id,
                epoch,
                parallelism,
                notice: Notice::Complete,
            });
        } else if self.forgotten(id).is_none() {
            self.record_failure(id);
        }
        coordinator::final_outcome(
            id,
            completed,
            self.plan.status.pending_checkpoint.as_ref(),
            &r.stage_started,
            self.now(),
            timeout,
        )
    }

    /// What the lifecycle needs, and the UIDs of the ready workers of the recorded epoch.
    fn observed(
        &self,
        state: &JobState,
        final_checkpoint: FinalCheckpoint,
    ) -> crate::Result<(Observed, Vec<String>)> {
        let epoch = state.epoch.to_string();
        let at_epoch: Vec<&Pod> = self
            .world
            .pods
            .iter()
            .filter(|p| {
                p.labels().get(EPOCH_LABEL) == Some(&epoch)
                    && p.metadata.deletion_timestamp.is_none()
            })
            .collect();
        let condition = |p: &Pod, t: &str| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == t && c.status == "True"))
        };
        let count = |t: &str| at_epoch.iter().filter(|p| condition(p, t)).count() as u32;
        let completed: Vec<u64> = self
            .world
            .store_ids
            .iter()
            .filter(|(id, _)| *id >= self.since)
            .filter_map(|(id, done)| done.then_some(*id))
            .collect();
        let store_ids: Vec<u64> = self.world.store_ids.iter().map(|(id, _)| *id).collect();
        let status = &self.plan.status;
        let worker_lost = (state.phase == Phase::Running && state.rescale.is_none())
            .then(|| diagnose::lost_worker(status.ready_workers.as_ref(), &at_epoch))
            .flatten();
        let ready_pods = at_epoch
            .iter()
            .filter(|p| condition(p, "Ready"))
            .filter_map(|p| p.metadata.uid.clone())
            .collect();
        let observed = Observed {
            pods: self.world.pods.len() as u32,
            initialized: count("Initialized"),
            ready: count("Ready"),
            final_checkpoint,
            latest_completed: completed.last().copied(),
            completed,
            restore_failure: diagnose::restore_failure(&at_epoch),
            next_checkpoint_id: coordinator::next_checkpoint_id(&store_ids, issued_ids(status))?,
            worker_lost,
            reset: None,
        };
        Ok((observed, ready_pods))
    }

    /// Records the lifecycle's step from `before` to `after`: its notes, the Degraded problem,
    /// the stage metrics, the end of a final checkpoint and the ready workers.
    fn take(
        &mut self,
        before: &JobState,
        after: JobState,
        notes: Vec<Note>,
        observed: &Observed,
        ready_pods: Vec<String>,
    ) {
        if let Some(n) = notes.iter().rev().find(|n| n.warning) {
            self.plan.problem = Some(Problem::new(n.reason, n.message.clone()));
        }
        let warned = notes.iter().any(|n| n.warning);
        match &self.world.pod_problem {
            Some(p) if !warned => self.plan.problem = Some(p.clone()),
            None if self
                .plan
                .problem
                .as_ref()
                .is_some_and(|p| reasons::OBSERVED.contains(&p.reason.as_str())) =>
            {
                self.plan.problem = None
            }
            _ => {}
        }
        if after.phase == Phase::Running
            && before.phase != Phase::Running
            && self
                .plan
                .problem
                .as_ref()
                .is_some_and(|p| reasons::CLEARED_WHEN_RUNNING.contains(&p.reason.as_str()))
        {
            // The restart it reported is over: every worker of the new generation is ready.
            self.plan.problem = None;
        }
        if after.phase == Phase::Failed && self.plan.problem.is_none() {
            // Stopped until the user acts: Degraded says so even after another problem cleared.
            self.plan.problem = Some(Problem::new(
                reasons::RESTART_LIMIT_REACHED,
                "every worker was stopped after spec.restartPolicy.limit restarts within spec.restartPolicy.window; fix why they failed (the job's WorkerLost Events, the workers' logs), then set a new spec.restartNonce",
            ));
        }
        self.stage_tallies(before, &after);
        if let Work::FinalCheckpoint {
            id,
            epoch,
            parallelism,
        } = before.work()
            && !matches!(after.work(), Work::FinalCheckpoint { .. })
        {
            self.finish_final_checkpoint(id, epoch, parallelism, &observed.final_checkpoint);
        }
        after.write_to(self.status());
        if after.phase != Phase::Running {
            self.status().ready_workers = None;
        } else if before.phase != Phase::Running {
            self.status().ready_workers = Some(ReadyWorkers::of(&ready_pods));
        }
        self.plan.events.extend(notes);
    }

    fn stage_tallies(&mut self, before: &JobState, after: &JobState) {
        let Some(r) = &before.rescale else { return };
        if after.rescale.as_ref().is_none_or(|a| a.stage != r.stage) {
            let seconds = lifecycle::elapsed(&r.stage_started, self.now()).as_secs_f64();
            self.plan.tallies.push(Tally::StageEnded {
                stage: r.stage,
                seconds,
            });
        }
        if after.rescale.is_none() {
            self.plan.tallies.push(Tally::RescaleEnded(r.reason));
        }
    }

    /// Records the outcome of the final checkpoint once the rescale moved past it.
    fn finish_final_checkpoint(
        &mut self,
        id: u64,
        epoch: u64,
        parallelism: u32,
        outcome: &FinalCheckpoint,
    ) {
        match outcome {
            FinalCheckpoint::Completed(_) => {
                self.completed(id);
            }
            FinalCheckpoint::Failed(_) => {
                self.act(Act::Notify {
                    id,
                    epoch,
                    parallelism,
                    notice: Notice::Abort,
                });
                // Counted as a failure when this round is the first to see it fail.
                let counted = self
                    .plan
                    .status
                    .pending_checkpoint
                    .as_ref()
                    .is_some_and(|p| p.id == id && p.failure.is_some());
                self.plan.tallies.push(Tally::CheckpointEnded {
                    outcome: "aborted",
                    failure: (!counted).then_some(failure::FINAL),
                });
            }
            FinalCheckpoint::InProgress => {}
        }
        self.status().pending_checkpoint = None;
    }

    /// Records checkpoint `id` as the last completed one (its metadata is stored or committed
    /// by this round), ends a Degraded condition a failed one started, and applies retention.
    /// Returns the record.
    fn completed(&mut self, id: u64) -> Option<CheckpointRecord> {
        let meta = match &self.in_flight(id)?.completion {
            Completion::Stored(meta) | Completion::Ready(meta) => meta,
            _ => return None,
        };
        let started = self
            .plan
            .status
            .pending_checkpoint
            .as_ref()
            .filter(|p| p.id == id)
            .map(|p| p.started.clone());
        let record = coordinator::record(meta, started.as_ref(), self.now());
        self.plan
            .tallies
            .push(Tally::CheckpointCompleted(record.clone()));
        self.status().last_checkpoint = Some(record.clone());
        let history = self.job.spec.checkpointing.history.min(20) as usize;
        let listed = &mut self.plan.status.checkpoints;
        listed.retain(|c| c.id != record.id);
        listed.insert(0, record.clone());
        listed.truncate(history);
        self.status().consecutive_checkpoint_failures = 0;
        if self
            .plan
            .problem
            .as_ref()
            .is_some_and(|p| reasons::CLEARED_BY_A_CHECKPOINT.contains(&p.reason.as_str()))
        {
            self.plan.problem = None;
        }
        self.act(Act::Retain);
        Some(record)
    }

    /// Records why the pending checkpoint `id` can no longer complete, when this round saw why:
    /// the workers refused it, one failed or forgot it, or stored data make it impossible.
    fn record_failure(&mut self, id: u64) {
        let asked = self.world.asked.as_ref().filter(|a| a.id == id);
        let refusal = asked.and_then(|a| a.refusal.clone());
        // Workers are heard only about a checkpoint this process asked them for.
        let asked = self.asked_here(id);
        let seen = self.in_flight(id).and_then(|f| match &f.completion {
            Completion::Impossible(why) => Some(why.clone()),
            _ => f
                .worker_failure
                .as_ref()
                .filter(|_| asked)
                .map(|w| w.message().to_owned()),
        });
        let impossible = self
            .in_flight(id)
            .is_some_and(|f| matches!(f.completion, Completion::Impossible(_)));
        let (reason, message, kind) = match (refusal, seen) {
            (Some(e), _) => (
                e.clone(),
                format!("checkpoint {id} could not start: {e}"),
                failure::REFUSED,
            ),
            (None, Some(why)) => (
                why.clone(),
                format!("checkpoint {id} failed: {why}"),
                if impossible {
                    failure::STORE
                } else {
                    failure::WORKER
                },
            ),
            (None, None) => return,
        };
        let Some(p) = self
            .status()
            .pending_checkpoint
            .as_mut()
            .filter(|p| p.id == id && p.failure.is_none())
        else {
            return;
        };
        p.failure = Some(reason);
        let stop = p.stop;
        self.plan.tallies.push(Tally::CheckpointEnded {
            outcome: "failed",
            failure: Some(kind),
        });
        // A final checkpoint's failure changes where the rescale restores from: shown at once.
        if stop || self.tolerance_exceeded() {
            let problem = Problem::new(reasons::CHECKPOINT_FAILED, self.counted(&message));
            self.plan.problem = Some(problem);
        }
        self.event(true, reasons::CHECKPOINT_FAILED, message);
    }

    /// Counts a failed or aborted periodic checkpoint; whether that makes more consecutive
    /// failures than spec.checkpointing.tolerableFailures.
    fn tolerance_exceeded(&mut self) -> bool {
        let tolerable = self.job.spec.checkpointing.tolerable_failures;
        let status = self.status();
        // Bounded: beyond the largest tolerable count the number says nothing more.
        status.consecutive_checkpoint_failures =
            (status.consecutive_checkpoint_failures + 1).min(MAX_COUNTED_FAILURES);
        status.consecutive_checkpoint_failures > tolerable
    }

    /// `message` with the count of consecutive failures, once there were several.
    fn counted(&self, message: &str) -> String {
        match self.plan.status.consecutive_checkpoint_failures {
            n @ 2.. => format!(
                "{message} ({n} consecutive checkpoints failed; spec.checkpointing.tolerableFailures is {})",
                self.job.spec.checkpointing.tolerable_failures
            ),
            _ => message.to_owned(),
        }
    }

    /// While running, shows in Degraded that no checkpoint completed within
    /// spec.checkpointing.progressDeadline, and clears that once one did.
    fn progress(&mut self, state: &JobState, deadline: Duration) {
        if state.phase != Phase::Running || state.rescale.is_some() {
            return;
        }
        let status = &self.plan.status;
        // Running since the Ready condition turned True (this round, when it is not yet).
        let running_since = status
            .conditions
            .iter()
            .find(|c| c.type_ == status::READY && c.status == "True")
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| self.now().clone());
        let since = match &status.last_checkpoint {
            Some(c) if c.time.0 > running_since.0 => c.time.clone(),
            _ => running_since,
        };
        let overdue = lifecycle::elapsed(&since, self.now()) >= deadline;
        let shown = self.plan.problem.as_ref().map(|p| p.reason.as_str());
        match (overdue, shown) {
            (true, None) => {
                let message = format!(
                    "no checkpoint completed within spec.checkpointing.progressDeadline ({}) since {}: a restart would lose the progress since then. Look at the job's CheckpointFailed and CheckpointAborted Events (kubectl describe sj {}), the workers' logs and whether the object store is reachable and writable",
                    humantime::format_duration(deadline),
                    since.0,
                    self.job.name_any()
                );
                self.plan.problem = Some(Problem::new(reasons::NO_CHECKPOINT_PROGRESS, message));
            }
            (false, Some(reasons::NO_CHECKPOINT_PROGRESS)) => self.plan.problem = None,
            _ => {}
        }
    }

    /// What the recorded state asks of the world ([`JobState::work`]); returns when to look
    /// again.
    fn work(
        &mut self,
        state: &JobState,
        interval: Duration,
        timeout: Duration,
        busy: Duration,
    ) -> crate::Result<Duration> {
        let idle = Duration::from_secs(60);
        Ok(match state.work() {
            Work::Nothing => idle,
            Work::StopWorkers => {
                self.act(Act::StopWorkers);
                if state.rescale.is_some() { busy } else { idle }
            }
            Work::RunWorkers {
                epoch,
                parallelism,
                checkpoint,
            } => {
                self.act(Act::RunWorkers(Generation {
                    epoch,
                    parallelism,
                    checkpoint,
                }));
                busy
            }
            Work::FinalCheckpoint {
                id,
                epoch,
                parallelism,
            } => {
                let recorded = self.plan.status.pending_checkpoint.as_ref();
                if recorded.is_none_or(|p| p.id != id) {
                    // Not a failure: the final checkpoint takes its place.
                    self.abort(
                        "superseded by the final checkpoint of a rescale",
                        false,
                        None,
                    );
                    self.start_checkpoint(id, epoch, parallelism, true);
                    if let Some(r) = state.rescale.as_ref().filter(|r| r.to > r.from) {
                        self.act(Act::PrepareClaims {
                            from: r.from,
                            to: r.to,
                        });
                    }
                } else if !self.asked_here(id) {
                    // Recorded by an operator that stopped before (or while) asking the workers.
                    self.trigger(id, epoch, parallelism, true);
                } else if let Some(why) = self.forgotten(id) {
                    // A restarted worker lost the request, not its state: asked again, the
                    // final checkpoint still completes instead of falling back to an older one.
                    let message =
                        format!("{why}; asking the workers for final checkpoint {id} again");
                    self.event(false, reasons::FINAL_CHECKPOINT_RETRIED, message);
                    self.trigger(id, epoch, parallelism, true);
                }
                // A round that waited for the workers looks again at once.
                let waited = self.in_flight(id).map_or(Duration::ZERO, |f| f.waited);
                busy.min(FINAL_CHECKPOINT_POLL.saturating_sub(waited))
            }
            Work::Checkpoints { epoch, parallelism } => {
                self.act(Act::DeleteUnusedClaims(state.clone()));
                self.checkpoints(epoch, parallelism, interval, timeout, busy)?
            }
        })
    }

    /// Periodic and on-demand checkpoints of the running workers.
    fn checkpoints(
        &mut self,
        epoch: u64,
        parallelism: u32,
        interval: Duration,
        timeout: Duration,
        busy: Duration,
    ) -> crate::Result<Duration> {
        let store_ids: Vec<u64> = self.world.store_ids.iter().map(|(id, _)| *id).collect();
        let status = &self.plan.status;
        let spec = &self.job.spec;
        let inputs = CheckpointInputs {
            interval,
            timeout,
            epoch,
            last_attempt: status.last_checkpoint_attempt.as_ref(),
            pending: status.pending_checkpoint.as_ref(),
            requested_trigger: spec.checkpoint_trigger.as_deref(),
            acted_trigger: status.checkpoint_trigger.as_deref(),
            next_id: coordinator::next_checkpoint_id(&store_ids, issued_ids(status))?,
        };
        let periodic = coordinator::periodic(self.now(), &inputs);
        // On schedule only while the recorded state already took this epoch's checkpoints:
        // a start, resume or rescale finishing past the due time is not a late trigger.
        let scheduled =
            matches!(self.recorded_work(), Work::Checkpoints { epoch: e, .. } if e == epoch);
        let due = match (&periodic, inputs.last_attempt) {
            (
                Decision::Trigger {
                    on_demand: false, ..
                },
                Some(last),
            ) if scheduled => Some(coordinator::due(last, interval)),
            _ => None,
        };
        let decision = match periodic {
            // A snapshot waits: a checkpoint now, as if asked for.
            Decision::Wait(_) if snapshot::plan::waiting(&self.world.snapshots) => {
                Decision::Trigger {
                    id: inputs.next_id,
                    on_demand: false,
                }
            }
            other => other,
        };
        Ok(match decision {
            Decision::Wait(d) => d.min(Duration::from_secs(30)),
            Decision::Trigger { id, on_demand } => {
                if on_demand {
                    self.status().checkpoint_trigger = spec.checkpoint_trigger.clone();
                }
                if let Some(due) = due {
                    self.plan.tallies.push(Tally::CheckpointDue(due));
                }
                self.start_checkpoint(id, epoch, parallelism, false);
                busy
            }
            Decision::Poll { id } => {
                if !self.asked_here(id) {
                    self.trigger(id, epoch, parallelism, false);
                }
                self.poll(id, epoch, parallelism);
                busy
            }
            Decision::Abort { reason, .. } => {
                let replaced = self
                    .plan
                    .status
                    .pending_checkpoint
                    .as_ref()
                    .is_some_and(|p| p.epoch != epoch);
                let cause = if replaced {
                    failure::EPOCH_CHANGED
                } else {
                    failure::TIMEOUT
                };
                self.abort_pending(&reason, cause);
                busy
            }
        })
    }

    /// Completes pending checkpoint `id` when the store allows, or records why it cannot.
    fn poll(&mut self, id: u64, epoch: u64, parallelism: u32) {
        if let Some(Completion::Ready(meta)) = self.in_flight(id).map(|f| &f.completion) {
            self.plan.commit = Some(meta.clone());
        }
        let Some(record) = self.completed(id) else {
            self.record_failure(id);
            return;
        };
        self.status().pending_checkpoint = None;
        let note = format!(
            "checkpoint {id} completed: {} bytes ({} new) in {:.1}s",
            record.bytes_total, record.bytes_new, record.duration_seconds
        );
        self.event(false, reasons::CHECKPOINT_COMPLETED, note);
        self.act(Act::Notify {
            id,
            epoch,
            parallelism,
            notice: Notice::Complete,
        });
    }

    /// Records checkpoint `id` as pending, then asks every worker of `epoch` to take it.
    fn start_checkpoint(&mut self, id: u64, epoch: u64, parallelism: u32, stop: bool) {
        let started = self.now().clone();
        let status = self.status();
        status.pending_checkpoint = Some(PendingCheckpoint {
            id,
            epoch,
            started: started.clone(),
            stop,
            failure: None,
        });
        status.last_checkpoint_attempt = Some(started);
        self.trigger(id, epoch, parallelism, stop);
    }

    fn trigger(&mut self, id: u64, epoch: u64, parallelism: u32, stop: bool) {
        self.act(Act::Trigger {
            id,
            epoch,
            parallelism,
            stop,
        });
    }

    /// Drops the pending checkpoint (if any), a failure for `cause`.
    fn abort_pending(&mut self, reason: &str, cause: &'static str) {
        self.abort(reason, false, Some(cause));
    }

    /// Drops the pending checkpoint (if any) and tells its workers; a periodic one aborted
    /// while the job runs makes it Degraded unless `planned`; `cause` counts it as a failure
    /// (one of [`failure`]).
    fn abort(&mut self, reason: &str, planned: bool, cause: Option<&'static str>) {
        let Some(p) = self.status().pending_checkpoint.take() else {
            return;
        };
        let parallelism = self.plan.status.parallelism;
        self.act(Act::Notify {
            id: p.id,
            epoch: p.epoch,
            parallelism,
            notice: Notice::Abort,
        });
        self.plan.tallies.push(Tally::CheckpointEnded {
            outcome: "aborted",
            // A failure recorded earlier was counted then.
            failure: cause.filter(|_| p.failure.is_none()),
        });
        let message = format!("checkpoint {} aborted: {reason}", p.id);
        // One of an earlier generation was not the running workers' failure, nor is one the
        // operator dropped on purpose.
        if !planned
            && !p.stop
            && self.plan.status.phase == Some(Phase::Running)
            && p.epoch == self.plan.status.epoch
            && p.failure.is_none()
            && self.tolerance_exceeded()
        {
            let problem = Problem::new(reasons::CHECKPOINT_ABORTED, self.counted(&message));
            self.plan.problem = Some(problem);
        }
        self.event(true, reasons::CHECKPOINT_ABORTED, message);
    }

    /// Applies spec.initialState when it is not in place ([`initial_state::decide`]): records
    /// it, and returns whether the lifecycle holds (an import first, or it is unavailable),
    /// the reset to take, and why it is unavailable.
    fn initial_state(
        &mut self,
        state: &JobState,
    ) -> crate::Result<(bool, Option<String>, Option<String>)> {
        let spec = &self.job.spec;
        let store_ids: Vec<u64> = self.world.store_ids.iter().map(|(id, _)| *id).collect();
        let next_id = coordinator::next_checkpoint_id(&store_ids, issued_ids(&self.plan.status))?;
        let inputs = initial_state::Inputs {
            wanted: &spec.initial_state,
            nonce: spec.restore_nonce.as_deref(),
            applied: self.plan.status.initial_state.as_ref(),
            phase: state.phase,
            rescaling: state.rescale.is_some(),
            snapshot: self.world.initial_snapshot.clone(),
            store_ids: &self.world.store_ids,
            next_id,
        };
        Ok(match initial_state::decide(&inputs) {
            Initial::Settled { since } => {
                self.since = since;
                (false, None, None)
            }
            Initial::Unavailable(why) => {
                self.since = self
                    .plan
                    .status
                    .initial_state
                    .as_ref()
                    .map_or(0, |a| a.since);
                // Nothing starts; a running job keeps running (and rescaling) meanwhile.
                (state.phase == Phase::Pending, None, Some(why))
            }
            Initial::Apply {
                applied,
                import,
                reset,
            } => {
                let into = applied.checkpoint.unwrap_or_default();
                let source = applied.source.clone();
                let nonce = applied.nonce.clone();
                self.since = applied.since;
                self.status().initial_state = Some(applied);
                if let Some(from) = import {
                    self.act(Act::Import { from, into });
                    return Ok((true, None, None));
                }
                self.event(
                    false,
                    reasons::INITIAL_STATE,
                    format!("initial state: {source}"),
                );
                if !reset {
                    return Ok((false, None, None));
                }
                self.abort(
                    "the job restores its initial state (spec.restoreNonce)",
                    true,
                    None,
                );
                let what = format!(
                    "spec.restoreNonce {}: {source}",
                    nonce.as_deref().unwrap_or("(removed)")
                );
                (false, Some(what), None)
            }
        })
    }

    /// The job's snapshots: which checkpoint each holds, and how far it got.
    fn snapshots(&mut self) {
        let job = self.job;
        let store = SnapshotStore {
            url: job.spec.storage.url.clone(),
            job: format!("{}/{}", job.namespace().unwrap_or_default(), job.name_any()),
            secret: job.spec.storage.secret_ref.as_ref().map(|r| r.name.clone()),
        };
        let committing = self.plan.commit.as_ref().map(|m| m.checkpoint_id);
        self.plan.snapshots = snapshot::plan::updates(
            &self.world.snapshots,
            &self.plan.status,
            committing,
            &store,
            self.now(),
        );
    }

    /// A rollback: its Event when it starts, Degraded while it holds; the template of every
    /// generation that got ready, to roll back to.
    fn rollout(
        &mut self,
        state: &JobState,
        started: Option<RolledBack>,
        holding: Option<&RolledBack>,
    ) {
        if let Some(r) = started {
            self.event(true, reasons::ROLLOUT_FAILED, r.message.clone());
        }
        if let Some(r) = holding {
            self.plan.problem = Some(Problem::new(reasons::ROLLOUT_FAILED, r.message.clone()));
            return;
        }
        let spec_template = &self.job.spec.template;
        let ready = state.phase == Phase::Running
            && state.rescale.is_none()
            && state.template_hash.as_deref() == Some(&resources::template_hash(spec_template));
        if ready {
            self.status().last_ready_template = serde_json::to_value(spec_template).ok();
        }
    }

    /// The restores' progress while the generation restores; their reports go once it ran.
    fn restore_progress(&mut self, state: &JobState) {
        let restoring = state
            .rescale
            .as_ref()
            .filter(|r| matches!(r.stage, Stage::Restoring | Stage::RollingForward));
        let before = self.plan.status.restore_progress.is_some();
        self.status().restore_progress =
            restoring.map(|r| progress::summarize(&self.world.restore_progress, r.to));
        if before && state.rescale.is_none() {
            self.act(Act::ClearProgress(state.epoch));
        }
    }

    /// spec.snapshots: a snapshot for a slot that came, and the scheduled ones to delete.
    fn schedule(&mut self) -> crate::Result<()> {
        let job = self.job;
        let Some(schedule) = &job.spec.snapshots else {
            return Ok(());
        };
        let created = job
            .metadata
            .creation_timestamp
            .clone()
            .unwrap_or_else(|| self.now().clone());
        let due = snapshot::schedule::due(
            schedule,
            self.plan.status.last_scheduled_snapshot.as_ref(),
            &created,
            &self.world.scheduled,
            self.now(),
        )?;
        if let Some(slot) = due.take {
            let name = snapshot::schedule::name(&job.name_any(), &slot);
            self.status().last_scheduled_snapshot = Some(slot);
            self.act(Act::CreateSnapshot(name));
        }
        for name in due.delete {
            self.act(Act::DeleteSnapshot(name));
        }
        let wait = snapshot::schedule::wait(&due.next, self.now());
        self.plan.requeue = self.plan.requeue.min(wait);
        Ok(())
    }

    /// The plan, with the status fields every round refreshes.
    fn finish(mut self) -> Plan {
        let job = self.job;
        let status = self.status();
        // Every id in status was issued (or is about to be): none of them is ever issued again.
        status.last_issued_checkpoint = issued_ids(status).into_iter().flatten().max();
        status.selector = Some(resources::selector_string(job));
        status.observed_generation = job.metadata.generation;
        let (now, window) = (self.world.now.clone(), self.restart_window);
        let status = self.status();
        status
            .restarts
            .retain(|t| lifecycle::elapsed(t, &now) < window);
        // Garbage collection can take seconds; no worker waits for it (stable: the rest keep
        // their order).
        self.plan.actions.sort_by_key(|a| *a == Act::Retain);
        self.plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::testing;
    use k8s_openapi::jiff::Timestamp;

    const BUSY: Duration = Duration::from_secs(2);

    /// Job `prod/orders` running 2 workers of epoch 1 (spec asks for `parallelism`), its last
    /// checkpoint attempt an hour before `now()`.
    fn running(parallelism: u32, pending: Option<PendingCheckpoint>) -> StatefulJob {
        let spec = serde_json::json!({
            "parallelism": parallelism,
            "maxParallelism": 16,
            "template": {"spec": {"containers": [{"name": "worker", "image": "regroup:0.1.0"}]}},
            "storage": {"url": "s3://bucket/jobs"},
            "checkpointing": {"interval": "10s", "timeout": "1m"}
        });
        let mut job = StatefulJob::new("orders", serde_json::from_value(spec).unwrap());
        job.metadata.namespace = Some("prod".into());
        job.metadata.uid = Some("uid-1".into());
        job.status = Some(StatefulJobStatus {
            phase: Some(Phase::Running),
            parallelism: 2,
            epoch: 1,
            template_hash: Some(resources::template_hash(&job.spec.template)),
            last_checkpoint_attempt: Some(at(-3600)),
            pending_checkpoint: pending,
            last_issued_checkpoint: Some(4),
            ..Default::default()
        });
        job
    }

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(1_800_000_000 + seconds).unwrap())
    }

    fn pending(id: u64) -> PendingCheckpoint {
        PendingCheckpoint {
            id,
            epoch: 1,
            started: at(-5),
            stop: false,
            failure: None,
        }
    }

    fn world(in_flight: Option<InFlight>, asked: Option<(u64, Option<&str>)>) -> World {
        World {
            now: at(0),
            pods: vec![],
            token: Token::Held("t".into()),
            store_ids: vec![(3, true), (4, true)],
            in_flight,
            asked: asked.map(|(id, r)| Asked {
                id,
                refusal: r.map(str::to_owned),
            }),
            pod_problem: None,
            snapshots: Vec::new(),
            scheduled: Vec::new(),
            restore_progress: Vec::new(),
            initial_snapshot: None,
        }
    }

    /// Checkpoint `id` in flight with handles missing.
    fn waiting(id: u64, worker_failure: Option<&str>) -> InFlight {
        InFlight {
            id,
            completion: Completion::Waiting,
            worker_failure: worker_failure.map(|w| WorkerFailure::Failed(w.to_owned())),
            waited: Duration::ZERO,
        }
    }

    /// Checkpoint `id` with every handle in, ready to commit.
    fn ready(id: u64) -> InFlight {
        InFlight {
            id,
            completion: Completion::Ready(testing::checkpoint(16, 2, 1)),
            worker_failure: None,
            waited: Duration::ZERO,
        }
    }

    fn trigger(id: u64, stop: bool) -> Act {
        Act::Trigger {
            id,
            epoch: 1,
            parallelism: 2,
            stop,
        }
    }

    fn reasons_of(plan: &Plan) -> Vec<&str> {
        plan.events.iter().map(|n| n.reason).collect()
    }

    #[test]
    fn a_template_change_not_ready_in_time_rolls_back_and_holds_until_the_spec_changes() {
        let mut job = running(2, None);
        let good = job.spec.template.clone();
        job.spec.rollout =
            Some(serde_json::from_value(serde_json::json!({"readinessTimeout": "1m"})).unwrap());
        job.spec.template.spec.as_mut().unwrap().containers[0].image =
            Some("regroup:broken".into());
        job.metadata.generation = Some(4);
        let status = job.status.as_mut().unwrap();
        status.last_ready_template = serde_json::to_value(&good).ok();
        status.phase = Some(Phase::RollingForward);
        status.epoch = 2;
        status.template_hash = Some(resources::template_hash(&job.spec.template));
        status.rescale = Some(
            serde_json::from_value(serde_json::json!({
                "from": 2, "to": 2, "stage": "RollingForward", "reason": "TemplateChange",
                "checkpoint": 4, "finalCheckpoint": 4,
                "started": "2027-01-15T07:00:00Z", "stageStarted": "2027-01-15T07:59:00Z"
            }))
            .unwrap(),
        );
        let plan = decide(&job, &world(None, None), BUSY).unwrap();
        let r = plan.status.rolled_back.clone().expect("rolled back");
        assert_eq!((r.generation, r.parallelism), (4, 2));
        assert_eq!(r.template_hash, resources::template_hash(&good));
        assert!(reasons_of(&plan).contains(&reasons::ROLLOUT_FAILED));
        assert_eq!(
            plan.problem.as_ref().map(|p| p.reason.as_str()),
            Some(reasons::ROLLOUT_FAILED)
        );
        // Its workers are gone (no pods): straight to restoring the previous template from the
        // same final checkpoint.
        let rescale = plan.status.rescale.clone().unwrap();
        assert_eq!(
            (rescale.stage, rescale.checkpoint),
            (Stage::Restoring, Some(4))
        );
        assert_eq!(
            plan.status.template_hash,
            Some(resources::template_hash(&good))
        );
        // Rolled back and running the previous template: it holds, Degraded, for this spec.
        let status = job.status.as_mut().unwrap();
        status.rolled_back = Some(r);
        status.rescale = None;
        status.phase = Some(Phase::Running);
        status.epoch = 3;
        status.template_hash = Some(resources::template_hash(&good));
        let plan = decide(&job, &world(None, None), BUSY).unwrap();
        assert!(
            plan.status.rescale.is_none(),
            "no rescale towards the failed spec"
        );
        assert_eq!(
            plan.problem.as_ref().map(|p| p.reason.as_str()),
            Some(reasons::ROLLOUT_FAILED)
        );
        // A new spec ends it: the template change is tried again.
        job.metadata.generation = Some(5);
        let plan = decide(&job, &world(None, None), BUSY).unwrap();
        assert!(plan.status.rolled_back.is_none());
        assert_eq!(
            plan.status.rescale.map(|r| r.reason),
            Some(RescaleReason::TemplateChange)
        );
    }

    #[test]
    fn a_new_snapshot_asks_for_a_checkpoint_and_pins_it_before_the_trigger() {
        let mut job = running(2, None);
        job.status.as_mut().unwrap().last_checkpoint_attempt = Some(at(-1));
        let mut w = world(None, None);
        assert!(
            decide(&job, &w, BUSY)
                .unwrap()
                .status
                .pending_checkpoint
                .is_none(),
            "not yet time for a periodic one"
        );
        w.snapshots = vec![snapshot::plan::Seen {
            name: "before-release".into(),
            uid: "s1".into(),
            status: Default::default(),
            stored: None,
        }];
        let plan = decide(&job, &w, BUSY).unwrap();
        assert_eq!(
            plan.status.pending_checkpoint.as_ref().map(|p| p.id),
            Some(5)
        );
        assert_eq!(plan.snapshots.len(), 1);
        assert_eq!(plan.snapshots[0].pin, Some(5));
        assert_eq!(
            plan.snapshots[0]
                .status
                .store
                .as_ref()
                .map(|s| s.job.as_str()),
            Some("prod/orders")
        );
        assert!(plan.actions.contains(&trigger(5, false)));
    }

    #[test]
    fn a_job_starting_from_a_snapshot_imports_it_before_any_worker_runs() {
        let mut job = running(2, None);
        job.spec.initial_state = serde_json::from_value(
            serde_json::json!({"from": "Snapshot", "snapshot": "before-release"}),
        )
        .unwrap();
        job.status = None;
        let mut w = world(None, None);
        w.initial_snapshot = Some(Ok(Source {
            url: "s3://bucket/jobs".into(),
            job: "prod/other".into(),
            id: 9,
        }));
        let plan = decide(&job, &w, BUSY).unwrap();
        let applied = plan.status.initial_state.clone().unwrap();
        assert_eq!((applied.checkpoint, applied.ready), (Some(5), false));
        assert_eq!(
            plan.actions,
            [Act::Import {
                from: w.initial_snapshot.clone().unwrap().unwrap(),
                into: 5
            }]
        );
        assert_eq!(
            plan.status.phase,
            Some(Phase::Pending),
            "no worker before the import"
        );
        // Imported: the job starts from it, not from the store's older checkpoints 3 and 4.
        job.status = Some(plan.status);
        w.store_ids.push((5, true));
        let plan = decide(&job, &w, BUSY).unwrap();
        let rescale = plan.status.rescale.clone().unwrap();
        assert_eq!(
            (rescale.stage, rescale.checkpoint),
            (Stage::Restoring, Some(5))
        );
        // A snapshot that cannot be used holds the start, Degraded with why.
        job.status = None;
        w.initial_snapshot = Some(Err("snapshot before-release is Failed".into()));
        let plan = decide(&job, &w, BUSY).unwrap();
        assert_eq!(plan.status.phase, Some(Phase::Pending));
        assert_eq!(
            plan.problem.map(|p| p.reason),
            Some(reasons::INITIAL_STATE_UNAVAILABLE.to_owned())
        );
    }

    #[test]
    fn a_new_checkpoint_is_recorded_with_the_trigger_that_follows_it() {
        let plan = decide(&running(2, None), &world(None, None), BUSY).unwrap();
        let p = plan.status.pending_checkpoint.as_ref().expect("recorded");
        assert_eq!((p.id, p.epoch, p.stop), (5, 1, false));
        assert_eq!(plan.status.last_issued_checkpoint, Some(5));
        assert_eq!(plan.status.last_checkpoint_attempt, Some(at(0)));
        assert!(matches!(plan.actions[0], Act::DeleteUnusedClaims(_)));
        assert_eq!(plan.actions[1..], [trigger(5, false)]);
        assert_eq!(plan.commit, None);
    }

    #[test]
    fn a_ready_checkpoint_is_committed_then_recorded_and_notified() {
        let mut job = running(2, Some(pending(5)));
        let failed = serde_json::json!({"type": "Degraded", "status": "True",
            "reason": reasons::CHECKPOINT_FAILED, "message": "checkpoint 4 failed",
            "lastTransitionTime": "2027-01-15T08:00:00Z"});
        job.status.as_mut().unwrap().conditions = vec![serde_json::from_value(failed).unwrap()];
        let ready = ready(5);
        let Completion::Ready(meta) = ready.completion.clone() else {
            unreachable!("ready(5) is ready")
        };
        let plan = decide(&job, &world(Some(ready), Some((5, None))), BUSY).unwrap();
        assert_eq!(plan.commit, Some(meta));
        assert_eq!(plan.status.pending_checkpoint, None);
        assert_eq!(plan.status.last_checkpoint.as_ref().map(|c| c.id), Some(5));
        assert!(plan.status.checkpoints.is_empty(), "history 0 lists none");
        assert_eq!(
            plan.problem, None,
            "a completed checkpoint clears the failure"
        );
        assert_eq!(reasons_of(&plan), [reasons::CHECKPOINT_COMPLETED]);
        let notify = Act::Notify {
            id: 5,
            epoch: 1,
            parallelism: 2,
            notice: Notice::Complete,
        };
        assert_eq!(plan.actions[1..], [notify, Act::Retain]);
    }

    #[test]
    fn a_refused_trigger_fails_the_checkpoint_and_the_next_round_aborts_it() {
        let mut job = running(2, Some(pending(5)));
        job.spec.checkpointing.tolerable_failures = 0;
        let refused = world(
            Some(waiting(5, None)),
            Some((5, Some("worker 1 has no pod with an IP"))),
        );
        let plan = decide(&job, &refused, BUSY).unwrap();
        let p = plan.status.pending_checkpoint.as_ref().unwrap();
        assert_eq!(p.failure.as_deref(), Some("worker 1 has no pod with an IP"));
        assert_eq!(
            plan.problem.as_ref().map(|p| p.reason.as_str()),
            Some(reasons::CHECKPOINT_FAILED)
        );
        assert_eq!(reasons_of(&plan), [reasons::CHECKPOINT_FAILED]);
        assert_eq!(
            plan.tallies,
            [Tally::CheckpointEnded {
                outcome: "failed",
                failure: Some(failure::REFUSED)
            }]
        );
        assert_eq!(
            plan.actions.len(),
            1,
            "no trigger again: {:?}",
            plan.actions
        );

        let mut next = job.clone();
        next.status = Some(plan.status);
        let plan = decide(&next, &world(None, Some((5, None))), BUSY).unwrap();
        assert_eq!(plan.status.pending_checkpoint, None);
        assert_eq!(reasons_of(&plan), [reasons::CHECKPOINT_ABORTED]);
        // Given up now, but counted as a failure once, when it failed.
        assert_eq!(
            plan.tallies,
            [Tally::CheckpointEnded {
                outcome: "aborted",
                failure: None
            }]
        );
        assert!(matches!(
            plan.actions[1],
            Act::Notify {
                id: 5,
                notice: Notice::Abort,
                ..
            }
        ));
    }

    #[test]
    fn a_periodic_trigger_says_when_it_was_due_an_asked_for_one_does_not() {
        // Last triggered an hour ago, every 10 s: due 3590 s ago.
        let job = running(2, None);
        let plan = decide(&job, &world(None, None), BUSY).unwrap();
        assert_eq!(plan.tallies, [Tally::CheckpointDue(at(-3590))]);
        // spec.checkpointTrigger: not on a schedule.
        let mut asked = job.clone();
        asked.spec.checkpoint_trigger = Some("now".into());
        let plan = decide(&asked, &world(None, None), BUSY).unwrap();
        assert!(plan.actions.contains(&trigger(5, false)));
        assert_eq!(plan.tallies, []);
        // A snapshot's checkpoint before the due time: neither.
        let mut early = job;
        early.status.as_mut().unwrap().last_checkpoint_attempt = Some(at(-1));
        let mut w = world(None, None);
        w.snapshots = vec![snapshot::plan::Seen {
            name: "s".into(),
            uid: "s1".into(),
            status: Default::default(),
            stored: None,
        }];
        let plan = decide(&early, &w, BUSY).unwrap();
        assert!(plan.actions.contains(&trigger(5, false)));
        assert_eq!(plan.tallies, []);
    }

    #[test]
    fn a_checkpoint_recorded_by_an_earlier_process_is_asked_for_again() {
        let job = running(2, Some(pending(5)));
        let waiting = waiting(5, Some("ignored: not asked here"));
        let plan = decide(&job, &world(Some(waiting.clone()), None), BUSY).unwrap();
        assert_eq!(plan.actions[1..], [trigger(5, false)]);
        assert_eq!(plan.status.pending_checkpoint, Some(pending(5)));
        let plan = decide(&job, &world(Some(waiting), Some((5, None))), BUSY).unwrap();
        assert_eq!(plan.actions.len(), 1, "asked already: {:?}", plan.actions);
        assert!(plan.status.pending_checkpoint.unwrap().failure.is_some());
    }

    fn degraded(
        reason: &str,
        since: i64,
    ) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        condition(status::DEGRADED, "True", reason, since)
    }

    fn condition(
        type_: &str,
        status: &str,
        reason: &str,
        since: i64,
    ) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: "m".into(),
            observed_generation: None,
            last_transition_time: at(since),
        }
    }

    fn problem_of(plan: &Plan) -> Option<&str> {
        plan.problem.as_ref().map(|p| p.reason.as_str())
    }

    #[test]
    fn checkpoint_failures_degrade_only_past_the_tolerable_number() {
        let mut job = running(2, Some(pending(5)));
        job.spec.checkpointing.tolerable_failures = 1;
        let refused = world(Some(waiting(5, None)), Some((5, Some("upload refused"))));
        let plan = decide(&job, &refused, BUSY).unwrap();
        assert_eq!(plan.status.consecutive_checkpoint_failures, 1);
        assert_eq!(problem_of(&plan), None, "one failure is tolerated");
        assert_eq!(
            reasons_of(&plan),
            [reasons::CHECKPOINT_FAILED],
            "an Event all the same"
        );
        // The next round aborts it: the same failure, not counted twice.
        let mut next = job.clone();
        next.status = Some(plan.status);
        let plan = decide(&next, &world(None, Some((5, None))), BUSY).unwrap();
        assert_eq!(plan.status.consecutive_checkpoint_failures, 1);
        assert_eq!(problem_of(&plan), None);
        // A second one in a row is one too many.
        let mut job = running(2, Some(pending(6)));
        job.spec.checkpointing.tolerable_failures = 1;
        job.status.as_mut().unwrap().consecutive_checkpoint_failures = 1;
        let refused = world(Some(waiting(6, None)), Some((6, Some("upload refused"))));
        let plan = decide(&job, &refused, BUSY).unwrap();
        assert_eq!(plan.status.consecutive_checkpoint_failures, 2);
        assert_eq!(problem_of(&plan), Some(reasons::CHECKPOINT_FAILED));
        let message = &plan.problem.as_ref().unwrap().message;
        assert!(
            message.contains("upload refused") && message.contains("2 consecutive"),
            "{message}"
        );
        // A timed-out checkpoint counts the same way.
        let mut job = running(
            2,
            Some(PendingCheckpoint {
                started: at(-120),
                ..pending(6)
            }),
        );
        job.spec.checkpointing.tolerable_failures = 1;
        job.status.as_mut().unwrap().consecutive_checkpoint_failures = 1;
        let plan = decide(&job, &world(Some(waiting(6, None)), Some((6, None))), BUSY).unwrap();
        assert_eq!(plan.status.consecutive_checkpoint_failures, 2);
        assert_eq!(problem_of(&plan), Some(reasons::CHECKPOINT_ABORTED));
        // A completed checkpoint resets the count and clears Degraded.
        let mut job = running(2, Some(pending(5)));
        let st = job.status.as_mut().unwrap();
        st.consecutive_checkpoint_failures = 7;
        st.conditions = vec![degraded(reasons::CHECKPOINT_FAILED, -30)];
        let plan = decide(&job, &world(Some(ready(5)), Some((5, None))), BUSY).unwrap();
        assert_eq!(plan.status.consecutive_checkpoint_failures, 0);
        assert_eq!(problem_of(&plan), None);
    }

    #[test]
    fn no_checkpoint_within_the_progress_deadline_degrades_until_one_completes() {
        // Interval 10s: the deadline is 30s. Running since 100s ago.
        let mut job = running(2, Some(pending(5)));
        let st = job.status.as_mut().unwrap();
        st.conditions = vec![condition(status::READY, "True", "WorkersReady", -100)];
        let w = world(Some(waiting(5, None)), Some((5, None)));
        let plan = decide(&job, &w, BUSY).unwrap();
        assert_eq!(problem_of(&plan), Some(reasons::NO_CHECKPOINT_PROGRESS));
        let message = &plan.problem.as_ref().unwrap().message;
        assert!(
            message.contains("progressDeadline (30s)") && message.contains("CheckpointFailed"),
            "{message}"
        );
        // A checkpoint completed 20s ago is progress: nothing to show, and a shown one clears.
        let st = job.status.as_mut().unwrap();
        st.last_checkpoint = Some(coordinator::record(
            &testing::checkpoint(16, 2, 1),
            None,
            &at(-20),
        ));
        assert_eq!(problem_of(&decide(&job, &w, BUSY).unwrap()), None);
        let st = job.status.as_mut().unwrap();
        st.conditions
            .push(degraded(reasons::NO_CHECKPOINT_PROGRESS, -50));
        assert_eq!(problem_of(&decide(&job, &w, BUSY).unwrap()), None);
        // An explicit deadline; and a job that just became ready is given its full deadline.
        job.spec.checkpointing.progress_deadline = Some("10s".into());
        assert_eq!(
            problem_of(&decide(&job, &w, BUSY).unwrap()),
            Some(reasons::NO_CHECKPOINT_PROGRESS)
        );
        let st = job.status.as_mut().unwrap();
        st.conditions = vec![condition(status::READY, "True", "WorkersReady", -5)];
        assert_eq!(problem_of(&decide(&job, &w, BUSY).unwrap()), None);
        // Another problem shown stays: it says more.
        let st = job.status.as_mut().unwrap();
        st.conditions = vec![
            condition(status::READY, "True", "WorkersReady", -100),
            degraded(reasons::WORKER_LOST, -50),
        ];
        st.last_checkpoint = None;
        assert_eq!(
            problem_of(&decide(&job, &w, BUSY).unwrap()),
            Some(reasons::WORKER_LOST)
        );
        job.spec.checkpointing.progress_deadline = Some("0s".into());
        let e = decide(&job, &w, BUSY).unwrap_err();
        assert!(
            e.to_string()
                .contains("spec.checkpointing.progressDeadline"),
            "{e}"
        );
    }

    /// Worker pod `index` of epoch `epoch`, ready.
    fn ready_pod(index: u32, epoch: u64) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": format!("orders-{index}"),
                "uid": format!("pod-{epoch}-{index}"),
                "labels": {EPOCH_LABEL: epoch.to_string()}
            },
            "status": {"conditions": [
                {"type": "Initialized", "status": "True"},
                {"type": "Ready", "status": "True"}
            ]}
        }))
        .unwrap()
    }

    #[test]
    fn a_worker_lost_degraded_clears_once_the_restarted_workers_are_ready() {
        let mut job = running(2, None);
        let st = job.status.as_mut().unwrap();
        st.phase = Some(Phase::RollingForward);
        st.epoch = 2;
        st.parallelism = 0;
        st.rescale = Some(super::super::super::crd::RescaleStatus {
            from: 2,
            to: 2,
            stage: Stage::RollingForward,
            reason: RescaleReason::Recovery,
            checkpoint: Some(4),
            final_checkpoint: None,
            started: at(-60),
            stage_started: at(-10),
        });
        st.restarts = vec![at(-700), at(-60)];
        st.conditions = vec![degraded(reasons::WORKER_LOST, -60)];
        let mut w = world(None, None);
        w.pods = vec![ready_pod(0, 2)];
        let plan = decide(&job, &w, BUSY).unwrap();
        assert_eq!(plan.status.phase, Some(Phase::RollingForward));
        assert_eq!(
            problem_of(&plan),
            Some(reasons::WORKER_LOST),
            "one worker is not ready yet"
        );
        w.pods.push(ready_pod(1, 2));
        let plan = decide(&job, &w, BUSY).unwrap();
        assert_eq!(plan.status.phase, Some(Phase::Running));
        assert_eq!(problem_of(&plan), None);
        assert_eq!(
            plan.status.ready_workers,
            Some(ReadyWorkers::of(&["pod-2-0", "pod-2-1"]))
        );
        // Only the restarts within spec.restartPolicy.window (10m) stay in status.
        assert_eq!(plan.status.restarts, [at(-60)]);
    }

    #[test]
    fn a_failed_job_stays_degraded_until_restarted() {
        let mut job = running(2, None);
        let st = job.status.as_mut().unwrap();
        st.phase = Some(Phase::Failed);
        st.parallelism = 0;
        let plan = decide(&job, &world(None, None), BUSY).unwrap();
        assert_eq!(problem_of(&plan), Some(reasons::RESTART_LIMIT_REACHED));
        assert_eq!(plan.actions, [Act::StopWorkers]);
        assert_eq!(plan.status.phase, Some(Phase::Failed));
        // A new nonce, no pod left: the workers restore from the latest checkpoint.
        job.spec.restart_nonce = Some("fixed".into());
        let plan = decide(&job, &world(None, None), BUSY).unwrap();
        let r = plan.status.rescale.as_ref().expect("restarting");
        assert_eq!(
            (r.stage, r.reason, r.checkpoint),
            (Stage::Restoring, RescaleReason::Restart, Some(4))
        );
        assert_eq!(plan.status.restart_nonce.as_deref(), Some("fixed"));
    }

    #[test]
    fn a_rescale_supersedes_the_pending_checkpoint_with_its_final_one() {
        let job = running(3, Some(pending(5)));
        let plan = decide(&job, &world(None, Some((5, None))), BUSY).unwrap();
        let r = plan.status.rescale.as_ref().expect("a rescale started");
        assert_eq!(
            (r.stage, r.final_checkpoint),
            (Stage::Checkpointing, Some(6))
        );
        let p = plan.status.pending_checkpoint.as_ref().unwrap();
        assert_eq!((p.id, p.stop), (6, true));
        assert_eq!(plan.status.last_issued_checkpoint, Some(6));
        let abort = Act::Notify {
            id: 5,
            epoch: 1,
            parallelism: 2,
            notice: Notice::Abort,
        };
        let claims = Act::PrepareClaims { from: 2, to: 3 };
        assert_eq!(plan.actions, [abort, trigger(6, true), claims]);
        assert!(reasons_of(&plan).contains(&reasons::CHECKPOINT_ABORTED));
        assert_eq!(plan.requeue, FINAL_CHECKPOINT_POLL);
    }

    /// Job `prod/orders` rescaling from 2 to 3 workers, its final checkpoint 5 asked for.
    fn rescaling_2_to_3() -> StatefulJob {
        let mut job = running(3, None);
        let st = job.status.as_mut().unwrap();
        st.phase = Some(Phase::Checkpointing);
        st.pending_checkpoint = Some(PendingCheckpoint {
            stop: true,
            ..pending(5)
        });
        st.rescale = Some(
            serde_json::from_value(serde_json::json!({
                "from": 2, "to": 3, "stage": "Checkpointing", "reason": "Scale",
                "checkpoint": 4, "finalCheckpoint": 5,
                "started": at(-5), "stageStarted": at(-5)
            }))
            .unwrap(),
        );
        job
    }

    #[test]
    fn a_round_that_waited_for_the_final_uploads_looks_again_at_once() {
        let job = rescaling_2_to_3();
        for (waited, requeue) in [
            (Duration::ZERO, FINAL_CHECKPOINT_POLL),
            (Duration::from_millis(100), Duration::from_millis(150)),
            (FINAL_CHECKPOINT_POLL, Duration::ZERO),
        ] {
            let in_flight = InFlight {
                waited,
                ..waiting(5, None)
            };
            let plan = decide(&job, &world(Some(in_flight), Some((5, None))), BUSY).unwrap();
            assert_eq!(plan.requeue, requeue, "waited {waited:?}");
        }
    }

    #[test]
    fn a_worker_that_restarted_in_the_final_checkpoint_is_asked_again() {
        let job = rescaling_2_to_3();
        let forgot = |w: WorkerFailure| InFlight {
            worker_failure: Some(w),
            ..waiting(5, None)
        };
        let restarted = forgot(WorkerFailure::Forgot("worker 0 restarted".into()));
        let plan = decide(&job, &world(Some(restarted.clone()), Some((5, None))), BUSY).unwrap();
        assert_eq!(plan.actions, [trigger(5, true)]);
        assert_eq!(reasons_of(&plan), [reasons::FINAL_CHECKPOINT_RETRIED]);
        let r = plan.status.rescale.as_ref().unwrap();
        assert_eq!(
            (r.stage, r.final_checkpoint),
            (Stage::Checkpointing, Some(5))
        );
        assert_eq!(plan.status.pending_checkpoint.unwrap().failure, None);
        // Not asked by this process: asked without an Event, as any recorded checkpoint.
        let plan = decide(&job, &world(Some(restarted), None), BUSY).unwrap();
        assert_eq!(plan.actions, [trigger(5, true)]);
        assert!(reasons_of(&plan).is_empty());
        // A worker that failed it fails it: the rescale goes on from checkpoint 4.
        let failed = forgot(WorkerFailure::Failed("worker 1 failed".into()));
        let plan = decide(&job, &world(Some(failed), Some((5, None))), BUSY).unwrap();
        let r = plan.status.rescale.as_ref().unwrap();
        assert_ne!(r.stage, Stage::Checkpointing);
        assert_eq!(r.checkpoint, Some(4));
        assert!(reasons_of(&plan).contains(&reasons::FINAL_CHECKPOINT_FAILED));
    }

    #[test]
    fn a_completed_final_checkpoint_starts_the_workers_before_retention() {
        let job = rescaling_2_to_3();
        let plan = decide(&job, &world(Some(ready(5)), Some((5, None))), BUSY).unwrap();
        // No worker of epoch 1 is left (the world has no pods): the new ones start at once.
        assert_eq!(plan.status.rescale.unwrap().stage, Stage::Restoring);
        let run = Act::RunWorkers(Generation {
            epoch: 2,
            parallelism: 3,
            checkpoint: Some(5),
        });
        let notify = Act::Notify {
            id: 5,
            epoch: 1,
            parallelism: 2,
            notice: Notice::Complete,
        };
        // Garbage collection takes seconds in a large store; the new workers do not wait.
        assert_eq!(plan.actions, [notify, run, Act::Retain]);
    }

    /// The bytes of `plan`'s status as the controller writes it (with its conditions), the
    /// job's own pod template aside.
    fn written_bytes(job: &StatefulJob, plan: &Plan) -> usize {
        let mut st = plan.status.clone();
        st.conditions = status::conditions(
            &st.conditions,
            &JobState::from_status(Some(&st)),
            plan.problem.as_ref(),
            job.metadata.generation,
            &at(0),
        );
        st.last_ready_template = None;
        serde_json::to_vec(&st).unwrap().len()
    }

    #[test]
    fn status_of_512_workers_stays_bounded_and_still_tells_a_lost_worker() {
        use crate::checkpoint::progress::{RestorePhase, RestoreProgress};
        use crate::operator::crd::STATUS_BYTES_BOUND;
        let n = 512;
        let mut job = running(n, None);
        job.spec.max_parallelism = 32768;
        job.spec.checkpointing.history = 20;
        job.spec.restart_policy.limit = 100;
        let st = job.status.as_mut().unwrap();
        // Mid-rescale 511 -> 512, every list at the largest size its spec allows.
        st.phase = Some(Phase::RollingForward);
        st.epoch = 2;
        st.parallelism = 0;
        st.rescale = Some(super::super::super::crd::RescaleStatus {
            from: n - 1,
            to: n,
            stage: Stage::RollingForward,
            reason: RescaleReason::Scale,
            checkpoint: Some(4),
            final_checkpoint: Some(4),
            started: at(-60),
            stage_started: at(-10),
        });
        st.checkpoints = (0..20)
            .map(|i| CheckpointRecord {
                id: 4 - i.min(4),
                time: at(-600 + i as i64),
                epoch: 1,
                bytes_total: u64::MAX,
                bytes_new: u64::MAX,
                duration_seconds: 12.345678,
            })
            .collect();
        st.restarts = (0..100).map(|i| at(-500 + i)).collect();
        // UIDs as the API server writes them (36 characters).
        let uid = |i: u32| format!("00000002-0000-4000-8000-{i:012x}");
        let pod = |i: u32| {
            let mut p = ready_pod(i, 2);
            p.metadata.uid = Some(uid(i));
            p
        };
        let mut w = world(None, None);
        w.pods = (0..n - 1).map(pod).collect();
        w.restore_progress = (0..n)
            .map(|subtask| RestoreProgress {
                format_version: 1,
                subtask,
                phase: if subtask % 2 == 0 {
                    RestorePhase::Done
                } else {
                    RestorePhase::Downloading
                },
                bytes_done: 1 << 40,
                bytes_total: 1 << 41,
                updated_at: chrono::Utc::now(),
            })
            .collect();
        let plan = decide(&job, &w, BUSY).unwrap();
        assert_eq!(plan.status.phase, Some(Phase::RollingForward));
        assert_eq!(plan.status.restarts.len(), 100);
        assert!(plan.status.restore_progress.is_some());
        let rolling = written_bytes(&job, &plan);
        assert!(rolling <= STATUS_BYTES_BOUND, "{rolling} bytes");

        // Every worker ready: the set is recorded, in a fixed size.
        w.pods.push(pod(n - 1));
        let plan = decide(&job, &w, BUSY).unwrap();
        assert_eq!(plan.status.phase, Some(Phase::Running));
        let uids: Vec<String> = (0..n).map(uid).collect();
        assert_eq!(plan.status.ready_workers, Some(ReadyWorkers::of(&uids)));
        let running_bytes = written_bytes(&job, &plan);
        assert!(running_bytes <= STATUS_BYTES_BOUND, "{running_bytes} bytes");
        let mut listed = plan.clone();
        listed.status.worker_pods = uids.clone();
        assert!(
            written_bytes(&job, &listed) > STATUS_BYTES_BOUND,
            "the former list of UIDs alone breaks the bound at this parallelism"
        );

        // A replaced worker, a deleted one: both lost.
        job.status = Some(plan.status.clone());
        // Below spec.restartPolicy.limit: a lost worker restarts the workers.
        job.status.as_mut().unwrap().restarts.clear();
        let mut replaced = w.clone();
        replaced.pods[7].metadata.uid = Some("pod-2-7-again".into());
        let plan = decide(&job, &replaced, BUSY).unwrap();
        assert!(
            reasons_of(&plan).contains(&reasons::WORKER_LOST),
            "{plan:?}"
        );
        let mut deleted = w.clone();
        deleted.pods.remove(300);
        let plan = decide(&job, &deleted, BUSY).unwrap();
        let lost = plan
            .events
            .iter()
            .find(|e| e.reason == reasons::WORKER_LOST);
        assert!(
            lost.is_some_and(|e| e.message.contains("orders-300 is gone")),
            "{:?}",
            plan.events
        );
        assert_eq!(
            reasons_of(&decide(&job, &w, BUSY).unwrap()),
            Vec::<&str>::new()
        );

        // Status an earlier version wrote: its list of UIDs is read as the same set.
        let st = job.status.as_mut().unwrap();
        st.ready_workers = None;
        st.worker_pods = uids;
        let plan = decide(&job, &w, BUSY).unwrap();
        assert_eq!(reasons_of(&plan), Vec::<&str>::new());
        assert!(plan.status.worker_pods.is_empty());
        assert_eq!(plan.status.ready_workers.as_ref().map(|r| r.count), Some(n));
        let plan = decide(&job, &deleted, BUSY).unwrap();
        assert!(reasons_of(&plan).contains(&reasons::WORKER_LOST));
    }
}
