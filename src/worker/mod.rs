//! The in-pod worker runtime: owns a subtask's [`StateBackend`], runs the job's processing loop
//! and serves the operator's checkpoint API.
//!
//! Users embed it in their own job by implementing [`KeyedJob`] and calling [`run`]; the
//! reference job ([`mod@reference`]) is `regroup worker`. The state directory holds the DB in `db/`
//! (what an init container's `regroup restore --target <state-dir>/db` builds), native
//! checkpoints in `snapshots/` (same file system, so they are hard links) and, after a
//! stop-with-checkpoint, the [`crate::statedir::marker`] naming the checkpoint the DB equals.

pub mod auth;
pub mod checkpoints;
pub mod client;
pub mod engine;
pub mod http;
pub mod metrics;
pub mod oracle;
pub mod reference;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use clap::Args;
use tokio::task::JoinSet;
use tracing::{info, warn};

use self::auth::TokenFile;
use self::checkpoints::{CheckpointTable, Effect};
use self::engine::Engine;
use self::metrics::WorkerMetrics;
use crate::args::StoreArgs;
use crate::backend::{IncrementalSnapshotter, StateBackend, StateBatch};
use crate::checkpoint::{CheckpointStore, JobId, SubtaskHandle};
use crate::error::{Error, Result};
use crate::keygroup::KeyGroupRange;
use crate::statedir::{self, marker::LocalCheckpointMarker, restored::RestoreMarker};

/// How long open HTTP connections may take to finish when the worker stops.
pub const SERVER_GRACE: Duration = Duration::from_secs(5);

/// The logic of a keyed job. The runtime calls [`KeyedJob::step`] in a loop on a thread of its
/// own and commits the batch after each step; snapshots are taken only between steps, so a
/// step's writes (state and source positions together) are in a snapshot entirely or not at all.
pub trait KeyedJob: Send + 'static {
    /// Named states (column families) the job uses besides `default`.
    fn states(&self) -> Vec<String>;

    /// Called once on the opened (possibly restored) backend before the first step: check or
    /// initialise the state, read source positions.
    fn open(&mut self, backend: &StateBackend) -> Result<()>;

    /// Processes the next events: reads state from `backend`, writes their effects and the new
    /// source positions into `batch`. Keep a step small (it delays snapshots) and under the
    /// batch bounds ([`crate::backend::BATCH_MAX_ENTRIES`]).
    fn step(&mut self, backend: &StateBackend, batch: &mut StateBatch<'_>) -> Result<Step>;

    /// Events the source holds that no step has applied yet, when the job knows (shown as
    /// `regroup_worker_backlog_events`, an input for autoscaling); asked after every step.
    fn backlog(&self) -> Option<u64> {
        None
    }
}

/// What one step did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// Events applied.
    pub events: u64,
    /// Nothing to do for this long (rate limit, empty source); control messages still wake
    /// the loop at once.
    pub idle: Option<Duration>,
}

/// Where a worker runs and for whom: flags, or the environment of its pod.
#[derive(Args, Debug, Clone)]
pub struct WorkerConfig {
    /// Checkpoint store and job.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Subtask index: a number, or a StatefulSet pod name whose ordinal is the index (job-3).
    #[arg(long, env = "REGROUP_SUBTASK", value_parser = parse_subtask)]
    pub subtask: u32,
    /// Number of subtasks of this worker generation.
    #[arg(long, env = "REGROUP_PARALLELISM")]
    pub parallelism: u32,
    /// Number of key groups of the job (fixed for the life of its state).
    #[arg(long, env = "REGROUP_MAX_PARALLELISM")]
    pub max_parallelism: u32,
    /// Fencing epoch of this worker generation; requests for another epoch are refused.
    #[arg(long, env = "REGROUP_EPOCH")]
    pub epoch: u64,
    /// State directory: the DB is in `db/` (restored by the init container, or created empty).
    #[arg(long, env = "REGROUP_STATE_DIR", default_value = "/state")]
    pub state_dir: PathBuf,
    /// File holding the bearer token the operator sends (from the job's Secret).
    #[arg(long, env = "REGROUP_TOKEN_FILE")]
    pub token_file: PathBuf,
    /// Address of the HTTP API (port 0 picks a free port; the bound address is printed).
    #[arg(long, env = "REGROUP_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
}

/// Parses a subtask index from a number or a pod name ending in `-<ordinal>`.
pub fn parse_subtask(s: &str) -> std::result::Result<u32, String> {
    let digits = match s.rsplit_once('-') {
        Some((pod, ordinal)) if !pod.is_empty() => ordinal,
        _ => s,
    };
    digits.parse().map_err(|_| {
        format!("{s:?} is not a subtask index: give a number (3) or a StatefulSet pod name (job-3)")
    })
}

/// Who this worker is: its place in the job.
#[derive(Clone, Debug)]
pub struct WorkerIdentity {
    /// The job.
    pub job: JobId,
    /// Subtask index.
    pub subtask: u32,
    /// Parallelism of the generation.
    pub parallelism: u32,
    /// Number of key groups.
    pub max_parallelism: u32,
    /// Key groups owned.
    pub range: KeyGroupRange,
    /// Fencing epoch.
    pub epoch: u64,
    /// State directory.
    pub state_dir: PathBuf,
}

impl WorkerConfig {
    /// Checks the configuration and derives the worker's identity.
    pub fn identity(&self) -> Result<WorkerIdentity> {
        let range =
            KeyGroupRange::for_subtask(self.max_parallelism, self.parallelism, self.subtask)?;
        Ok(WorkerIdentity {
            job: self.store.job.clone(),
            subtask: self.subtask,
            parallelism: self.parallelism,
            max_parallelism: self.max_parallelism,
            range,
            epoch: self.epoch,
            state_dir: self.state_dir.clone(),
        })
    }

    /// Opens the bearer token file.
    pub fn token(&self) -> Result<TokenFile> {
        TokenFile::open(&self.token_file)
    }
}

/// What exists once the state is open.
pub struct Running {
    /// The subtask's state.
    pub backend: Arc<StateBackend>,
    /// Incremental snapshots of that DB instance.
    pub snapshotter: Arc<IncrementalSnapshotter>,
    /// The processing loop.
    pub engine: Engine,
    /// The background compaction of what a restore clipped outside the range, while it runs.
    pub cleanup: engine::Cleanup,
}

impl Running {
    /// RocksDB's estimate of the keys of every named state.
    pub fn estimated_keys(&self) -> u64 {
        let db = self.backend.db();
        self.backend
            .states()
            .iter()
            .filter_map(|s| db.cf_handle(s))
            .filter_map(|cf| {
                db.property_int_value_cf(&cf, "rocksdb.estimate-num-keys")
                    .ok()
                    .flatten()
            })
            .sum()
    }
}

/// State shared by the HTTP handlers and the runtime.
pub struct Shared {
    /// Who this worker is.
    pub identity: WorkerIdentity,
    /// The accepted bearer token, followed through changes of its file.
    pub token: TokenFile,
    /// Where handles go.
    pub store: CheckpointStore,
    /// Metrics.
    pub metrics: WorkerMetrics,
    /// Set once the state is open and processing runs.
    pub running: OnceLock<Running>,
    /// Set when the worker is stopping.
    pub shutting_down: AtomicBool,
    table: Mutex<CheckpointTable>,
    /// Woken when a checkpoint's capture or upload ends (`GET /v1/checkpoints/{id}?waitMs=`).
    settled: tokio::sync::Notify,
    uploads: Mutex<JoinSet<()>>,
}

impl Shared {
    /// The checkpoint table, locked.
    pub fn table(&self) -> MutexGuard<'_, CheckpointTable> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the end of checkpoint `id`'s capture or upload and wakes who waits for it.
    fn finish(&self, id: u64, outcome: std::result::Result<SubtaskHandle, String>) -> Effect {
        let effect = self.table().finish(id, outcome);
        self.settled.notify_waiters();
        effect
    }

    fn spawn_upload(&self, task: impl Future<Output = ()> + Send + 'static) {
        let mut uploads = self.uploads.lock().unwrap_or_else(|e| e.into_inner());
        while uploads.try_join_next().is_some() {}
        uploads.spawn(task);
    }

    fn apply(&self, effect: Effect) {
        let Some(running) = self.running.get() else {
            return;
        };
        match effect {
            Effect::NotifyComplete(id) => running.snapshotter.notify_complete(id),
            Effect::NotifyAborted(id) => running.snapshotter.notify_aborted(id),
            Effect::None => {}
        }
    }
}

/// Runs a worker for `job` until `shutdown` resolves (or processing fails): opens the state,
/// serves the API, processes. On shutdown the current step finishes, uploads in flight are
/// abandoned (their checkpoints stay incomplete) and the DB is closed.
pub async fn run<J: KeyedJob>(
    config: WorkerConfig,
    job: J,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let identity = config.identity()?;
    let token = config.token()?;
    let store = config.store.open()?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| {
            Error::invalid(
                "listen address",
                config.listen,
                format!("a free local address ({e})"),
            )
        })?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Other(format!("local address of the listener: {e}")))?;
    // The first stdout line tells a parent process (and tests) where the API is.
    println!("listening on http://{addr}");
    info!(%addr, job = %identity.job, subtask = identity.subtask, range = %identity.range, epoch = identity.epoch, "worker starting");

    let metrics = WorkerMetrics::new();
    metrics.epoch.set(identity.epoch as i64);
    metrics.key_groups.set(i64::from(identity.range.len()));
    let shared = Arc::new(Shared {
        identity: identity.clone(),
        token,
        store,
        metrics: metrics.clone(),
        running: OnceLock::new(),
        shutting_down: AtomicBool::new(false),
        table: Mutex::new(CheckpointTable::new()),
        settled: tokio::sync::Notify::new(),
        uploads: Mutex::new(JoinSet::new()),
    });
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let app = http::router(shared.clone());
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = server_stopped.await;
            })
            .await
    });

    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let opened = {
        let identity = identity.clone();
        let metrics = metrics.clone();
        tokio::task::spawn_blocking(move || open_and_start(&identity, job, metrics, done_tx))
            .await
            .map_err(|e| Error::Other(format!("opening the state: {e}")))?
    };
    let result = match opened {
        Ok(running) => {
            let _ = shared.running.set(running);
            info!("state open, processing");
            tokio::pin!(shutdown);
            let crash = async {
                match crate::fault::faults().worker_exit_after {
                    Some(after) => tokio::time::sleep(after).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut shutdown => info!("stop requested: finishing the current step"),
                _ = done_rx => warn!("processing ended"),
                _ = crash => {
                    tracing::error!("fault injection: the worker exits (REGROUP_FAULT_WORKER_EXIT_AFTER)");
                    std::process::exit(1);
                }
            }
            shared.shutting_down.store(true, Ordering::SeqCst);
            let running = shared.running.get().expect("set above");
            let r = running.engine.shutdown().await;
            // Closing the DB must not wait for the cleanup compaction: end it early.
            running.backend.stop_manual_compactions();
            if let Some(t) = running.cleanup.take() {
                let _ = tokio::task::spawn_blocking(move || t.join()).await;
            }
            Ok(r)
        }
        Err(e) => Err(e),
    };
    shared.shutting_down.store(true, Ordering::SeqCst);
    let mut uploads =
        std::mem::take(&mut *shared.uploads.lock().unwrap_or_else(|e| e.into_inner()));
    if !uploads.is_empty() {
        info!(uploads = uploads.len(), "abandoning uploads in flight");
    }
    uploads.abort_all();
    while uploads.join_next().await.is_some() {}
    let _ = stop_server.send(());
    // Open connections get a moment to finish; a client holding one open cannot keep the
    // worker from stopping.
    let abort = server.abort_handle();
    match tokio::time::timeout(SERVER_GRACE, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => warn!(error = %e, "HTTP server ended with an error"),
        Ok(Err(e)) => warn!(error = %e, "HTTP server task failed"),
        Err(_) => {
            warn!("HTTP connections still open after {SERVER_GRACE:?}; closing them");
            abort.abort();
        }
    }
    // The last reference to the backend goes with `shared`: the DB closes here.
    drop(shared);
    info!("worker stopped");
    result?
}

fn open_and_start<J: KeyedJob>(
    identity: &WorkerIdentity,
    mut job: J,
    metrics: WorkerMetrics,
    done: tokio::sync::oneshot::Sender<()>,
) -> Result<Running> {
    let dir = &identity.state_dir;
    std::fs::create_dir_all(dir).map_err(Error::io("create directory", dir))?;
    // The DB is about to change: it no longer equals any stop-with-checkpoint.
    LocalCheckpointMarker::remove(dir)?;
    let scratch = statedir::snapshot_dir(dir);
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch).map_err(Error::io("remove", &scratch))?;
    }
    let states = job.states();
    let state_refs: Vec<&str> = states.iter().map(String::as_str).collect();
    let backend = StateBackend::open(
        &statedir::db_dir(dir),
        identity.max_parallelism,
        identity.range,
        &state_refs,
    )?;
    job.open(&backend)?;
    let backend = Arc::new(backend);
    let snapshotter = Arc::new(IncrementalSnapshotter::new(
        backend.instance_id(),
        identity.subtask,
        identity.parallelism,
        identity.epoch,
    ));
    // The files a restore took from the store unchanged are there already: a new generation's
    // first checkpoint uploads what changed, not the whole state again.
    if let Some(restored) = RestoreMarker::read(&statedir::db_dir(dir))
        && restored.job == identity.job
        && restored.max_parallelism == identity.max_parallelism
    {
        snapshotter.seed_confirmed(restored.stored.into_values().collect());
    }
    // A restore leaves the records and range tombstones it clipped for the worker to compact
    // (the job is back sooner); until that ends, checkpoints of this DB hold files reaching
    // outside its range, which a later rescale copies instead of ingesting.
    let cleanup = {
        let backend = backend.clone();
        std::thread::Builder::new()
            .name("compact-outside-range".to_owned())
            .spawn(move || {
                let started = std::time::Instant::now();
                match backend.compact_outside_range() {
                    Ok(()) => info!(
                        seconds = started.elapsed().as_secs_f64(),
                        "compacted the key intervals outside the range"
                    ),
                    Err(e) => {
                        warn!(error = %e, "cannot compact the key intervals outside the range")
                    }
                }
            })
            .map_err(|e| Error::Other(format!("start the compaction thread: {e}")))?
    };
    let cleanup = engine::Cleanup::new(cleanup);
    let engine = Engine::start(
        job,
        backend.clone(),
        snapshotter.clone(),
        scratch,
        metrics,
        cleanup.clone(),
        done,
    )?;
    Ok(Running {
        backend,
        snapshotter,
        engine,
        cleanup,
    })
}

/// Resolves on SIGTERM or SIGINT.
pub async fn termination_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGTERM; stopping on SIGINT only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtask_from_number_or_pod_name() {
        assert_eq!(parse_subtask("3"), Ok(3));
        assert_eq!(parse_subtask("orders-worker-12"), Ok(12));
        assert!(parse_subtask("orders").unwrap_err().contains("orders"));
        assert!(parse_subtask("-1").is_err());
    }
}
