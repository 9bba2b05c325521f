//! Snapshots users own: the `StatefulJobSnapshot` resource (`sjsnap`), the pure decisions a
//! job's round takes for its snapshots ([`plan`]) and the snapshot's own reconciler
//! ([`controller`]: the job it names, expiry, and releasing its files when deleted).
//!
//! A snapshot holds one completed checkpoint of its job. The checkpoint is pinned in the store
//! (`_pins/<snapshot uid>.json`, see `checkpoint::pins`), so every garbage collection keeps it
//! and its files until the snapshot is deleted.

pub mod controller;
pub mod plan;
pub mod schedule;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Finalizer on every StatefulJobSnapshot: its pin is released before it goes.
pub const FINALIZER: &str = "regroup.dev/snapshot";

/// A checkpoint of a StatefulJob that the user keeps.
// Each printcolumn(...) repeats `type_ = ...`: one column each, not a duplicate.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "regroup.dev",
    version = "v1alpha1",
    kind = "StatefulJobSnapshot",
    namespaced,
    shortname = "sjsnap",
    category = "all",
    status = "StatefulJobSnapshotStatus",
    derive = "PartialEq",
    doc = "A checkpoint of a StatefulJob that regroup keeps until this object is deleted, whatever the job's retention says; a job starts from it with spec.initialState.",
    printcolumn(
        name = "Job",
        type_ = "string",
        json_path = ".spec.job",
        description = "The StatefulJob"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Pending, InProgress, Completed or Failed"
    ),
    printcolumn(
        name = "Checkpoint",
        type_ = "integer",
        json_path = ".status.checkpointId",
        description = "The checkpoint held"
    ),
    printcolumn(
        name = "Parallelism",
        type_ = "integer",
        json_path = ".status.parallelism",
        description = "Workers that took it"
    ),
    printcolumn(
        name = "Bytes",
        type_ = "integer",
        json_path = ".status.bytes",
        description = "Size of the checkpoint"
    ),
    printcolumn(
        name = "Taken",
        type_ = "date",
        json_path = ".status.time",
        description = "When the checkpoint completed"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct StatefulJobSnapshotSpec {
    /// The StatefulJob in this namespace to snapshot. Immutable.
    #[schemars(length(min = 1, max = 253))]
    #[schemars(extend("x-kubernetes-validations" = [
        {
            "rule": "self == oldSelf",
            "message": "spec.job is immutable: a snapshot holds one job's checkpoint",
            "reason": "FieldValueForbidden"
        }
    ]))]
    pub job: String,

    /// Whether deleting the snapshot releases its checkpoint (default true): the job's next
    /// garbage collection then deletes what nothing else holds. false leaves it in the store;
    /// also the way out when the store can no longer be reached.
    #[serde(default = "yes")]
    pub dispose_on_delete: bool,

    /// How long to keep the snapshot itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain: Option<SnapshotRetention>,
}

fn yes() -> bool {
    true
}

/// How long a snapshot is kept.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotRetention {
    /// The snapshot deletes itself this long after its checkpoint completed, e.g. 720h.
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"), length(max = 64))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "duration(self) > duration('0s')",
        "message": "spec.retain.maxAge must be a positive duration such as 24h or 720h",
        "reason": "FieldValueInvalid"
    }]))]
    pub max_age: String,
}

/// What the operator observed of a snapshot.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatefulJobSnapshotStatus {
    /// Pending (waiting for the job to run), InProgress (its checkpoint is being taken),
    /// Completed or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<SnapshotPhase>,
    /// The checkpoint held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_id: Option<u64>,
    /// Where the checkpoint is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<SnapshotStore>,
    /// Its size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Workers that took it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<u32>,
    /// Key groups of its job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallelism: Option<u32>,
    /// When it completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    /// Ready: the checkpoint is complete and held.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Phase of a snapshot.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SnapshotPhase {
    /// Waiting for the job to run.
    Pending,
    /// Its checkpoint is being taken.
    InProgress,
    /// The checkpoint is complete and held.
    Completed,
    /// No checkpoint will be held; see failureReason.
    Failed,
}

/// The store location of a snapshot's checkpoint: `<url>/<job>/chk-<id>/`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotStore {
    /// The job's storage URL.
    pub url: String,
    /// The job's store path below it, NAMESPACE/NAME.
    pub job: String,
    /// The job's storage Secret, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}
