//! `regroup-bench restore`: Flink's rescaling benchmark shape, measured in one run.
//!
//! N keys (default 10,000,000) of 96 bytes with 128-byte values, M = 128. The source state is
//! written with the backend at parallelism 2 (for scale-in) and 1 (for scale-out) and
//! checkpointed with the real snapshotter into a `file://` store. Then, one after another:
//! scale-in 2→1 and scale-out 1→2 with `copy` and with `ingest`, and the raw limit: `cp` of the
//! same bytes the restore downloaded, `--rounds` times (3), one after another in each round.
//! Then rescales with pods that keep their volumes (the old worker's DB and its
//! checkpoint marker, reused by hard links) against fresh pods, each beside a plain copy of
//! exactly the bytes it downloads. Kept volumes are measured three ways (`Volumes`), their
//! files out of the page cache: with the marker of this boot of the node (the pod came back on
//! the same node), with a marker of another boot whose worker synced its files (both verify
//! the files the marker vouches for by their identity), and with an older marker of another
//! boot (every reused file is read back for its checksum). Each rescale scenario runs
//! `--rounds` times, restore and plain copy alternating. Every measurement prints the median
//! of its rounds with their spread. Every restored DB's key count is checked.
//!
//! Restores run as `regroup restore` does by default (not synced: one download lane through the
//! page cache, three with direct I/O) and the plain copies are bare `cp`; with `--sync`,
//! restores are synced (`regroup restore --sync`) and held to `cp` + `sync`. Either way each
//! restore is followed by a timed `sync -f` (printed, not part of its time), so that no restore
//! leaves writeback to the next.
//!
//! `regroup-bench control-plane` (the [`control_plane`] module) measures what one job at
//! maxParallelism 32768 and parallelism 512 costs the control plane.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

mod control_plane;

use clap::{Args, Parser, Subcommand};
use rocksdb::IteratorMode;

use regroup::backend::{IncrementalSnapshotter, StateBackend};
use regroup::checkpoint::FileRef;
use regroup::checkpoint::{CheckpointMetadata, CheckpointStore, JobId};
use regroup::error::{Error, Result};
use regroup::keygroup::{KeyGroupRange, key_group_for_key, subtask_for_key_group};
use regroup::restore::{
    PlanOptions, RestoreRequest, RestoreSummary, Strategy, SubtaskPlan, plan_subtask_with_local,
    restore_subtask,
};
use regroup::statedir::marker::LocalCheckpointMarker;

/// Benchmarks of regroup's restores, each measured against a plain copy in the same run.
#[derive(Parser, Debug)]
#[command(name = "regroup-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: BenchCommand,
}

/// `regroup-bench ...`
#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Restore with and without record copying, against a raw file copy.
    Restore(RestoreBenchArgs),
    /// One job at maxParallelism 32768 and parallelism 512: plan, metadata, checkpoint
    /// completion, garbage collection and status size, each against its target.
    ControlPlane(control_plane::ControlPlaneArgs),
}

/// `regroup-bench restore`
#[derive(Args, Debug, Clone)]
pub struct RestoreBenchArgs {
    /// Number of keys.
    #[arg(long, default_value_t = 10_000_000)]
    pub keys: u64,
    /// Working directory (default: a temporary directory under the system's).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Keep the working directory afterwards.
    #[arg(long)]
    pub keep: bool,
    /// Only the rescale scenarios (kept volumes vs fresh pods), not `copy` vs `ingest`.
    #[arg(long)]
    pub rescales_only: bool,
    /// Restores make their DB durable before they end (`regroup restore --sync`), and the plain
    /// copies they are held to are `cp` + `sync`.
    #[arg(long)]
    pub sync: bool,
    /// Rounds of each measurement: `copy` against `ingest` (each strategy and the raw copy one
    /// after another in each round) and each rescale scenario (restore and its plain copy,
    /// alternating). Each prints the median of its rounds; ratios are of the medians.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=99))]
    pub rounds: u32,
}

/// Key bytes, as in Flink's rescaling benchmark.
pub const KEY_BYTES: usize = 96;
/// Value bytes, as in Flink's rescaling benchmark.
pub const VALUE_BYTES: usize = 128;
/// Key groups, as in Flink's rescaling benchmark.
pub const MAX_PARALLELISM: u32 = 128;
const STATE: &str = "state";

/// Fills `out` with pseudo-random bytes derived from `(i, salt)` (deterministic, incompressible).
fn fill(out: &mut [u8], i: u64, salt: u64) {
    for (n, chunk) in out.chunks_mut(8).enumerate() {
        let word = xxhash_rust::xxh3::xxh3_64_with_seed(&i.to_le_bytes(), salt + n as u64);
        chunk.copy_from_slice(&word.to_le_bytes()[..chunk.len()]);
    }
}

/// Runs `regroup-bench ...`.
#[tokio::main]
async fn main() -> std::process::ExitCode {
    regroup::telemetry::init(regroup::telemetry::LogFormat::Text);
    match run(Cli::parse().command).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(command: BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Restore(args) => {
            let report = restore_bench(&args).await?;
            print!("{report}");
            Ok(())
        }
        BenchCommand::ControlPlane(args) => {
            print!("{}", control_plane::control_plane_bench(&args).await?);
            Ok(())
        }
    }
}

/// Writes the data set into `p` workers under `dir`, checkpoints them as `job`, and returns
/// the checkpoint.
async fn source_state(
    dir: &Path,
    store_url: &str,
    job: &str,
    p: u32,
    keys: u64,
) -> Result<(CheckpointStore, CheckpointMetadata)> {
    let job: JobId = job.parse()?;
    let store = CheckpointStore::from_url(store_url, job)?;
    let backends = (0..p)
        .map(|i| {
            let range = KeyGroupRange::for_subtask(MAX_PARALLELISM, p, i)?;
            StateBackend::open(
                &dir.join(format!("p{p}-w{i}")),
                MAX_PARALLELISM,
                range,
                &[STATE],
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let mut batches: Vec<_> = backends.iter().map(|b| b.batch()).collect();
    let (mut key, mut value) = ([0u8; KEY_BYTES], [0u8; VALUE_BYTES]);
    for i in 0..keys {
        fill(&mut key, i, 0);
        fill(&mut value, i, 1_000);
        let g = key_group_for_key(&key, MAX_PARALLELISM);
        let owner = subtask_for_key_group(MAX_PARALLELISM, p, g) as usize;
        batches[owner].put_in_group(STATE, g, &key, &value)?;
    }
    for b in batches {
        b.commit()?;
    }
    for (i, b) in backends.iter().enumerate() {
        b.flush()?;
        // Let the compactions the flush triggered end first, as a stopping worker's would:
        // else they delete, after the checkpoint, files the checkpoint references, and the
        // kept-volume scenarios download those instead of reusing them.
        wait_for_compactions(b)?;
        // As a worker stopping with a checkpoint does: nothing the checkpoint references is
        // deleted from the DB the kept volumes clone.
        b.db()
            .disable_file_deletions()
            .map_err(Error::rocks("disable file deletions"))?;
        let snapshotter = IncrementalSnapshotter::new(b.instance_id(), i as u32, p, 1);
        let snapshot = snapshotter.capture(b, 1, &dir.join("scratch"))?;
        snapshotter.upload(snapshot, &store).await?;
    }
    let meta = store
        .try_complete(1, 1, p, MAX_PARALLELISM)
        .await?
        .ok_or_else(|| Error::Other("benchmark checkpoint did not complete".into()))?;
    // The workers' DBs stay (closed, at the checkpoint): the kept-volume scenarios start from
    // hard-linked clones of them.
    drop(backends);
    Ok((store, meta))
}

/// What the pods of a rescale scenario find on their volumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Volumes {
    /// The old worker's DB and its marker as the worker writes it at its stop (its files
    /// synced first), in this boot of the node (the pod came back on the same node): the files
    /// it vouches for are reused without reading them. Their pages are evicted from the page
    /// cache first, so that nothing rests on them.
    Kept,
    /// The same, the marker of another boot (the node restarted, or the volume moved to
    /// another node): its files were synced before it, so they are still vouched for.
    KeptAnotherBoot,
    /// The same, the marker of another boot and its files not synced before it (a marker of a
    /// worker before `filesSynced`): every reused file is read back, from the disk.
    KeptReadBack,
    /// Nothing.
    Fresh,
}

impl Volumes {
    const ALL: [Volumes; 4] = [
        Volumes::Kept,
        Volumes::KeptAnotherBoot,
        Volumes::KeptReadBack,
        Volumes::Fresh,
    ];

    fn kept(self) -> bool {
        self != Volumes::Fresh
    }

    fn name(self) -> &'static str {
        match self {
            Volumes::Kept => "kept",
            Volumes::KeptAnotherBoot => "kept, another boot",
            Volumes::KeptReadBack => "kept, read back",
            Volumes::Fresh => "fresh",
        }
    }
}

/// Evicts every file in `dir` from the page cache (the files are clean: written and synced
/// long before).
fn evict_from_page_cache(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(Error::io("list", dir))? {
        set_file_cache(&entry.map_err(Error::io("list", dir))?.path(), false)?;
    }
    Ok(())
}

/// Reads the file at `path` once, so that it is in the page cache (`warm`), or evicts it from
/// there (it must be clean).
fn set_file_cache(path: &Path, warm: bool) -> Result<()> {
    let mut file = std::fs::File::open(path).map_err(Error::io("open", path))?;
    if warm {
        std::io::copy(&mut file, &mut std::io::sink()).map_err(Error::io("read", path))?;
    } else {
        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed)
            .map_err(|e| Error::io("evict from the page cache", path)(e.into()))?;
    }
    Ok(())
}

/// A pod volume that kept the DB of old subtask `i` of `meta` (a hard-linked clone of the
/// source worker's DB, so each scenario gets its own) with the checkpoint marker the worker
/// writes at its stop, as `volumes` says (the boot it was written in, whether the files were
/// synced before it); returns the target of a restore on it. The marker is written after the
/// clone, as the worker writes it after its last change to the DB's files.
fn kept_volume(
    dir: &Path,
    meta: &CheckpointMetadata,
    i: u32,
    name: &str,
    volumes: Volumes,
) -> Result<PathBuf> {
    let p = meta.parallelism;
    let source = dir.join(format!("p{p}-w{i}"));
    let volume = dir.join(format!("volume-{name}"));
    let db = regroup::statedir::db_dir(&volume);
    std::fs::create_dir_all(&db).map_err(Error::io("create directory", &db))?;
    for entry in std::fs::read_dir(&source).map_err(Error::io("list", &source))? {
        let entry = entry.map_err(Error::io("list", &source))?;
        let to = db.join(entry.file_name());
        std::fs::hard_link(entry.path(), &to).map_err(Error::io("hard-link", &to))?;
    }
    let mut marker = LocalCheckpointMarker::of_local_db(&meta.handles[i as usize], &db);
    if volumes != Volumes::KeptReadBack {
        marker.sync_files(&db)?;
    }
    if volumes != Volumes::Kept {
        marker.boot_id = Some("another boot".to_owned());
    }
    marker.write(&volume)?;
    Ok(db)
}

/// The stored files a restore of `plan` downloads (every needed file not expected locally).
fn files_to_download<'a>(meta: &'a CheckpointMetadata, plan: &SubtaskPlan) -> Vec<&'a FileRef> {
    let mut out = Vec::new();
    for input in &plan.inputs {
        let h = &meta.handles[input.old_subtask as usize];
        if !input.local {
            out.extend(input.shared_files.iter().map(|&f| &h.shared[f].file));
        }
        if input.private_files {
            out.extend(h.private.iter().map(|p| &p.file));
        }
    }
    out
}

/// Runs `command` (`operation` names it in errors) on `dir`; an error unless it succeeds.
fn run_tool(mut command: Command, operation: &'static str, dir: &Path) -> Result<()> {
    let tool = command.get_program().to_string_lossy().into_owned();
    let status = command.status().map_err(Error::io(operation, dir))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Other(format!(
            "{tool} on {} failed: {status}",
            dir.display()
        )))
    }
}

/// `sync -f` of the file system holding `dir`.
fn sync(dir: &Path) -> Result<()> {
    let mut sync = Command::new("sync");
    sync.arg("-f").arg(dir);
    run_tool(sync, "run sync", dir)
}

/// Where the `file://` store at `store_root` keeps the objects of `job`.
fn job_root(store_root: &Path, job: &JobId) -> PathBuf {
    store_root.join(&job.namespace).join(&job.name)
}

/// `cp` of `files` from the store into a fresh directory (`--backup=numbered`: names repeat
/// across handles), then, with `sync`, `sync -f`; returns the seconds for both.
fn plain_copy(
    store_root: &Path,
    job: &JobId,
    files: &[&FileRef],
    dir: &Path,
    sync_after: bool,
) -> Result<f64> {
    let job_root = job_root(store_root, job);
    let started = Instant::now();
    if !files.is_empty() {
        std::fs::create_dir_all(dir).map_err(Error::io("create directory", dir))?;
        let mut cp = Command::new("cp");
        cp.arg("--backup=numbered")
            .args(files.iter().map(|f| job_root.join(&f.path)))
            .arg(dir);
        run_tool(cp, "run cp", dir)?;
        if sync_after {
            sync(dir)?;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(Error::io("remove", dir))?;
    }
    Ok(seconds)
}

/// Reads `files` from the store once, so that they are in the page cache.
fn warm(store_root: &Path, job: &JobId, files: &[&FileRef]) -> Result<()> {
    let job_root = job_root(store_root, job);
    for f in files {
        set_file_cache(&job_root.join(&f.path), true)?;
    }
    Ok(())
}

/// One reuse scenario, `rounds` times: a restore of `subtask` of `parallelism` into the target
/// `prepare` sets up for each round (a kept volume or a fresh directory), right after the plain
/// copy of the bytes it is to download. Returns the restore of the median round, and every
/// round's seconds of the restores and of the plain copies, each sorted.
#[allow(clippy::too_many_arguments)]
async fn reuse_scenario(
    store: &CheckpointStore,
    store_root: &Path,
    meta: &CheckpointMetadata,
    subtask: u32,
    parallelism: u32,
    local: Option<u32>,
    prepare: impl Fn() -> Result<PathBuf>,
    expected_keys: u64,
    scratch: &Path,
    sync: bool,
    rounds: u32,
) -> Result<(Measured, Vec<f64>, Vec<f64>)> {
    let plan = plan_subtask_with_local(meta, parallelism, subtask, &PlanOptions::default(), local)?;
    // Both the plain copy and the restore read the stored files from the page cache, as they
    // would from a fast object store: neither pays for the disk reads of the other.
    let files = files_to_download(meta, &plan);
    let (mut measured, mut copies) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let target = prepare()?;
        warm(store_root, store.job(), &files)?;
        copies.push(plain_copy(store_root, store.job(), &files, scratch, sync)?);
        warm(store_root, store.job(), &files)?;
        let m = measure(
            store,
            subtask,
            parallelism,
            How::new(Strategy::Ingest, sync),
            &target,
            expected_keys,
        )
        .await?;
        if let Some(volume) = target.parent() {
            std::fs::remove_dir_all(volume).map_err(Error::io("remove", volume))?;
        }
        measured.push(m);
    }
    let (median, restores) = median_round(measured);
    Ok((median, restores, sorted(copies)))
}

/// `seconds`, ascending.
fn sorted(mut seconds: Vec<f64>) -> Vec<f64> {
    seconds.sort_by(f64::total_cmp);
    seconds
}

/// The restore of the median round of `rounds` (by time; the upper one of an even count, as
/// [`median`]) and every round's seconds, sorted. `rounds` must not be empty.
fn median_round(mut rounds: Vec<Measured>) -> (Measured, Vec<f64>) {
    rounds.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
    let seconds = rounds.iter().map(|m| m.seconds).collect();
    (rounds.swap_remove(rounds.len() / 2), seconds)
}

/// The median of `sorted` (the upper one of an even count).
fn median(sorted: &[f64]) -> f64 {
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

/// `median [min–max]` of `sorted`, or just the value of a single round.
fn spread(sorted: &[f64]) -> String {
    match sorted {
        [only] => format!("{only:.2}s"),
        [first, .., last] => format!("{:.2}s [{first:.2}–{last:.2}]", median(sorted)),
        [] => "n/a".to_owned(),
    }
}

/// Waits until the backend's DB has no compaction pending or running.
fn wait_for_compactions(b: &StateBackend) -> Result<()> {
    let property = |name: &str| {
        b.db()
            .property_int_value(name)
            .map_err(Error::rocks(format!("read {name}")))
            .map(|v| v.unwrap_or(0))
    };
    while property("rocksdb.compaction-pending")? > 0
        || property("rocksdb.num-running-compactions")? > 0
    {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(())
}

fn count_keys(target: &Path, range: KeyGroupRange) -> Result<u64> {
    let b = StateBackend::open(target, MAX_PARALLELISM, range, &[STATE])?;
    let cf = b
        .db()
        .cf_handle(STATE)
        .ok_or_else(|| Error::Other("benchmark state missing".into()))?;
    let mut ro = rocksdb::ReadOptions::default();
    ro.fill_cache(false);
    let mut n = 0u64;
    for item in b.db().iterator_cf_opt(&cf, ro, IteratorMode::Start) {
        item.map_err(Error::rocks("count keys"))?;
        n += 1;
    }
    Ok(n)
}

/// The rescales of the benchmark: scale-in 2→1 and 4→3, scale-out 1→2 and 3→4.
const RESCALES: [(u32, u32); 4] = [(2, 1), (4, 3), (1, 2), (3, 4)];

/// One restore of a rescale scenario, beside its plain copy.
struct ReuseRow {
    from: u32,
    to: u32,
    volumes: Volumes,
    subtask: u32,
    /// A local DB was on this subtask's volume.
    local: bool,
    /// The restore of the median round.
    measured: Measured,
    /// The restore's seconds in every round, sorted.
    restores: Vec<f64>,
    /// The plain copy's seconds in every round, sorted.
    copies: Vec<f64>,
}

impl ReuseRow {
    /// Median seconds of the plain copy.
    fn copy_seconds(&self) -> f64 {
        median(&self.copies)
    }

    fn name(&self) -> String {
        format!(
            "{}→{} {}, subtask {}{}",
            self.from,
            self.to,
            self.volumes.name(),
            self.subtask,
            if self.volumes.kept() && !self.local {
                " (new)"
            } else {
                ""
            }
        )
    }

    /// Median time over the median time of the plain copy of the downloaded bytes, when
    /// something was downloaded and every local file was usable.
    fn ratio(&self) -> Option<f64> {
        let s = &self.measured.summary;
        (s.downloaded_bytes > 0 && s.local_fallbacks == 0)
            .then(|| self.measured.seconds / self.copy_seconds())
    }

    fn ratio_text(&self) -> String {
        let s = &self.measured.summary;
        match self.ratio() {
            Some(r) => format!("{r:.2}× the plain copy ({})", spread(&self.copies)),
            None if s.downloaded_bytes == 0 => "n/a (nothing downloaded)".to_owned(),
            None => format!(
                "n/a ({} local files unusable, downloaded instead)",
                s.local_fallbacks
            ),
        }
    }
}

/// How one benchmark restore runs.
#[derive(Clone, Copy)]
struct How {
    strategy: Strategy,
    /// `RestoreRequest::compact`.
    compact: bool,
    /// `RestoreRequest::sync`.
    sync: bool,
}

impl How {
    fn new(strategy: Strategy, sync: bool) -> Self {
        Self {
            strategy,
            compact: false,
            sync,
        }
    }
}

/// One measured restore.
struct Measured {
    seconds: f64,
    /// Seconds of the `sync -f` right after the restore: the writeback it left to the kernel
    /// (next to nothing for a synced restore).
    sync_seconds: f64,
    summary: RestoreSummary,
    /// Bytes of the SST files of the restored DB.
    range_bytes: u64,
}

async fn measure(
    store: &CheckpointStore,
    subtask: u32,
    parallelism: u32,
    how: How,
    target: &Path,
    expected_keys: u64,
) -> Result<Measured> {
    let mut request = RestoreRequest::new(Some(1), subtask, parallelism, target);
    request.strategy = how.strategy;
    request.compact = how.compact;
    request.sync = how.sync;
    let started = Instant::now();
    let summary = restore_subtask(store, &request).await?;
    let seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    sync(target)?;
    let sync_seconds = started.elapsed().as_secs_f64();
    let keys = count_keys(target, summary.range)?;
    let range_bytes = sst_bytes(target)?;
    if keys != expected_keys {
        return Err(Error::Other(format!(
            "benchmark restore of subtask {subtask}/{parallelism} ({}) holds {keys} keys, expected {expected_keys}",
            how.strategy
        )));
    }
    std::fs::remove_dir_all(target).map_err(Error::io("remove", target))?;
    Ok(Measured {
        seconds,
        sync_seconds,
        summary,
        range_bytes,
    })
}

/// Bytes of the SST files of the DB in `dir`: the size of its range's state.
fn sst_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).map_err(Error::io("list", dir))? {
        let entry = entry.map_err(Error::io("list", dir))?;
        if entry.file_name().to_string_lossy().ends_with(".sst") {
            total += entry
                .metadata()
                .map_err(Error::io("stat", entry.path()))?
                .len();
        }
    }
    Ok(total)
}

/// `cp` of every SST file of the checkpoint's handles (what an `ingest` scale-in downloads)
/// into a fresh directory, then `sync` of it; returns (seconds for cp, for cp + sync, bytes).
fn raw_copy(
    store_root: &Path,
    meta: &CheckpointMetadata,
    job: &JobId,
    dir: &Path,
) -> Result<(f64, f64, u64)> {
    let job_root = job_root(store_root, job);
    let bytes = meta
        .handles
        .iter()
        .flat_map(|h| h.shared.iter())
        .map(|s| s.file.size)
        .sum();
    let started = Instant::now();
    for h in &meta.handles {
        // One directory per handle: SST names repeat across DB instances.
        let sub = dir.join(h.subtask.to_string());
        std::fs::create_dir_all(&sub).map_err(Error::io("create directory", &sub))?;
        let mut cp = Command::new("cp");
        cp.args(h.shared.iter().map(|s| job_root.join(&s.file.path)))
            .arg(&sub);
        run_tool(cp, "run cp", &sub)?;
    }
    let cp = started.elapsed().as_secs_f64();
    sync(dir)?;
    let synced = started.elapsed().as_secs_f64();
    std::fs::remove_dir_all(dir).map_err(Error::io("remove", dir))?;
    Ok((cp, synced, bytes))
}

/// `copy` against `ingest` for scale-in 2→1 and scale-out 1→2, and the raw copy of
/// what the scale-in downloads, each `rounds` times (one after another in each round, so that
/// a slow phase of the machine, e.g. right after the source state was written, weighs on all
/// of them alike); returns that part of the report, medians and ratios of the medians.
#[allow(clippy::too_many_arguments)]
async fn strategies(
    store1: &CheckpointStore,
    store2: &CheckpointStore,
    store_root: &Path,
    dir: &Path,
    keys: u64,
    half: [u64; 2],
    sync: bool,
    rounds: u32,
) -> Result<String> {
    use std::fmt::Write;
    let meta2 = store2.read_metadata(1).await?;
    let target = dir.join("restored").join("db");
    let (copy, ingest) = (
        How::new(Strategy::Copy, sync),
        How::new(Strategy::Ingest, sync),
    );
    let compacted = How {
        compact: true,
        ..ingest
    };
    let (mut copy_in, mut ingest_in, mut raw) = (Vec::new(), Vec::new(), Vec::new());
    let mut out_rounds: [[Vec<Measured>; 3]; 2] = Default::default();
    for _ in 0..rounds {
        copy_in.push(measure(store2, 0, 1, copy, &target, keys).await?);
        ingest_in.push(measure(store2, 0, 1, ingest, &target, keys).await?);
        raw.push(raw_copy(
            store_root,
            &meta2,
            store2.job(),
            &dir.join("raw"),
        )?);
        for (i, runs) in out_rounds.iter_mut().enumerate() {
            let (i, n) = (i as u32, half[i]);
            for (how, runs) in [copy, ingest, compacted].into_iter().zip(runs.iter_mut()) {
                runs.push(measure(store1, i, 2, how, &target, n).await?);
            }
        }
    }
    let (copy_in, ingest_in) = (median_round(copy_in), median_round(ingest_in));
    // Per new subtask of the scale-out: copy, ingest, ingest compacted.
    let scale_out = out_rounds.map(|runs| runs.map(median_round));
    let cp_bytes = raw.first().map_or(0, |r| r.2);
    let cps = sorted(raw.iter().map(|r| r.0).collect());
    let cps_sync = sorted(raw.iter().map(|r| r.1).collect());
    let (cp, cp_sync) = (median(&cps), median(&cps_sync));

    let mut out = String::new();
    let line = |out: &mut String, name: &str, (m, times): &(Measured, Vec<f64>)| {
        writeln!(
            out,
            "  {name:<28} {:>20}  downloaded {:>12} B ({:>6.2}s)  build {:>6.2}s  ingested {:>4} files  copied {:>9} keys  (then sync {:.2}s)",
            spread(times),
            m.summary.downloaded_bytes,
            m.summary.download_seconds,
            m.summary.build_seconds,
            m.summary.ingested_files,
            m.summary.copied_keys,
            m.sync_seconds
        )
        .ok();
    };
    writeln!(
        out,
        "copy against ingest ({rounds} round(s), one after another in each; times as median [min–max], the other figures of the median round, ratios of the medians):"
    )
    .ok();
    writeln!(out, "scale-in 2→1 (one new subtask):").ok();
    line(&mut out, "copy", &copy_in);
    line(&mut out, "ingest", &ingest_in);
    writeln!(
        out,
        "  {:<28} {:>20}  ({cp_bytes} B of SST files; {} with sync)",
        "raw cp of the same bytes",
        spread(&cps),
        spread(&cps_sync)
    )
    .ok();
    writeln!(out, "scale-out 1→2 (each new subtask):").ok();
    for (i, [copy, ingest, compacted]) in scale_out.iter().enumerate() {
        line(&mut out, &format!("copy, subtask {i}"), copy);
        line(&mut out, &format!("ingest, subtask {i}"), ingest);
        line(
            &mut out,
            &format!("ingest compacted, subtask {i}"),
            compacted,
        );
    }
    let speedup_in = copy_in.0.seconds / ingest_in.0.seconds;
    // A synced restore is held to `cp` + `sync`, an unsynced one to the bare `cp`.
    let (limit, limit_name) = if sync {
        (cp_sync, "the raw cp + sync")
    } else {
        (cp, "the bare raw cp")
    };
    let vs_limit = ingest_in.0.seconds / limit;
    writeln!(out, "ratios:").ok();
    writeln!(
        out,
        "  scale-in: ingest is {speedup_in:.1}× faster than copy (target ≥ 5×: {})",
        if speedup_in >= 5.0 { "met" } else { "NOT met" }
    )
    .ok();
    writeln!(
        out,
        "  scale-in: ingest takes {vs_limit:.2}× {limit_name} (target ≤ 2×: {})",
        if vs_limit <= 2.0 { "met" } else { "NOT met" }
    )
    .ok();
    for (i, [copy, ingest, compacted]) in scale_out.iter().enumerate() {
        writeln!(
            out,
            "  scale-out subtask {i}: ingest is {:.1}× faster than copy; {:.1}× when it compacts the clipped intervals itself",
            copy.0.seconds / ingest.0.seconds,
            copy.0.seconds / compacted.0.seconds
        )
        .ok();
    }
    Ok(out)
}

/// Runs the benchmark and returns its report.
pub async fn restore_bench(args: &RestoreBenchArgs) -> Result<String> {
    use std::fmt::Write;
    let base = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(Error::io("create directory", d))?;
            d.clone()
        }
        None => std::env::temp_dir(),
    };
    let work = tempfile::Builder::new()
        .prefix("regroup-bench-")
        .tempdir_in(&base)
        .map_err(Error::io("create directory", &base))?;
    let dir = work.path().to_path_buf();
    let store_root = dir.join("store");
    let store_url = format!("file://{}", store_root.display());
    let keys = args.keys;
    let mut out = String::new();
    writeln!(
        out,
        "regroup-bench restore: {keys} keys of {KEY_BYTES} B, values of {VALUE_BYTES} B, max parallelism {MAX_PARALLELISM}, dir {}",
        dir.display()
    )
    .ok();

    if !args.sync {
        writeln!(
            out,
            "page-cache budget of an unsynced restore on this machine: {} B (the rest of its downloads with direct I/O)",
            regroup::restore::page_cache::budget()
        )
        .ok();
    }
    let started = Instant::now();
    let mut sources = Vec::new();
    let spinner = regroup::terminal::spinner("writing and checkpointing the source state");
    for p in 1..=4u32 {
        sources.push(source_state(&dir, &store_url, &format!("bench/p{p}"), p, keys).await?);
    }
    spinner.finish_and_clear();
    // The writeback of the source state (its DBs and the store) ends before the first
    // measurement, so that none of them competes with it, and so that the kept volumes' files
    // are clean and can be evicted from the page cache.
    sync(&dir)?;
    let source = |p: u32| &sources[p as usize - 1];
    let (store1, _) = source(1);
    let (store2, _) = source(2);
    writeln!(
        out,
        "source state: {} (written and checkpointed in {:.1}s)",
        sources
            .iter()
            .map(|(_, m)| format!(
                "p={} {} B in {} SST files",
                m.parallelism,
                m.bytes_total(),
                m.handles.iter().map(|h| h.shared.len()).sum::<usize>()
            ))
            .collect::<Vec<_>>()
            .join(", "),
        started.elapsed().as_secs_f64()
    )
    .ok();
    // Keys per key group, from the data set itself: the expected key count of every restore.
    let mut per_group = vec![0u64; MAX_PARALLELISM as usize];
    let mut key = [0u8; KEY_BYTES];
    for i in 0..keys {
        fill(&mut key, i, 0);
        per_group[key_group_for_key(&key, MAX_PARALLELISM) as usize] += 1;
    }
    let keys_of = |p: u32, i: u32| -> Result<u64> {
        let r = KeyGroupRange::for_subtask(MAX_PARALLELISM, p, i)?;
        Ok(per_group[r.start as usize..=r.end as usize].iter().sum())
    };
    let half = [keys_of(2, 0)?, keys_of(2, 1)?];

    let spinner = regroup::terminal::spinner("measuring the restore strategies");
    let strategies = if args.rescales_only {
        None
    } else {
        Some(
            strategies(
                store1,
                store2,
                &store_root,
                &dir,
                keys,
                half,
                args.sync,
                args.rounds,
            )
            .await?,
        )
    };

    // The rescales with kept volumes, each with pods keeping their volumes (new subtask i restores on
    // old subtask i's volume, which holds old subtask i's DB at the checkpoint and its marker;
    // new ordinals beyond the old parallelism get fresh volumes) and with fresh pods (nothing
    // local); every restore beside a plain copy of exactly the bytes it downloads.
    spinner.finish_and_clear();
    let plain = dir.join("plain");
    let mut reuse = Vec::new();
    let scenarios =
        RESCALES.iter().map(|(_, to)| u64::from(*to)).sum::<u64>() * Volumes::ALL.len() as u64;
    let bar = regroup::terminal::items(scenarios, "rescale restores");
    for (from, to) in RESCALES {
        let (store, meta) = source(from);
        for volumes in Volumes::ALL {
            for i in 0..to {
                let name = format!("{from}-{to}-{volumes:?}-{i}");
                let local = (volumes.kept() && i < from).then_some(i);
                // Each round on a volume of its own, set up as the stopping worker left it.
                let prepare = || match local {
                    Some(old) => {
                        let db = kept_volume(&dir, meta, old, &name, volumes)?;
                        evict_from_page_cache(&db)?;
                        Ok(db)
                    }
                    None => Ok(dir.join(format!("volume-{name}")).join("db")),
                };
                let n = keys_of(to, i)?;
                let (m, restores, copies) = reuse_scenario(
                    store,
                    &store_root,
                    meta,
                    i,
                    to,
                    local,
                    prepare,
                    n,
                    &plain,
                    args.sync,
                    args.rounds,
                )
                .await?;
                reuse.push(ReuseRow {
                    from,
                    to,
                    volumes,
                    subtask: i,
                    local: local.is_some(),
                    measured: m,
                    restores,
                    copies,
                });
                bar.inc(1);
            }
        }
    }
    bar.finish_and_clear();

    if let Some(section) = strategies {
        out.push_str(&section);
    }
    writeln!(
        out,
        "rescales (ingest, {}; 'plain copy' = {} of exactly the files the restore downloads, measured just before it; {} round(s) each, alternating, times as median [min–max], ratio of the medians; 'then sync' = sync -f right after the restore of the median round, not part of its time):",
        if args.sync { "synced" } else { "not synced" },
        if args.sync { "cp + sync" } else { "cp" },
        args.rounds
    )
    .ok();
    for row in &reuse {
        let m = &row.measured;
        writeln!(
            out,
            "  {:<40} {:>20}  downloaded {:>11} B  reused locally {:>11} B (read back {:>11} B)  new range {:>11} B  {}  then sync {:.2}s",
            row.name(),
            spread(&row.restores),
            m.summary.downloaded_bytes,
            m.summary.reused_bytes,
            m.summary.reused_read_back_bytes,
            m.range_bytes,
            row.ratio_text(),
            m.sync_seconds
        )
        .ok();
    }
    writeln!(out, "targets:").ok();
    let rows = |from: u32, to: u32, volumes: Volumes| {
        reuse
            .iter()
            .filter(move |r| r.from == from && r.to == to && r.volumes == volumes)
    };
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    for volumes in Volumes::ALL.into_iter().filter(|v| v.kept()) {
        let seconds: f64 = rows(2, 1, volumes).map(|r| r.measured.seconds).sum();
        writeln!(
            out,
            "  scale-in 2→1, {}: {seconds:.2}s (target ≤ 1.2 s: {})",
            volumes.name(),
            met(seconds <= 1.2)
        )
        .ok();
    }
    let slowest = rows(1, 2, Volumes::Fresh)
        .map(|r| r.measured.seconds)
        .fold(0.0, f64::max);
    let bytes_ratio = rows(1, 2, Volumes::Fresh)
        .map(|r| r.measured.summary.downloaded_bytes as f64 / r.measured.range_bytes.max(1) as f64)
        .fold(0.0, f64::max);
    writeln!(
        out,
        "  scale-out 1→2, fresh pods: slowest subtask {slowest:.2}s (target ≤ 0.6 s: {}); downloaded ≤ {bytes_ratio:.2}× its new range (target ≤ 1.1×: {})",
        met(slowest <= 0.6),
        met(bytes_ratio <= 1.1)
    )
    .ok();
    for volumes in Volumes::ALL {
        let ratios: Vec<f64> = reuse
            .iter()
            .filter(|r| r.volumes == volumes)
            .filter_map(ReuseRow::ratio)
            .collect();
        let worst = ratios.iter().copied().fold(0.0, f64::max);
        writeln!(
            out,
            "  every restore that downloads, {}: at most {worst:.2}× its plain copy ({} of {} within 1.0×; target ≤ 1.0×: {})",
            volumes.name(),
            ratios.iter().filter(|r| **r <= 1.0).count(),
            ratios.len(),
            met(worst <= 1.0)
        )
        .ok();
    }
    if args.keep {
        let kept = work.keep();
        writeln!(out, "kept {}", kept.display()).ok();
    }
    Ok(out)
}
