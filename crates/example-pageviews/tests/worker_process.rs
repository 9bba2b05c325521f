//! `pageviews worker` processes on the runtime, checkpointed the operator's way into a `file://`
//! store; `pageviews verify` and `pageviews results` check every checkpoint against the input.
//! (Rescales run in the end-to-end scenario `e2e/run pageviews`.)

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use regroup::checkpoint::{CheckpointStore, JobId};
use regroup::worker::checkpoints::{CheckpointStatus, Notice};
use regroup::worker::client::{Refused, WorkerClient};

const M: u32 = 16;
const TOKEN: &str = "pageviews-test-token";
const JOB: &str = "tests/pageviews";
/// Checkpoints taken before a test gives up waiting for the workers to catch up.
const MAX_CHECKPOINTS: u64 = 300;

struct Worker {
    url: String,
    child: Child,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Job {
    dir: tempfile::TempDir,
    input: PathBuf,
    store_url: String,
    store: CheckpointStore,
    api: WorkerClient,
    next_id: u64,
}

impl Job {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("input");
        std::fs::create_dir(&input).unwrap();
        std::fs::write(dir.path().join("token"), TOKEN).unwrap();
        let store_url = format!("file://{}", dir.path().join("store").display());
        std::fs::create_dir(dir.path().join("store")).unwrap();
        let store = CheckpointStore::from_url(&store_url, JOB.parse::<JobId>().unwrap()).unwrap();
        Self {
            input,
            store_url,
            store,
            api: WorkerClient::new(TOKEN, Duration::from_secs(10)).unwrap(),
            next_id: 1,
            dir,
        }
    }

    fn start(&self, subtask: u32, parallelism: u32) -> Worker {
        let state = self.dir.path().join(format!("state-{subtask}"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_pageviews"))
            .args(["worker", "--listen", "127.0.0.1:0", "--epoch", "1"])
            .arg("--store")
            .arg(&self.store_url)
            .args(["--job", JOB, "--max-parallelism", &M.to_string()])
            .args(["--subtask", &subtask.to_string()])
            .args(["--parallelism", &parallelism.to_string()])
            .arg("--state-dir")
            .arg(&state)
            .arg("--token-file")
            .arg(self.dir.path().join("token"))
            .arg("--input")
            .arg(&self.input)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let url = first
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("first line of the worker: {first:?}"))
            .to_owned();
        Worker { url, child }
    }

    /// A checkpoint the operator's way: trigger, wait for every handle, write the metadata,
    /// tell the workers. Returns its id.
    async fn checkpoint(&mut self, workers: &[Worker]) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        for w in workers {
            loop {
                match self.api.trigger(&w.url, id, 1, false).await.unwrap() {
                    Ok(()) => break,
                    // The state is not open yet: ask again.
                    Err(Refused::Unavailable(_)) => {
                        tokio::time::sleep(Duration::from_millis(50)).await
                    }
                    Err(r) => panic!("checkpoint {id} refused: {r:?}"),
                }
            }
        }
        for w in workers {
            loop {
                let record = self.api.status(&w.url, id).await.unwrap().unwrap();
                match record.status {
                    CheckpointStatus::Completed { .. } => break,
                    CheckpointStatus::InProgress => {
                        tokio::time::sleep(Duration::from_millis(50)).await
                    }
                    CheckpointStatus::Failed { reason } => panic!("checkpoint {id}: {reason}"),
                }
            }
        }
        self.store
            .try_complete(id, 1, workers.len() as u32, M)
            .await
            .unwrap()
            .expect("every handle is in");
        for w in workers {
            assert_eq!(
                self.api
                    .notify(&w.url, id, Notice::Complete, 1)
                    .await
                    .unwrap(),
                Ok(())
            );
        }
        id
    }

    fn pageviews(&self, command: &str, id: u64, extra: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_pageviews"))
            .args([command, "--store", &self.store_url, "--job", JOB])
            .args(["--checkpoint", &id.to_string()])
            .args(extra)
            .output()
            .unwrap()
    }

    fn verify(&self, id: u64, complete: bool) -> (bool, String) {
        let input = self.input.display().to_string();
        let mut args = vec!["--input", input.as_str()];
        if complete {
            args.push("--complete");
        }
        let out = self.pageviews("verify", id, &args);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    }

    /// Checkpoints until one holds the whole input (each checkpoint verified on the way);
    /// returns its id.
    async fn until_complete(&mut self, workers: &[Worker]) -> u64 {
        loop {
            let id = self.checkpoint(workers).await;
            let (ok, out) = self.verify(id, false);
            assert!(ok, "{out}");
            if self.verify(id, true).0 {
                return id;
            }
            assert!(
                id < MAX_CHECKPOINTS,
                "never caught up with the input: {out}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// Lines `/p<i % pages> <i>` for `i` in `range`.
fn lines(range: std::ops::Range<u64>, pages: u64) -> String {
    range.map(|i| format!("/p{} {i}\n", i % pages)).collect()
}

/// What `pageviews results` must print for the input: per page, views and millis.
fn expected_results(input: &Path) -> String {
    let mut totals: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for entry in std::fs::read_dir(input).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for line in text.lines() {
            let (page, millis) = line.split_once(' ').unwrap();
            let t = totals.entry(page.to_owned()).or_default();
            t.0 += 1;
            t.1 += millis.parse::<u64>().unwrap();
        }
    }
    totals
        .iter()
        .map(|(p, (v, m))| format!("{p}\t{v}\t{m}\n"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_input_line_is_counted_once_across_checkpoints_and_restarts() {
    let mut job = Job::new();
    append(&job.input.join("a.log"), &lines(0..700, 37));
    append(&job.input.join("b.log"), &lines(700..1000, 11));
    let mut workers = vec![job.start(0, 2), job.start(1, 2)];
    let id = job.until_complete(&workers).await;
    let out = job.pageviews("results", id, &[]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        expected_results(&job.input)
    );

    // More input: lines appended, a line in two parts, a new file.
    append(&job.input.join("a.log"), &lines(1000..1200, 37));
    append(&job.input.join("b.log"), "/split 4");
    append(&job.input.join("c.log"), &lines(1200..1500, 5));
    // A worker killed and started again: it resumes from the positions in its own DB.
    drop(workers.remove(1));
    workers.push(job.start(1, 2));
    append(&job.input.join("b.log"), "2\n");
    let id = job.until_complete(&workers).await;
    let (_, verdict) = job.verify(id, true);
    assert!(
        verdict.contains("1501 views of 1501 input lines (3 files)"),
        "{verdict}"
    );
    let out = job.pageviews("results", id, &[]);
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        expected_results(&job.input)
    );
}
