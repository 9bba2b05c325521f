//! `regroup bench restore`: Flink's rescaling benchmark shape, measured in one run.
//!
//! N keys (default 10,000,000) of 96 bytes with 128-byte values, M = 128. The source state is
//! written with the backend at parallelism 2 (for scale-in) and 1 (for scale-out) and
//! checkpointed with the real snapshotter into a `file://` store. Then, one after another:
//! scale-in 2→1 and scale-out 1→2 with `copy` and with `ingest`, and the raw limit: `cp` of the
//! same bytes the restore downloaded. Every restored DB's key count is checked.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Args, Subcommand};
use rocksdb::IteratorMode;

use crate::backend::{IncrementalSnapshotter, StateBackend};
use crate::checkpoint::{CheckpointMetadata, CheckpointStore, JobId};
use crate::error::{Error, Result};
use crate::keygroup::{KeyGroupRange, key_group_for_key, subtask_for_key_group};
use crate::restore::{RestoreRequest, RestoreSummary, Strategy, restore_subtask};

/// `regroup bench ...`
#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Restore with and without record copying, against a raw file copy.
    Restore(RestoreBenchArgs),
}

/// `regroup bench restore`
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

/// Runs `regroup bench ...`.
pub async fn run(command: BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Restore(args) => {
            let report = restore_bench(&args).await?;
            print!("{report}");
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
        let snapshotter = IncrementalSnapshotter::new(b.instance_id(), i as u32, p, 1);
        let snapshot = snapshotter.capture(b, 1, &dir.join("scratch"))?;
        snapshotter.upload(snapshot, &store).await?;
    }
    let meta = store
        .try_complete(1, 1, p, MAX_PARALLELISM)
        .await?
        .ok_or_else(|| Error::Other("benchmark checkpoint did not complete".into()))?;
    drop(backends);
    for i in 0..p {
        let d = dir.join(format!("p{p}-w{i}"));
        std::fs::remove_dir_all(&d).map_err(Error::io("remove", &d))?;
    }
    Ok((store, meta))
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

/// One measured restore.
struct Measured {
    seconds: f64,
    summary: RestoreSummary,
}

async fn measure(
    store: &CheckpointStore,
    subtask: u32,
    parallelism: u32,
    strategy: Strategy,
    target: &Path,
    expected_keys: u64,
) -> Result<Measured> {
    let mut request = RestoreRequest::new(Some(1), subtask, parallelism, target);
    request.strategy = strategy;
    let started = Instant::now();
    let summary = restore_subtask(store, &request).await?;
    let seconds = started.elapsed().as_secs_f64();
    let keys = count_keys(target, summary.range)?;
    if keys != expected_keys {
        return Err(Error::Other(format!(
            "benchmark restore of subtask {subtask}/{parallelism} ({strategy}) holds {keys} keys, expected {expected_keys}"
        )));
    }
    std::fs::remove_dir_all(target).map_err(Error::io("remove", target))?;
    Ok(Measured { seconds, summary })
}

/// `cp` of every SST file of the checkpoint's handles (what an `ingest` scale-in downloads)
/// into a fresh directory, then `sync` of it; returns (seconds for cp, for cp + sync, bytes).
fn raw_copy(
    store_root: &Path,
    meta: &CheckpointMetadata,
    job: &JobId,
    dir: &Path,
) -> Result<(f64, f64, u64)> {
    let job_root = store_root.join(&job.namespace).join(&job.name);
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
        let status = std::process::Command::new("cp")
            .args(h.shared.iter().map(|s| job_root.join(&s.file.path)))
            .arg(&sub)
            .status()
            .map_err(Error::io("run cp", &sub))?;
        if !status.success() {
            return Err(Error::Other(format!(
                "cp into {} failed: {status}",
                sub.display()
            )));
        }
    }
    let cp = started.elapsed().as_secs_f64();
    let status = std::process::Command::new("sync")
        .arg("-f")
        .arg(dir)
        .status()
        .map_err(Error::io("run sync", dir))?;
    if !status.success() {
        return Err(Error::Other(format!(
            "sync of {} failed: {status}",
            dir.display()
        )));
    }
    let synced = started.elapsed().as_secs_f64();
    std::fs::remove_dir_all(dir).map_err(Error::io("remove", dir))?;
    Ok((cp, synced, bytes))
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
        "regroup bench restore: {keys} keys of {KEY_BYTES} B, values of {VALUE_BYTES} B, max parallelism {MAX_PARALLELISM}, dir {}",
        dir.display()
    )
    .ok();

    let started = Instant::now();
    let (store2, meta2) = source_state(&dir, &store_url, "bench/p2", 2, keys).await?;
    let (store1, meta1) = source_state(&dir, &store_url, "bench/p1", 1, keys).await?;
    writeln!(
        out,
        "source state: checkpoint at p=2 {} B in {} SST files, at p=1 {} B in {} SST files (written and checkpointed in {:.1}s)",
        meta2.bytes_total(),
        meta2.handles.iter().map(|h| h.shared.len()).sum::<usize>(),
        meta1.bytes_total(),
        meta1.handles.iter().map(|h| h.shared.len()).sum::<usize>(),
        started.elapsed().as_secs_f64()
    )
    .ok();
    // Keys per new subtask of 1→2, from the source state itself.
    let mut half = [0u64; 2];
    let mut key = [0u8; KEY_BYTES];
    for i in 0..keys {
        fill(&mut key, i, 0);
        let g = key_group_for_key(&key, MAX_PARALLELISM);
        half[subtask_for_key_group(MAX_PARALLELISM, 2, g) as usize] += 1;
    }

    let target = dir.join("restored").join("db");
    let copy_in = measure(&store2, 0, 1, Strategy::Copy, &target, keys).await?;
    let ingest_in = measure(&store2, 0, 1, Strategy::Ingest, &target, keys).await?;
    let mut copy_out = Vec::new();
    let mut ingest_out = Vec::new();
    for i in 0..2u32 {
        copy_out.push(measure(&store1, i, 2, Strategy::Copy, &target, half[i as usize]).await?);
        ingest_out.push(measure(&store1, i, 2, Strategy::Ingest, &target, half[i as usize]).await?);
    }
    let (cp, cp_sync, cp_bytes) = raw_copy(&store_root, &meta2, store2.job(), &dir.join("raw"))?;

    let line = |out: &mut String, name: &str, m: &Measured| {
        writeln!(
            out,
            "  {name:<28} {:>8.2}s  downloaded {:>12} B ({:>6.2}s)  build {:>6.2}s  ingested {:>4} files  copied {:>9} keys",
            m.seconds,
            m.summary.downloaded_bytes,
            m.summary.download_seconds,
            m.summary.build_seconds,
            m.summary.ingested_files,
            m.summary.copied_keys
        )
        .ok();
    };
    writeln!(out, "scale-in 2→1 (one new subtask):").ok();
    line(&mut out, "copy", &copy_in);
    line(&mut out, "ingest", &ingest_in);
    writeln!(
        out,
        "  {:<28} {:>8.2}s  ({cp_bytes} B of SST files; {cp_sync:.2}s with sync)",
        "raw cp of the same bytes", cp
    )
    .ok();
    writeln!(out, "scale-out 1→2 (each new subtask):").ok();
    for i in 0..2 {
        line(&mut out, &format!("copy, subtask {i}"), &copy_out[i]);
        line(&mut out, &format!("ingest, subtask {i}"), &ingest_out[i]);
    }
    let speedup_in = copy_in.seconds / ingest_in.seconds;
    let vs_raw = ingest_in.seconds / cp;
    let vs_raw_sync = ingest_in.seconds / cp_sync;
    writeln!(out, "ratios:").ok();
    writeln!(
        out,
        "  scale-in: ingest is {speedup_in:.1}× faster than copy (target ≥ 5×: {})",
        if speedup_in >= 5.0 { "met" } else { "NOT met" }
    )
    .ok();
    writeln!(
        out,
        "  scale-in: ingest takes {vs_raw:.2}× the raw cp ({vs_raw_sync:.2}× cp + sync) (target ≤ 2×: {})",
        if vs_raw <= 2.0 { "met" } else { "NOT met" }
    )
    .ok();
    for i in 0..2 {
        writeln!(
            out,
            "  scale-out subtask {i}: ingest is {:.1}× faster than copy",
            copy_out[i].seconds / ingest_out[i].seconds
        )
        .ok();
    }
    if args.keep {
        let kept = work.keep();
        writeln!(out, "kept {}", kept.display()).ok();
    }
    Ok(out)
}
