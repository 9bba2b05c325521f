//! The reconciler: observe → [`lifecycle::next`] → record status → act.
//!
//! Every round reads the recorded status, the spec, the job's pods and the store, computes the
//! next lifecycle state, writes it to status (server-side apply) *before* acting, publishes an
//! Event per transition, then makes the world match the recorded state's [`Work`]. It never
//! writes `spec`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{self, finalizer};
use kube::{Client, Resource, ResourceExt};
use tracing::{error, info, instrument, warn};

use super::claims;
use super::coordinator::{
    self, CheckpointInputs, CheckpointRequest, Decision, Notice, WorkerClient, WorkerTarget,
    open_store,
};
use super::crd::{PendingCheckpoint, Phase, Stage, StatefulJob, StatefulJobStatus};
use super::diagnose;
use super::lifecycle::{self, Desired, FinalCheckpoint, JobState, Observed, Work};
use super::metrics::{OperatorMetrics, label};
use super::reasons;
use super::resources::{
    self, EPOCH_LABEL, FIELD_MANAGER, Generation, JOB_LABEL, POD_INDEX_LABEL, TOKEN_KEY,
};
use super::status::{self, Problem};
use crate::checkpoint::store::Ambient;
use crate::checkpoint::{CheckpointStore, JobId};

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
    pub recorder: Recorder,
    /// Requeue interval while something is in progress.
    pub busy_requeue: Duration,
    /// (job uid, checkpoint id) this process asked the workers for; a pending checkpoint not in
    /// it was recorded by an earlier process, which may have stopped before asking.
    pub triggered: std::sync::Mutex<std::collections::HashSet<(String, u64)>>,
    /// Whether job stores may use the operator's own credentials (`--ambient-credentials`).
    pub ambient: Ambient,
    /// (job uid, epoch) whose unused state claims this process has deleted (or found none):
    /// the claims are listed once per generation, and again after a restart.
    pub claims_settled: std::sync::Mutex<std::collections::HashSet<(String, u64)>>,
}

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
            recorder: Recorder::new(client.clone(), reporter),
            client,
            workers,
            metrics,
            busy_requeue: Duration::from_secs(2),
            triggered: Default::default(),
            ambient: Ambient::Forbidden,
            claims_settled: Default::default(),
        }
    }
}

fn now() -> Time {
    Time(Timestamp::now())
}

/// Reconciles one StatefulJob (wrapped in the finalizer).
#[instrument(skip_all, fields(job = %format!("{}/{}", job.namespace().unwrap_or_default(), job.name_any())))]
pub async fn reconcile(job: Arc<StatefulJob>, ctx: Arc<Context>) -> Result<Action> {
    ctx.metrics.reconciles.inc();
    let ns = job.namespace().unwrap_or_default();
    let api: Api<StatefulJob> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, job, |event| async {
        match event {
            finalizer::Event::Apply(job) => {
                let result = match Round::new(job.clone(), ctx.clone()).await {
                    Ok(round) => round.run().await,
                    Err(e) => Err(e),
                };
                if let Err(e) = &result
                    && e.kind() == "invalid_spec"
                {
                    report_invalid(&job, &ctx, e).await;
                }
                result
            }
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
        // Waits for a change of the spec (which triggers a reconcile) rather than spinning.
        Action::requeue(Duration::from_secs(300))
    } else {
        Action::requeue(Duration::from_secs(5))
    }
}

/// Shows an error that only the user can fix (a bad spec, a foreign Secret) as the Degraded
/// condition, so that `kubectl get sj -o yaml` says what is wrong, not only the operator's log.
async fn report_invalid(job: &StatefulJob, ctx: &Context, error: &ReconcileError) {
    let mut status = job.status.clone().unwrap_or_default();
    let problem = Problem::new(reasons::INVALID_SPEC, error.to_string());
    if let Err(e) = write_status(&ctx.client, job, &mut status, Some(&problem)).await {
        warn!(error = %e, "cannot record the Degraded condition");
    }
}

/// Every checkpoint id `status` names: all were issued (or are about to be), none is issued
/// again.
fn issued_ids(status: &StatefulJobStatus) -> [Option<u64>; 4] {
    [
        status.last_issued_checkpoint,
        status.last_checkpoint.as_ref().map(|c| c.id),
        status.pending_checkpoint.as_ref().map(|c| c.id),
        status.rescale.as_ref().and_then(|r| r.final_checkpoint),
    ]
}

/// Writes `status` with its conditions for `problem` (server-side apply, forced: the operator
/// owns status); nothing when that is what the job's status already says.
async fn write_status(
    client: &Client,
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
        Api::namespaced(client.clone(), &job.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": "regroup.dev/v1alpha1",
        "kind": "StatefulJob",
        "status": status,
    });
    api.patch_status(
        &job.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

async fn cleanup(job: Arc<StatefulJob>, ctx: Arc<Context>) -> Result<Action> {
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
    Ok(Action::await_change())
}

async fn publish(ctx: &Context, job: &StatefulJob, warning: bool, reason: &str, note: String) {
    publish_related(ctx, job, warning, reason, note, None).await;
}

/// Publishes an Event about `job` that also names `related` (another object it concerns).
/// The recorder folds Events of the same reason and related object into one series, keeping
/// the first note: the note must not vary between repetitions.
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
    status: StatefulJobStatus,
    store: CheckpointStore,
    token: String,
    problem: Option<Problem>,
}

impl Round {
    async fn new(job: Arc<StatefulJob>, ctx: Arc<Context>) -> Result<Self> {
        let ns = job.namespace().unwrap_or_default();
        let job_id = JobId::new(&ns, &job.name_any())?;
        let settings = match &job.spec.storage.secret_ref {
            Some(r) => secret_settings(&ctx.client, &ns, &r.name).await?,
            None => BTreeMap::new(),
        };
        let store = open_store(&job.spec.storage.url, job_id, &settings, ctx.ambient)?;
        let status = job.status.clone().unwrap_or_default();
        let problem = status
            .conditions
            .iter()
            .find(|c| {
                c.type_ == status::DEGRADED
                    && c.status == "True"
                    && c.reason != reasons::INVALID_SPEC
            })
            .map(|c| Problem {
                reason: c.reason.clone(),
                message: c.message.clone(),
            });
        Ok(Self {
            job,
            ctx,
            ns,
            status,
            store,
            token: String::new(),
            problem,
        })
    }

    async fn run(mut self) -> Result<Action> {
        let job = self.job.clone();
        let interval = job.spec.checkpointing.interval()?;
        let timeout = job.spec.checkpointing.timeout()?;
        self.token = self.ensure_token().await?;
        self.apply(&resources::service(&job)?).await?;
        self.apply(&resources::pod_disruption_budget(&job)?).await?;

        let state = JobState::from_status(job.status.as_ref());
        let desired = Desired {
            parallelism: job.spec.parallelism,
            suspend: job.spec.suspend,
            template_hash: resources::template_hash(&job.spec.template),
            restore_timeout: job.spec.restore.timeout()?,
        };
        let (observed, ready_pods, pod_problem) = self.observe(&state, timeout).await?;
        let t = now();
        let step = lifecycle::next(&state, &desired, &observed, &t);

        for note in &step.notes {
            info!(reason = note.reason, "{}", note.message);
            if note.warning {
                self.problem = Some(Problem::new(note.reason, note.message.clone()));
            }
        }
        let warned = step.notes.iter().any(|n| n.warning);
        match pod_problem {
            Some(p) if !warned => self.problem = Some(p),
            None if self
                .problem
                .as_ref()
                .is_some_and(|p| reasons::OBSERVED.contains(&p.reason.as_str())) =>
            {
                self.problem = None
            }
            _ => {}
        }
        self.observe_stage_metrics(&state, &step.state, &t);
        if let Work::FinalCheckpoint {
            id,
            epoch,
            parallelism,
        } = state.work()
            && !matches!(step.state.work(), Work::FinalCheckpoint { .. })
        {
            self.finish_final_checkpoint(id, epoch, parallelism, &observed.final_checkpoint, &t)
                .await?;
        }
        step.state.write_to(&mut self.status);
        if step.state.phase != Phase::Running {
            self.status.worker_pods.clear();
        } else if state.phase != Phase::Running {
            self.status.worker_pods = ready_pods;
        }
        self.save().await?;
        for note in &step.notes {
            publish(
                &self.ctx,
                &job,
                note.warning,
                note.reason,
                note.message.clone(),
            )
            .await;
        }

        let requeue = self.act(&step.state, interval, timeout).await?;
        Ok(Action::requeue(requeue))
    }

    fn observe_stage_metrics(&self, before: &JobState, after: &JobState, t: &Time) {
        let Some(r) = &before.rescale else { return };
        let left = after.rescale.as_ref().is_none_or(|a| a.stage != r.stage);
        if left {
            let secs = t.0.duration_since(r.stage_started.0).as_secs_f64().max(0.0);
            self.ctx
                .metrics
                .rescale_stage_duration
                .get_or_create(&label("stage", r.stage.as_str()))
                .observe(secs);
        }
        if after.rescale.is_none() {
            self.ctx
                .metrics
                .rescales
                .get_or_create(&label("reason", r.reason.as_str()))
                .inc();
        }
    }

    /// Writes the whole status (server-side apply, forced: the operator owns status).
    async fn save(&mut self) -> Result<()> {
        let job = &self.job;
        // Every id in status was issued (or is about to be): none of them is ever issued again.
        self.status.last_issued_checkpoint = issued_ids(&self.status).into_iter().flatten().max();
        self.status.selector = Some(resources::selector_string(job));
        self.status.observed_generation = job.metadata.generation;
        let problem = self.problem.as_ref();
        write_status(&self.ctx.client, job, &mut self.status, problem).await?;
        Ok(())
    }

    async fn apply<K>(&self, obj: &K) -> Result<K>
    where
        K: Resource<DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    {
        let api: Api<K> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        let name = obj.meta().name.clone().unwrap_or_default();
        let mut value =
            serde_json::to_value(obj).map_err(|e| crate::Error::Other(e.to_string()))?;
        value["apiVersion"] = serde_json::Value::String(K::api_version(&()).into_owned());
        value["kind"] = serde_json::Value::String(K::kind(&()).into_owned());
        Ok(api
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&value),
            )
            .await?)
    }

    /// The job's bearer token: the one in its Secret, or a new one written there. A Secret of
    /// that name that this job does not control is never trusted (anyone who could create it
    /// would know the token); one without a token gets a new one.
    async fn ensure_token(&self) -> Result<String> {
        let api: Api<Secret> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        let name = resources::token_secret_name(&self.job);
        let existing = match api.get_opt(&name).await? {
            Some(s) => Some(self.owned_token(s)?),
            None => None,
        };
        match existing {
            Some(Some(token)) => return Ok(token),
            Some(None) => {
                let token = resources::new_token();
                let secret = resources::token_secret(&self.job, &token)?;
                api.patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({ "data": secret.data })),
                )
                .await?;
                return Ok(token);
            }
            None => {}
        }
        let token = resources::new_token();
        let secret = resources::token_secret(&self.job, &token)?;
        match api.create(&PostParams::default(), &secret).await {
            Ok(_) => Ok(token),
            // Created concurrently (another round): use that one, once it holds a token.
            Err(kube::Error::Api(e)) if e.code == 409 => {
                self.owned_token(api.get(&name).await?)?.ok_or_else(|| {
                    crate::Error::Other(format!(
                        "Secret {name} was just created without a token; retrying"
                    ))
                    .into()
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The token of the job's token Secret `s` (none when it holds none), or an error when the
    /// Secret is not controlled by this job.
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

    async fn pods(&self) -> Result<Vec<Pod>> {
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        let lp = ListParams::default().labels(&resources::selector_string(&self.job));
        Ok(api.list(&lp).await?.items)
    }

    /// What the lifecycle needs, the UIDs of the ready workers of the current epoch, and what
    /// is wrong with the job's pods, if anything.
    async fn observe(
        &mut self,
        state: &JobState,
        timeout: Duration,
    ) -> Result<(Observed, Vec<String>, Option<Problem>)> {
        let pods = self.pods().await?;
        let of_epoch = |p: &&Pod| {
            p.labels().get(EPOCH_LABEL).map(String::as_str)
                == Some(state.epoch.to_string().as_str())
                && p.metadata.deletion_timestamp.is_none()
        };
        let condition = |p: &Pod, t: &str| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == t && c.status == "True"))
        };
        let initialized = pods
            .iter()
            .filter(of_epoch)
            .filter(|p| condition(p, "Initialized"))
            .count() as u32;
        let ready = pods
            .iter()
            .filter(of_epoch)
            .filter(|p| condition(p, "Ready"))
            .count() as u32;
        let ids = self.store.checkpoint_ids().await?;
        let latest_completed = ids.iter().rev().find(|(_, done)| *done).map(|(id, _)| *id);
        let store_ids: Vec<u64> = ids.iter().map(|(id, _)| *id).collect();
        let next_checkpoint_id = self.next_checkpoint_id(&store_ids)?;
        let final_checkpoint = match (state.work(), &state.rescale) {
            (
                Work::FinalCheckpoint {
                    id,
                    epoch,
                    parallelism,
                },
                Some(r),
            ) => {
                let completed = ids.contains(&(id, true))
                    || self.complete(id, epoch, parallelism).await?.is_some();
                if completed {
                    self.notify(&pods, id, epoch, parallelism, Notice::Complete)
                        .await;
                }
                coordinator::final_outcome(
                    id,
                    completed,
                    self.status.pending_checkpoint.as_ref(),
                    &r.stage_started,
                    &now(),
                    timeout,
                )
            }
            _ => FinalCheckpoint::InProgress,
        };
        let at_epoch: Vec<&Pod> = pods.iter().filter(of_epoch).collect();
        let worker_lost = (state.phase == Phase::Running && state.rescale.is_none())
            .then(|| lost_worker(&self.status.worker_pods, &at_epoch))
            .flatten();
        let ready_pods = at_epoch
            .iter()
            .filter(|p| condition(p, "Ready"))
            .filter_map(|p| p.metadata.uid.clone())
            .collect();
        let restore_failure = diagnose::restore_failure(&at_epoch);
        let pod_problem = self
            .pod_problem(state, &pods, &at_epoch, restore_failure.clone())
            .await;
        Ok((
            Observed {
                pods: pods.len() as u32,
                initialized,
                ready,
                final_checkpoint,
                latest_completed,
                completed: ids
                    .iter()
                    .filter(|(_, done)| *done)
                    .map(|(id, _)| *id)
                    .collect(),
                restore_failure,
                next_checkpoint_id,
                worker_lost,
            },
            ready_pods,
            pod_problem,
        ))
    }

    /// What is wrong with the job's pods in the recorded stage, with what the user can do.
    async fn pod_problem(
        &self,
        state: &JobState,
        pods: &[Pod],
        at_epoch: &[&Pod],
        restore_failure: Option<String>,
    ) -> Option<Problem> {
        let problem = |reason: &str, message: String| Some(Problem::new(reason, message));
        let all: Vec<&Pod> = pods.iter().collect();
        if let Some((pod, grace)) = stuck_terminating(&all, &now()) {
            let node = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_else(|| "(none)".to_owned());
            let lost = self.node_lost(&node).await;
            return problem(
                reasons::POD_STUCK_TERMINATING,
                format!(
                    "pod {} has been terminating for more than its grace period ({grace}s) on node {node}{}: its state claim is held until the kubelet confirms the stop. If the node is gone, force-delete the pod (kubectl delete pod {} -n {} --force --grace-period=0) and the job goes on",
                    pod.name_any(),
                    if lost { ", which is not Ready" } else { "" },
                    pod.name_any(),
                    self.ns
                ),
            );
        }
        let r = state.rescale.as_ref()?;
        let back = format!(
            "to abandon the rescale, set spec.parallelism back to {}",
            r.from.max(1)
        );
        match r.stage {
            Stage::Restoring => {
                if let Some(why) = restore_failure {
                    return problem(
                        reasons::RESTORE_FAILED,
                        format!(
                            "{why}. The restore is retried; after spec.restore.timeout ({}) the workers restore from the previous retained checkpoint; {back}",
                            self.job.spec.restore.timeout
                        ),
                    );
                }
            }
            Stage::RollingForward => {
                if let Some(why) = diagnose::worker_failure(at_epoch) {
                    return problem(
                        reasons::WORKER_FAILING,
                        format!("{why}. Fix the pod template (spec.template), or {back}"),
                    );
                }
            }
            _ => return None,
        }
        if (at_epoch.len() as u32) < r.to
            && let Some(why) = self.pods_not_created(&r.stage_started).await
        {
            return problem(
                reasons::PODS_NOT_CREATED,
                format!(
                    "the StatefulSet cannot create the workers' pods: {why}. Fix what refuses them (the namespace's Pod Security level or ResourceQuota, spec.restore, spec.template), or {back}"
                ),
            );
        }
        None
    }

    /// The newest reason the workers' StatefulSet gave since `since` for not creating a pod.
    async fn pods_not_created(&self, since: &Time) -> Option<String> {
        let api: Api<k8s_openapi::api::core::v1::Event> =
            Api::namespaced(self.ctx.client.clone(), &self.ns);
        let lp = ListParams::default().fields(&format!(
            "involvedObject.kind=StatefulSet,involvedObject.name={},reason=FailedCreate",
            resources::statefulset_name(&self.job)
        ));
        let events = api.list(&lp).await.ok()?.items;
        events
            .into_iter()
            .filter_map(|e| {
                let at = e
                    .last_timestamp
                    .clone()
                    .or(e.event_time.as_ref().map(|t| Time(t.0)))?;
                (at.0 >= since.0).then_some((at, e.message.unwrap_or_default()))
            })
            .max_by_key(|(at, _)| at.0)
            .map(|(_, m)| m)
    }

    /// Whether node `name` is known not to be Ready (false when it cannot be read).
    async fn node_lost(&self, name: &str) -> bool {
        let api: Api<k8s_openapi::api::core::v1::Node> = Api::all(self.ctx.client.clone());
        matches!(api.get_opt(name).await, Ok(Some(n)) if diagnose::node_not_ready(&n))
    }

    /// Tells the workers of `epoch` among `pods` the outcome of checkpoint `id` (best effort:
    /// a worker that misses it only re-uploads files it could have reused).
    async fn notify(&self, pods: &[Pod], id: u64, epoch: u64, parallelism: u32, notice: Notice) {
        if let Ok(workers) = self.workers(pods, epoch, parallelism) {
            coordinator::notify_all(
                self.ctx.workers.as_ref(),
                &workers,
                &self.token,
                id,
                epoch,
                notice,
            )
            .await;
        }
    }

    /// The workers of `epoch`, one per subtask `0..parallelism`, with their pod IPs.
    fn workers(
        &self,
        pods: &[Pod],
        epoch: u64,
        parallelism: u32,
    ) -> crate::Result<Vec<WorkerTarget>> {
        let job_id = self.store.job().clone();
        (0..parallelism)
            .map(|subtask| {
                let pod = pods.iter().find(|p| {
                    p.labels().get(EPOCH_LABEL) == Some(&epoch.to_string())
                        && p.labels().get(POD_INDEX_LABEL) == Some(&subtask.to_string())
                        && p.metadata.deletion_timestamp.is_none()
                });
                let ip = pod
                    .and_then(|p| p.status.as_ref())
                    .and_then(|s| s.pod_ip.clone())
                    .ok_or_else(|| {
                        crate::Error::Other(format!(
                            "worker {subtask} of {job_id} (epoch {epoch}) has no pod with an IP"
                        ))
                    })?;
                let host = if ip.contains(':') {
                    format!("[{ip}]")
                } else {
                    ip
                };
                Ok(WorkerTarget {
                    job: job_id.clone(),
                    subtask,
                    parallelism,
                    base_url: format!("http://{host}:{}", resources::WORKER_PORT),
                })
            })
            .collect()
    }

    /// Makes the world match the recorded state; returns when to look again.
    async fn act(
        &mut self,
        state: &JobState,
        interval: Duration,
        timeout: Duration,
    ) -> Result<Duration> {
        let busy = self.ctx.busy_requeue;
        match state.work() {
            Work::Nothing => Ok(Duration::from_secs(60)),
            Work::StopWorkers => {
                self.scale_to_zero().await?;
                Ok(if state.rescale.is_some() {
                    busy
                } else {
                    Duration::from_secs(60)
                })
            }
            Work::RunWorkers {
                epoch,
                parallelism,
                checkpoint,
            } => {
                let generation = Generation {
                    epoch,
                    parallelism,
                    checkpoint,
                };
                self.apply(&resources::statefulset(&self.job, &generation)?)
                    .await?;
                Ok(busy)
            }
            Work::FinalCheckpoint {
                id,
                epoch,
                parallelism,
            } => {
                let already = self
                    .status
                    .pending_checkpoint
                    .as_ref()
                    .is_some_and(|p| p.id == id);
                if !already {
                    self.abort_pending("superseded by the final checkpoint of a rescale")
                        .await?;
                    self.start_checkpoint(id, epoch, parallelism, true).await?;
                } else if !self.triggered_here(id) {
                    // Recorded by an operator that stopped before (or while) asking the workers.
                    self.trigger(id, epoch, parallelism, true).await?;
                }
                Ok(busy)
            }
            Work::Checkpoints { epoch, parallelism } => {
                self.delete_unused_claims(state).await;
                let stored: Vec<u64> = self
                    .store
                    .checkpoint_ids()
                    .await?
                    .iter()
                    .map(|(i, _)| *i)
                    .collect();
                let inputs = CheckpointInputs {
                    interval,
                    timeout,
                    epoch,
                    last_attempt: self.status.last_checkpoint_attempt.as_ref(),
                    pending: self.status.pending_checkpoint.as_ref(),
                    requested_trigger: self.job.spec.checkpoint_trigger.as_deref(),
                    acted_trigger: self.status.checkpoint_trigger.as_deref(),
                    next_id: self.next_checkpoint_id(&stored)?,
                };
                let decision = coordinator::periodic(&now(), &inputs);
                match decision {
                    Decision::Wait(d) => Ok(d.min(Duration::from_secs(30))),
                    Decision::Trigger { id, on_demand } => {
                        if on_demand {
                            self.status.checkpoint_trigger =
                                self.job.spec.checkpoint_trigger.clone();
                        }
                        self.start_checkpoint(id, epoch, parallelism, false).await?;
                        Ok(busy)
                    }
                    Decision::Poll { id } => {
                        if !self.triggered_here(id) {
                            self.trigger(id, epoch, parallelism, false).await?;
                        }
                        self.poll_checkpoint(id, epoch, parallelism, timeout)
                            .await?;
                        Ok(busy)
                    }
                    Decision::Abort { id, reason } => {
                        self.abort_pending(&reason).await?;
                        let _ = id;
                        Ok(busy)
                    }
                }
            }
        }
    }

    /// Deletes the state claims of ordinals the job no longer runs, once its rescale is
    /// recorded complete (see [`claims::unused_claims`]), with a `StateClaimDeleted` Event per
    /// claim. Best effort: a failure is logged and retried in a later round; checkpoints go on.
    async fn delete_unused_claims(&self, state: &JobState) {
        if resources::state_claim(&self.job).is_none() {
            return;
        }
        let key = (self.job.uid().unwrap_or_default(), state.epoch);
        let settled = self
            .ctx
            .claims_settled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&key);
        if settled {
            return;
        }
        match self.try_delete_unused_claims(state).await {
            Ok(()) => {
                self.ctx
                    .claims_settled
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key);
            }
            Err(e) => warn!(error = %e, "unused state claims not deleted; retried later"),
        }
    }

    async fn try_delete_unused_claims(&self, state: &JobState) -> Result<()> {
        let api: Api<PersistentVolumeClaim> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        let lp = ListParams::default().labels(&resources::selector_string(&self.job));
        let list = api.list(&lp).await?.items;
        let in_use = claims::claims_in_use(&self.pods().await?);
        let unused = claims::unused_claims(
            &self.job.name_any(),
            &resources::statefulset_name(&self.job),
            state,
            &list,
            &in_use,
        );
        let mut failed = None;
        for claim in &unused {
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: claim.uid.clone(),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match api.delete(&claim.name, &dp).await {
                Ok(_) => {
                    // One Event per claim, related to it: a series per claim keeps its note.
                    let note = format!(
                        "deleted state claim {} (ordinal {}): no worker uses it after the rescale",
                        claim.name, claim.ordinal
                    );
                    info!(claim = %claim.name, parallelism = state.parallelism, "{note}");
                    let related = ObjectReference {
                        api_version: Some("v1".to_owned()),
                        kind: Some("PersistentVolumeClaim".to_owned()),
                        name: Some(claim.name.clone()),
                        namespace: Some(self.ns.clone()),
                        uid: claim.uid.clone(),
                        ..Default::default()
                    };
                    publish_related(
                        &self.ctx,
                        &self.job,
                        false,
                        reasons::STATE_CLAIM_DELETED,
                        note,
                        Some(related),
                    )
                    .await;
                }
                // Gone already, or replaced by a claim of the same name: not this round's.
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(e) => failed = Some(e),
            }
        }
        match failed {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    async fn scale_to_zero(&self) -> Result<()> {
        let api: Api<StatefulSet> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        let name = resources::statefulset_name(&self.job);
        let Some(sts) = api.get_opt(&name).await? else {
            return Ok(());
        };
        if sts.spec.replicas == Some(0) {
            return Ok(());
        }
        // A merge patch of replicas only: an apply of a partial object would drop the fields
        // the operator applied before.
        api.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"replicas": 0}})),
        )
        .await?;
        Ok(())
    }

    /// Records checkpoint `id` as pending, then asks every worker of `epoch` to take it.
    async fn start_checkpoint(
        &mut self,
        id: u64,
        epoch: u64,
        parallelism: u32,
        stop: bool,
    ) -> Result<()> {
        let t = now();
        self.status.pending_checkpoint = Some(PendingCheckpoint {
            id,
            epoch,
            started: t.clone(),
            stop,
            failure: None,
        });
        self.status.last_checkpoint_attempt = Some(t);
        self.save().await?;
        self.trigger(id, epoch, parallelism, stop).await
    }

    /// Whether this process already asked the workers for checkpoint `id` of this job.
    fn triggered_here(&self, id: u64) -> bool {
        let key = (self.job.uid().unwrap_or_default(), id);
        self.ctx
            .triggered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&key)
    }

    /// Asks every worker of `epoch` for the recorded checkpoint `id` (again, after a restart:
    /// workers answer a repeated request for the same id as the first). A refusal is recorded
    /// in the pending checkpoint.
    async fn trigger(&mut self, id: u64, epoch: u64, parallelism: u32, stop: bool) -> Result<()> {
        self.ctx
            .triggered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((self.job.uid().unwrap_or_default(), id));
        let pods = self.pods().await?;
        let request = CheckpointRequest { id, epoch, stop };
        let result = match self.workers(&pods, epoch, parallelism) {
            Ok(workers) => {
                coordinator::trigger_all(self.ctx.workers.as_ref(), &workers, &self.token, &request)
                    .await
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                info!(checkpoint = id, epoch, stop, "checkpoint triggered");
                publish(
                    &self.ctx,
                    &self.job,
                    false,
                    reasons::CHECKPOINT_TRIGGERED,
                    format!(
                        "checkpoint {id} of epoch {epoch} triggered on {parallelism} workers{}",
                        if stop { " (stop)" } else { "" }
                    ),
                )
                .await;
            }
            Err(e) => {
                let message = format!("checkpoint {id} could not start: {e}");
                if let Some(p) = self.status.pending_checkpoint.as_mut() {
                    p.failure = Some(e.to_string());
                }
                self.checkpoint_failed(message, true).await?;
            }
        }
        Ok(())
    }

    async fn poll_checkpoint(
        &mut self,
        id: u64,
        epoch: u64,
        parallelism: u32,
        timeout: Duration,
    ) -> Result<()> {
        let Some(meta) = self.complete(id, epoch, parallelism).await? else {
            if self
                .status
                .pending_checkpoint
                .as_ref()
                .is_some_and(|p| p.failure.is_some())
            {
                self.save().await?;
            }
            return Ok(());
        };
        let t = now();
        let started = self
            .status
            .pending_checkpoint
            .as_ref()
            .map(|p| p.started.clone());
        let record = coordinator::record(&meta, started.as_ref(), &t);
        self.ctx.metrics.checkpoint_completed(&record);
        let note = format!(
            "checkpoint {id} completed: {} bytes ({} new) in {:.1}s",
            record.bytes_total, record.bytes_new, record.duration_seconds
        );
        self.status.last_checkpoint = Some(record);
        self.status.pending_checkpoint = None;
        self.clear_checkpoint_problem();
        self.save().await?;
        publish(
            &self.ctx,
            &self.job,
            false,
            reasons::CHECKPOINT_COMPLETED,
            note,
        )
        .await;
        let pods = self.pods().await?;
        self.notify(&pods, id, epoch, parallelism, Notice::Complete)
            .await;
        self.retain(timeout).await;
        Ok(())
    }

    /// The id the next checkpoint gets: above every id in the store and every id ever issued.
    fn next_checkpoint_id(&self, store_ids: &[u64]) -> crate::Result<u64> {
        coordinator::next_checkpoint_id(store_ids, issued_ids(&self.status))
    }

    /// Completes checkpoint `id` once every handle is in (see
    /// [`CheckpointStore::try_complete`]). While it is not complete, a worker that failed it
    /// or no longer knows it, or stored data that make it impossible, fail the pending
    /// checkpoint at once rather than at its timeout.
    async fn complete(
        &mut self,
        id: u64,
        epoch: u64,
        parallelism: u32,
    ) -> Result<Option<crate::checkpoint::CheckpointMetadata>> {
        let outcome = self
            .store
            .try_complete(id, epoch, parallelism, self.job.spec.max_parallelism)
            .await;
        let failure = match outcome {
            Ok(Some(meta)) => {
                if crate::fault::faults().exit_after_metadata(&self.store.job().to_string()) {
                    error!(
                        checkpoint = id,
                        "fault injection: exiting after writing _metadata.json"
                    );
                    std::process::exit(3);
                }
                return Ok(Some(meta));
            }
            // Workers are asked only about a checkpoint this process asked them for: after a
            // restart, a worker that restarted too learns of it from the trigger first.
            Ok(None) if !self.triggered_here(id) => None,
            Ok(None) => {
                let pods = self.pods().await?;
                match self.workers(&pods, epoch, parallelism) {
                    Ok(workers) => {
                        coordinator::first_failure(
                            self.ctx.workers.as_ref(),
                            &workers,
                            &self.token,
                            id,
                        )
                        .await
                    }
                    Err(_) => None,
                }
            }
            Err(e) if e.is_damaged_data() => Some(format!("cannot complete: {e}")),
            Err(e) => return Err(e.into()),
        };
        if let Some(reason) = failure
            && let Some(p) = self
                .status
                .pending_checkpoint
                .as_mut()
                .filter(|p| p.id == id && p.failure.is_none())
        {
            warn!(checkpoint = id, %reason, "checkpoint failed");
            p.failure = Some(reason.clone());
            let message = format!("checkpoint {id} failed: {reason}");
            self.checkpoint_failed(message, false).await?;
        }
        Ok(None)
    }

    /// Applies the job's retention after a completed checkpoint (GC grace: `timeout`); a
    /// failure waits for the next one.
    async fn retain(&self, timeout: Duration) {
        let retain = self.job.spec.checkpointing.retain;
        if let Err(e) = coordinator::retain_and_collect(&self.store, retain, timeout).await {
            warn!(error = %e, "retention failed; retried after the next checkpoint");
        }
    }

    /// Counts a failed checkpoint, makes it the job's problem (saved now when `save`) and says
    /// so in an Event.
    async fn checkpoint_failed(&mut self, message: String, save: bool) -> Result<()> {
        self.ctx.metrics.checkpoint_ended("failed");
        self.problem = Some(Problem::new(reasons::CHECKPOINT_FAILED, message.clone()));
        if save {
            self.save().await?;
        }
        let reason = reasons::CHECKPOINT_FAILED;
        publish(&self.ctx, &self.job, true, reason, message).await;
        Ok(())
    }

    /// A completed checkpoint ends a Degraded condition that a failed or aborted one started.
    fn clear_checkpoint_problem(&mut self) {
        if self
            .problem
            .as_ref()
            .is_some_and(|p| reasons::CLEARED_BY_A_CHECKPOINT.contains(&p.reason.as_str()))
        {
            self.problem = None;
        }
    }

    /// Records the outcome of the final checkpoint once the rescale moved past it.
    async fn finish_final_checkpoint(
        &mut self,
        id: u64,
        epoch: u64,
        parallelism: u32,
        outcome: &FinalCheckpoint,
        t: &Time,
    ) -> Result<()> {
        let started = self
            .status
            .pending_checkpoint
            .as_ref()
            .filter(|p| p.id == id)
            .map(|p| p.started.clone());
        match outcome {
            FinalCheckpoint::Completed(id) => {
                let meta = self.store.read_metadata(*id).await?;
                let record = coordinator::record(&meta, started.as_ref(), t);
                self.ctx.metrics.checkpoint_completed(&record);
                self.status.last_checkpoint = Some(record);
                self.clear_checkpoint_problem();
                let timeout = self.job.spec.checkpointing.timeout()?;
                self.retain(timeout).await;
            }
            FinalCheckpoint::Failed(_) => {
                let pods = self.pods().await?;
                self.notify(&pods, id, epoch, parallelism, Notice::Abort)
                    .await;
                self.ctx.metrics.checkpoint_ended("aborted");
            }
            FinalCheckpoint::InProgress => {}
        }
        self.status.pending_checkpoint = None;
        Ok(())
    }

    /// Drops the pending checkpoint (if any) and tells its workers.
    async fn abort_pending(&mut self, reason: &str) -> Result<()> {
        let Some(p) = self.status.pending_checkpoint.clone() else {
            return Ok(());
        };
        let pods = self.pods().await?;
        let parallelism = self.status.parallelism;
        self.notify(&pods, p.id, p.epoch, parallelism, Notice::Abort)
            .await;
        self.status.pending_checkpoint = None;
        self.ctx.metrics.checkpoint_ended("aborted");
        let message = format!("checkpoint {} aborted: {reason}", p.id);
        if !p.stop && self.status.phase == Some(Phase::Running) && p.failure.is_none() {
            self.problem = Some(Problem::new(reasons::CHECKPOINT_ABORTED, message.clone()));
        }
        self.save().await?;
        publish(
            &self.ctx,
            &self.job,
            true,
            reasons::CHECKPOINT_ABORTED,
            message,
        )
        .await;
        Ok(())
    }
}

/// Why a worker of the running generation counts as lost, if one does: a recorded pod is gone
/// or terminating, a pod not recorded took a worker's place, or a worker container restarted.
/// `recorded` are the pod UIDs of the generation when it became ready (none: nothing to check);
/// `live` are the generation's pods that are not terminating.
pub fn lost_worker(recorded: &[String], live: &[&Pod]) -> Option<String> {
    if recorded.is_empty() {
        return None;
    }
    let uid = |p: &Pod| p.metadata.uid.clone().unwrap_or_default();
    if let Some(gone) = recorded
        .iter()
        .find(|r| !live.iter().any(|p| &uid(p) == *r))
    {
        return Some(format!("worker pod {gone} is gone"));
    }
    for p in live {
        if !recorded.contains(&uid(p)) {
            return Some(format!("worker pod {} was replaced", p.name_any()));
        }
        let restarts: i32 = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .map(|cs| cs.iter().map(|c| c.restart_count).sum())
            .unwrap_or(0);
        if restarts > 0 {
            return Some(format!(
                "worker pod {} restarted its containers {restarts} times",
                p.name_any()
            ));
        }
    }
    None
}

/// The first of `pods` still there a minute after its grace period ended (the API server sets
/// `deletionTimestamp` to the end of the grace period), with that grace period in seconds.
fn stuck_terminating<'a>(pods: &[&'a Pod], now: &Time) -> Option<(&'a Pod, i64)> {
    pods.iter().find_map(|p| {
        let end = p.metadata.deletion_timestamp.as_ref()?;
        let grace = p
            .metadata
            .deletion_grace_period_seconds
            .unwrap_or(30)
            .max(0);
        (lifecycle::elapsed(end, now).as_secs() > 60).then_some((*p, grace))
    })
}

/// The storage Secret's keys and values.
async fn secret_settings(
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

    fn pod(name: &str, uid: &str, restarts: i32) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "uid": uid},
            "status": {"containerStatuses": [{
                "name": "worker", "image": "i", "imageID": "", "ready": true,
                "restartCount": restarts
            }]}
        }))
        .unwrap()
    }

    #[test]
    fn lost_workers() {
        let recorded = vec!["u0".to_owned(), "u1".to_owned()];
        let (a, b) = (pod("j-0", "u0", 0), pod("j-1", "u1", 0));
        assert_eq!(lost_worker(&recorded, &[&a, &b]), None);
        assert_eq!(
            lost_worker(&[], &[&a]),
            None,
            "nothing recorded, nothing to compare"
        );
        let gone = lost_worker(&recorded, &[&a]).unwrap();
        assert!(gone.contains("u1") && gone.contains("gone"), "{gone}");
        let replacement = pod("j-1", "u9", 0);
        let replaced = lost_worker(&recorded, &[&a, &replacement]).unwrap();
        assert!(replaced.contains("u1 is gone"), "{replaced}");
        let restarted = pod("j-1", "u1", 2);
        let msg = lost_worker(&recorded, &[&a, &restarted]).unwrap();
        assert!(
            msg.contains("j-1 restarted its containers 2 times"),
            "{msg}"
        );
    }
}
