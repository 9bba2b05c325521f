//! The processing loop: a dedicated thread that owns the job, runs its steps against the
//! backend and takes snapshots *between* steps, so a snapshot never sees half a step and never
//! blocks processing longer than the native checkpoint takes.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tracing::{error, info, warn};

use super::KeyedJob;
use super::metrics::WorkerMetrics;
use crate::backend::{IncrementalSnapshotter, LocalSnapshot, StateBackend};
use crate::checkpoint::ProcessedEvents;
use crate::error::{Error, Result};

/// The background compaction of what a restore clipped outside the range, while it runs; the
/// processing loop waits for it before a stop-with-checkpoint, the worker stops it at shutdown.
#[derive(Clone)]
pub struct Cleanup(Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>);

impl Cleanup {
    /// The compaction running in `thread`.
    pub fn new(thread: std::thread::JoinHandle<()>) -> Self {
        Cleanup(Arc::new(std::sync::Mutex::new(Some(thread))))
    }

    /// Its thread, to the first caller only (who joins it).
    pub fn take(&self) -> Option<std::thread::JoinHandle<()>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// A request to the processing thread.
pub enum Control {
    /// Take a native checkpoint now; with `stop`, pause processing first and for good.
    Capture {
        /// Checkpoint id.
        id: u64,
        /// Stop-with-checkpoint.
        stop: bool,
        /// Where the snapshot (or the failure) goes.
        reply: oneshot::Sender<Result<LocalSnapshot>>,
    },
    /// Finish the current step and end the loop.
    Shutdown,
}

/// Handle of the running processing thread.
pub struct Engine {
    control: std::sync::Mutex<Sender<Control>>,
    thread: std::sync::Mutex<Option<JoinHandle<Result<()>>>>,
}

impl Engine {
    /// Starts the loop of `job` over `backend` on a thread of its own.
    pub fn start<J: KeyedJob>(
        job: J,
        backend: Arc<StateBackend>,
        snapshotter: Arc<IncrementalSnapshotter>,
        scratch: PathBuf,
        metrics: WorkerMetrics,
        cleanup: Cleanup,
        done: oneshot::Sender<()>,
    ) -> Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("processing".into())
            .spawn(move || {
                let r = Loop {
                    job,
                    backend,
                    snapshotter,
                    scratch,
                    metrics,
                    cleanup,
                    paused: false,
                    processed: None,
                }
                .run(rx);
                if let Err(e) = &r {
                    error!(error = %e, "processing failed");
                }
                let _ = done.send(());
                r
            })
            .map_err(|e| Error::Other(format!("cannot start the processing thread: {e}")))?;
        Ok(Self {
            control: std::sync::Mutex::new(tx),
            thread: std::sync::Mutex::new(Some(thread)),
        })
    }

    fn send(&self, msg: Control) -> std::result::Result<(), std::sync::mpsc::SendError<Control>> {
        self.control
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(msg)
    }

    /// Asks for a native checkpoint between two steps and waits for it.
    pub async fn capture(&self, id: u64, stop: bool) -> Result<LocalSnapshot> {
        let (reply, rx) = oneshot::channel();
        self.send(Control::Capture { id, stop, reply })
            .map_err(|_| Error::Other("processing has ended; no snapshot possible".into()))?;
        rx.await
            .map_err(|_| Error::Other("processing ended before the snapshot was taken".into()))?
    }

    /// Ends the loop after the current step and waits for the thread.
    pub async fn shutdown(&self) -> Result<()> {
        let _ = self.send(Control::Shutdown);
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        match thread {
            Some(t) => tokio::task::spawn_blocking(move || t.join())
                .await
                .map_err(|e| Error::Other(format!("joining the processing thread: {e}")))?
                .map_err(|_| Error::Other("the processing thread panicked".into()))?,
            None => Ok(()),
        }
    }
}

struct Loop<J> {
    job: J,
    cleanup: Cleanup,
    backend: Arc<StateBackend>,
    snapshotter: Arc<IncrementalSnapshotter>,
    scratch: PathBuf,
    metrics: WorkerMetrics,
    paused: bool,
    /// This process's first and latest event, recorded in every handle.
    processed: Option<ProcessedEvents>,
}

/// What the loop does after handling a control message.
enum Next {
    Continue,
    Exit,
}

impl<J: KeyedJob> Loop<J> {
    fn run(mut self, rx: Receiver<Control>) -> Result<()> {
        loop {
            // Control first: a snapshot request waits at most one step.
            loop {
                let msg = if self.paused {
                    match rx.recv() {
                        Ok(m) => m,
                        Err(_) => return Ok(()),
                    }
                } else {
                    match rx.try_recv() {
                        Ok(m) => m,
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => return Ok(()),
                    }
                };
                if let Next::Exit = self.handle(msg) {
                    return Ok(());
                }
            }
            let began = std::time::Instant::now();
            let mut batch = self.backend.batch();
            let step = self.job.step(&self.backend, &mut batch)?;
            batch.commit()?;
            self.metrics.events_processed.inc_by(step.events);
            if step.events > 0 {
                let now = chrono::Utc::now();
                let first = self.processed.map_or(now, |p| p.first);
                self.processed = Some(ProcessedEvents { first, last: now });
                self.metrics
                    .busy_seconds
                    .inc_by(began.elapsed().as_secs_f64());
            }
            if let Some(b) = self.job.backlog() {
                self.metrics.backlog.set(b as i64);
            }
            match step.idle {
                Some(wait) if !wait.is_zero() => match rx.recv_timeout(wait.min(MAX_IDLE)) {
                    Ok(msg) => {
                        if let Next::Exit = self.handle(msg) {
                            return Ok(());
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return Ok(()),
                },
                _ => std::thread::yield_now(),
            }
        }
    }

    fn handle(&mut self, msg: Control) -> Next {
        match msg {
            Control::Capture { id, stop, reply } => {
                if stop && !self.paused {
                    self.paused = true;
                    info!(
                        checkpoint = id,
                        "processing paused for stop-with-checkpoint"
                    );
                    // The final checkpoint is what the next restore reads: wait for the
                    // compaction of what this DB's restore clipped, so that its files lie
                    // inside the range and can be ingested (else that restore copies them).
                    if let Some(t) = self.cleanup.take() {
                        info!("waiting for the compaction outside the range");
                        let _ = t.join();
                    }
                    // The next restore may reuse this DB's files: background
                    // compactions must not delete what the final checkpoint references.
                    if let Err(e) = self.backend.db().disable_file_deletions() {
                        warn!(error = %e, "cannot disable file deletions; local reuse may fall back to downloads");
                    }
                }
                let started = Instant::now();
                let r = self
                    .snapshotter
                    .capture(&self.backend, id, &self.scratch)
                    .map(|mut s| {
                        s.processed = self.processed;
                        s
                    });
                self.metrics
                    .capture_seconds
                    .observe(started.elapsed().as_secs_f64());
                let _ = reply.send(r);
                Next::Continue
            }
            Control::Shutdown => Next::Exit,
        }
    }
}

/// Longest single wait of an idle loop; it then asks the job again.
pub const MAX_IDLE: Duration = Duration::from_millis(100);
