//! Shared harness of the worker process tests: real `regroup worker` processes on 127.0.0.x, a
//! `file://` checkpoint store in a temporary directory, checkpoints driven over HTTP and
//! completed the way the operator does it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use regroup::checkpoint::{CheckpointMetadata, CheckpointStore, JobId, SharedFile, SubtaskHandle};
use regroup::statedir::db_dir;
use regroup::worker::checkpoints::{CheckpointRecord, CheckpointStatus, Notice};
use regroup::worker::client::WorkerClient;
use serde_json::{Value, json};

use super::poll::poll;
use super::{regroup_cmd, run};

/// Number of key groups of every test job.
pub const M: u32 = 128;
/// The token the workers accept.
pub const TOKEN: &str = "test-token-5c1e";

/// Longest wait for anything a worker does (start, checkpoint); a test fails beyond it.
const PATIENCE: Duration = Duration::from_secs(90);
/// How often a worker is asked (it runs on this machine: asking is cheap).
const EVERY: Duration = Duration::from_millis(50);

/// A job's store, token and worker processes.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub store_url: String,
    pub job: JobId,
    pub store: CheckpointStore,
    pub client: reqwest::Client,
    /// The typed client the operator uses.
    pub api: WorkerClient,
    token_file: PathBuf,
    /// First address octet; subtask i listens on 127.0.0.(base + i).
    ip_base: u8,
}

/// One running `regroup worker`.
pub struct Worker {
    pub subtask: u32,
    pub url: String,
    pub state_dir: PathBuf,
    pub log: PathBuf,
    child: Child,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Extra flags for one worker.
#[derive(Clone, Default)]
pub struct WorkerOptions {
    pub upload_delay: Option<&'static str>,
}

impl Cluster {
    pub fn new(job: &str, ip_base: u8) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store_dir = dir.path().join("store");
        std::fs::create_dir_all(&store_dir).unwrap();
        let store_url = format!("file://{}", store_dir.display());
        let job: JobId = job.parse().unwrap();
        let store = CheckpointStore::from_url(&store_url, job.clone()).unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
        Self {
            dir,
            store_url,
            job,
            store,
            client: reqwest::Client::new(),
            api: WorkerClient::new(TOKEN, Duration::from_secs(30)).unwrap(),
            token_file,
            ip_base,
        }
    }

    /// A fresh state directory for `subtask` of generation `epoch`.
    pub fn state_dir(&self, epoch: u64, subtask: u32) -> PathBuf {
        let d = self.dir.path().join(format!("state-e{epoch}-s{subtask}"));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Fresh state directories for subtasks `0..p` of generation `epoch`.
    pub fn state_dirs(&self, epoch: u64, p: u32) -> Vec<PathBuf> {
        (0..p).map(|s| self.state_dir(epoch, s)).collect()
    }

    /// Starts `p` workers of generation `epoch` on fresh state directories and waits until each
    /// has processed `events` events; returns the directories and the workers.
    pub async fn start_fresh(
        &self,
        p: u32,
        epoch: u64,
        events: u64,
    ) -> (Vec<PathBuf>, Vec<Worker>) {
        let dirs = self.state_dirs(epoch, p);
        let workers = self.start_all(p, epoch, &dirs, &[]).await;
        self.wait_processing(&workers, events).await;
        (dirs, workers)
    }

    /// Starts `regroup worker` and waits until it is ready.
    pub async fn start(
        &self,
        subtask: u32,
        parallelism: u32,
        epoch: u64,
        state_dir: &Path,
        options: &WorkerOptions,
    ) -> Worker {
        let log = state_dir.with_extension("log");
        let stderr = std::fs::File::create(&log).unwrap();
        let ip = format!("127.0.0.{}:0", u32::from(self.ip_base) + subtask);
        let mut cmd = regroup_cmd();
        cmd.args([
            "worker",
            "--store",
            &self.store_url,
            "--job",
            &self.job.to_string(),
        ])
        .args(["--subtask", &subtask.to_string()])
        .args(["--parallelism", &parallelism.to_string()])
        .args(["--max-parallelism", &M.to_string()])
        .args(["--epoch", &epoch.to_string()])
        .arg("--state-dir")
        .arg(state_dir)
        .arg("--token-file")
        .arg(&self.token_file)
        .args(["--listen", &ip, "--rate", "4000", "--keys-per-group", "4"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr));
        if let Some(d) = options.upload_delay {
            cmd.env("REGROUP_FAULT_UPLOAD_DELAY", d);
        }
        let mut child = cmd.spawn().expect("start regroup worker");
        let stdout = child.stdout.take().unwrap();
        let log_for_error = log.clone();
        let line = tokio::time::timeout(
            PATIENCE,
            tokio::task::spawn_blocking(move || {
                let mut line = String::new();
                BufReader::new(stdout).read_line(&mut line).unwrap();
                line
            }),
        )
        .await
        .expect("worker did not print its address")
        .unwrap();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| {
                panic!(
                    "unexpected first line {line:?}; log:\n{}",
                    std::fs::read_to_string(&log_for_error).unwrap_or_default()
                )
            })
            .to_owned();
        let worker = Worker {
            subtask,
            url,
            state_dir: state_dir.to_path_buf(),
            log,
            child,
        };
        poll("the worker to be ready", PATIENCE, EVERY, async || {
            self.is_ready(&worker).await.then_some(())
        })
        .await
        .unwrap_or_else(|_| Self::give_up(&worker, "ready"));
        worker
    }

    /// Starts a generation of `parallelism` workers on the given state directories.
    pub async fn start_all(
        &self,
        parallelism: u32,
        epoch: u64,
        dirs: &[PathBuf],
        options: &[WorkerOptions],
    ) -> Vec<Worker> {
        let mut out = Vec::new();
        for s in 0..parallelism {
            let o = options.get(s as usize).cloned().unwrap_or_default();
            out.push(
                self.start(s, parallelism, epoch, &dirs[s as usize], &o)
                    .await,
            );
        }
        out
    }

    fn give_up(w: &Worker, what: &str) -> ! {
        panic!(
            "worker {} not {what} in time; log:\n{}",
            w.subtask,
            std::fs::read_to_string(&w.log).unwrap_or_default()
        )
    }

    async fn is_ready(&self, w: &Worker) -> bool {
        let r = self.client.get(format!("{}/readyz", w.url)).send().await;
        matches!(r, Ok(r) if r.status() == 200)
    }

    /// The worker's `/readyz` body.
    pub async fn readyz(&self, w: &Worker) -> serde_json::Value {
        let r = self.client.get(format!("{}/readyz", w.url)).send().await;
        r.unwrap().json().await.unwrap()
    }

    /// The worker's `/metrics` exposition.
    pub async fn metrics_text(&self, w: &Worker) -> String {
        let r = self.client.get(format!("{}/metrics", w.url)).send().await;
        r.unwrap().text().await.unwrap()
    }

    /// Events the worker reports as processed.
    pub async fn events_processed(&self, w: &Worker) -> u64 {
        self.metrics_text(w)
            .await
            .lines()
            .find_map(|l| l.strip_prefix("regroup_worker_events_processed_total "))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0)
    }

    /// Waits until every worker has processed at least `events` events.
    pub async fn wait_processing(&self, workers: &[Worker], events: u64) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        for w in workers {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            poll("events processed", left, EVERY, async || {
                (self.events_processed(w).await >= events).then_some(())
            })
            .await
            .unwrap_or_else(|_| Self::give_up(w, "processing"));
        }
    }

    /// `POST /v1/checkpoints` with the given token (None: no header).
    pub async fn post_checkpoint(
        &self,
        w: &Worker,
        token: Option<&str>,
        body: Value,
    ) -> (u16, Value) {
        let mut req = self
            .client
            .post(format!("{}/v1/checkpoints", w.url))
            .json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// `GET /v1/checkpoints/{id}`.
    pub async fn checkpoint_status(&self, w: &Worker, id: u64) -> (u16, Value) {
        let r = self
            .client
            .get(format!("{}/v1/checkpoints/{id}", w.url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// `POST /v1/checkpoints/{id}/{complete|abort}`.
    pub async fn notify(&self, w: &Worker, id: u64, what: &str, epoch: u64) -> u16 {
        self.client
            .post(format!("{}/v1/checkpoints/{id}/{what}", w.url))
            .bearer_auth(TOKEN)
            .json(&json!({ "epoch": epoch }))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// Requests checkpoint `id` from every worker (without waiting for the uploads).
    pub async fn trigger(&self, workers: &[Worker], id: u64, epoch: u64, stop: bool) {
        for w in workers {
            let r = self.api.trigger(&w.url, id, epoch, stop).await.unwrap();
            assert_eq!(r, Ok(()), "checkpoint {id} on subtask {}", w.subtask);
        }
    }

    /// Waits until `w` reports checkpoint `id` completed; panics if it failed.
    pub async fn wait_handle(&self, w: &Worker, id: u64) -> CheckpointRecord {
        let what = format!("checkpoint {id} on subtask {}", w.subtask);
        poll(&what, PATIENCE, EVERY, async || {
            let record = self.api.status(&w.url, id).await.unwrap().unwrap();
            match &record.status {
                CheckpointStatus::Completed { .. } => Some(record),
                CheckpointStatus::InProgress => None,
                CheckpointStatus::Failed { reason } => {
                    panic!("checkpoint {id} failed on subtask {}: {reason}", w.subtask)
                }
            }
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A whole checkpoint the operator's way: trigger every worker, wait for every handle,
    /// write `_metadata.json` (`try_complete`), then tell every worker it completed.
    pub async fn checkpoint(
        &self,
        workers: &[Worker],
        id: u64,
        epoch: u64,
        stop: bool,
    ) -> CheckpointMetadata {
        self.trigger(workers, id, epoch, stop).await;
        for w in workers {
            self.wait_handle(w, id).await;
        }
        let meta = self
            .store
            .try_complete(id, epoch, workers.len() as u32, M)
            .await
            .unwrap()
            .expect("every handle is in");
        for w in workers {
            let r = self.api.notify(&w.url, id, Notice::Complete, epoch).await;
            assert_eq!(r.unwrap(), Ok(()));
        }
        meta
    }

    /// SIGTERM to every worker; each must exit successfully.
    pub fn stop_all(&self, workers: Vec<Worker>) {
        for mut w in workers {
            let pid = w.child.id().to_string();
            let ok = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
            assert!(ok.success());
            let status = w.child.wait().unwrap();
            assert!(
                status.success(),
                "worker {} exited with {status}; log:\n{}",
                w.subtask,
                std::fs::read_to_string(&w.log).unwrap_or_default()
            );
        }
    }
}

impl Worker {
    /// SIGKILL, no chance to clean up.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// Builds `<dir>/db` for `subtask` of `parallelism` from completed checkpoint `meta` with
/// `regroup restore` (the workers' init container), merging handles by `strategy`.
pub fn restore_into(
    c: &Cluster,
    meta: &CheckpointMetadata,
    subtask: u32,
    parallelism: u32,
    dir: &Path,
    strategy: &str,
) -> String {
    run(regroup_cmd()
        .args([
            "restore",
            "--store",
            &c.store_url,
            "--job",
            &c.job.to_string(),
        ])
        .args(["--checkpoint", &meta.checkpoint_id.to_string()])
        .args(["--subtask", &subtask.to_string()])
        .args(["--parallelism", &parallelism.to_string()])
        .args(["--strategy", strategy])
        .arg("--target")
        .arg(db_dir(dir)))
}

/// `regroup checkpoints gc` keeping only the latest completed checkpoint, at once.
pub fn gc_keeping_latest(c: &Cluster) -> String {
    run(regroup_cmd()
        .args(["checkpoints", "gc", "--store", &c.store_url])
        .args(["--job", &c.job.to_string()])
        .args(["--retain", "1", "--grace", "0s"]))
}

/// The SST files of `h` that an earlier DB instance uploaded (referenced, not uploaded again).
pub fn files_of_earlier_instances(h: &SubtaskHandle) -> Vec<&SharedFile> {
    let own = format!("shared/{}/", h.instance_id);
    h.shared
        .iter()
        .filter(|f| !f.file.path.starts_with(&own))
        .collect()
}
