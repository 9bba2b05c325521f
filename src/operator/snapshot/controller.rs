//! The StatefulJobSnapshot's own reconciler: a snapshot naming no job fails, a snapshot past
//! its `spec.retain.maxAge` deletes itself, and a deleted one releases its pin (unless
//! `spec.disposeOnDelete` is false) and collects the job's garbage, job or no job. Taking the
//! checkpoint is the job's round's work (see [`super::plan`]).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{self, finalizer};
use kube::{Resource, ResourceExt};
use tracing::{info, warn};

use super::plan::{failed, ready_condition};
use super::{FINALIZER, SnapshotPhase, StatefulJobSnapshot, StatefulJobSnapshotStatus};
use crate::checkpoint::pins::unpin;
use crate::checkpoint::registry::{GcScope, collect_garbage, recorded_retention};
use crate::checkpoint::{CheckpointStore, JobId};
use crate::operator::controller::{Context, ReconcileError, secret_settings};
use crate::operator::coordinator::open_store;
use crate::operator::crd::{StatefulJob, parse_duration};
use crate::operator::reasons;
use crate::operator::resources::FIELD_MANAGER;

type Result<T, E = ReconcileError> = std::result::Result<T, E>;

/// Reconciles one StatefulJobSnapshot (wrapped in its finalizer).
pub async fn reconcile(snap: Arc<StatefulJobSnapshot>, ctx: Arc<Context>) -> Result<Action> {
    let api: Api<StatefulJobSnapshot> =
        Api::namespaced(ctx.client.clone(), &snap.namespace().unwrap_or_default());
    finalizer(&api, FINALIZER, snap, |event| async {
        match event {
            finalizer::Event::Apply(s) => check(&api, s, &ctx).await,
            finalizer::Event::Cleanup(s) => dispose(s, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e,
        other => ReconcileError::Finalizer(other.to_string()),
    })
}

/// Retries a failed reconcile after a delay.
pub fn error_policy(
    snap: Arc<StatefulJobSnapshot>,
    error: &ReconcileError,
    _: Arc<Context>,
) -> Action {
    warn!(snapshot = %snap.name_any(), error = %error, "snapshot reconcile failed");
    Action::requeue(Duration::from_secs(10))
}

async fn check(
    api: &Api<StatefulJobSnapshot>,
    snap: Arc<StatefulJobSnapshot>,
    ctx: &Context,
) -> Result<Action> {
    let status = snap.status.clone().unwrap_or_default();
    let now = Time(Timestamp::now());
    if let (Some(SnapshotPhase::Completed), Some(retain), Some(taken)) =
        (status.phase, &snap.spec.retain, &status.time)
    {
        let max_age = parse_duration("spec.retain.maxAge", &retain.max_age)?;
        let age = crate::operator::lifecycle::elapsed(taken, &now);
        if age >= max_age {
            info!(snapshot = %snap.name_any(), "snapshot older than spec.retain.maxAge; deleting it");
            api.delete(&snap.name_any(), &Default::default()).await?;
            return Ok(Action::await_change());
        }
        return Ok(Action::requeue(max_age - age + Duration::from_secs(1)));
    }
    if !matches!(status.phase, None | Some(SnapshotPhase::Pending)) {
        return Ok(Action::await_change());
    }
    let jobs: Api<StatefulJob> =
        Api::namespaced(ctx.client.clone(), &snap.namespace().unwrap_or_default());
    if jobs.get_opt(&snap.spec.job).await?.is_none() {
        let why = format!(
            "no StatefulJob {} in namespace {}: spec.job names the job to snapshot; delete this snapshot and create one naming an existing job",
            snap.spec.job,
            snap.namespace().unwrap_or_default()
        );
        write_status(ctx, &snap, failed(&status, why), &now).await?;
    }
    Ok(Action::requeue(Duration::from_secs(60)))
}

/// Records `status` (with its Ready condition) on `snap`.
pub async fn write_status(
    ctx: &Context,
    snap: &StatefulJobSnapshot,
    mut status: StatefulJobSnapshotStatus,
    now: &Time,
) -> Result<()> {
    let previous = snap.status.clone().unwrap_or_default();
    status.conditions = ready_condition(&previous.conditions, &status, now);
    if previous == status {
        return Ok(());
    }
    patch_status(
        ctx,
        &snap.namespace().unwrap_or_default(),
        &snap.name_any(),
        &status,
    )
    .await
}

/// Writes a snapshot's status (server-side apply, forced: the operator owns it).
pub async fn patch_status(
    ctx: &Context,
    ns: &str,
    name: &str,
    status: &StatefulJobSnapshotStatus,
) -> Result<()> {
    let api: Api<StatefulJobSnapshot> = Api::namespaced(ctx.client.clone(), ns);
    let patch = serde_json::json!({
        "apiVersion": "regroup.dev/v1alpha1",
        "kind": "StatefulJobSnapshot",
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Releases the snapshot's pin and collects what nothing holds any more.
async fn dispose(snap: Arc<StatefulJobSnapshot>, ctx: &Context) -> Result<Action> {
    let Some(location) = snap.status.as_ref().and_then(|s| s.store.clone()) else {
        return Ok(Action::await_change());
    };
    if !snap.spec.dispose_on_delete {
        info!(snapshot = %snap.name_any(), "spec.disposeOnDelete is false: its checkpoint stays pinned");
        return Ok(Action::await_change());
    }
    let result = async {
        let ns = snap.namespace().unwrap_or_default();
        let job: JobId = location.job.parse()?;
        let settings = match &location.secret {
            Some(name) => secret_settings(&ctx.client, &ns, name).await?,
            None => Default::default(),
        };
        let store: CheckpointStore = open_store(&location.url, job, &settings, ctx.ambient)?;
        unpin(&store, &snap.uid().unwrap_or_default()).await?;
        if let Some(recorded) = recorded_retention(&store).await? {
            collect_garbage(&store, GcScope::Everything, recorded.policy(), false).await?;
        }
        Ok::<_, ReconcileError>(())
    }
    .await;
    if let Err(e) = &result {
        let event = Event {
            type_: EventType::Warning,
            reason: reasons::SNAPSHOT_NOT_DISPOSED.to_owned(),
            note: Some(format!(
                "cannot release the checkpoint of this snapshot: {e}; it is retried; to delete the snapshot without releasing its files, set spec.disposeOnDelete to false"
            )),
            action: reasons::SNAPSHOT_NOT_DISPOSED.to_owned(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &snap.object_ref(&())).await {
            warn!(error = %e, "event not published");
        }
    }
    result.map(|()| Action::await_change())
}
