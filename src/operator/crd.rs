//! The `StatefulJob` custom resource (`regroup.dev/v1alpha1`): spec, status and the CRD.
//!
//! The schema is generated from these types; the API server enforces every rule written here
//! (OpenAPI ranges and patterns, plus CEL rules where the schema alone cannot say it), so a bad
//! spec is refused at `kubectl apply` with a message that names the field. `crds/` holds the
//! output of [`crd_yaml`], checked in.

use std::time::Duration;

use k8s_openapi::api::core::v1::{
    EmptyDirVolumeSource, PersistentVolumeClaimSpec, PodTemplateSpec, ResourceRequirements,
    SecurityContext,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// API group of regroup's resources.
pub const GROUP: &str = "regroup.dev";
/// Largest `maxParallelism` (number of key groups) a job may have.
pub const MAX_KEY_GROUPS: u32 = 32768;
/// Go-style durations as the API server checks them: `30s`, `5m`, `1h30m`, `500ms`.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

/// Desired state of a stateful, key-partitioned job.
// Each printcolumn(...) repeats `type_ = ...`: one column each, not a duplicate.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "regroup.dev",
    version = "v1alpha1",
    kind = "StatefulJob",
    namespaced,
    shortname = "sj",
    category = "all",
    status = "StatefulJobStatus",
    derive = "PartialEq",
    doc = "A stateful, key-partitioned job whose state regroup checkpoints into an object store and redistributes when its parallelism changes.",
    scale(
        spec_replicas_path = ".spec.parallelism",
        status_replicas_path = ".status.parallelism",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Parallelism",
        type_ = "integer",
        json_path = ".spec.parallelism",
        description = "Desired number of workers"
    ),
    printcolumn(
        name = "Current",
        type_ = "integer",
        json_path = ".status.parallelism",
        description = "Number of workers of the running generation"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Lifecycle phase"
    ),
    printcolumn(
        name = "Progress",
        type_ = "string",
        json_path = ".status.restoreProgress.summary",
        description = "How far the restores of a rescale got"
    ),
    printcolumn(
        name = "Last Checkpoint",
        type_ = "integer",
        json_path = ".status.lastCheckpoint.id",
        description = "Id of the newest completed checkpoint"
    ),
    printcolumn(
        name = "Checkpoint Age",
        type_ = "date",
        json_path = ".status.lastCheckpoint.time",
        priority = 1,
        description = "When the newest checkpoint completed"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.parallelism <= self.maxParallelism",
        "message": "parallelism must not exceed maxParallelism (the number of key groups): a worker owns at least one key group",
        "fieldPath": ".parallelism",
        "reason": "FieldValueInvalid"
    }
]))]
pub struct StatefulJobSpec {
    /// Number of workers (subtasks). Changing it rescales the job: final checkpoint, stop,
    /// restore into the new number of workers. Between 1 and maxParallelism. Target of the scale
    /// subresource (`kubectl scale`, HorizontalPodAutoscaler).
    #[schemars(range(min = 1, max = 32768))]
    pub parallelism: u32,

    /// Number of key groups: the upper bound of parallelism and the unit of state redistribution.
    /// Fixed for the life of the job (state is partitioned by it); between 1 and 32768.
    #[serde(default = "default_max_parallelism")]
    #[schemars(range(min = 1, max = 32768))]
    #[schemars(extend("x-kubernetes-validations" = [
        {
            "rule": "self == oldSelf",
            "message": "maxParallelism is immutable: the job's state is partitioned into this many key groups",
            "reason": "FieldValueForbidden"
        }
    ]))]
    pub max_parallelism: u32,

    /// Pod template of a worker. regroup adds the restore init container, the state volume, the
    /// worker environment (REGROUP_SUBTASK, REGROUP_PARALLELISM, REGROUP_MAX_PARALLELISM,
    /// REGROUP_EPOCH, REGROUP_STORE, REGROUP_JOB, REGROUP_TOKEN_FILE) and its labels. The first
    /// container is the worker; it serves the checkpoint API on port 8080.
    pub template: PodTemplateSpec,

    /// Where checkpoints are stored. Immutable: the running workers write to this store.
    #[schemars(extend("x-kubernetes-validations" = [
        {
            "rule": "self == oldSelf",
            "message": "storage is immutable: the running workers write their checkpoints there. To move the job to another store, suspend it (spec.suspend: true), copy <url>/<namespace>/<name>/ to the new location, then delete the job and create it again with the new storage",
            "reason": "FieldValueForbidden"
        }
    ]))]
    pub storage: Storage,

    /// When and how checkpoints are taken.
    #[serde(default)]
    pub checkpointing: Checkpointing,

    /// How workers rebuild their state from a checkpoint.
    #[serde(default)]
    pub restore: Restore,

    /// Stops the job with a final checkpoint and scales it to zero while true; resuming restores
    /// from that checkpoint.
    #[serde(default)]
    pub suspend: bool,

    /// Any new value requests one checkpoint now (for example a timestamp or a UUID); the value
    /// acted on is recorded in status.checkpointTrigger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_trigger: Option<String>,

    /// How often the workers are restarted after a lost worker before regroup gives up.
    #[serde(default)]
    pub restart_policy: RestartPolicy,

    /// What a rescale or template change whose new workers never get ready does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,

    /// Any new value restarts every worker from the latest completed checkpoint (no final
    /// checkpoint), for example after fixing what made them fail, and resets the restart limit
    /// of spec.restartPolicy; the value acted on is recorded in status.restartNonce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub restart_nonce: Option<String>,

    /// The per-worker volume mounted at /state that holds the worker's RocksDB. A persistent
    /// volume claim per worker by default (kept through rescales, so a worker that keeps its
    /// ordinal reuses its local files); emptyDir on request. Immutable (a StatefulSet's claim
    /// templates are).
    #[serde(default)]
    pub state_volume: StateVolume,

    /// The state the job starts from: the newest checkpoint under its store path (default), none,
    /// a StatefulJobSnapshot, or a checkpoint of another job. Applied when the job first starts
    /// and when spec.restoreNonce changes; a running job never switches state otherwise.
    #[serde(default, skip_serializing_if = "InitialState::is_latest")]
    pub initial_state: InitialState,

    /// Any new value stops every worker and restores spec.initialState again (the state since
    /// then is discarded); the value acted on is recorded in status.initialState.nonce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub restore_nonce: Option<String>,

    /// What deleting the job does with its state: Snapshot (default) stops the workers with a
    /// final checkpoint and records it as a StatefulJobSnapshot named `<job>-final-<id>` that
    /// outlives the job; Delete stops them without one. Checkpoints stay in the store either
    /// way, subject to the retention of a job of the same name.
    #[serde(default, skip_serializing_if = "DeletionPolicy::is_default")]
    pub deletion_policy: DeletionPolicy,

    /// Snapshots taken on a schedule: each a StatefulJobSnapshot `<job>-<yyyymmddhhmm>` owned
    /// by the job (deleted with it, unlike its final snapshot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<SnapshotSchedule>,
}

/// When to take snapshots and how many to keep.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotSchedule {
    /// A cron schedule of five fields (minute hour day-of-month month day-of-week), in UTC,
    /// e.g. `0 3 * * *`; a slot missed while the operator was down is taken once, late.
    #[schemars(length(min = 9, max = 128))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.split(' ').filter(f, f != '').size() == 5",
        "message": "spec.snapshots.schedule must be a cron schedule of five fields: minute hour day-of-month month day-of-week, e.g. '0 3 * * *'",
        "reason": "FieldValueInvalid"
    }]))]
    pub schedule: String,
    /// Scheduled snapshots kept, newest first (default 7); older ones are deleted.
    #[serde(default = "default_keep")]
    #[schemars(range(min = 1, max = 1000))]
    pub keep: u32,
    /// Scheduled snapshots older than this are deleted, e.g. 168h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"), length(max = 64))]
    #[schemars(extend("x-kubernetes-validations" = [positive_duration("spec.snapshots.maxAge")]))]
    pub max_age: Option<String>,
}

fn default_keep() -> u32 {
    7
}

/// Where a job's state comes from when it starts.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.from != 'Snapshot' || has(self.snapshot)",
        "message": "initialState.snapshot (the name of a StatefulJobSnapshot in the job's namespace) is required when initialState.from is Snapshot",
        "fieldPath": ".snapshot",
        "reason": "FieldValueRequired"
    },
    {
        "rule": "self.from != 'Checkpoint' || has(self.checkpoint)",
        "message": "initialState.checkpoint ({url, job, id} of another job's checkpoint) is required when initialState.from is Checkpoint",
        "fieldPath": ".checkpoint",
        "reason": "FieldValueRequired"
    },
    {
        "rule": "(self.from == 'Snapshot') == has(self.snapshot) && (self.from == 'Checkpoint') == has(self.checkpoint)",
        "message": "initialState.snapshot goes only with from: Snapshot, initialState.checkpoint only with from: Checkpoint",
        "reason": "FieldValueInvalid"
    }
]))]
pub struct InitialState {
    /// Latest (default): the newest completed checkpoint under the job's store path; Empty: no
    /// state; Snapshot: spec.initialState.snapshot; Checkpoint: spec.initialState.checkpoint.
    #[serde(default)]
    pub from: StateSource,
    /// A Completed StatefulJobSnapshot in the job's namespace, of a job with the same
    /// maxParallelism.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub snapshot: Option<String>,
    /// A completed checkpoint of another job (a fork), read with this job's storage Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<CheckpointSource>,
}

impl InitialState {
    fn is_latest(&self) -> bool {
        *self == Self::default()
    }
}

/// Kinds of initial state.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum StateSource {
    /// The newest completed checkpoint under the job's own store path.
    #[default]
    Latest,
    /// No state.
    Empty,
    /// A StatefulJobSnapshot.
    Snapshot,
    /// A checkpoint of another job.
    Checkpoint,
}

/// A completed checkpoint of a job, anywhere.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointSource {
    /// The storage URL of the job the checkpoint belongs to (its spec.storage.url).
    #[schemars(length(min = 1, max = 1024))]
    #[schemars(extend("x-kubernetes-validations" = [
        {
            "rule": "self.matches('^(file:///|s3://[^/]+|gs://[^/]+|az://[^/]+)')",
            "message": "initialState.checkpoint.url must be s3://BUCKET[/PREFIX], gs://BUCKET[/PREFIX], az://CONTAINER[/PREFIX] or file:///PATH",
            "reason": "FieldValueInvalid"
        }
    ]))]
    pub url: String,
    /// That job, as NAMESPACE/NAME.
    #[schemars(length(min = 3, max = 317))]
    #[schemars(extend("x-kubernetes-validations" = [
        {
            "rule": "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",
            "message": "initialState.checkpoint.job must be NAMESPACE/NAME of the job whose checkpoint this is",
            "reason": "FieldValueInvalid"
        }
    ]))]
    pub job: String,
    /// The id of one of its completed checkpoints.
    pub id: u64,
}

/// What deleting a job does with its state.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// A final checkpoint, recorded as a StatefulJobSnapshot that outlives the job.
    #[default]
    Snapshot,
    /// No final checkpoint.
    Delete,
}

impl DeletionPolicy {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

fn default_max_parallelism() -> u32 {
    128
}

/// Location of and credentials for the checkpoint store.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Storage {
    /// Object store URL below which the job's checkpoints live (as `<url>/<namespace>/<name>/`):
    /// s3://BUCKET/PREFIX, gs://BUCKET/PREFIX, az://CONTAINER/PREFIX or file:///PATH (a path
    /// every worker and the operator share).
    #[schemars(length(min = 1, max = 1024))]
    #[schemars(extend("x-kubernetes-validations" = [
        {
            "rule": "self.matches('^(file:///|s3://[^/]+|gs://[^/]+|az://[^/]+)')",
            "message": "storage.url must be s3://BUCKET[/PREFIX], gs://BUCKET[/PREFIX], az://CONTAINER[/PREFIX] or file:///PATH",
            "reason": "FieldValueInvalid"
        }
    ]))]
    pub url: String,

    /// Secret in the job's namespace whose keys are passed to the workers and used by the operator
    /// as object store settings (for example AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    /// AWS_REGION, AWS_ENDPOINT, AWS_ALLOW_HTTP). Credentials are only accepted this way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretReference>,
}

/// A Secret in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretReference {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Checkpoint schedule, timeout, retention and the health they gate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.progressDeadline) || duration(self.progressDeadline) > duration(self.interval)",
        "message": "spec.checkpointing.progressDeadline must be longer than spec.checkpointing.interval: a checkpoint starts only once per interval",
        "fieldPath": ".progressDeadline",
        "reason": "FieldValueInvalid"
    }
]))]
pub struct Checkpointing {
    /// Time between the start of periodic checkpoints, e.g. 30s, 5m, 1h.
    #[serde(default = "default_interval")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"), length(max = 64))]
    #[schemars(extend("x-kubernetes-validations" = [positive_duration("spec.checkpointing.interval")]))]
    pub interval: String,

    /// A checkpoint not completed within this time is aborted, e.g. 10m.
    #[serde(default = "default_timeout")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"), length(max = 64))]
    #[schemars(extend("x-kubernetes-validations" = [positive_duration("spec.checkpointing.timeout")]))]
    pub timeout: String,

    /// Completed checkpoints kept in the store, newest first; older ones and files only they
    /// reference are deleted.
    #[serde(default = "default_retain")]
    #[schemars(range(min = 1, max = 1000))]
    pub retain: u32,

    /// The last this many completed checkpoints are listed in status.checkpoints, newest
    /// first (default 0: only status.lastCheckpoint); at most 20.
    #[serde(default, skip_serializing_if = "is_zero")]
    #[schemars(range(min = 0, max = 20))]
    pub history: u32,
    /// Consecutive periodic checkpoints that may fail or be aborted before the job turns
    /// Degraded (CheckpointFailed or CheckpointAborted); a completed checkpoint resets the count.
    /// Every failure is still an Event. 0 to 1000.
    #[serde(default = "default_tolerable_failures")]
    #[schemars(range(min = 0, max = 1000))]
    pub tolerable_failures: u32,

    /// While running, the job turns Degraded (NoCheckpointProgress) when no checkpoint has
    /// completed for this long (since the last completed one, or since the workers became ready),
    /// e.g. 15m. Default: 3 times the interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"), length(max = 64))]
    #[schemars(extend("x-kubernetes-validations" = [positive_duration("spec.checkpointing.progressDeadline")]))]
    pub progress_deadline: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A CEL rule refusing a zero duration, naming `field`.
fn positive_duration(field: &str) -> serde_json::Value {
    serde_json::json!({
        "rule": "duration(self) > duration('0s')",
        "message": format!("{field} must be a positive duration such as 500ms, 30s, 5m or 1h30m"),
        "reason": "FieldValueInvalid"
    })
}

fn default_interval() -> String {
    "5m".to_owned()
}
fn default_timeout() -> String {
    "10m".to_owned()
}
fn default_retain() -> u32 {
    3
}
fn default_tolerable_failures() -> u32 {
    3
}

impl Default for Checkpointing {
    fn default() -> Self {
        Self {
            interval: default_interval(),
            timeout: default_timeout(),
            retain: default_retain(),
            history: 0,
            tolerable_failures: default_tolerable_failures(),
            progress_deadline: None,
        }
    }
}

impl Checkpointing {
    /// The checkpoint interval; the API server already checked its form.
    pub fn interval(&self) -> Result<Duration> {
        parse_duration("spec.checkpointing.interval", &self.interval)
    }

    /// The checkpoint timeout.
    pub fn timeout(&self) -> Result<Duration> {
        parse_duration("spec.checkpointing.timeout", &self.timeout)
    }

    /// The progress deadline: as set, or 3 times the interval.
    pub fn progress_deadline(&self) -> Result<Duration> {
        match &self.progress_deadline {
            Some(d) => parse_duration("spec.checkpointing.progressDeadline", d),
            None => Ok(self.interval()?.saturating_mul(3)),
        }
    }
}

/// Rolling back a rescale or template change whose workers do not get ready.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    /// When the new workers of a rescale or template change are not all ready this long after
    /// it started (e.g. 10m; longer than a restore takes), the job rolls back to the previous
    /// parallelism and template from the same final checkpoint. The spec stays as written; the
    /// job is Degraded (RolloutFailed) until the spec changes again.
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"), length(max = 64))]
    #[schemars(extend("x-kubernetes-validations" = [positive_duration("spec.rollout.readinessTimeout")]))]
    pub readiness_timeout: String,
}

impl Rollout {
    /// The readiness timeout; the API server already checked its form.
    pub fn readiness_timeout(&self) -> Result<Duration> {
        parse_duration("spec.rollout.readinessTimeout", &self.readiness_timeout)
    }
}

/// How lost workers are restarted: with exponential backoff (10s, 20s, 40s, ... up to 5m), and
/// at most `limit` times within `window`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestartPolicy {
    /// Automatic restarts (after a lost or crashed worker) allowed within the window. One more
    /// loss stops every worker (phase Failed, Degraded RestartLimitReached) instead of
    /// restarting them again: a generation missing a worker cannot checkpoint, and a crash loop
    /// only burns resources. The latest completed checkpoint stays; fix the cause, then set a
    /// new spec.restartNonce (or change spec.template) to start again from it. 0 to 100.
    #[serde(default = "default_restart_limit")]
    #[schemars(range(min = 0, max = 100))]
    pub limit: u32,

    /// The window in which restarts are counted, e.g. 10m.
    #[serde(default = "default_restart_window")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"), length(max = 64))]
    #[schemars(extend("x-kubernetes-validations" = [positive_duration("spec.restartPolicy.window")]))]
    pub window: String,
}

fn default_restart_limit() -> u32 {
    10
}
fn default_restart_window() -> String {
    "10m".to_owned()
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            limit: default_restart_limit(),
            window: default_restart_window(),
        }
    }
}

impl RestartPolicy {
    /// The window in which restarts are counted.
    pub fn window(&self) -> Result<Duration> {
        parse_duration("spec.restartPolicy.window", &self.window)
    }
}

/// Parses a duration of the CRD's form (`30s`, `5m`, `1h30m`, `500ms`), naming `field` on error.
pub fn parse_duration(field: &str, value: &str) -> Result<Duration> {
    let well_formed = {
        let mut rest = value;
        let mut ok = !rest.is_empty();
        while ok && !rest.is_empty() {
            let digits = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(rest.len());
            let number = &rest[..digits];
            rest = &rest[digits..];
            let unit = ["ms", "s", "m", "h"]
                .into_iter()
                .find(|u| rest.starts_with(u));
            ok = !number.is_empty()
                && number.parse::<f64>().is_ok()
                && !number.starts_with('.')
                && unit.is_some();
            if let Some(u) = unit {
                rest = &rest[u.len()..];
            }
        }
        ok
    };
    let parsed = well_formed
        .then(|| humantime::parse_duration(value).ok())
        .flatten();
    match parsed {
        Some(d) if !d.is_zero() => Ok(d),
        _ => Err(Error::invalid(
            field,
            format!("{value:?}"),
            "a positive duration such as 30s, 5m, 1h30m or 500ms",
        )),
    }
}

/// How restored state is built when the key group ranges change.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Restore {
    /// ingest (default): build the new DB from the checkpoint's SST files and clip it to the new
    /// range; copy: read every record of the overlapping key groups and write it anew.
    #[serde(default)]
    pub strategy: RestoreStrategy,

    /// Only a source handle whose key groups overlap the new range by at least this fraction may
    /// be the new DB's starting point (opened as it is); the others are merged into it, and with
    /// none eligible the new DB starts empty (0 to 1).
    #[serde(default = "default_overlap")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub overlap_fraction_threshold: f64,

    /// Compact what a rescaling restore clipped (records and range tombstones of the files that
    /// straddle the boundaries of the new range) before the worker starts. Off by default: the
    /// restore ends sooner and the worker compacts them in the background, finishing before its
    /// next stop-with-checkpoint.
    #[serde(default)]
    pub compact: bool,

    /// Make the restored DB durable (every file synced) before the worker starts. Off by
    /// default: the kernel writes the files back while the worker runs; the DB is a copy of the
    /// checkpoint, and a restore does not trust an unsynced one after the node restarts.
    #[serde(default)]
    pub sync: bool,

    /// Image of the restore init container (it runs `regroup restore`); defaults to the image of
    /// the template's first container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,

    /// Resources of the restore init container; defaults to the worker container's (so a
    /// ResourceQuota that requires limits admits it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Security context of the restore init container; defaults to the worker container's, or,
    /// when the template sets none, to what the restricted Pod Security level demands (non-root,
    /// no privilege escalation, all capabilities dropped, RuntimeDefault seccomp, read-only
    /// root file system).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<SecurityContext>,

    /// A restore that has not finished within this time (e.g. 10m) is given up: the workers
    /// restore from the previous retained checkpoint instead, with a RestoreFallback Event.
    #[serde(default = "default_restore_timeout")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"), length(max = 64))]
    #[schemars(extend("x-kubernetes-validations" = [positive_duration("spec.restore.timeout")]))]
    pub timeout: String,
}

fn default_restore_timeout() -> String {
    "10m".to_owned()
}

fn default_overlap() -> f64 {
    0.5
}

impl Default for Restore {
    fn default() -> Self {
        Self {
            strategy: RestoreStrategy::default(),
            overlap_fraction_threshold: default_overlap(),
            compact: false,
            sync: false,
            image: None,
            resources: None,
            security_context: None,
            timeout: default_restore_timeout(),
        }
    }
}

/// How a rescaled worker's DB is rebuilt.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum RestoreStrategy {
    /// Ingest the checkpoint's SST files, then delete the key groups outside the new range.
    #[default]
    Ingest,
    /// Copy the records of the new range from each overlapping checkpoint DB.
    Copy,
}

impl Restore {
    /// The restore timeout.
    pub fn timeout(&self) -> Result<Duration> {
        parse_duration("spec.restore.timeout", &self.timeout)
    }
}

impl RestoreStrategy {
    /// The value passed to `regroup restore --strategy`.
    pub fn as_str(self) -> &'static str {
        match self {
            RestoreStrategy::Ingest => "ingest",
            RestoreStrategy::Copy => "copy",
        }
    }
}

/// The per-worker volume at /state. At most one of `claim` and `emptyDir`; a claim of 1Gi when
/// neither is set.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!(has(self.claim) && has(self.emptyDir))",
        "message": "stateVolume takes at most one of claim and emptyDir"
    },
    {
        "rule": "self == oldSelf",
        "message": "stateVolume is immutable: the workers' StatefulSet cannot change its volume claim templates. To change it, delete the job (its checkpoints and claims stay), delete the claims state-<name>-<ordinal> if their size or class must change, and create the job again with the new stateVolume: it restores from its latest checkpoint",
        "reason": "FieldValueForbidden"
    }
]))]
pub struct StateVolume {
    /// Spec of each worker's persistent volume claim (from volumeClaimTemplates, kept through a
    /// rescale so that the restore reuses the files on it; the claims of ordinals a scale-in
    /// removed are deleted once it has completed; all are retained when the job is suspended
    /// or deleted). What it leaves out: ReadWriteOnce, 1Gi, the default storage class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<PersistentVolumeClaimSpec>,

    /// Use a pod-local emptyDir instead of a claim: every restart restores from the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_dir: Option<EmptyDirVolumeSource>,
}

/// Observed state, written only by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatefulJobStatus {
    /// Lifecycle phase: Pending, Running, Checkpointing, Stopping, Restoring, RollingForward,
    /// Suspended or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// Number of workers of the current generation (0 while stopped); source of the scale
    /// subresource's status.replicas.
    #[serde(default)]
    pub parallelism: u32,

    /// Fencing epoch of the current worker generation; increases every time the set of workers
    /// is replaced.
    #[serde(default)]
    pub epoch: u64,

    /// Label selector of the workers, for the scale subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,

    /// metadata.generation of the spec this status reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Hash of the pod template the current generation runs; a different hash of the spec's
    /// template restarts the workers from a checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_hash: Option<String>,

    /// The newest completed checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checkpoint: Option<CheckpointRecord>,

    /// The last spec.checkpointing.history completed checkpoints, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checkpoints: Vec<CheckpointRecord>,

    /// When the last checkpoint was triggered, whether it completed or not; periodic
    /// checkpoints are spaced by spec.checkpointing.interval from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checkpoint_attempt: Option<Time>,

    /// The checkpoint being taken, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_checkpoint: Option<PendingCheckpoint>,

    /// The highest checkpoint id ever issued to the workers, recorded before they are asked:
    /// every new checkpoint gets a higher id, so no id is ever used twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_issued_checkpoint: Option<u64>,

    /// The rescale (or start, suspend, resume, restart) in progress, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rescale: Option<RescaleStatus>,

    /// The worker pods of the running generation, recorded when it became ready (their number
    /// and a digest of their UIDs: the same size at any parallelism); a worker pod not among
    /// them (or one of them gone) means a worker was lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_workers: Option<ReadyWorkers>,

    /// What earlier versions recorded instead of readyWorkers: the UIDs themselves, a list
    /// that grew with parallelism. Read once after an upgrade (as readyWorkers), never written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub worker_pods: Vec<String>,

    /// The spec.checkpointTrigger value last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_trigger: Option<String>,

    /// While the workers restore: how far each new subtask got (reported by the restores
    /// through the store, refreshed every round).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_progress: Option<RestoreProgressStatus>,

    /// The slot of spec.snapshots.schedule last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scheduled_snapshot: Option<Time>,

    /// The pod template of the last generation that became ready, the one a failed rollout goes
    /// back to (stored as written in the spec).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserved_object")]
    pub last_ready_template: Option<serde_json::Value>,

    /// A rollout rolled back (spec.rollout.readinessTimeout): what runs instead of the spec of
    /// that generation until the spec changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back: Option<RolledBack>,

    /// The initial state applied last (at the start, or for spec.restoreNonce).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_state: Option<AppliedState>,
    /// Periodic checkpoints that failed or were aborted since the last completed one (counted
    /// up to 1000); above spec.checkpointing.tolerableFailures the job is Degraded.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub consecutive_checkpoint_failures: u32,

    /// When the workers were restarted after a lost worker, oldest first: only those within
    /// spec.restartPolicy.window (at most spec.restartPolicy.limit).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restarts: Vec<Time>,

    /// The spec.restartNonce value last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_nonce: Option<String>,

    /// Ready, Progressing and Degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// The most bytes status takes as JSON at any parallelism, lastReadyTemplate (the job's own pod
/// template) aside, with every list at its spec's largest bound (history 20, restart limit 100,
/// 32 restore progress entries): every watch event and cached copy of a job carries it, so 200
/// jobs cost the operator about 3 MiB.
pub const STATUS_BYTES_BOUND: usize = 16 << 10;

/// A set of worker pods in a size that does not grow with parallelism.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReadyWorkers {
    /// How many pods.
    pub count: u32,
    /// XXH3-128 of their UIDs, sorted, each followed by a newline (32 hex digits).
    pub digest: String,
}

impl ReadyWorkers {
    /// The set of the pods with `uids` (in any order).
    pub fn of<S: AsRef<str>>(uids: &[S]) -> Self {
        let mut sorted: Vec<&str> = uids.iter().map(AsRef::as_ref).collect();
        sorted.sort_unstable();
        let mut text = String::with_capacity(sorted.iter().map(|u| u.len() + 1).sum());
        for uid in sorted {
            text.push_str(uid);
            text.push('\n');
        }
        ReadyWorkers {
            count: uids.len() as u32,
            digest: format!("{:032x}", xxhash_rust::xxh3::xxh3_128(text.as_bytes())),
        }
    }
}

/// A rollout that was rolled back.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolledBack {
    /// metadata.generation of the spec that failed; a new one ends the rollback.
    pub generation: i64,
    /// The parallelism that runs instead.
    pub parallelism: u32,
    /// The hash of the pod template that runs instead.
    pub template_hash: String,
    /// Why, for people.
    pub message: String,
}

/// A schema for any JSON object, kept as it is.
fn preserved_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
        "nullable": true
    })
}

/// How far the restores of a rescale got.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreProgressStatus {
    /// For `kubectl get sj`: `2/3 restored, 45% of 120 MiB`.
    pub summary: String,
    /// Per new subtask (at most 32, unfinished first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subtasks: Vec<SubtaskProgress>,
}

/// How far one new subtask's restore got.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubtaskProgress {
    /// The new subtask.
    pub subtask: u32,
    /// Planning, Downloading, Ingesting, Clipping or Done (Waiting before its first report).
    pub phase: String,
    /// Bytes fetched (downloaded or reused from the volume).
    pub bytes_done: u64,
    /// Bytes to fetch.
    pub bytes_total: u64,
}

/// The initial state a job was given.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppliedState {
    /// What it came from, for people: `empty`, `snapshot prod/before-release (checkpoint 12 of
    /// prod/orders)`.
    pub source: String,
    /// The spec.restoreNonce acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// The checkpoint of this job's store it was imported as, when it came from elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<u64>,
    /// Checkpoints of this job's store below this id predate it: never restored from again.
    #[serde(default)]
    pub since: u64,
    /// Whether the state is in place (imported, or nothing to import).
    #[serde(default)]
    pub ready: bool,
}

/// Lifecycle phase of a job, as shown by `kubectl get sj`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Phase {
    /// Accepted, nothing started yet.
    Pending,
    /// Workers of the current epoch are all ready.
    Running,
    /// Taking the final checkpoint before the workers are replaced.
    Checkpointing,
    /// Waiting until no worker of the old epoch exists.
    Stopping,
    /// New workers are restoring their state.
    Restoring,
    /// Restored workers are starting.
    RollingForward,
    /// Scaled to zero with a final checkpoint (spec.suspend).
    Suspended,
    /// Scaled to zero after spec.restartPolicy.limit restarts within its window; a new
    /// spec.restartNonce (or spec.template) starts it again from the latest checkpoint.
    Failed,
}

impl Phase {
    /// The name as written in status.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Running => "Running",
            Phase::Checkpointing => "Checkpointing",
            Phase::Stopping => "Stopping",
            Phase::Restoring => "Restoring",
            Phase::RollingForward => "RollingForward",
            Phase::Suspended => "Suspended",
            Phase::Failed => "Failed",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A completed checkpoint.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointRecord {
    /// Checkpoint id.
    pub id: u64,
    /// When it completed.
    pub time: Time,
    /// Epoch of the workers that took it.
    pub epoch: u64,
    /// Bytes of all files it references.
    pub bytes_total: u64,
    /// Bytes uploaded for it (the rest was shared with earlier checkpoints).
    pub bytes_new: u64,
    /// Seconds from trigger to completion.
    pub duration_seconds: f64,
}

/// A checkpoint in progress.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingCheckpoint {
    /// Checkpoint id.
    pub id: u64,
    /// Epoch of the workers asked to take it.
    pub epoch: u64,
    /// When the workers were asked.
    pub started: Time,
    /// Whether the workers stop processing after it (the final checkpoint of a rescale).
    #[serde(default)]
    pub stop: bool,
    /// Why it failed, once it has (a worker refused it, or it timed out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// A rescale in progress: final checkpoint, stop, restore, roll forward.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RescaleStatus {
    /// Parallelism before (0 when nothing ran).
    pub from: u32,
    /// Target parallelism (0 to suspend).
    pub to: u32,
    /// The stage in progress.
    pub stage: Stage,
    /// Why the workers are being replaced.
    pub reason: RescaleReason,
    /// The checkpoint the new workers restore from (none: start empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<u64>,
    /// Id of the final (stop-with-checkpoint) checkpoint, once requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_checkpoint: Option<u64>,
    /// When the rescale started.
    pub started: Time,
    /// When the current stage started.
    pub stage_started: Time,
}

/// A stage of a rescale, in order.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Stage {
    /// Final checkpoint of the running workers.
    Checkpointing,
    /// Scale to zero and wait until no old worker exists.
    Stopping,
    /// Epoch + 1, new workers restore their key group ranges.
    Restoring,
    /// Restored workers start; done when all are ready.
    RollingForward,
}

impl Stage {
    /// The phase shown while this stage runs.
    pub fn phase(self) -> Phase {
        match self {
            Stage::Checkpointing => Phase::Checkpointing,
            Stage::Stopping => Phase::Stopping,
            Stage::Restoring => Phase::Restoring,
            Stage::RollingForward => Phase::RollingForward,
        }
    }

    /// Every stage, in order.
    pub const ALL: [Stage; 4] = [
        Stage::Checkpointing,
        Stage::Stopping,
        Stage::Restoring,
        Stage::RollingForward,
    ];

    /// The name as written in status and metrics.
    pub fn as_str(self) -> &'static str {
        self.phase().as_str()
    }
}

/// Why the set of workers is being replaced.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum RescaleReason {
    /// First start of the job.
    Start,
    /// spec.parallelism changed.
    Scale,
    /// The pod template changed at unchanged parallelism.
    TemplateChange,
    /// spec.suspend became true.
    Suspend,
    /// spec.suspend became false.
    Resume,
    /// A worker of the running generation was lost; all restart from the latest checkpoint.
    Recovery,
    /// spec.restoreNonce changed: all restart from spec.initialState.
    Reset,
    /// spec.restartNonce changed: all restart from the latest checkpoint.
    Restart,
}

impl RescaleReason {
    /// Every reason.
    pub const ALL: [RescaleReason; 8] = [
        RescaleReason::Start,
        RescaleReason::Scale,
        RescaleReason::TemplateChange,
        RescaleReason::Suspend,
        RescaleReason::Resume,
        RescaleReason::Recovery,
        RescaleReason::Reset,
        RescaleReason::Restart,
    ];

    /// The name as written in status and events.
    pub fn as_str(self) -> &'static str {
        match self {
            RescaleReason::Start => "Start",
            RescaleReason::Scale => "Scale",
            RescaleReason::TemplateChange => "TemplateChange",
            RescaleReason::Suspend => "Suspend",
            RescaleReason::Resume => "Resume",
            RescaleReason::Recovery => "Recovery",
            RescaleReason::Reset => "Reset",
            RescaleReason::Restart => "Restart",
        }
    }
}

/// Longest job name: it names the workers' StatefulSet, whose pods carry a
/// `controller-revision-hash` label of the name plus up to 11 characters (63 at most).
pub const MAX_NAME_LENGTH: usize = 52;

/// The CRD as installed: the derived one, without the descriptions of the embedded Kubernetes
/// types (pod template, claim, emptyDir), which are documented upstream and would make the CRD
/// too large for `kubectl apply` (its last-applied annotation is limited to 256 KiB), and with a
/// rule on the name (the schema of `metadata` cannot carry one).
pub fn crd() -> CustomResourceDefinition {
    let crd = StatefulJob::crd();
    let mut value = serde_json::to_value(&crd).expect("a CRD serialises");
    for version in value["spec"]["versions"]
        .as_array_mut()
        .into_iter()
        .flatten()
    {
        version["schema"]["openAPIV3Schema"]["x-kubernetes-validations"] = serde_json::json!([{
            "rule": format!("self.metadata.name.size() <= {MAX_NAME_LENGTH} && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')"),
            "message": format!("metadata.name must be at most {MAX_NAME_LENGTH} characters of lower-case letters, digits and '-', starting with a letter and ending with a letter or digit: it names the workers' StatefulSet, Service and pods"),
            "reason": "FieldValueInvalid"
        }]);
        let spec = &mut version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
        strip_nested_descriptions(&mut spec["template"]);
        strip_nested_descriptions(&mut spec["restore"]["properties"]["resources"]);
        strip_nested_descriptions(&mut spec["restore"]["properties"]["securityContext"]);
        strip_nested_descriptions(&mut spec["stateVolume"]["properties"]["claim"]);
        strip_nested_descriptions(&mut spec["stateVolume"]["properties"]["emptyDir"]);
    }
    serde_json::from_value(value).expect("the CRD still deserialises")
}

/// Removes every `description` below `schema`, keeping its own.
fn strip_nested_descriptions(schema: &mut serde_json::Value) {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                map.remove("description");
                map.values_mut().for_each(strip);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    if let Some(map) = schema.as_object_mut() {
        for (key, value) in map.iter_mut() {
            if key != "description" {
                strip(value);
            }
        }
    }
}

/// The StatefulJob CRD as YAML, exactly as checked in as `crds/statefuljob.yaml`.
pub fn crd_yaml() -> Result<String> {
    yaml(&crd())
}

/// The StatefulJobSnapshot CRD as YAML, exactly as checked in as
/// `crds/statefuljobsnapshot.yaml`.
pub fn snapshot_crd_yaml() -> Result<String> {
    yaml(&snapshot_crd())
}

/// The StatefulJobSnapshot CRD.
pub fn snapshot_crd() -> CustomResourceDefinition {
    crate::operator::snapshot::StatefulJobSnapshot::crd()
}

/// Every CRD file of `crds/`, by name, as YAML.
pub fn crd_files() -> Result<Vec<(&'static str, String)>> {
    Ok(vec![
        ("statefuljob.yaml", crd_yaml()?),
        ("statefuljobsnapshot.yaml", snapshot_crd_yaml()?),
    ])
}

fn yaml(crd: &CustomResourceDefinition) -> Result<String> {
    serde_saphyr::to_string(crd)
        .map_err(|e| Error::Other(format!("cannot render the CRD as YAML: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> serde_json::Value {
        let crd = crd();
        let v = serde_json::to_value(&crd.spec.versions[0]).unwrap();
        v["schema"]["openAPIV3Schema"].clone()
    }

    #[test]
    fn checked_in_crds_match_the_types() {
        for (name, generated) in crd_files().unwrap() {
            let path = format!("{}/crds/{name}", env!("CARGO_MANIFEST_DIR"));
            let checked_in = std::fs::read_to_string(path).unwrap_or_default();
            assert!(
                checked_in == generated,
                "crds/{name} differs from the types; regenerate crds/ with `cargo run -- crd --dir crds`"
            );
        }
    }

    #[test]
    fn fits_kubectl_apply() {
        // kubectl apply keeps the whole object in an annotation limited to 256 KiB.
        let len = serde_json::to_vec(&crd()).unwrap().len();
        assert!(len < 200 * 1024, "the CRD is {len} bytes");
    }

    #[test]
    fn names_subresources_and_columns() {
        let crd = crd();
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("statefuljobs.regroup.dev")
        );
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.short_names, Some(vec!["sj".to_owned()]));
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, "v1alpha1");
        let sub = v.subresources.as_ref().unwrap();
        assert!(sub.status.is_some());
        let scale = sub.scale.as_ref().unwrap();
        assert_eq!(scale.spec_replicas_path, ".spec.parallelism");
        assert_eq!(scale.status_replicas_path, ".status.parallelism");
        assert_eq!(
            scale.label_selector_path.as_deref(),
            Some(".status.selector")
        );
        let columns: Vec<&str> = v
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        for c in ["Parallelism", "Phase", "Last Checkpoint", "Age"] {
            assert!(columns.contains(&c), "column {c} missing from {columns:?}");
        }
    }

    #[test]
    fn schema_carries_the_rules() {
        let s = schema();
        let spec = &s["properties"]["spec"];
        assert_eq!(
            spec["properties"]["parallelism"]["minimum"].as_f64(),
            Some(1.0)
        );
        assert_eq!(
            spec["properties"]["parallelism"]["maximum"].as_f64(),
            Some(32768.0)
        );
        assert_eq!(
            spec["properties"]["maxParallelism"]["maximum"].as_f64(),
            Some(32768.0)
        );
        assert_eq!(
            spec["properties"]["maxParallelism"]["x-kubernetes-validations"][0]["rule"],
            "self == oldSelf"
        );
        assert_eq!(
            spec["x-kubernetes-validations"][0]["rule"],
            "self.parallelism <= self.maxParallelism"
        );
        let url = &spec["properties"]["storage"]["properties"]["url"];
        assert!(
            url["x-kubernetes-validations"][0]["rule"]
                .as_str()
                .unwrap()
                .contains("s3://")
        );
        assert_eq!(
            spec["properties"]["checkpointing"]["properties"]["interval"]["pattern"],
            DURATION_PATTERN
        );
        let rules = |v: &serde_json::Value| -> Vec<String> {
            v["x-kubernetes-validations"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| r["rule"].as_str().unwrap().to_owned())
                .collect()
        };
        // Both the shape rule and immutability (a field's rule must not replace its type's).
        let volume = rules(&spec["properties"]["stateVolume"]);
        assert!(
            volume.iter().any(|r| r.contains("has(self.claim)")),
            "{volume:?}"
        );
        assert!(volume.iter().any(|r| r == "self == oldSelf"), "{volume:?}");
        assert_eq!(rules(&spec["properties"]["storage"]), ["self == oldSelf"]);
        assert!(
            rules(&s)
                .iter()
                .any(|r| r.contains("self.metadata.name.size()"))
        );
        let required: Vec<&str> = spec["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap())
            .collect();
        assert!(required.contains(&"parallelism") && required.contains(&"storage"));
        // Every field of our own types is documented (the template's come from Kubernetes).
        fn documented(path: &str, v: &serde_json::Value) {
            if let Some(props) = v["properties"].as_object() {
                for (name, p) in props {
                    let here = format!("{path}.{name}");
                    assert!(
                        p["description"].as_str().is_some_and(|d| !d.is_empty()),
                        "{here} has no description"
                    );
                    if name != "template"
                        && name != "claim"
                        && name != "emptyDir"
                        && name != "resources"
                        && name != "securityContext"
                        && name != "conditions"
                    {
                        documented(&here, p);
                    }
                }
            }
        }
        documented("spec", spec);
        documented("status", &s["properties"]["status"]);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("f", "30s").unwrap(), Duration::from_secs(30));
        assert_eq!(
            parse_duration("f", "1h30m").unwrap(),
            Duration::from_secs(5400)
        );
        assert_eq!(
            parse_duration("f", "500ms").unwrap(),
            Duration::from_millis(500)
        );
        for bad in ["", "5", "s", "5 m", "-5s", "0s", "5d", ".5s", "5mins"] {
            let e = parse_duration("spec.checkpointing.interval", bad).unwrap_err();
            assert!(
                e.to_string().contains("spec.checkpointing.interval"),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn spec_defaults() {
        let spec: StatefulJobSpec = serde_json::from_value(serde_json::json!({
            "parallelism": 2,
            "template": {"spec": {"containers": [{"name": "worker", "image": "regroup:dev"}]}},
            "storage": {"url": "s3://bucket/jobs"}
        }))
        .unwrap();
        assert_eq!(spec.max_parallelism, 128);
        assert_eq!(spec.checkpointing, Checkpointing::default());
        assert_eq!(
            spec.checkpointing.interval().unwrap(),
            Duration::from_secs(300)
        );
        assert_eq!(spec.restore.strategy, RestoreStrategy::Ingest);
        assert!(!spec.suspend);
        assert_eq!(spec.state_volume, StateVolume::default());
    }
}
