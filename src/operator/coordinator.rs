//! Checkpoint coordination: when to trigger, the calls to the workers' HTTP API, completion
//! from the store, timeouts and aborts, retention and garbage collection.
//!
//! The decisions ([`periodic`], [`final_outcome`]) are pure. The store, not operator memory, is
//! the record: a checkpoint is complete when `_metadata.json` exists, which
//! [`CheckpointStore::commit`] writes once every handle of the epoch is in.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::Serialize;
use tracing::{info, warn};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use super::crd::{CheckpointRecord, PendingCheckpoint};
use super::lifecycle::{FinalCheckpoint, elapsed};
use super::resources::{self, EPOCH_LABEL, POD_INDEX_LABEL};
use crate::checkpoint::registry::{GcPlan, GcScope, collect_garbage, record_retention};
use crate::checkpoint::store::Ambient;
use crate::checkpoint::{CheckpointMetadata, CheckpointStore, JobId};
use crate::error::{Error, Result};

/// One worker of the current generation, as the coordinator addresses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerTarget {
    /// The job.
    pub job: JobId,
    /// The worker's subtask index (its pod index).
    pub subtask: u32,
    /// Number of workers of the generation.
    pub parallelism: u32,
    /// Base URL of its checkpoint API, `http://<pod IP>:8080`.
    pub base_url: String,
}

/// Body of `POST /v1/checkpoints`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckpointRequest {
    /// Checkpoint id.
    pub id: u64,
    /// Epoch of the addressed generation (the worker refuses another).
    pub epoch: u64,
    /// Stop processing after the checkpoint (the final checkpoint of a rescale).
    pub stop: bool,
}

/// What the operator tells a worker after the fact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notice {
    /// `_metadata.json` was written: the worker may release what the checkpoint pinned.
    Complete,
    /// The checkpoint will never complete.
    Abort,
}

impl Notice {
    /// The path segment of the notice.
    pub fn as_str(self) -> &'static str {
        match self {
            Notice::Complete => "complete",
            Notice::Abort => "abort",
        }
    }
}

/// Why a worker can no longer take part in a checkpoint it was asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkerFailure {
    /// It failed the checkpoint: the checkpoint can never complete.
    Failed(String),
    /// It restarted after it was asked and no longer knows the checkpoint: asking it again
    /// can still complete it.
    Forgot(String),
}

impl WorkerFailure {
    /// What happened, for status and Events.
    pub fn message(&self) -> &str {
        match self {
            WorkerFailure::Failed(m) | WorkerFailure::Forgot(m) => m,
        }
    }
}

/// The workers' checkpoint API. A trait so that tests against a real API server, whose pods are
/// not real processes, can substitute workers that write real handles to a real store.
#[async_trait]
pub trait WorkerClient: Send + Sync {
    /// Asks `worker` to take checkpoint `request`; Ok once it accepted.
    async fn trigger(
        &self,
        worker: &WorkerTarget,
        token: &str,
        request: &CheckpointRequest,
    ) -> Result<()>;
    /// Why checkpoint `id` can no longer complete on `worker`, if it cannot: the worker
    /// reported a failure, or does not know the id (it restarted after it was asked). Asked
    /// once the worker's capture or upload has ended or `wait` has passed, so a round hears of
    /// a final checkpoint's handle when it is written. Errors reaching the worker are not
    /// failures of the checkpoint: the timeout covers them.
    async fn failure(
        &self,
        worker: &WorkerTarget,
        token: &str,
        id: u64,
        wait: Duration,
    ) -> Result<Option<WorkerFailure>> {
        let _ = (worker, token, id, wait);
        Ok(None)
    }
    /// Tells `worker` that checkpoint `id` completed or was aborted.
    async fn notify(
        &self,
        worker: &WorkerTarget,
        token: &str,
        id: u64,
        epoch: u64,
        notice: Notice,
    ) -> Result<()>;
}

/// [`WorkerClient`] over HTTP: the worker's own typed client (`worker::client`), every job's
/// over one HTTP client (a client per job kept its own pool and root certificates).
#[derive(Debug)]
pub struct HttpWorkerClient {
    base: crate::worker::client::WorkerClient,
}

impl HttpWorkerClient {
    /// A client whose requests time out after `timeout`.
    pub fn new(timeout: Duration) -> Result<Self> {
        Ok(Self {
            base: crate::worker::client::WorkerClient::new("", timeout)?,
        })
    }

    fn client(&self, token: &str) -> crate::worker::client::WorkerClient {
        self.base.with_token(token)
    }
}

/// The answer of a worker as this crate's error, naming the worker, the job and the request.
fn answer(
    worker: &WorkerTarget,
    what: &str,
    result: Result<std::result::Result<(), crate::worker::client::Refused>>,
) -> Result<()> {
    let name = format!(
        "worker {} of {} ({})",
        worker.subtask, worker.job, worker.base_url
    );
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(refused)) => Err(Error::Other(format!("{name} refused {what}: {refused:?}"))),
        Err(e) => Err(Error::Other(format!("{name}: {what} failed: {e}"))),
    }
}

#[async_trait]
impl WorkerClient for HttpWorkerClient {
    async fn trigger(
        &self,
        worker: &WorkerTarget,
        token: &str,
        request: &CheckpointRequest,
    ) -> Result<()> {
        let result = self
            .client(token)
            .trigger(&worker.base_url, request.id, request.epoch, request.stop)
            .await;
        answer(worker, &format!("checkpoint {}", request.id), result)
    }

    async fn failure(
        &self,
        worker: &WorkerTarget,
        token: &str,
        id: u64,
        wait: Duration,
    ) -> Result<Option<WorkerFailure>> {
        use crate::worker::checkpoints::CheckpointStatus;
        use crate::worker::client::Refused;
        let name = format!("worker {} of {}", worker.subtask, worker.job);
        let client = self.client(token);
        Ok(
            match client.status_after(&worker.base_url, id, wait).await? {
                Ok(record) => match record.status {
                    CheckpointStatus::Failed { reason } => Some(WorkerFailure::Failed(format!(
                        "{name} failed checkpoint {id}: {reason}"
                    ))),
                    _ => None,
                },
                Err(Refused::Unknown(_)) => Some(WorkerFailure::Forgot(format!(
                    "{name} does not know checkpoint {id}: it restarted after it was asked"
                ))),
                Err(_) => None,
            },
        )
    }

    async fn notify(
        &self,
        worker: &WorkerTarget,
        token: &str,
        id: u64,
        epoch: u64,
        notice: Notice,
    ) -> Result<()> {
        let their = match notice {
            Notice::Complete => crate::worker::checkpoints::Notice::Complete,
            Notice::Abort => crate::worker::checkpoints::Notice::Abort,
        };
        let result = self
            .client(token)
            .notify(&worker.base_url, id, their, epoch)
            .await;
        answer(
            worker,
            &format!("{} of checkpoint {id}", notice.as_str()),
            result,
        )
    }
}

/// The workers of `epoch` among `pods`, one per subtask `0..parallelism`, with their pod IPs.
pub fn worker_targets(
    job_id: &JobId,
    pods: &[Pod],
    epoch: u64,
    parallelism: u32,
) -> Result<Vec<WorkerTarget>> {
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

/// Asks every worker to take the checkpoint, concurrently. The first refusal is returned; the
/// checkpoint cannot complete then.
pub async fn trigger_all(
    client: &dyn WorkerClient,
    workers: &[WorkerTarget],
    token: &str,
    request: &CheckpointRequest,
) -> Result<()> {
    let results =
        futures::future::join_all(workers.iter().map(|w| client.trigger(w, token, request))).await;
    results.into_iter().collect::<Result<Vec<()>>>().map(|_| ())
}

/// Why checkpoint `id` cannot complete as it stands on `workers`, asking them concurrently
/// once each has ended its part or `wait` has passed (see [`WorkerClient::failure`]): a
/// worker's failure before one that forgot it, since no second request mends a failure.
pub async fn first_failure(
    client: &dyn WorkerClient,
    workers: &[WorkerTarget],
    token: &str,
    id: u64,
    wait: Duration,
) -> Option<WorkerFailure> {
    let answers =
        futures::future::join_all(workers.iter().map(|w| client.failure(w, token, id, wait))).await;
    let mut failures: Vec<WorkerFailure> = answers
        .into_iter()
        .filter_map(|a| match a {
            Ok(failure) => failure,
            Err(e) => {
                warn!(checkpoint = id, error = %e, "checkpoint status not read");
                None
            }
        })
        .collect();
    failures.sort_by_key(|f| matches!(f, WorkerFailure::Forgot(_)));
    failures.into_iter().next()
}

/// Sends a notice to every worker, concurrently; failures are logged, not returned: the store
/// already holds the truth and workers also learn it from the next checkpoint.
pub async fn notify_all(
    client: &dyn WorkerClient,
    workers: &[WorkerTarget],
    token: &str,
    id: u64,
    epoch: u64,
    notice: Notice,
) {
    let results = futures::future::join_all(
        workers
            .iter()
            .map(|w| client.notify(w, token, id, epoch, notice)),
    )
    .await;
    for r in results {
        if let Err(e) = r {
            warn!(checkpoint = id, error = %e, "notice not delivered");
        }
    }
}

/// What to do about checkpoints of running workers this round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing until this much time has passed.
    Wait(Duration),
    /// Record a pending checkpoint `id`, then trigger it.
    Trigger {
        /// The new checkpoint's id.
        id: u64,
        /// Whether spec.checkpointTrigger asked for it (its value is then recorded as acted on).
        on_demand: bool,
    },
    /// Ask the store whether pending checkpoint `id` is complete.
    Poll {
        /// The pending checkpoint.
        id: u64,
    },
    /// Give up on pending checkpoint `id`.
    Abort {
        /// The pending checkpoint.
        id: u64,
        /// Why.
        reason: String,
    },
}

/// What the checkpoint decision reads: the job's schedule and what its status recorded.
#[derive(Clone, Copy, Debug)]
pub struct CheckpointInputs<'a> {
    /// `spec.checkpoint.interval`.
    pub interval: Duration,
    /// `spec.checkpoint.timeout`.
    pub timeout: Duration,
    /// The epoch of the running workers.
    pub epoch: u64,
    /// When the last checkpoint was triggered.
    pub last_attempt: Option<&'a Time>,
    /// The checkpoint in flight.
    pub pending: Option<&'a PendingCheckpoint>,
    /// `spec.checkpointTrigger`.
    pub requested_trigger: Option<&'a str>,
    /// The trigger value a checkpoint was last taken for.
    pub acted_trigger: Option<&'a str>,
    /// The id the next checkpoint gets.
    pub next_id: u64,
}

/// The periodic and on-demand checkpoint decision for running workers.
pub fn periodic(now: &Time, inputs: &CheckpointInputs<'_>) -> Decision {
    let CheckpointInputs {
        interval,
        timeout,
        epoch,
        last_attempt,
        pending,
        requested_trigger,
        acted_trigger,
        next_id,
    } = *inputs;
    if let Some(p) = pending {
        if p.epoch != epoch {
            return Decision::Abort {
                id: p.id,
                reason: format!(
                    "taken by epoch {}, the workers are now epoch {epoch}",
                    p.epoch
                ),
            };
        }
        if let Some(f) = &p.failure {
            return Decision::Abort {
                id: p.id,
                reason: f.clone(),
            };
        }
        if elapsed(&p.started, now) >= timeout {
            return Decision::Abort {
                id: p.id,
                reason: format!(
                    "not completed within {}",
                    humantime::format_duration(timeout)
                ),
            };
        }
        return Decision::Poll { id: p.id };
    }
    if requested_trigger.is_some() && requested_trigger != acted_trigger {
        return Decision::Trigger {
            id: next_id,
            on_demand: true,
        };
    }
    match last_attempt {
        Some(t) if elapsed(t, now) < interval => Decision::Wait(interval - elapsed(t, now)),
        _ => Decision::Trigger {
            id: next_id,
            on_demand: false,
        },
    }
}

/// When the periodic checkpoint after one triggered at `last_attempt` is due.
pub fn due(last_attempt: &Time, interval: Duration) -> Time {
    // Errs only for calendar units, which a std Duration has not.
    Time(
        last_attempt
            .0
            .saturating_add(interval)
            .unwrap_or(last_attempt.0),
    )
}

/// The outcome of the final checkpoint `id`, from what the store said (`completed`), the
/// recorded pending checkpoint and the time since the stage started.
pub fn final_outcome(
    id: u64,
    completed: bool,
    pending: Option<&PendingCheckpoint>,
    stage_started: &Time,
    now: &Time,
    timeout: Duration,
) -> FinalCheckpoint {
    if completed {
        return FinalCheckpoint::Completed(id);
    }
    if let Some(p) = pending.filter(|p| p.id == id)
        && let Some(f) = &p.failure
    {
        return FinalCheckpoint::Failed(f.clone());
    }
    if elapsed(stage_started, now) >= timeout {
        return FinalCheckpoint::Failed(format!(
            "not completed within {}",
            humantime::format_duration(timeout)
        ));
    }
    FinalCheckpoint::InProgress
}

/// The next checkpoint id: above every id in the store and every id recorded in status
/// (`status.lastIssuedCheckpoint` among them, so an aborted id is never issued again).
pub fn next_checkpoint_id(
    store_ids: &[u64],
    recorded: impl IntoIterator<Item = Option<u64>>,
) -> Result<u64> {
    let highest = store_ids
        .iter()
        .copied()
        .chain(recorded.into_iter().flatten())
        .max();
    match highest {
        None => Ok(1),
        Some(m) => m.checked_add(1).ok_or_else(|| {
            Error::invalid(
                "checkpoint id",
                m,
                "ids below 18446744073709551615 (u64::MAX): this job's ids are exhausted; move it to a new storage path",
            )
        }),
    }
}

/// The status record of a completed checkpoint.
pub fn record(meta: &CheckpointMetadata, started: Option<&Time>, now: &Time) -> CheckpointRecord {
    CheckpointRecord {
        id: meta.checkpoint_id,
        time: now.clone(),
        epoch: meta.epoch,
        bytes_total: meta.bytes_total(),
        bytes_new: meta.bytes_uploaded(),
        duration_seconds: started.map_or(0.0, |s| elapsed(s, now).as_secs_f64()),
    }
}

/// Applies retention after a completed checkpoint: keeps `retain` completed checkpoints and
/// deletes what nothing retained references, looking at the dropped checkpoints' objects, the
/// aborted checkpoints' and a slice of the shared files ([`GcScope::AfterCompletion`]). Files
/// no handle names that are younger than the longest checkpoint timeout the job has had are
/// kept: they may be uploads of a checkpoint in flight. The policy is recorded in the store first, for
/// `regroup checkpoints gc` run by hand.
pub async fn retain_and_collect(
    store: &CheckpointStore,
    retain: u32,
    timeout: Duration,
) -> Result<GcPlan> {
    let policy = record_retention(store, retain, timeout).await?;
    let plan = collect_garbage(store, GcScope::AfterCompletion, policy, false).await?;
    info!(job = %store.job(), scope = ?plan.scope, listed = plan.listed, aborted = ?plan.aborted, deleted = plan.deletions.len(), bytes = plan.bytes(), "retention applied");
    Ok(plan)
}

/// Opens a job's store with the settings of its storage Secret (keys such as AWS_ACCESS_KEY_ID,
/// AWS_ENDPOINT, AWS_ALLOW_HTTP; case does not matter; unknown keys are ignored), on top of the
/// operator's own environment only when `ambient` allows it.
pub fn open_store(
    url: &str,
    job: JobId,
    settings: &BTreeMap<String, String>,
    ambient: Ambient,
) -> Result<CheckpointStore> {
    CheckpointStore::from_url_with(url, job, settings, ambient)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn t(s: i64) -> Time {
        Time(Timestamp::from_second(s).unwrap())
    }

    fn pending(id: u64, epoch: u64, started: i64) -> PendingCheckpoint {
        PendingCheckpoint {
            id,
            epoch,
            started: t(started),
            stop: false,
            failure: None,
        }
    }

    const MIN: Duration = Duration::from_secs(60);

    /// Running workers of `epoch`, checkpoints every minute with a 10-minute timeout, nothing
    /// recorded yet.
    fn inputs(epoch: u64, next_id: u64) -> CheckpointInputs<'static> {
        CheckpointInputs {
            interval: MIN,
            timeout: 10 * MIN,
            epoch,
            last_attempt: None,
            pending: None,
            requested_trigger: None,
            acted_trigger: None,
            next_id,
        }
    }

    #[test]
    fn periodic_schedule() {
        let trigger = |id, on_demand| Decision::Trigger { id, on_demand };
        // Never attempted: now.
        assert_eq!(periodic(&t(1000), &inputs(1, 4)), trigger(4, false));
        // Attempted 20 s ago: wait the remaining 40 s.
        let (t980, t990) = (t(980), t(990));
        let attempted = CheckpointInputs {
            last_attempt: Some(&t980),
            ..inputs(1, 4)
        };
        assert_eq!(
            periodic(&t(1000), &attempted),
            Decision::Wait(Duration::from_secs(40))
        );
        assert_eq!(periodic(&t(1040), &attempted), trigger(4, false));
        // Due when the wait ends, not when a later round comes.
        assert_eq!(due(&t980, MIN), t(1040));
        assert_eq!(
            periodic(&t(1039), &attempted),
            Decision::Wait(Duration::from_secs(1))
        );
        // A new trigger value: now, even within the interval; the same value again: not.
        let asked = CheckpointInputs {
            last_attempt: Some(&t990),
            requested_trigger: Some("a"),
            ..inputs(1, 5)
        };
        assert_eq!(periodic(&t(1000), &asked), trigger(5, true));
        let acted = CheckpointInputs {
            acted_trigger: Some("a"),
            ..asked
        };
        assert_eq!(
            periodic(&t(1000), &acted),
            Decision::Wait(Duration::from_secs(50))
        );
    }

    #[test]
    fn pending_checkpoints() {
        let p = pending(3, 2, 1000);
        let with = |epoch, p| CheckpointInputs {
            pending: Some(p),
            ..inputs(epoch, 9)
        };
        let asked = CheckpointInputs {
            requested_trigger: Some("new"),
            ..with(2, &p)
        };
        assert_eq!(
            periodic(&t(1100), &asked),
            Decision::Poll { id: 3 },
            "one checkpoint at a time, the trigger waits"
        );
        match periodic(&t(1600), &with(2, &p)) {
            Decision::Abort { id: 3, reason } => assert!(reason.contains("10m"), "{reason}"),
            d => panic!("{d:?}"),
        }
        match periodic(&t(1100), &with(3, &p)) {
            Decision::Abort { id: 3, reason } => assert!(reason.contains("epoch 2"), "{reason}"),
            d => panic!("{d:?}"),
        }
        let mut failed = p.clone();
        failed.failure = Some("worker 1 refused".into());
        assert_eq!(
            periodic(&t(1100), &with(2, &failed)),
            Decision::Abort {
                id: 3,
                reason: "worker 1 refused".into()
            }
        );
    }

    #[test]
    fn final_checkpoint_outcomes() {
        let p = pending(7, 1, 1000);
        assert_eq!(
            final_outcome(7, true, Some(&p), &t(1000), &t(5000), MIN),
            FinalCheckpoint::Completed(7)
        );
        assert_eq!(
            final_outcome(7, false, Some(&p), &t(1000), &t(1030), MIN),
            FinalCheckpoint::InProgress
        );
        assert!(matches!(
            final_outcome(7, false, Some(&p), &t(1000), &t(1060), MIN),
            FinalCheckpoint::Failed(_)
        ));
        let mut failed = p.clone();
        failed.failure = Some("refused".into());
        assert_eq!(
            final_outcome(7, false, Some(&failed), &t(1000), &t(1001), MIN),
            FinalCheckpoint::Failed("refused".into())
        );
        // A failure recorded for another checkpoint does not count.
        failed.id = 6;
        assert_eq!(
            final_outcome(7, false, Some(&failed), &t(1000), &t(1001), MIN),
            FinalCheckpoint::InProgress
        );
    }

    #[test]
    fn next_ids() {
        assert_eq!(next_checkpoint_id(&[], [None]).unwrap(), 1);
        assert_eq!(next_checkpoint_id(&[1, 2, 5], [Some(3)]).unwrap(), 6);
        assert_eq!(next_checkpoint_id(&[1], [Some(8), None]).unwrap(), 9);
        let e = next_checkpoint_id(&[u64::MAX], [None]).unwrap_err();
        assert!(e.to_string().contains("exhausted"), "{e}");
    }
}

#[cfg(test)]
mod http_tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    type Seen = Arc<Mutex<Vec<(String, Option<String>, String)>>>;

    /// A stand-in worker API that records requests and answers like the worker: 202 for a
    /// checkpoint, 200 for notices, 409 for checkpoint id 99.
    async fn server(seen: Seen) -> String {
        use axum::http::{HeaderMap, StatusCode, Uri};
        let app =
            axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: String| {
                let seen = seen.clone();
                async move {
                    let auth = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    seen.lock()
                        .unwrap()
                        .push((uri.path().to_owned(), auth, body.clone()));
                    if body.contains("\"id\":99") {
                        (
                            StatusCode::CONFLICT,
                            "{\"error\":\"checkpoint 99 exists with another epoch\"}",
                        )
                    } else if uri.path() == "/v1/checkpoints" {
                        (StatusCode::ACCEPTED, "{}")
                    } else {
                        (StatusCode::OK, "{}")
                    }
                }
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{address}")
    }

    #[tokio::test]
    async fn http_client_speaks_the_worker_api() {
        let seen: Seen = Default::default();
        let base_url = server(seen.clone()).await;
        let client = HttpWorkerClient::new(Duration::from_secs(5)).unwrap();
        let worker = WorkerTarget {
            job: "ns/j".parse().unwrap(),
            subtask: 2,
            parallelism: 3,
            base_url,
        };
        let request = CheckpointRequest {
            id: 7,
            epoch: 4,
            stop: true,
        };
        client.trigger(&worker, "tok", &request).await.unwrap();
        client
            .notify(&worker, "tok", 7, 4, Notice::Complete)
            .await
            .unwrap();
        client
            .notify(&worker, "tok", 7, 4, Notice::Abort)
            .await
            .unwrap();
        let refused = client
            .trigger(&worker, "tok", &CheckpointRequest { id: 99, ..request })
            .await
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("worker 2 of ns/j") && refused.contains("Conflict"),
            "{refused}"
        );
        assert!(refused.contains("another epoch"), "{refused}");
        let recorded = seen.lock().unwrap().clone();
        let bearer = Some("Bearer tok".to_owned());
        let json = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();
        let expected = [
            ("/v1/checkpoints", r#"{"id":7,"epoch":4,"stop":true}"#),
            ("/v1/checkpoints/7/complete", r#"{"epoch":4}"#),
            ("/v1/checkpoints/7/abort", r#"{"epoch":4}"#),
        ];
        for ((path, auth, body), (want_path, want_body)) in recorded.iter().zip(expected) {
            assert_eq!((path.as_str(), auth), (want_path, &bearer));
            assert_eq!(json(body), json(want_body), "{path}");
        }
        // Every job's requests go over one HTTP client, each with its own job's token.
        client.trigger(&worker, "other", &request).await.unwrap();
        let last = seen.lock().unwrap().last().cloned().unwrap();
        assert_eq!(last.1, Some("Bearer other".to_owned()));

        // Nobody listening: the error names the worker.
        let gone = WorkerTarget {
            base_url: "http://127.0.0.1:9".into(),
            ..worker
        };
        let e = client
            .trigger(&gone, "tok", &request)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("worker 2 of ns/j (http://127.0.0.1:9)"), "{e}");
    }
}
