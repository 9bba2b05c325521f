//! What a round reads: the job's token, pods, store and, for a checkpoint in flight, its
//! workers. Nothing here writes; [`super::decide`] turns what it saw into a plan.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{Api, ListParams};

use super::super::coordinator;
use super::super::crd::{Stage, StateSource};
use super::super::diagnose;
use super::super::initial_state::Source;
use super::super::lifecycle::{JobState, Work};
use super::super::reasons;
use super::super::resources::{self, EPOCH_LABEL};
use super::super::snapshot::plan::{Seen, Summary};
use super::super::snapshot::schedule::{SCHEDULED_LABEL, Scheduled};
use super::super::snapshot::{SnapshotPhase, StatefulJobSnapshot};
use super::super::status::Problem;
use super::decide::{Asked, Completion, FINAL_CHECKPOINT_POLL, InFlight, Token, World};
use super::{Result, Round, now};
use crate::checkpoint::CheckpointMetadata;
use crate::checkpoint::progress;

impl Round {
    /// Everything [`super::decide::decide`] needs.
    pub(super) async fn observe(&self) -> Result<World> {
        let state = JobState::from_status(self.job.status.as_ref());
        // Independent reads, side by side: a round's latency is the slowest, not their sum.
        let (token, pods, store_ids) = futures::try_join!(self.token(), self.pods(), async {
            Result::Ok(self.store.checkpoint_ids().await?)
        })?;
        let asked = self.asked();
        let pending = self
            .job
            .status
            .as_ref()
            .and_then(|s| s.pending_checkpoint.as_ref());
        // The workers stay paused until a round sees the final checkpoint complete: that round
        // waits for their handles rather than the next one.
        let in_flight = match state.work() {
            Work::FinalCheckpoint {
                id,
                epoch,
                parallelism,
            } => Some((id, epoch, parallelism, FINAL_CHECKPOINT_POLL)),
            Work::Checkpoints { epoch, parallelism } => pending
                .filter(|p| p.epoch == epoch && p.failure.is_none())
                .map(|p| (p.id, epoch, parallelism, Duration::ZERO)),
            _ => None,
        };
        let in_flight = async {
            Result::Ok(match in_flight {
                Some((id, epoch, parallelism, wait)) => {
                    let asked_here = asked.as_ref().is_some_and(|a| a.id == id);
                    let held = match &token {
                        Token::Held(t) => Some(t.as_str()),
                        _ => None,
                    };
                    let target = (id, epoch, parallelism);
                    Some(
                        self.in_flight(
                            target,
                            &store_ids,
                            &pods,
                            held.filter(|_| asked_here),
                            wait,
                        )
                        .await?,
                    )
                }
                None => None,
            })
        };
        let pod_problem = async { Result::Ok(self.pod_problem(&state, &pods).await) };
        let (in_flight, pod_problem, (snapshots, scheduled)) =
            futures::try_join!(in_flight, pod_problem, self.snapshots(&store_ids))?;
        let restoring = state
            .rescale
            .as_ref()
            .is_some_and(|r| matches!(r.stage, Stage::Restoring | Stage::RollingForward));
        let restore_progress = if restoring {
            progress::read_epoch(&self.store, state.epoch).await?
        } else {
            Vec::new()
        };
        let initial_snapshot = self.initial_snapshot().await?;
        Ok(World {
            now: now(),
            pods,
            token,
            store_ids,
            in_flight,
            asked,
            pod_problem,
            snapshots,
            scheduled,
            restore_progress,
            initial_snapshot,
        })
    }

    /// The job's snapshots not being deleted, with the metadata of the checkpoint each one
    /// waits for once it is complete in the store, and those its schedule created.
    async fn snapshots(&self, store_ids: &[(u64, bool)]) -> Result<(Vec<Seen>, Vec<Scheduled>)> {
        let api: Api<StatefulJobSnapshot> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        let name = self.job.name_any();
        let mut out = Vec::new();
        let mut scheduled = Vec::new();
        for s in api.list(&ListParams::default()).await? {
            if s.spec.job != name || s.metadata.deletion_timestamp.is_some() {
                continue;
            }
            if s.labels().contains_key(SCHEDULED_LABEL)
                && let Some(created) = s.metadata.creation_timestamp.clone()
            {
                scheduled.push(Scheduled {
                    name: s.name_any(),
                    created,
                    completed: s
                        .status
                        .as_ref()
                        .is_some_and(|st| st.phase == Some(SnapshotPhase::Completed)),
                });
            }
            let status = s.status.clone().unwrap_or_default();
            let stored = match (status.phase, status.checkpoint_id) {
                (Some(SnapshotPhase::InProgress), Some(id)) if store_ids.contains(&(id, true)) => {
                    Some(summary(&self.store.read_metadata(id).await?))
                }
                _ => None,
            };
            out.push(Seen {
                uid: s.uid().unwrap_or_default(),
                name: s.name_any(),
                status,
                stored,
            });
        }
        Ok((out, scheduled))
    }

    /// The snapshot spec.initialState names, when the initial state is not in place.
    async fn initial_snapshot(&self) -> Result<Option<Result<Source, String>>> {
        let spec = &self.job.spec;
        let (StateSource::Snapshot, Some(name)) = (
            spec.initial_state.from,
            spec.initial_state.snapshot.as_ref(),
        ) else {
            return Ok(None);
        };
        let settled = self
            .job
            .status
            .as_ref()
            .and_then(|s| s.initial_state.as_ref())
            .is_some_and(|a| a.ready && a.nonce == spec.restore_nonce);
        if settled {
            return Ok(None);
        }
        let api: Api<StatefulJobSnapshot> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        let Some(snap) = api.get_opt(name).await? else {
            return Ok(Some(Err(format!(
                "spec.initialState.snapshot: no StatefulJobSnapshot {name} in namespace {}; create it, or name an existing one (kubectl get sjsnap -n {})",
                self.ns, self.ns
            ))));
        };
        Ok(Some(usable(name, &snap, spec.max_parallelism)))
    }

    /// The job's token Secret; an error when one of its name is not controlled by the job.
    async fn token(&self) -> Result<Token> {
        let api: Api<Secret> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        let name = resources::token_secret_name(&self.job);
        Ok(match api.get_opt(&name).await? {
            None => Token::Missing,
            Some(s) => match self.owned_token(s)? {
                Some(t) => Token::Held(t),
                None => Token::Empty,
            },
        })
    }

    /// The checkpoint this process last asked the job's workers for (see [`World::asked`]).
    fn asked(&self) -> Option<Asked> {
        self.ctx
            .remember(&self.job.uid().unwrap_or_default(), |m| m.asked.clone())
    }

    /// How far checkpoint `id` of `epoch` got; its workers are asked why it cannot complete
    /// only with a `token` (given when this process asked them for it: after a restart, a
    /// worker that restarted too learns of it from the trigger first).
    async fn in_flight(
        &self,
        (id, epoch, parallelism): (u64, u64, u32),
        store_ids: &[(u64, bool)],
        pods: &[Pod],
        token: Option<&str>,
        wait: Duration,
    ) -> Result<InFlight> {
        let mut completion = self.completion((id, epoch, parallelism), store_ids).await?;
        let mut waited = Duration::ZERO;
        let worker_failure = match (&completion, token) {
            (Completion::Waiting, Some(token)) => {
                match coordinator::worker_targets(self.store.job(), pods, epoch, parallelism) {
                    Ok(w) => {
                        let client = self.ctx.workers.as_ref();
                        let started = std::time::Instant::now();
                        let failure = coordinator::first_failure(client, &w, token, id, wait).await;
                        waited = started.elapsed();
                        // Handles written while the round waited complete it in this round.
                        if failure.is_none() && !wait.is_zero() {
                            completion =
                                self.completion((id, epoch, parallelism), store_ids).await?;
                        }
                        failure
                    }
                    Err(_) => None,
                }
            }
            _ => None,
        };
        Ok(InFlight {
            id,
            completion,
            worker_failure,
            waited,
        })
    }

    /// How far checkpoint `id` got in the store.
    async fn completion(
        &self,
        (id, epoch, parallelism): (u64, u64, u32),
        store_ids: &[(u64, bool)],
    ) -> Result<Completion> {
        if store_ids.contains(&(id, true)) {
            return Ok(Completion::Stored(self.store.read_metadata(id).await?));
        }
        let max_parallelism = self.job.spec.max_parallelism;
        Ok(
            match self
                .store
                .completion(id, epoch, parallelism, max_parallelism)
                .await
            {
                Ok(Some(meta)) => Completion::Ready(meta),
                Ok(None) => Completion::Waiting,
                Err(e) if e.is_damaged_data() => {
                    Completion::Impossible(format!("cannot complete: {e}"))
                }
                Err(e) => return Err(e.into()),
            },
        )
    }

    /// The job's pods, of every epoch.
    pub(super) async fn pods(&self) -> Result<Vec<Pod>> {
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        let lp = ListParams::default().labels(&resources::selector_string(&self.job));
        Ok(api.list(&lp).await?.items)
    }

    /// What is wrong with the job's pods in the recorded stage, with what the user can do.
    async fn pod_problem(&self, state: &JobState, pods: &[Pod]) -> Option<Problem> {
        let epoch = state.epoch.to_string();
        let at_epoch: Vec<&Pod> = pods
            .iter()
            .filter(|p| {
                p.labels().get(EPOCH_LABEL) == Some(&epoch)
                    && p.metadata.deletion_timestamp.is_none()
            })
            .collect();
        let at_epoch = at_epoch.as_slice();
        let problem = |reason: &str, message: String| Some(Problem::new(reason, message));
        let all: Vec<&Pod> = pods.iter().collect();
        if let Some((pod, grace)) = diagnose::stuck_terminating(&all, &now()) {
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
                if let Some(why) = diagnose::restore_failure(at_epoch) {
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
}

/// A completed checkpoint as a snapshot records it.
pub fn summary(meta: &CheckpointMetadata) -> Summary {
    let time = k8s_openapi::jiff::Timestamp::from_millisecond(meta.completed_at.timestamp_millis())
        .map(Time)
        .unwrap_or_else(|_| now());
    Summary {
        id: meta.checkpoint_id,
        bytes: meta.bytes_total(),
        parallelism: meta.parallelism,
        max_parallelism: meta.max_parallelism,
        time,
    }
}

/// Snapshot `name` as a source of state for a job of `max_parallelism` key groups, or why not.
fn usable(
    name: &str,
    snap: &StatefulJobSnapshot,
    max_parallelism: u32,
) -> std::result::Result<Source, String> {
    let status = snap.status.clone().unwrap_or_default();
    match (status.phase, status.checkpoint_id, status.store) {
        (Some(SnapshotPhase::Completed), Some(id), Some(store)) => match status.max_parallelism {
            Some(m) if m != max_parallelism => Err(format!(
                "spec.initialState.snapshot: snapshot {name} holds state of {m} key groups, and spec.maxParallelism is {max_parallelism}; a job restores only state of its own number of key groups"
            )),
            _ => Ok(Source {
                url: store.url,
                job: store.job,
                id,
            }),
        },
        (phase, _, _) => Err(format!(
            "spec.initialState.snapshot: snapshot {name} is {}, not Completed; the job starts once it is (kubectl get sjsnap {name})",
            phase.map_or("Pending".to_owned(), |p| format!("{p:?}"))
        )),
    }
}
