//! The reconciler, one round per job: [`observe`] (reads only) → [`decide`] (pure: the status
//! and a list of actions, from [`super::lifecycle::next`] and the checkpoint protocol) →
//! [`apply`] (a completed checkpoint's metadata, then the status, written once, then the
//! actions).
//!
//! Status is recorded *before* acting, and what a round does depends only on the recorded
//! state and what it observed, so an operator restarted at any point resumes where it stopped.
//! It never writes `spec`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ObjectReference, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Reporter};
use kube::runtime::finalizer::{self, finalizer};
use kube::{Client, Resource, ResourceExt};
use tracing::{info, instrument, warn};

use super::coordinator::{WorkerClient, open_store};
use super::crd::{DeletionPolicy, Phase, StatefulJob, StatefulJobStatus};
use super::events::Events;
use super::lifecycle::JobState;
use super::metrics::{OperatorMetrics, label};
use super::reasons;
use super::resources::{FIELD_MANAGER, JOB_LABEL, TOKEN_KEY};
use super::snapshot::{
    self, SnapshotStore, StatefulJobSnapshot, StatefulJobSnapshotSpec, StatefulJobSnapshotStatus,
};
use super::status::{self, Problem};
use crate::checkpoint::pins::pin;
use crate::checkpoint::store::Ambient;
use crate::checkpoint::{CheckpointStore, JobId};

mod apply;
pub mod decide;
pub use self::decide::Asked;
mod observe;

/// How long a round waits for the watch to deliver this process's own status write.
const WATCH_LAG_LIMIT: Duration = Duration::from_secs(10);

/// Whether `job` is older than what a status write left (`written`), within
/// [`WATCH_LAG_LIMIT`] of that write: neither that version nor a later one with that status.
fn predates(job: &StatefulJob, (version, status, at): &Written) -> bool {
    at.elapsed() < WATCH_LAG_LIMIT
        && job.metadata.resource_version != *version
        && job.status != *status
}

/// Finalizer the operator puts on every StatefulJob.
pub const FINALIZER: &str = "regroup.dev/cleanup";

/// Errors of one reconciliation.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The API server refused or failed a request.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// regroup failed (store, invalid spec, worker call).
    #[error(transparent)]
    Regroup(#[from] crate::Error),
    /// Adding or removing the finalizer failed.
    #[error("finalizer: {0}")]
    Finalizer(String),
}

impl ReconcileError {
    /// A short kind, used as a metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            // The API server refused an object built from the spec (a claim it finds invalid):
            // only the user can fix that.
            ReconcileError::Kube(kube::Error::Api(e)) if e.code == 422 => "invalid_spec",
            ReconcileError::Kube(_) => "kube",
            ReconcileError::Regroup(crate::Error::InvalidInput { .. }) => "invalid_spec",
            ReconcileError::Regroup(e) if e.is_retryable() => "store",
            ReconcileError::Regroup(_) => "regroup",
            ReconcileError::Finalizer(_) => "finalizer",
        }
    }
}

type Result<T, E = ReconcileError> = std::result::Result<T, E>;

/// What every reconciliation shares.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// The workers' checkpoint API.
    pub workers: Arc<dyn WorkerClient>,
    /// Metrics.
    pub metrics: Arc<OperatorMetrics>,
    /// Publishes Events.
    pub recorder: Events,
    /// Requeue interval while something is in progress.
    pub busy_requeue: Duration,
    /// Whether job stores may use the operator's own credentials (`--ambient-credentials`).
    pub ambient: Ambient,
    /// Turns of the job reconciles allowed at once (`--max-concurrent-reconciles`); none: no
    /// bound. A semaphore, not kube-runtime's own bound: that one takes the held jobs in hash
    /// order and left some unreconciled for minutes under load.
    turns: Option<tokio::sync::Semaphore>,
    /// Per job uid, what this process remembers of it between rounds; dropped with the job.
    memory: Mutex<HashMap<String, Memory>>,
}

/// What this process remembers of one job between rounds. Only a shortcut or a record of its
/// own acts: a new process starts without it and finds the same from the cluster and store.
#[derive(Default)]
struct Memory {
    /// The last checkpoint this process asked the workers for, with their refusal if any (one
    /// at a time is in flight); a pending checkpoint not here was recorded by an earlier
    /// process, which may have stopped before asking.
    asked: Option<Asked>,
    /// The epochs whose unused state claims this process has deleted (or found none): the
    /// claims are listed once per generation, and again after a restart.
    claims_settled: HashSet<u64>,
    /// The generation whose Service and PodDisruptionBudget this process last applied, and
    /// when: they are applied again for a new generation or after a minute.
    owned_applied: Option<(Option<i64>, std::time::Instant)>,
    /// The job's store and what it was opened from (URL, job, storage settings).
    store: Option<(StoreKey, CheckpointStore)>,
    /// The resourceVersion and status this process's last status write left, and when.
    written: Option<Written>,
}

/// A job's resourceVersion and status as a status write left them, and when.
type Written = (
    Option<String>,
    Option<StatefulJobStatus>,
    std::time::Instant,
);

/// What a job's store is opened from: its URL, job id and storage Secret's settings.
type StoreKey = (String, String, BTreeMap<String, String>);

impl Context {
    /// A context for `client`.
    pub fn new(
        client: Client,
        workers: Arc<dyn WorkerClient>,
        metrics: Arc<OperatorMetrics>,
        instance: Option<String>,
    ) -> Self {
        let reporter = Reporter {
            controller: "regroup-operator".to_owned(),
            instance,
        };
        Self {
            recorder: Events::new(client.clone(), reporter),
            client,
            workers,
            metrics,
            busy_requeue: Duration::from_secs(2),
            ambient: Ambient::Forbidden,
            turns: None,
            memory: Default::default(),
        }
    }

    /// Lets at most `n` job reconciles run at once, the others in the order they came; 0: no
    /// bound.
    pub fn limit_reconciles(&mut self, n: usize) {
        self.turns = (n > 0).then(|| tokio::sync::Semaphore::new(n));
    }

    /// Whether `job` predates a status write of this process: the watch has not delivered the
    /// write yet, and a round on it would decide the same transition again (its Events and
    /// metrics twice). A write not seen within [`WATCH_LAG_LIMIT`] is forgotten (someone else
    /// may have written the status since).
    fn behind(&self, job: &StatefulJob) -> bool {
        let uid = job.uid().unwrap_or_default();
        // Looked up, not remembered: a deleted job's last rounds leave nothing behind.
        let mut memory = self.memory.lock().unwrap_or_else(|e| e.into_inner());
        let Some(m) = memory.get_mut(&uid) else {
            return false;
        };
        let stale = m.written.as_ref().is_some_and(|ours| predates(job, ours));
        if !stale {
            m.written = None;
        }
        stale
    }

    /// Records the job as a status write of this process left it.
    fn wrote(&self, written: StatefulJob) {
        let uid = written.uid().unwrap_or_default();
        let entry = (
            written.metadata.resource_version,
            written.status,
            std::time::Instant::now(),
        );
        self.remember(&uid, |m| m.written = Some(entry));
    }

    /// The store of the job `uid`, reused while its URL and settings stay the same: a new
    /// client every round cost a connection and its set-up each time (and memory under load).
    fn store_for(
        &self,
        uid: &str,
        url: &str,
        job: JobId,
        settings: &BTreeMap<String, String>,
    ) -> crate::Result<CheckpointStore> {
        let key = (url.to_owned(), job.to_string(), settings.clone());
        self.remember(uid, |m| {
            if let Some((k, store)) = &m.store
                && *k == key
            {
                return Ok(store.clone());
            }
            let store = open_store(url, job, settings, self.ambient)?;
            m.store = Some((key, store.clone()));
            Ok(store)
        })
    }

    /// Runs `f` on what this process remembers of the job `uid` (a fresh record if nothing).
    fn remember<R>(&self, uid: &str, f: impl FnOnce(&mut Memory) -> R) -> R {
        let mut memory = self.memory.lock().unwrap_or_else(|e| e.into_inner());
        f(memory.entry(uid.to_owned()).or_default())
    }

    /// Forgets the job `uid`: it was deleted.
    fn forget(&self, uid: &str) {
        self.memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uid);
    }
}

fn now() -> Time {
    Time(Timestamp::now())
}

/// Reconciles one StatefulJob (wrapped in the finalizer), timed.
#[instrument(skip_all, fields(job = %format!("{}/{}", job.namespace().unwrap_or_default(), job.name_any())))]
pub async fn reconcile(job: Arc<StatefulJob>, ctx: Arc<Context>) -> Result<Action> {
    // Never closed: an error cannot come.
    let _turn = match &ctx.turns {
        Some(turns) => turns.acquire().await.ok(),
        None => None,
    };
    ctx.metrics.reconciles.inc();
    let started = std::time::Instant::now();
    let result = reconcile_job(job, ctx.clone()).await;
    ctx.metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    result
}

async fn reconcile_job(job: Arc<StatefulJob>, ctx: Arc<Context>) -> Result<Action> {
    if ctx.behind(&job) {
        // The watch delivers the newer version within moments and starts a round on it.
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let ns = job.namespace().unwrap_or_default();
    let api: Api<StatefulJob> = Api::namespaced(ctx.client.clone(), &ns);
    if stops_before_deletion(&job) {
        // Rounds as if suspended: a stop-with-checkpoint, then the workers go; the finalizer
        // stays until then.
        let mut stopping = (*job).clone();
        stopping.spec.suspend = true;
        return Round::new(Arc::new(stopping), ctx.clone())
            .await?
            .run()
            .await;
    }
    finalizer(&api, FINALIZER, job, |event| async {
        match event {
            finalizer::Event::Apply(job) => match Round::new(job.clone(), ctx.clone()).await {
                Ok(round) => round.run().await,
                Err(e) => {
                    if e.kind() == "invalid_spec" {
                        let status = job.status.clone().unwrap_or_default();
                        report_invalid(&job, &ctx, status, &e).await;
                    }
                    Err(e)
                }
            },
            finalizer::Event::Cleanup(job) => cleanup(job, ctx.clone()).await,
        }
    })
    .await
    .map_err(|e| match e {
        finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e,
        other => ReconcileError::Finalizer(other.to_string()),
    })
}

/// Counts the failure and retries with a delay.
pub fn error_policy(job: Arc<StatefulJob>, error: &ReconcileError, ctx: Arc<Context>) -> Action {
    warn!(job = %job.name_any(), error = %error, "reconcile failed");
    ctx.metrics
        .reconcile_errors
        .get_or_create(&label("kind", error.kind()))
        .inc();
    if error.kind() == "invalid_spec" {
        // A spec change triggers a reconcile at once; a fixed Secret (not watched) is seen
        // within this, without spinning.
        Action::requeue(Duration::from_secs(30))
    } else {
        Action::requeue(Duration::from_secs(5))
    }
}

/// Shows an error that only the user can fix (a bad spec, a foreign Secret) as the Degraded
/// condition on `status` (the job's latest), so that `kubectl get sj -o yaml` says what is
/// wrong, not only the operator's log.
async fn report_invalid(
    job: &StatefulJob,
    ctx: &Context,
    mut status: StatefulJobStatus,
    error: &ReconcileError,
) {
    let problem = Problem::new(reasons::INVALID_SPEC, error.to_string());
    match write_status(ctx, job, &mut status, Some(&problem)).await {
        Ok(()) => record_metrics(ctx, job, &status),
        Err(e) => warn!(error = %e, "cannot record the Degraded condition"),
    }
}

/// Sets the job's gauges from the `status` just recorded.
fn record_metrics(ctx: &Context, job: &StatefulJob, status: &StatefulJobStatus) {
    let degraded = status
        .conditions
        .iter()
        .find(|c| c.type_ == status::DEGRADED && c.status == "True")
        .map(|c| c.reason.as_str());
    ctx.metrics
        .job_recorded(job, status, degraded, &Timestamp::now());
}

/// Writes `status` with its conditions for `problem` (server-side apply, forced: the operator
/// owns status); nothing when that is what the job's status already says.
async fn write_status(
    ctx: &Context,
    job: &StatefulJob,
    status: &mut StatefulJobStatus,
    problem: Option<&Problem>,
) -> std::result::Result<(), kube::Error> {
    let state = JobState::from_status(Some(status));
    status.conditions = status::conditions(
        &status.conditions,
        &state,
        problem,
        job.metadata.generation,
        &now(),
    );
    if job.status.as_ref() == Some(status) {
        return Ok(());
    }
    let api: Api<StatefulJob> =
        Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": "regroup.dev/v1alpha1",
        "kind": "StatefulJob",
        "status": status,
    });
    let written = api
        .patch_status(
            &job.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    ctx.wrote(written);
    Ok(())
}

/// Whether the deleted `job` still has workers to stop with a final checkpoint first
/// (spec.deletionPolicy Snapshot).
fn stops_before_deletion(job: &StatefulJob) -> bool {
    let state = JobState::from_status(job.status.as_ref());
    job.metadata.deletion_timestamp.is_some()
        && job.finalizers().iter().any(|f| f == FINALIZER)
        && job.spec.deletion_policy == DeletionPolicy::Snapshot
        && (state.rescale.is_some()
            || !matches!(
                state.phase,
                Phase::Suspended | Phase::Pending | Phase::Failed
            ))
}

/// Records the deleted job's last checkpoint (its final one) as a StatefulJobSnapshot that
/// outlives it, pinned in the store.
async fn keep_final_snapshot(job: &Arc<StatefulJob>, ctx: &Arc<Context>) -> Result<()> {
    let Some(id) = job
        .status
        .as_ref()
        .and_then(|s| s.last_checkpoint.as_ref())
        .map(|c| c.id)
    else {
        publish(
            ctx,
            job,
            true,
            reasons::FINAL_SNAPSHOT,
            "job deleted before any checkpoint completed: no final snapshot".to_owned(),
        )
        .await;
        return Ok(());
    };
    let round = Round::new(job.clone(), ctx.clone()).await?;
    let summary = observe::summary(&round.store.read_metadata(id).await?);
    let name = format!("{}-final-{id}", job.name_any());
    let api: Api<StatefulJobSnapshot> = Api::namespaced(ctx.client.clone(), &round.ns);
    let wanted = StatefulJobSnapshot::new(
        &name,
        StatefulJobSnapshotSpec {
            job: job.name_any(),
            dispose_on_delete: true,
            retain: None,
        },
    );
    let snap = match api.create(&Default::default(), &wanted).await {
        Ok(s) => s,
        Err(kube::Error::Api(e)) if e.code == 409 => api.get(&name).await?,
        Err(e) => return Err(e.into()),
    };
    let holder = format!("StatefulJobSnapshot {}/{name}", round.ns);
    pin(&round.store, &snap.uid().unwrap_or_default(), id, &holder).await?;
    let store = SnapshotStore {
        url: job.spec.storage.url.clone(),
        job: round.store.job().to_string(),
        secret: job.spec.storage.secret_ref.as_ref().map(|r| r.name.clone()),
    };
    let status = StatefulJobSnapshotStatus {
        store: Some(store),
        ..Default::default()
    };
    let status = snapshot::plan::completed(&status, &summary);
    snapshot::controller::write_status(ctx, &snap, status, &now()).await?;
    publish(
        ctx,
        job,
        false,
        reasons::FINAL_SNAPSHOT,
        format!("final checkpoint {id} kept as StatefulJobSnapshot {name}"),
    )
    .await;
    Ok(())
}

async fn cleanup(job: Arc<StatefulJob>, ctx: Arc<Context>) -> Result<Action> {
    if job.spec.deletion_policy == DeletionPolicy::Snapshot {
        keep_final_snapshot(&job, &ctx).await?;
    }
    // Owned objects go with the job (owner references); checkpoints stay in the store.
    if let Some(p) = job
        .status
        .as_ref()
        .and_then(|s| s.pending_checkpoint.clone())
    {
        info!(
            checkpoint = p.id,
            "job deleted with a checkpoint in flight; it stays incomplete"
        );
    }
    publish(
        &ctx,
        &job,
        false,
        reasons::DELETED,
        "job deleted; its checkpoints stay in the store".to_owned(),
    )
    .await;
    ctx.metrics
        .job_deleted(&job.namespace().unwrap_or_default(), &job.name_any());
    ctx.forget(&job.uid().unwrap_or_default());
    Ok(Action::await_change())
}

async fn publish(ctx: &Context, job: &StatefulJob, warning: bool, reason: &str, note: String) {
    publish_related(ctx, job, warning, reason, note, None).await;
}

/// Publishes an Event about `job` that also names `related` (another object it concerns).
/// Repeats with the same reason, related object and note form one series; a new note is a new
/// Event.
async fn publish_related(
    ctx: &Context,
    job: &StatefulJob,
    warning: bool,
    reason: &str,
    note: String,
    related: Option<ObjectReference>,
) {
    let event = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.to_owned(),
        note: Some(note.chars().take(1000).collect()),
        action: reason.to_owned(),
        secondary: related,
    };
    if let Err(e) = ctx.recorder.publish(&event, &job.object_ref(&())).await {
        warn!(error = %e, reason, "event not published");
    }
}

/// One reconciliation of one job.
struct Round {
    job: Arc<StatefulJob>,
    ctx: Arc<Context>,
    ns: String,
    store: CheckpointStore,
    /// The storage Secret's settings (also for stores the job imports from).
    settings: BTreeMap<String, String>,
}

impl Round {
    async fn new(job: Arc<StatefulJob>, ctx: Arc<Context>) -> Result<Self> {
        let ns = job.namespace().unwrap_or_default();
        let job_id = JobId::new(&ns, &job.name_any())?;
        let settings = match &job.spec.storage.secret_ref {
            Some(r) => secret_settings(&ctx.client, &ns, &r.name).await?,
            None => BTreeMap::new(),
        };
        let uid = job.uid().unwrap_or_default();
        let store = ctx.store_for(&uid, &job.spec.storage.url, job_id, &settings)?;
        Ok(Self {
            job,
            ctx,
            ns,
            store,
            settings,
        })
    }

    async fn run(self) -> Result<Action> {
        let result = async {
            let world = self.observe().await?;
            let plan = decide::decide(&self.job, &world, self.ctx.busy_requeue)?;
            self.apply(&world, plan).await
        }
        .await;
        if let Err(e) = &result
            && e.kind() == "invalid_spec"
        {
            // On top of what this round wrote: the status it started from would undo that. (A
            // round starts only once the job shows the previous write, see `behind`.)
            let uid = self.job.uid().unwrap_or_default();
            let written = self.ctx.remember(&uid, |m| m.written.clone());
            let status = written
                .map_or_else(|| self.job.status.clone(), |(_, status, _)| status)
                .unwrap_or_default();
            report_invalid(&self.job, &self.ctx, status, e).await;
        }
        result
    }

    /// The token of the job's token Secret `s` (none when it holds none), or an error when the
    /// Secret is not controlled by this job: anyone who could create it would know the token.
    fn owned_token(&self, s: Secret) -> Result<Option<String>> {
        let uid = self.job.uid();
        let owned = s
            .owner_references()
            .iter()
            .any(|o| o.controller == Some(true) && Some(&o.uid) == uid.as_ref());
        if !owned {
            return Err(crate::Error::invalid(
                format!("Secret {}/{}", self.ns, s.name_any()),
                "not controlled by this StatefulJob",
                format!(
                    "the job's token Secret, created by regroup with a controller owner reference to StatefulJob {}; delete that Secret (regroup creates its own) or give the job another name",
                    self.job.name_any()
                ),
            )
            .into());
        }
        Ok(s.data
            .as_ref()
            .and_then(|d| d.get(TOKEN_KEY))
            .filter(|t| !t.0.is_empty())
            .map(|t| String::from_utf8_lossy(&t.0).into_owned()))
    }
}

/// The storage Secret's keys and values.
pub async fn secret_settings(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<BTreeMap<String, String>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret = api.get_opt(name).await?.ok_or_else(|| {
        crate::Error::invalid(
            "spec.storage.secretRef.name",
            name,
            format!("the name of an existing Secret in namespace {ns}"),
        )
    })?;
    let mut out = BTreeMap::new();
    for (k, v) in secret.data.unwrap_or_default() {
        out.insert(k, String::from_utf8_lossy(&v.0).into_owned());
    }
    for (k, v) in secret.string_data.unwrap_or_default() {
        out.insert(k, v);
    }
    Ok(out)
}

/// Maps a worker pod to its job.
pub fn pod_to_job(pod: Pod) -> Option<kube::runtime::reflector::ObjectRef<StatefulJob>> {
    let name = pod.labels().get(JOB_LABEL)?.clone();
    let ns = pod.namespace()?;
    Some(kube::runtime::reflector::ObjectRef::new(&name).within(&ns))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn job(version: &str, epoch: u64) -> StatefulJob {
        let spec = serde_json::json!({
            "parallelism": 1,
            "template": {"spec": {"containers": [{"name": "worker", "image": "regroup:0.1.0"}]}},
            "storage": {"url": "s3://bucket/jobs"}
        });
        let mut job = StatefulJob::new("orders", serde_json::from_value(spec).unwrap());
        job.metadata.resource_version = Some(version.into());
        job.status = Some(StatefulJobStatus {
            epoch,
            ..Default::default()
        });
        job
    }

    #[test]
    fn a_round_waits_for_the_watch_to_deliver_its_own_status_write() {
        let ours = job("12", 2);
        let written: Written = (
            ours.metadata.resource_version.clone(),
            ours.status.clone(),
            Instant::now(),
        );
        assert!(
            predates(&job("11", 1), &written),
            "the version the write replaced"
        );
        assert!(!predates(&ours, &written), "the written version");
        assert!(
            !predates(&job("13", 2), &written),
            "a later edit of the spec"
        );
        let long_ago = (
            written.0.clone(),
            written.1.clone(),
            Instant::now() - WATCH_LAG_LIMIT,
        );
        assert!(
            !predates(&job("11", 1), &long_ago),
            "a write never seen is forgotten"
        );
    }

    #[tokio::test]
    async fn a_deleted_job_leaves_nothing_remembered() {
        crate::tls::install_crypto_provider();
        // No server: the deletion's Event fails and is only logged.
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let client = Client::try_from(config).unwrap();
        let workers = super::super::coordinator::HttpWorkerClient::new(Duration::from_secs(1));
        let ctx = Arc::new(Context::new(
            client,
            Arc::new(workers.unwrap()),
            Arc::new(OperatorMetrics::default()),
            None,
        ));
        let mut deleted = job("12", 2);
        deleted.metadata.uid = Some("u-1".into());
        deleted.metadata.namespace = Some("shop".into());
        let mut kept = deleted.clone();
        kept.metadata.uid = Some("u-2".into());
        for j in [&deleted, &kept] {
            let uid = j.uid().unwrap();
            ctx.remember(&uid, |m| {
                m.asked = Some(Asked {
                    id: 3,
                    refusal: None,
                });
                m.claims_settled.insert(2);
                m.owned_applied = Some((Some(1), Instant::now()));
            });
            ctx.wrote(j.clone());
        }
        cleanup(Arc::new(deleted), ctx.clone()).await.unwrap();
        let memory = ctx.memory.lock().unwrap();
        assert!(!memory.contains_key("u-1"), "the deleted job is forgotten");
        assert!(memory["u-2"].asked.is_some(), "another job is not");
        drop(memory);
        assert!(
            !ctx.behind(&job("11", 1)),
            "a round after the deletion finds nothing"
        );
        assert!(!ctx.memory.lock().unwrap().contains_key(""));
    }
}
