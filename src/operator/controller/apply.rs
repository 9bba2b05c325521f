//! The round's writes, in the order that keeps every decision safe to repeat: a completed
//! checkpoint's metadata, the owned objects, the status (once), then the plan's actions.

use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolumeClaim, Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use tracing::{error, info, warn};

use super::super::claims;
use super::super::coordinator::{self, CheckpointRequest};
use super::super::crd::StatefulJobStatus;
use super::super::initial_state::Source;
use super::super::lifecycle::{self, JobState};
use super::super::metrics::job_labels;
use super::super::reasons;
use super::super::resources::{self, FIELD_MANAGER};
use super::super::rollout;
use super::super::snapshot::schedule::SCHEDULED_LABEL;
use super::super::snapshot::{self, SnapshotPhase, StatefulJobSnapshot, StatefulJobSnapshotSpec};
use super::decide::{Act, Asked, Plan, Tally, Token, World};
use super::{Result, Round, publish, publish_related, write_status};
use crate::checkpoint::import::import;
use crate::checkpoint::pins::{pin, unpin};
use crate::checkpoint::progress;
use crate::checkpoint::{CheckpointMetadata, JobId};

/// How often the Service and PodDisruptionBudget of an unchanged job are applied again (one
/// deleted by hand comes back within this), instead of twice in every round.
const REAPPLY_OWNED: Duration = Duration::from_secs(60);

/// State claims created at once ahead of a scale-out's workers.
const CLAIMS_IN_FLIGHT: usize = 16;

/// Whether the job's Service and PodDisruptionBudget are to be applied, given when this process
/// last applied them for which generation (`last`): for a new generation, or once they are
/// [`REAPPLY_OWNED`] old.
pub(super) fn owned_objects_due(
    last: Option<(Option<i64>, Instant)>,
    generation: Option<i64>,
    now: Instant,
) -> bool {
    last.is_none_or(|(g, at)| g != generation || now.duration_since(at) >= REAPPLY_OWNED)
}

impl Round {
    /// Carries out `plan`, decided from `world`.
    pub(super) async fn apply(&self, world: &World, plan: Plan) -> Result<Action> {
        if let Some(meta) = &plan.commit {
            self.commit(meta).await?;
        }
        let token = self.ensure_token(&world.token).await?;
        self.apply_owned_objects().await?;
        let mut status = plan.status;
        write_status(&self.ctx, &self.job, &mut status, plan.problem.as_ref()).await?;
        super::record_metrics(&self.ctx, &self.job, &status);
        for update in &plan.snapshots {
            self.record_snapshot(update).await?;
        }
        for tally in &plan.tallies {
            self.tally(tally);
        }
        for note in plan.events {
            if note.warning {
                warn!(reason = note.reason, "{}", note.message);
            } else {
                info!(reason = note.reason, "{}", note.message);
            }
            publish(
                &self.ctx,
                &self.job,
                note.warning,
                note.reason,
                note.message,
            )
            .await;
        }
        for act in &plan.actions {
            self.act(act, &world.pods, &token, &status).await?;
        }
        if plan
            .problem
            .as_ref()
            .is_some_and(|p| p.reason == reasons::INVALID_SPEC)
        {
            // Every act went through: what the API server refused before is accepted now.
            write_status(&self.ctx, &self.job, &mut status, None).await?;
            super::record_metrics(&self.ctx, &self.job, &status);
        }
        Ok(Action::requeue(plan.requeue))
    }

    /// Applies the job's Service and PodDisruptionBudget when [`owned_objects_due`].
    async fn apply_owned_objects(&self) -> Result<()> {
        let uid = self.job.uid().unwrap_or_default();
        let generation = self.job.metadata.generation;
        let now = Instant::now();
        let last = self.ctx.remember(&uid, |m| m.owned_applied);
        if !owned_objects_due(last, generation, now) {
            return Ok(());
        }
        let (service, budget) = (
            resources::service(&self.job)?,
            resources::pod_disruption_budget(&self.job)?,
        );
        futures::try_join!(self.apply_object(&service), self.apply_object(&budget))?;
        self.ctx
            .remember(&uid, |m| m.owned_applied = Some((generation, now)));
        Ok(())
    }

    /// Writes `_metadata.json`: from here on the checkpoint is complete.
    async fn commit(&self, meta: &CheckpointMetadata) -> Result<()> {
        self.store.commit(meta).await?;
        if crate::fault::faults().exit_after_metadata(&self.store.job().to_string()) {
            error!(
                checkpoint = meta.checkpoint_id,
                "fault injection: exiting after writing _metadata.json"
            );
            std::process::exit(3);
        }
        Ok(())
    }

    async fn act(
        &self,
        act: &Act,
        pods: &[Pod],
        token: &str,
        status: &StatefulJobStatus,
    ) -> Result<()> {
        match act {
            &Act::Trigger {
                id,
                epoch,
                parallelism,
                stop,
            } => {
                self.trigger(pods, token, id, epoch, parallelism, stop)
                    .await
            }
            &Act::Notify {
                id,
                epoch,
                parallelism,
                notice,
            } => {
                // Best effort: a worker that misses it only re-uploads files it could reuse.
                if let Ok(w) =
                    coordinator::worker_targets(self.store.job(), pods, epoch, parallelism)
                {
                    let client = self.ctx.workers.as_ref();
                    coordinator::notify_all(client, &w, token, id, epoch, notice).await;
                }
            }
            Act::Retain => {
                let retain = self.job.spec.checkpointing.retain;
                let timeout = self.job.spec.checkpointing.timeout()?;
                if let Err(e) = coordinator::retain_and_collect(&self.store, retain, timeout).await
                {
                    warn!(error = %e, "retention failed; retried after the next checkpoint");
                }
            }
            Act::StopWorkers => self.scale_to_zero().await?,
            Act::RunWorkers(generation) => {
                // While a rollback holds, the workers run the template that was ready before.
                let previous =
                    rollout::in_force(status, self.job.metadata.generation).and_then(|r| {
                        rollout::template(
                            r,
                            &self.job.spec.template,
                            status.last_ready_template.as_ref(),
                        )
                    });
                let set = match previous {
                    Some(template) => {
                        let mut job = (*self.job).clone();
                        job.spec.template = template;
                        resources::statefulset(&job, generation)?
                    }
                    None => resources::statefulset(&self.job, generation)?,
                };
                self.apply_object(&set).await?;
            }
            Act::DeleteUnusedClaims(state) => self.delete_unused_claims(state).await,
            &Act::PrepareClaims { from, to } => self.prepare_claims(from, to).await,
            Act::Import { from, into } => self.import(from, *into).await?,
            Act::ClearProgress(epoch) => {
                if let Err(e) = progress::clear_before(&self.store, epoch + 1).await {
                    warn!(error = %e, "cannot delete the restores' progress reports; retried after the next rescale");
                }
            }
            Act::CreateSnapshot(name) => self.create_snapshot(name).await?,
            Act::DeleteSnapshot(name) => {
                let api: Api<StatefulJobSnapshot> =
                    Api::namespaced(self.ctx.client.clone(), &self.ns);
                match api.delete(name, &DeleteParams::default()).await {
                    Ok(_) => info!(snapshot = %name, "scheduled snapshot deleted (spec.snapshots)"),
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }

    /// Creates the scheduled snapshot `name`, owned by the job (deleted with it).
    async fn create_snapshot(&self, name: &str) -> Result<()> {
        let api: Api<StatefulJobSnapshot> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        let mut snap = StatefulJobSnapshot::new(
            name,
            StatefulJobSnapshotSpec {
                job: self.job.name_any(),
                dispose_on_delete: true,
                retain: None,
            },
        );
        snap.metadata.labels = Some(
            [
                (resources::JOB_LABEL.to_owned(), self.job.name_any()),
                (SCHEDULED_LABEL.to_owned(), "true".to_owned()),
            ]
            .into(),
        );
        snap.metadata.owner_references = self.job.controller_owner_ref(&()).map(|mut o| {
            o.controller = Some(false);
            vec![o]
        });
        match api.create(&PostParams::default(), &snap).await {
            Ok(_) => info!(snapshot = %name, "scheduled snapshot created (spec.snapshots)"),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    /// Pins the snapshot's checkpoint (before the workers are asked for it, so that no garbage
    /// collection takes it), then records the snapshot's status.
    async fn record_snapshot(&self, update: &snapshot::plan::Update) -> Result<()> {
        if let Some(id) = update.pin {
            let holder = format!("StatefulJobSnapshot {}/{}", self.ns, update.name);
            pin(&self.store, &update.uid, id, &holder).await?;
        }
        if update.status.phase == Some(SnapshotPhase::Failed) {
            // A failed snapshot holds nothing.
            unpin(&self.store, &update.uid).await?;
        }
        snapshot::controller::patch_status(&self.ctx, &self.ns, &update.name, &update.status).await
    }

    /// Copies checkpoint `from` into the job's store as checkpoint `into` (see
    /// `initial_state`), after checking that it has the job's number of key groups.
    async fn import(&self, from: &Source, into: u64) -> Result<()> {
        let field = "spec.initialState";
        let job: JobId = from.job.parse().map_err(|_| {
            crate::Error::invalid(
                format!("{field}.checkpoint.job"),
                &from.job,
                "NAMESPACE/NAME",
            )
        })?;
        let source = coordinator::open_store(&from.url, job, &self.settings, self.ctx.ambient)?;
        let meta = match source.read_metadata(from.id).await {
            Ok(meta) => meta,
            Err(e) if !e.is_retryable() => {
                return Err(crate::Error::invalid(
                    field,
                    format!("checkpoint {} of {} at {}", from.id, from.job, from.url),
                    format!("a completed checkpoint readable with the job's storage Secret ({e})"),
                )
                .into());
            }
            Err(e) => return Err(e.into()),
        };
        let wanted = self.job.spec.max_parallelism;
        if meta.max_parallelism != wanted {
            return Err(crate::Error::invalid(
                field,
                format!("checkpoint {} of {} ({} key groups)", from.id, from.job, meta.max_parallelism),
                format!("a checkpoint of {wanted} key groups, this job's spec.maxParallelism: state is partitioned by it"),
            )
            .into());
        }
        info!(from = %from.job, checkpoint = from.id, into, "importing the initial state");
        import(&source, from.id, &self.store, into).await?;
        Ok(())
    }

    /// Asks every worker of `epoch` for the recorded checkpoint `id` (again, after a restart:
    /// workers answer a repeated request for the same id as the first). A refusal is kept for
    /// the next round, which records it in the pending checkpoint.
    async fn trigger(
        &self,
        pods: &[Pod],
        token: &str,
        id: u64,
        epoch: u64,
        parallelism: u32,
        stop: bool,
    ) {
        let request = CheckpointRequest { id, epoch, stop };
        let result = match coordinator::worker_targets(self.store.job(), pods, epoch, parallelism) {
            Ok(w) => coordinator::trigger_all(self.ctx.workers.as_ref(), &w, token, &request).await,
            Err(e) => Err(e),
        };
        let refusal = result.as_ref().err().map(ToString::to_string);
        self.ctx.remember(&self.job.uid().unwrap_or_default(), |m| {
            m.asked = Some(Asked { id, refusal })
        });
        match result {
            Ok(()) => {
                info!(checkpoint = id, epoch, stop, "checkpoint triggered");
                let note = format!(
                    "checkpoint {id} of epoch {epoch} triggered on {parallelism} workers{}",
                    if stop { " (stop)" } else { "" }
                );
                publish(
                    &self.ctx,
                    &self.job,
                    false,
                    reasons::CHECKPOINT_TRIGGERED,
                    note,
                )
                .await;
            }
            Err(e) => warn!(checkpoint = id, error = %e, "checkpoint not triggered"),
        }
    }

    fn tally(&self, tally: &Tally) {
        let metrics = &self.ctx.metrics;
        let job = job_labels(&self.ns, &self.job.name_any());
        match tally {
            Tally::StageEnded { stage, seconds } => metrics.stage_ended(&job, *stage, *seconds),
            Tally::RescaleEnded(reason) => {
                let mut labels = job;
                labels.push(("reason".to_owned(), reason.as_str().to_owned()));
                metrics.rescales.get_or_create(&labels).inc();
            }
            Tally::CheckpointDue(due) => {
                // Just before the trigger: the status is recorded, the workers are asked next.
                let delay = lifecycle::elapsed(due, &super::now());
                metrics
                    .checkpoint_trigger_delay
                    .observe(delay.as_secs_f64());
            }
            Tally::CheckpointCompleted(record) => metrics.checkpoint_completed(&job, record),
            Tally::CheckpointEnded { outcome, failure } => {
                metrics.checkpoint_ended(&job, outcome, *failure)
            }
        }
    }

    /// The job's bearer token: the one `observed` in its Secret, or a new one written there (a
    /// Secret of that name that the job does not control never gets this far: see
    /// [`Round::owned_token`]).
    async fn ensure_token(&self, observed: &Token) -> Result<String> {
        if let Token::Held(t) = observed {
            return Ok(t.clone());
        }
        let api: Api<Secret> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        let name = resources::token_secret_name(&self.job);
        let token = resources::new_token();
        let secret = resources::token_secret(&self.job, &token)?;
        if *observed == Token::Empty {
            let data = serde_json::json!({ "data": secret.data });
            api.patch(&name, &PatchParams::default(), &Patch::Merge(data))
                .await?;
            return Ok(token);
        }
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

    async fn apply_object<K>(&self, obj: &K) -> Result<K>
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

    /// Creates the state claims of ordinals `from..to` as the StatefulSet would; one that
    /// exists is left as it is.
    async fn prepare_claims(&self, from: u32, to: u32) {
        let api: Api<PersistentVolumeClaim> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        futures::stream::iter(from..to)
            .filter_map(|ordinal| async move { resources::worker_state_claim(&self.job, ordinal) })
            .for_each_concurrent(CLAIMS_IN_FLIGHT, |claim| {
                let api = &api;
                async move {
                    let name = claim.name_any();
                    match api.create(&PostParams::default(), &claim).await {
                        Ok(_) => info!(claim = %name, "state claim created ahead of its worker"),
                        Err(kube::Error::Api(e)) if e.code == 409 => {}
                        Err(e) => {
                            warn!(claim = %name, error = %e, "state claim not created ahead: the StatefulSet creates it with its worker")
                        }
                    }
                }
            })
            .await;
    }

    /// Deletes the state claims of ordinals the job no longer runs, once its rescale is
    /// recorded complete (see [`claims::unused_claims`]), with a `StateClaimDeleted` Event per
    /// claim. Best effort: a failure is logged and retried in a later round; checkpoints go on.
    async fn delete_unused_claims(&self, state: &JobState) {
        if resources::state_claim(&self.job).is_none() {
            return;
        }
        let uid = self.job.uid().unwrap_or_default();
        let settled = self
            .ctx
            .remember(&uid, |m| m.claims_settled.contains(&state.epoch));
        if settled {
            return;
        }
        match self.try_delete_unused_claims(state).await {
            Ok(()) => {
                self.ctx
                    .remember(&uid, |m| m.claims_settled.insert(state.epoch));
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_objects_are_applied_for_a_new_generation_or_once_a_minute() {
        let t0 = Instant::now();
        assert!(owned_objects_due(None, Some(1), t0), "never applied here");
        let last = Some((Some(1), t0));
        assert!(!owned_objects_due(
            last,
            Some(1),
            t0 + Duration::from_secs(59)
        ));
        assert!(owned_objects_due(
            last,
            Some(2),
            t0 + Duration::from_secs(1)
        ));
        assert!(owned_objects_due(last, Some(1), t0 + REAPPLY_OWNED));
    }
}
