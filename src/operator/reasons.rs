//! Every reason the operator writes, in one place: of its Events and of its conditions' reasons
//! (stage and phase names aside, which come from `Stage` and `Phase`). Alert rules, dashboards
//! and scripts match on these, so they change only with a note in the changelog.

// Events about checkpoints.
/// A checkpoint was asked of every worker.
pub const CHECKPOINT_TRIGGERED: &str = "CheckpointTriggered";
/// A checkpoint completed (its metadata is in the store).
pub const CHECKPOINT_COMPLETED: &str = "CheckpointCompleted";
/// A worker reported that it could not take or upload its part of a checkpoint.
pub const CHECKPOINT_FAILED: &str = "CheckpointFailed";
/// A checkpoint did not complete within `spec.checkpoint.timeout`.
pub const CHECKPOINT_ABORTED: &str = "CheckpointAborted";
/// The stop-with-checkpoint of a rescale completed.
pub const FINAL_CHECKPOINT_COMPLETED: &str = "FinalCheckpointCompleted";
/// The stop-with-checkpoint of a rescale failed; the rescale goes on from the latest one.
pub const FINAL_CHECKPOINT_FAILED: &str = "FinalCheckpointFailed";
/// A worker restarted during the stop-with-checkpoint of a rescale and was asked again.
pub const FINAL_CHECKPOINT_RETRIED: &str = "FinalCheckpointRetried";

// Events about rescales.
/// A rescale started over (a worker or pod was lost mid-way).
pub const RESCALE_RESTARTED: &str = "RescaleRestarted";
/// `spec.parallelism` changed during a rescale.
pub const RESCALE_RETARGETED: &str = "RescaleRetargeted";
/// A restore did not finish within `spec.restore.timeout`: the previous retained checkpoint.
pub const RESTORE_FALLBACK: &str = "RestoreFallback";
/// A worker of a running job was lost; all restart from the latest checkpoint.
pub const WORKER_LOST: &str = "WorkerLost";
/// A worker was lost again after `spec.restartPolicy.limit` restarts within its window: every
/// worker is stopped until a new `spec.restartNonce` (or `spec.template`).
pub const RESTART_LIMIT_REACHED: &str = "RestartLimitReached";
/// `spec.restartNonce` changed: every worker restarts from the latest checkpoint.
pub const RESTART_REQUESTED: &str = "RestartRequested";
/// The job was suspended (`spec.suspend`).
pub const SUSPENDED: &str = "Suspended";
/// A worker's state claim was deleted with the job's rescale.
pub const STATE_CLAIM_DELETED: &str = "StateClaimDeleted";
/// The job was deleted; its checkpoints stay in the store.
pub const DELETED: &str = "Deleted";

// Events about snapshots and initial state.
/// A deleted StatefulJobSnapshot's checkpoint could not be released (store unreachable).
pub const SNAPSHOT_NOT_DISPOSED: &str = "SnapshotNotDisposed";
/// A deleted job's final checkpoint was recorded as a StatefulJobSnapshot.
pub const FINAL_SNAPSHOT: &str = "FinalSnapshot";
/// The new workers of a rescale or template change were not ready within
/// spec.rollout.readinessTimeout: the job rolled back (an Event, and Degraded until the spec
/// changes).
pub const ROLLOUT_FAILED: &str = "RolloutFailed";
/// spec.initialState was applied (at the start or for spec.restoreNonce).
pub const INITIAL_STATE: &str = "InitialState";
/// Degraded: spec.initialState names a snapshot or checkpoint that cannot be used yet.
pub const INITIAL_STATE_UNAVAILABLE: &str = "InitialStateUnavailable";

// Reasons of the conditions Ready, Progressing and Degraded.
/// Ready: every worker of the epoch is ready.
pub const WORKERS_READY: &str = "WorkersReady";
/// Progressing: no rescale in progress.
pub const STABLE: &str = "Stable";
/// Degraded: nothing wrong.
pub const AS_EXPECTED: &str = "AsExpected";
/// Degraded: an error only the user can fix (a bad spec, a foreign Secret); the next round that
/// gets past it clears it.
pub const INVALID_SPEC: &str = "InvalidSpec";
/// Degraded: a restore init container of the current generation failed.
pub const RESTORE_FAILED: &str = "RestoreFailed";
/// Degraded: a worker container of the current generation keeps failing.
pub const WORKER_FAILING: &str = "WorkerFailing";
/// Degraded: the StatefulSet cannot create the generation's pods (admission, quota).
pub const PODS_NOT_CREATED: &str = "PodsNotCreated";
/// Degraded: no checkpoint completed within `spec.checkpointing.progressDeadline`.
pub const NO_CHECKPOINT_PROGRESS: &str = "NoCheckpointProgress";
/// Degraded: a pod has been terminating far longer than its grace period.
pub const POD_STUCK_TERMINATING: &str = "PodStuckTerminating";

/// Degraded reasons read from the pods each round: they clear when no longer observed.
pub const OBSERVED: [&str; 6] = [
    INITIAL_STATE_UNAVAILABLE,
    ROLLOUT_FAILED,
    RESTORE_FAILED,
    WORKER_FAILING,
    PODS_NOT_CREATED,
    POD_STUCK_TERMINATING,
];

/// Degraded reasons that the next completed checkpoint clears.
pub const CLEARED_BY_A_CHECKPOINT: [&str; 7] = [
    CHECKPOINT_FAILED,
    CHECKPOINT_ABORTED,
    FINAL_CHECKPOINT_COMPLETED,
    FINAL_CHECKPOINT_FAILED,
    RESTORE_FALLBACK,
    NO_CHECKPOINT_PROGRESS,
    WORKER_LOST,
];

/// Degraded reasons that a generation whose workers all became ready clears (the restart they
/// report is over).
pub const CLEARED_WHEN_RUNNING: [&str; 2] = [WORKER_LOST, RESTART_LIMIT_REACHED];
