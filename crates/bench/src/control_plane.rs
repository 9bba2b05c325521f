//! `regroup-bench control-plane`: what one job at maxParallelism 32768 and parallelism 512 costs
//! the control plane, through the library code that does it.
//!
//! - the restore plan of rescales 512→511, 512→513, 512→256 and 256→512 (all new subtasks, and
//!   the slowest single subtask, as each restore plans its own);
//! - the size of `_metadata.json` and the time to parse and validate it;
//! - in each store (a `file://` one in a temporary directory, plus every `--store`): a history
//!   of checkpoints, each completed by `CheckpointStore::try_complete` (every handle read, every
//!   file checked, the metadata written) and followed by garbage collection with the job's
//!   retention, as the operator does; and the restore progress reports the operator reads every
//!   round while the workers restore;
//! - the size of the status the operator writes for such a job mid-rescale and running.
//!
//! Handles look like a worker's: a DB instance each, SST files on levels 0 and 3–6 with
//! key-group spans (L0 files with their order), four private files (two carried in the
//! handle). A fifth of each handle's SST files is new in every checkpoint (compactions), the
//! rest shared with the one before.
//! The files written to the stores are small (their number is what listing and GC pay for);
//! the handles that are only planned carry sizes of 8–64 MiB.
//!
//! Each measurement prints the median of `--rounds` and their spread, its target and whether it
//! is met.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use object_store::{ObjectStoreExt, PutPayload};

use regroup::checkpoint::metadata::{FORMAT_VERSION, decode};
use regroup::checkpoint::progress::{self, RestorePhase, RestoreProgress};
use regroup::checkpoint::registry::{
    GcScope, LIST_EVERY, RetentionPolicy, delete_planned, gc_plan_for_store,
};
use regroup::checkpoint::store::METADATA_MAX_BYTES;
use regroup::checkpoint::{
    CheckpointMetadata, CheckpointStore, Checksum, FileRef, InlineFile, JobId, PrivateFile,
    SharedFile, SstOrder, SubtaskHandle,
};
use regroup::error::{Error, Result};
use regroup::keygroup::{KeyGroupRange, check_parallelism, ranges};
use regroup::operator::controller::decide::{World, decide};
use regroup::operator::crd::{
    CheckpointRecord, Phase, ReadyWorkers, RescaleReason, RescaleStatus, STATUS_BYTES_BOUND, Stage,
    StatefulJob, StatefulJobStatus,
};
use regroup::operator::lifecycle::JobState;
use regroup::operator::resources::EPOCH_LABEL;
use regroup::operator::status;
use regroup::restore::{PlanOptions, plan, plan_subtask_with_local};

/// `regroup-bench control-plane`
#[derive(Args, Debug, Clone)]
pub struct ControlPlaneArgs {
    /// Key groups of the job.
    #[arg(long, default_value_t = 32768)]
    pub max_parallelism: u32,
    /// Subtasks of the job (at least 2: it is rescaled to half of it).
    #[arg(long, default_value_t = 512)]
    pub parallelism: u32,
    /// SST files in each handle.
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub files_per_handle: u32,
    /// Completed checkpoints kept (spec.checkpointing.retain).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub retain: u32,
    /// Rounds of each measurement; the stores get `retain` + 2 × `rounds` checkpoints (a round
    /// of each kind of garbage collection).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=99))]
    pub rounds: u32,
    /// Another store to measure completion and GC in besides a `file://` one in a temporary
    /// directory, e.g. `s3://bucket/bench` (credentials and endpoint from `AWS_*`); the
    /// benchmark writes below a job of its own there and leaves what GC keeps.
    #[arg(long = "store")]
    pub stores: Vec<String>,
    /// Working directory of the `file://` store (default: a temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// What each timed step of the control plane may take.
const TARGET: Duration = Duration::from_secs(1);
/// Objects written to a store at once while setting up.
const WRITES_IN_FLIGHT: usize = 32;

/// A measured line: what, its value and whether it meets its target.
struct Line {
    text: String,
    /// Whether its target is met; `None` for a measurement without a target.
    met: Option<bool>,
}

/// Runs the benchmark and returns its report.
pub async fn control_plane_bench(args: &ControlPlaneArgs) -> Result<String> {
    let (m, p) = (args.max_parallelism, args.parallelism);
    check_parallelism(m, p)?;
    if p < 2 {
        return Err(Error::invalid(
            "--parallelism",
            p,
            "at least 2 (the job is rescaled to half of it)",
        ));
    }
    let job: JobId = "bench/control-plane".parse()?;
    let mut lines = Vec::new();
    let mut out = format!(
        "control plane at maxParallelism {m}, parallelism {p} ({} SST files a handle, retain {}, {} round(s): medians [spread])\n",
        args.files_per_handle, args.retain, args.rounds
    );

    let meta = checkpoint(&job, m, p, args.files_per_handle, 5, Sizes::Planned)?;
    lines.push(metadata(&meta, args.rounds)?);
    for (from, to) in [(p, p - 1), (p, p + 1), (p, p / 2), (p / 2, p)] {
        if to > m {
            continue;
        }
        let meta = checkpoint(&job, m, from, args.files_per_handle, 5, Sizes::Planned)?;
        lines.push(rescale_plan(&meta, to, args.rounds)?);
    }

    let scratch = tempfile::tempdir().map_err(Error::io(
        "create temporary directory",
        std::env::temp_dir(),
    ))?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| scratch.path().to_owned());
    let mut urls = vec![format!("file://{}", dir.join("store").display())];
    urls.extend(args.stores.iter().cloned());
    for url in &urls {
        lines.extend(store_history(url, &job, args).await?);
    }

    lines.extend(status_size(p)?);

    let met = lines.iter().filter(|l| l.met == Some(true)).count();
    let targets = lines.iter().filter(|l| l.met.is_some()).count();
    for l in &lines {
        out.push_str(&l.text);
        out.push_str(match l.met {
            Some(true) => ": met\n",
            Some(false) => ": NOT met\n",
            None => "\n",
        });
    }
    out.push_str(&format!("targets: {met} of {targets} met\n"));
    Ok(out)
}

/// Sizes of the files in a built checkpoint.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sizes {
    /// As a worker's (8–64 MiB): only planned, never written.
    Planned,
    /// Small: written to a store.
    Stored,
}

/// Checkpoint `id` of `job` at parallelism `p` of `m` key groups, each handle with `files` SST
/// files (see the module documentation).
fn checkpoint(
    job: &JobId,
    m: u32,
    p: u32,
    files: u32,
    id: u64,
    sizes: Sizes,
) -> Result<CheckpointMetadata> {
    let handles = ranges(m, p)?
        .into_iter()
        .enumerate()
        .map(|(i, range)| handle(job, m, p, i as u32, range, files, id, sizes))
        .collect();
    Ok(CheckpointMetadata {
        format_version: FORMAT_VERSION,
        job: job.clone(),
        checkpoint_id: id,
        epoch: 1,
        parallelism: p,
        max_parallelism: m,
        completed_at: chrono::Utc::now(),
        handles,
    })
}

/// The level of SST file `f` of `files`: four L0 files, then half on L6, a quarter on L5, the
/// rest on L4 and L3.
fn level(f: u32, files: u32) -> i32 {
    let l0 = files.min(4);
    if f < l0 {
        return 0;
    }
    let k = f - l0;
    let rest = files - l0;
    if k < rest / 2 {
        6
    } else if k < rest * 3 / 4 {
        5
    } else if k < rest * 7 / 8 {
        4
    } else {
        3
    }
}

#[allow(clippy::too_many_arguments)]
fn handle(
    job: &JobId,
    m: u32,
    p: u32,
    subtask: u32,
    range: KeyGroupRange,
    files: u32,
    id: u64,
    sizes: Sizes,
) -> SubtaskHandle {
    let instance = format!(
        "{:032x}",
        xxhash_rust::xxh3::xxh3_128(format!("{p}/{subtask}").as_bytes())
    );
    // The files of level `lv` split the range between them.
    let on_level = |lv: i32| (0..files).filter(|&g| level(g, files) == lv).count() as u32;
    let shared = (0..files)
        .map(|f| {
            let lv = level(f, files);
            let (n, j) = (
                on_level(lv),
                (0..f).filter(|&g| level(g, files) == lv).count() as u32,
            );
            let span = if lv == 0 {
                range
            } else {
                let len = range.len();
                let start = range.start + j * len / n;
                let end = (range.start + (j + 1) * len / n).saturating_sub(1);
                KeyGroupRange {
                    start: start.min(range.end),
                    end: end.clamp(start.min(range.end), range.end),
                }
            };
            // Slot `f` gets a new file every fifth checkpoint, a fifth of the slots each time.
            let generation = (id + u64::from(f)) / 5;
            let number = 10 + u64::from(f) + u64::from(files) * generation;
            let local_name = format!("{number:06}.sst");
            SharedFile {
                file: FileRef {
                    path: format!("shared/{instance}/{local_name}"),
                    size: match sizes {
                        Sizes::Planned => (8 << 20) + (u64::from(f) % 8) * (7 << 20),
                        Sizes::Stored => 100 + u64::from(f),
                    },
                    checksum: Checksum(number as u32),
                },
                local_name,
                column_family: Some("state".into()),
                level: Some(lv),
                key_groups: Some(span),
                order: (lv == 0).then_some(SstOrder {
                    smallest_seqno: number * 1000,
                    largest_seqno: number * 1000 + 999,
                    epoch_number: Some(number),
                }),
            }
        })
        .collect();
    // A worker's four: the MANIFEST of 24 files with their key bounds is over
    // `INLINE_MAX_BYTES`, stored with the checkpoint; the OPTIONS file is stored once for the
    // DB instance; CURRENT and the empty WAL travel in the handle.
    let private = [
        (
            "MANIFEST-000005",
            6_300,
            format!("chk-{id}/private/{subtask}/{instance}/MANIFEST-000005"),
        ),
        (
            "OPTIONS-000007",
            14_751,
            format!("shared/{instance}/OPTIONS-000007"),
        ),
    ]
    .into_iter()
    .map(|(name, size, path)| PrivateFile {
        local_name: name.to_owned(),
        file: FileRef {
            path,
            size,
            checksum: Checksum(7),
        },
    })
    .collect();
    let inline = vec![
        InlineFile::new("000004.log".into(), Vec::new()),
        InlineFile::new("CURRENT".into(), b"MANIFEST-000005\n".to_vec()),
    ];
    SubtaskHandle {
        format_version: FORMAT_VERSION,
        job: job.clone(),
        checkpoint_id: id,
        epoch: 1,
        subtask,
        parallelism: p,
        max_parallelism: m,
        key_group_range: range,
        instance_id: instance,
        column_families: vec!["default".into(), "state".into()],
        shared,
        private,
        inline,
        bytes_total: 0,
        bytes_uploaded: 0,
        created_at: chrono::Utc::now(),
        // As a worker writes it: its first and latest event.
        processed: Some(regroup::checkpoint::ProcessedEvents {
            first: chrono::Utc::now(),
            last: chrono::Utc::now(),
        }),
    }
}

/// Times `f` `rounds` times; the sorted seconds.
fn timed<T>(rounds: u32, mut f: impl FnMut() -> Result<T>) -> Result<Vec<f64>> {
    let mut seconds = Vec::new();
    for _ in 0..rounds {
        let started = Instant::now();
        f()?;
        seconds.push(started.elapsed().as_secs_f64());
    }
    seconds.sort_by(f64::total_cmp);
    Ok(seconds)
}

/// `median s [min–max]` of sorted seconds, and whether the median meets [`TARGET`].
fn seconds(sorted: &[f64]) -> (String, bool) {
    let median = sorted[sorted.len() / 2];
    let text = format!(
        "{median:.4} s [{:.4}–{:.4}]",
        sorted[0],
        sorted[sorted.len() - 1]
    );
    (text, median <= TARGET.as_secs_f64())
}

/// The timed garbage collections of one kind.
#[derive(Default)]
struct Collections {
    total: Vec<f64>,
    planning: Vec<f64>,
    deleted: usize,
    left: usize,
}

impl Collections {
    /// The result line: `what` goes on with the deletions a round and the planning's median;
    /// held to the target or not.
    fn line(&mut self, what: &str, rounds: u32, targeted: bool) -> Line {
        self.total.sort_by(f64::total_cmp);
        self.planning.sort_by(f64::total_cmp);
        let (text, met) = seconds(&self.total);
        Line {
            text: format!(
                "{what}, {} deleted a round; planning {:.4} s) {text}, {}",
                self.deleted / rounds as usize,
                self.planning[self.planning.len() / 2],
                if targeted {
                    target()
                } else {
                    "no target".into()
                }
            ),
            met: targeted.then_some(met),
        }
    }
}

fn target() -> String {
    format!("target ≤ {} s", TARGET.as_secs())
}

fn mib(bytes: usize) -> String {
    format!("{:.2} MiB", bytes as f64 / f64::from(1 << 20))
}

/// `_metadata.json` of `meta` as the store writes it, and the time to parse and validate it as
/// every restore and the operator do.
fn metadata(meta: &CheckpointMetadata, rounds: u32) -> Result<Line> {
    let bytes = serde_json::to_vec_pretty(meta).map_err(|source| Error::Json {
        file: "_metadata.json".into(),
        source,
    })?;
    let per_handle = bytes.len() / meta.handles.len();
    let sorted = timed(rounds, || {
        let parsed: CheckpointMetadata = decode(&bytes, "_metadata.json")?;
        parsed.validate("_metadata.json")
    })?;
    let (time, met) = seconds(&sorted);
    let fits = (bytes.len() as u64) < METADATA_MAX_BYTES;
    Ok(Line {
        text: format!(
            "metadata: _metadata.json of {} handles {} ({:.1} KiB a handle; read up to {} MiB), parse and validate {time}, {}",
            meta.handles.len(),
            mib(bytes.len()),
            per_handle as f64 / 1024.0,
            METADATA_MAX_BYTES >> 20,
            target()
        ),
        met: Some(met && fits),
    })
}

/// The plan of every new subtask of a rescale of `meta` to `to`, and of the slowest one alone
/// (each restore plans its own subtask, its old volume's handle local).
fn rescale_plan(meta: &CheckpointMetadata, to: u32, rounds: u32) -> Result<Line> {
    let options = PlanOptions::default();
    let mut inputs = 0;
    let sorted = timed(rounds, || {
        let planned = plan(meta, to, &options)?;
        inputs = planned.subtasks.iter().map(|s| s.inputs.len()).sum();
        Ok(())
    })?;
    let (time, met) = seconds(&sorted);
    let mut slowest = 0f64;
    for subtask in 0..to {
        let local = (subtask < meta.parallelism).then_some(subtask);
        let started = Instant::now();
        plan_subtask_with_local(meta, to, subtask, &options, local)?;
        slowest = slowest.max(started.elapsed().as_secs_f64());
    }
    Ok(Line {
        text: format!(
            "plan {}→{to} ({}): all {to} new subtasks ({inputs} inputs) {time}, slowest subtask alone {slowest:.5} s, {}",
            meta.parallelism,
            options.strategy,
            target()
        ),
        met: Some(met),
    })
}

/// Writes the objects `files` reference (their contents: the sizes they claim) to `store`.
async fn put_files(store: &CheckpointStore, files: Vec<FileRef>) -> Result<()> {
    futures::stream::iter(files)
        .map(|f| async move {
            let location = store.paths().resolve(&f.path, "benchmark")?;
            store
                .object_store()
                .put(&location, PutPayload::from(vec![b'x'; f.size as usize]))
                .await
                .map_err(|source| Error::Store {
                    operation: "put",
                    path: location.to_string(),
                    source,
                })?;
            Ok::<(), Error>(())
        })
        .buffer_unordered(WRITES_IN_FLIGHT)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Checkpoints `1..=retain + 2 × rounds` of the job in the store at `url`, each written as the
/// workers write it (new files, then handles), then completed and garbage collected as the
/// operator does; then the restore progress of a rescale. Times the completions of the last
/// `2 × rounds` checkpoints (a full history behind them), their collections (the operator's and
/// one listing every object, taking turns) and the reading of the progress.
async fn store_history(url: &str, job: &JobId, args: &ControlPlaneArgs) -> Result<Vec<Line>> {
    let (m, p, files) = (
        args.max_parallelism,
        args.parallelism,
        args.files_per_handle,
    );
    let store = CheckpointStore::from_url(url, job.clone())?;
    // A run before this one left its history: start after it, and collect what it left.
    let first = store
        .checkpoint_ids()
        .await?
        .last()
        .map_or(1, |(id, _)| id + 1);
    let policy = RetentionPolicy {
        retain: args.retain as usize,
        // Everything is young here; the operator's grace period protects uploads in flight.
        grace: Duration::ZERO,
    };
    let (mut completions, mut polls) = (Vec::new(), Vec::new());
    let mut collections = [Collections::default(), Collections::default()];
    let mut objects = 0;
    let mut previous: Option<CheckpointMetadata> = None;
    let last = first + u64::from(args.retain + 2 * args.rounds) - 1;
    for id in first..=last {
        let meta = checkpoint(job, m, p, files, id, Sizes::Stored)?;
        let known: std::collections::HashSet<&str> = previous
            .iter()
            .flat_map(|c| c.handles.iter().flat_map(|h| h.files()))
            .map(|f| f.path.as_str())
            .collect();
        let new: Vec<FileRef> = meta
            .handles
            .iter()
            .flat_map(|h| h.files())
            .filter(|f| !known.contains(f.path.as_str()))
            .cloned()
            .collect();
        put_files(&store, new).await?;
        let (last_handle, first_handles) = meta.handles.split_last().expect("p ≥ 2 handles");
        futures::stream::iter(first_handles)
            .map(|h| store.write_handle(h))
            .buffer_unordered(WRITES_IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await?;
        // What the operator's round reads every poll of a final checkpoint still in flight.
        let started = Instant::now();
        if store.completion(id, 1, p, m).await?.is_some() {
            return Err(Error::Other(format!(
                "checkpoint {id} completed with a handle missing"
            )));
        }
        let polled = started.elapsed().as_secs_f64();
        store.write_handle(last_handle).await?;
        let started = Instant::now();
        store
            .try_complete(id, 1, p, m)
            .await?
            .ok_or_else(|| Error::Other(format!("checkpoint {id} did not complete")))?;
        let completed = started.elapsed().as_secs_f64();
        // The warm-up takes the operator's turns; then the operator's and a listing of every
        // object (by hand) take turns, timed.
        let timed = id + u64::from(2 * args.rounds) > last;
        let kind = (id % 2) as usize;
        let scope = if timed {
            [GcScope::AfterCompletion, GcScope::Everything][kind]
        } else {
            GcScope::AfterCompletion
        };
        let started = Instant::now();
        let gc = gc_plan_for_store(&store, scope, policy, chrono::Utc::now()).await?;
        let planned = started.elapsed().as_secs_f64();
        delete_planned(&store, &gc, &|_| {}).await?;
        let collected = started.elapsed().as_secs_f64();
        if scope == GcScope::AfterCompletion {
            // What a listing would still find to delete (none: the benchmark leaves no
            // leftovers, so the metadata named it all).
            let listed = gc_plan_for_store(&store, GcScope::Everything, policy, chrono::Utc::now());
            collections[kind].left += listed.await?.deletions.len();
        }
        if timed {
            completions.push(completed);
            polls.push(polled);
            let c = &mut collections[kind];
            c.total.push(collected);
            c.planning.push(planned);
            c.deleted += gc.deletions.len();
            objects = store.list_all().await?.len();
        }
        previous = Some(meta);
    }
    completions.sort_by(f64::total_cmp);
    polls.sort_by(f64::total_cmp);
    let (poll, poll_met) = seconds(&polls);
    let (completion, completion_met) = seconds(&completions);

    // A rescale to `p` restores: every restore reports, the operator reads them every round.
    let epoch = last + 1;
    futures::stream::iter(0..p)
        .map(|subtask| {
            let report = RestoreProgress {
                format_version: FORMAT_VERSION,
                subtask,
                phase: RestorePhase::Downloading,
                bytes_done: 1 << 20,
                bytes_total: 1 << 30,
                updated_at: chrono::Utc::now(),
            };
            let store = &store;
            async move { progress::write(store, epoch, &report).await }
        })
        .buffer_unordered(WRITES_IN_FLIGHT)
        .try_collect::<Vec<()>>()
        .await?;
    let mut reads = Vec::new();
    for _ in 0..args.rounds {
        let started = Instant::now();
        let read = progress::read_epoch(&store, epoch).await?;
        reads.push(started.elapsed().as_secs_f64());
        if read.len() != p as usize {
            return Err(Error::Other(format!(
                "read {} restore progress reports of {p}",
                read.len()
            )));
        }
    }
    progress::clear_before(&store, epoch + 1).await?;
    reads.sort_by(f64::total_cmp);
    let (read, read_met) = seconds(&reads);
    let store_name = url.split_once("://").map_or(url, |(scheme, _)| scheme);
    Ok(vec![
        Line {
            text: format!(
                "{store_name} store: checkpoint completion (try_complete: {p} handles read, every file checked, _metadata.json written) {completion}, {}",
                target()
            ),
            met: Some(completion_met),
        },
        Line {
            text: format!(
                "{store_name} store: completion poll while a handle is missing ({} of {p} written) {poll}, {}",
                p - 1,
                target()
            ),
            met: Some(poll_met),
        },
        collections[0].line(
            &format!(
                "{store_name} store: garbage collection after a checkpoint (retain {}: the dropped checkpoint from its metadata, a {LIST_EVERY}th of shared/ listed, {} left for a listing",
                args.retain, collections[0].left
            ),
            args.rounds,
            true,
        ),
        collections[1].line(
            &format!(
                "{store_name} store: garbage collection listing every object (`regroup checkpoints gc`, a snapshot's disposal; {objects} objects"
            ),
            args.rounds,
            false,
        ),
        Line {
            text: format!(
                "{store_name} store: restore progress ({p} reports the operator reads every round) {read}, {}",
                target()
            ),
            met: Some(read_met),
        },
    ])
}

/// A worker pod of `epoch`, ready or only initialized.
fn worker_pod(index: u32, epoch: u64, ready: bool) -> Result<Pod> {
    let value = serde_json::json!({
        "metadata": {
            "name": format!("orders-{index}"),
            "uid": format!("{:08x}-0000-4000-8000-{:012x}", epoch, index),
            "labels": {EPOCH_LABEL: epoch.to_string()}
        },
        "status": {"conditions": [
            {"type": "Initialized", "status": "True"},
            {"type": "Ready", "status": if ready { "True" } else { "False" }}
        ]}
    });
    serde_json::from_value(value).map_err(|e| Error::Other(format!("worker pod: {e}")))
}

/// The bytes of `status` as the controller writes it: with its conditions, lastReadyTemplate
/// (the job's own pod template) aside.
fn written_bytes(job: &StatefulJob, status: &StatefulJobStatus, problem: bool) -> Result<usize> {
    let mut st = status.clone();
    let problem = problem.then(|| {
        status::Problem::new(
            "CheckpointFailed",
            "checkpoint 4 failed: worker pod orders-17 refused it: upload of shared/0123456789abcdef0123456789abcdef/000123.sst failed: connection reset by peer",
        )
    });
    st.conditions = status::conditions(
        &st.conditions,
        &JobState::from_status(Some(&st)),
        problem.as_ref(),
        job.metadata.generation,
        &Time(k8s_openapi::jiff::Timestamp::now()),
    );
    st.last_ready_template = None;
    Ok(serde_json::to_vec(&st)
        .map_err(|e| Error::Other(format!("status: {e}")))?
        .len())
}

/// The status `decide` writes for a job of `p` workers rolling forward after a rescale from
/// `p - 1` (restore progress of every subtask, the longest checkpoint history and restart list
/// the spec allows), then once every worker is ready; against [`STATUS_BYTES_BOUND`].
fn status_size(p: u32) -> Result<Vec<Line>> {
    let invalid = |e: serde_json::Error| Error::Other(format!("job spec: {e}"));
    let spec = serde_json::json!({
        "parallelism": p,
        "maxParallelism": 32768,
        "template": {"spec": {"containers": [{"name": "worker", "image": "regroup:0.1.0"}]}},
        "storage": {"url": "s3://bucket/jobs"},
        "checkpointing": {"interval": "10s", "timeout": "1m", "history": 20},
        "restartPolicy": {"limit": 100}
    });
    let mut job = StatefulJob::new("orders", serde_json::from_value(spec).map_err(invalid)?);
    job.metadata.namespace = Some("prod".into());
    job.metadata.generation = Some(3);
    let now = chrono::Utc::now();
    let ago = |s: i64| {
        Time(k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(s))
    };
    job.status = Some(StatefulJobStatus {
        phase: Some(Phase::RollingForward),
        epoch: 2,
        template_hash: Some(regroup::operator::resources::template_hash(
            &job.spec.template,
        )),
        last_checkpoint_attempt: Some(ago(60)),
        last_issued_checkpoint: Some(1_000_000),
        rescale: Some(RescaleStatus {
            from: p - 1,
            to: p,
            stage: Stage::RollingForward,
            reason: RescaleReason::Scale,
            checkpoint: Some(1_000_000),
            final_checkpoint: Some(1_000_000),
            started: ago(60),
            stage_started: ago(10),
        }),
        checkpoints: (0..20)
            .map(|i| CheckpointRecord {
                id: 1_000_000 - i,
                time: ago(60 + 10 * i as i64),
                epoch: 1,
                bytes_total: 1 << 40,
                bytes_new: 1 << 30,
                duration_seconds: 12.345678,
            })
            .collect(),
        restarts: (0..100).map(|i| ago(500 - i)).collect(),
        ..Default::default()
    });
    let mut world = World {
        now: Time(k8s_openapi::jiff::Timestamp::now()),
        pods: (0..p)
            .map(|i| worker_pod(i, 2, i + 1 < p))
            .collect::<Result<_>>()?,
        token: regroup::operator::controller::decide::Token::Held("t".into()),
        store_ids: vec![(1_000_000, true)],
        in_flight: None,
        asked: None,
        pod_problem: None,
        snapshots: Vec::new(),
        scheduled: Vec::new(),
        restore_progress: (0..p)
            .map(|subtask| RestoreProgress {
                format_version: FORMAT_VERSION,
                subtask,
                phase: if subtask % 2 == 0 {
                    RestorePhase::Done
                } else {
                    RestorePhase::Downloading
                },
                bytes_done: 1 << 40,
                bytes_total: 1 << 41,
                updated_at: now,
            })
            .collect(),
        initial_snapshot: None,
    };
    let busy = Duration::from_secs(2);
    let rolling = decide(&job, &world, busy)?;
    let rolling_bytes = written_bytes(&job, &rolling.status, true)?;
    for pod in &mut world.pods {
        *pod = worker_pod(
            pod.metadata
                .name
                .as_deref()
                .and_then(|n| n.rsplit_once('-'))
                .and_then(|(_, i)| i.parse().ok())
                .unwrap_or(0),
            2,
            true,
        )?;
    }
    let running = decide(&job, &world, busy)?;
    let running_bytes = written_bytes(&job, &running.status, true)?;
    let mut listed = running.status.clone();
    listed.worker_pods = world
        .pods
        .iter()
        .filter_map(|p| p.metadata.uid.clone())
        .collect();
    let listed_bytes = written_bytes(&job, &listed, true)?;
    let phase = |s: &StatefulJobStatus| s.phase.map_or("none", |p| p.as_str());
    let recorded = running
        .status
        .ready_workers
        .as_ref()
        .map_or(0, |r: &ReadyWorkers| r.count);
    let bound = format!("target ≤ {STATUS_BYTES_BOUND} bytes");
    Ok(vec![
        Line {
            text: format!(
                "status: {} {}→{p} ({} of {p} restore progress entries, 20 checkpoints, 100 restarts, Degraded) {rolling_bytes} bytes, {bound}",
                phase(&rolling.status),
                p - 1,
                rolling
                    .status
                    .restore_progress
                    .as_ref()
                    .map_or(0, |r| r.subtasks.len()),
            ),
            met: Some(rolling_bytes <= STATUS_BYTES_BOUND),
        },
        Line {
            text: format!(
                "status: {} ({recorded} ready workers recorded as count and digest) {running_bytes} bytes (with the former workerPods list: {listed_bytes}), {bound}",
                phase(&running.status),
            ),
            met: Some(running_bytes <= STATUS_BYTES_BOUND && recorded == p),
        },
    ])
}
