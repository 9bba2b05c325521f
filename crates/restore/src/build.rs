//! The I/O of a restore: downloads, then the DB built from them (open, copy, ingest, clip).

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::time::Instant;

use futures::StreamExt;
use rocksdb::{ColumnFamilyDescriptor, DB, Direction, IteratorMode, ReadOptions, WriteBatch};
use tracing::{debug, info, warn};

use super::local::LocalSource;
use super::order::sort_for_ingestion;
use super::plan::{InputMethod, PlannedInput, RestoreKind, SubtaskPlan};
use regroup_core::backend::{
    BATCH_MAX_BYTES, BATCH_MAX_ENTRIES, column_family as cf, db_options, write_options,
};
use regroup_core::backend::{clip::clip, native};
use regroup_core::checkpoint::local_file::{
    CopyHelpers, LocalWrite, table_metadata_ends, write_inline,
};
use regroup_core::checkpoint::progress::{RestorePhase, Tracker};
use regroup_core::checkpoint::store::{DOWNLOAD_PARALLELISM, checksum_file, verify};
use regroup_core::checkpoint::{
    CheckpointMetadata, CheckpointStore, FileRef, SharedFile, SubtaskHandle,
};
use regroup_core::error::{Error, Result};
use regroup_core::keygroup::KeyGroupRange;
use regroup_core::statedir::marker::{FileIdentity, VouchedFile};

/// The directory, inside the work directory, where the new DB is built.
pub const BUILT_DB_DIR: &str = "db";
/// The directory, inside the work directory, where inputs are downloaded.
const INPUTS_DIR: &str = "inputs";

/// Counters of one build.
#[derive(Debug, Default)]
pub struct BuildStats {
    /// Files downloaded.
    pub downloaded_files: usize,
    /// Bytes downloaded.
    pub downloaded_bytes: u64,
    /// Bytes of those written through the page cache, unsynced (the rest with direct I/O).
    pub cached_bytes: u64,
    /// SST files ingested as they are.
    pub ingested_files: usize,
    /// Records copied one by one.
    pub copied_keys: u64,
    /// Files hard-linked from the local DB instead of downloaded.
    pub reused_files: usize,
    /// Bytes of those files.
    pub reused_bytes: u64,
    /// Bytes of those read back for their checksum (not vouched for unchanged by the marker).
    pub reused_read_back_bytes: u64,
    /// Local files found unusable (missing, other size or checksum, not linkable), downloaded.
    pub local_fallbacks: usize,
    /// Seconds spent fetching (downloads, with `sync` synced; local files checked).
    pub download_seconds: f64,
    /// Seconds spent building the DB from the downloads.
    pub build_seconds: f64,
    /// SST files of the built DB that are stored files of the checkpoint, byte for byte, by
    /// their name in the DB ([`stored_files`]).
    pub stored: BTreeMap<String, SharedFile>,
}

/// Where an input's files go: the DB directory itself for `Whole` and `Base`, else its own.
fn input_dir(work: &Path, input: &PlannedInput) -> PathBuf {
    match input.method {
        InputMethod::Whole | InputMethod::Base => work.join(BUILT_DB_DIR),
        InputMethod::Copy | InputMethod::Ingest => {
            work.join(INPUTS_DIR).join(input.old_subtask.to_string())
        }
    }
}

/// How [`build`] makes the DB.
#[derive(Clone, Debug, Default)]
pub struct BuildOptions {
    /// Where the build counts its progress.
    pub progress: Arc<Tracker>,
    /// Compact the clipped key intervals before returning (`RestoreRequest::compact`).
    pub compact: bool,
    /// Sync every file the DB takes in: downloads with direct I/O and synced, and RocksDB's
    /// own syncs kept (of each ingested file, its MANIFEST and its directory;
    /// `RestoreRequest::sync`). Without it none of these is synced and the kernel writes the
    /// files back later.
    pub sync: bool,
    /// Without `sync`: bytes of downloads the DB takes in that the page-cache lanes may write
    /// through the page cache; the rest are written with direct I/O, unsynced
    /// ([`super::page_cache`], [`lane_mode`]).
    pub page_cache_budget: u64,
}

/// Builds the DB of `plan` in `work/db`.
///
/// The I/O is pipelined: every file the plan needs is fetched (hard-linked from the local DB
/// when it verifies, else downloaded; synced with `options.sync`) with bounded parallelism,
/// handle after handle (local files and downloads side by side), and each handle is merged
/// into the new DB (ingested or copied) by a builder thread as soon as its last file is in,
/// while the next handles' files are still arriving. Peak disk use is the fetched files plus the
/// result: ingestion moves the files into the DB.
pub async fn build(
    store: &CheckpointStore,
    meta: &CheckpointMetadata,
    plan: &SubtaskPlan,
    column_families: &[String],
    work: &Path,
    options: BuildOptions,
    local: Option<&LocalSource>,
) -> Result<BuildStats> {
    let started = Instant::now();
    let progress = options.progress.clone();
    let transfers = transfers(store, meta, plan, work, local, &options)?;
    let mut remaining = vec![0usize; plan.inputs.len()];
    for t in &transfers {
        remaining[t.input] += 1;
    }
    let (ready, inputs_ready) = std::sync::mpsc::channel::<usize>();
    for (input, _) in remaining.iter().enumerate().filter(|(_, n)| **n == 0) {
        let _ = ready.send(input);
    }
    let builder = {
        let (meta, plan, work) = (meta.clone(), plan.clone(), work.to_path_buf());
        let column_families = column_families.to_vec();
        let options = options.clone();
        tokio::task::spawn_blocking(move || {
            merge(
                &meta,
                &plan,
                &column_families,
                &work,
                &options,
                inputs_ready,
            )
        })
    };

    let mut stats = BuildStats::default();
    let total: u64 = transfers.iter().map(|t| t.file.size).sum();
    info!(
        files = transfers.len(),
        bytes = total,
        handles = plan.inputs.len(),
        local = transfers.iter().filter(|t| t.local_name.is_some()).count(),
        "fetching"
    );
    let (mut done_bytes, mut next_report) = (0u64, total / 10);
    let mut first_error = None;
    // Every transfer runs to its end (no cancellation mid-write); the first error wins. Local
    // files (read and checksummed: CPU and reads) are checked beside the downloads (writes),
    // each with their own slots, so neither waits for the other.
    let (from_local, from_store): (Vec<&Transfer>, Vec<&Transfer>) =
        transfers.iter().partition(|t| t.local_name.is_some());
    let checks = futures::stream::iter(from_local)
        .map(|t| async move { (t, fetch(store, local, t, t.mode, None).await) })
        .buffer_unordered(LOCAL_CHECK_PARALLELISM);
    // Download lanes, each taking the next file as it finishes: page-cache lanes write a file
    // meant for direct I/O through the page cache while the budget lasts, the others with
    // direct I/O. Whichever kind is faster on this node takes more of the files: writes to
    // the page cache cost a memory copy, or more where the memory must first be reclaimed or
    // faulted in (a VM whose free memory went back to its host); direct writes cost the disk.
    let download_bytes: u64 = from_store.iter().map(|t| t.file.size).sum();
    let page_cache_lanes = page_cache_lanes(download_bytes);
    let queue = std::sync::Mutex::new(from_store.into_iter());
    let budget = Arc::new(AtomicU64::new(options.page_cache_budget));
    let helpers = Arc::new(CopyHelpers::default());
    let lane = |page_cache: bool| {
        let (queue, budget, helpers) = (&queue, &budget, &helpers);
        Box::pin(futures::stream::unfold((), move |()| {
            let next = queue.lock().ok().and_then(|mut q| q.next());
            async move {
                let Some(t) = next else {
                    // Nothing left to start: write chunks of the downloads in progress, so
                    // that they end together instead of one after the other. A page-cache
                    // lane writes them through the page cache while the budget lasts.
                    let (helpers, budget) = (helpers.clone(), budget.clone());
                    let _ = tokio::task::spawn_blocking(move || {
                        helpers.help(|bytes| page_cache && take_budget(&budget, bytes))
                    })
                    .await;
                    return None;
                };
                let mode = lane_mode(t, page_cache, budget);
                // Scratch files (read once, through the page cache) are written by their lane.
                let helpers = (t.mode != LocalWrite::Cached).then_some(helpers);
                Some(((t, fetch(store, local, t, mode, helpers).await), ()))
            }
        }))
    };
    let downloads =
        futures::stream::select_all((0..DOWNLOAD_PARALLELISM).map(|i| lane(i < page_cache_lanes)));
    let mut fetches = futures::stream::select(checks, downloads);
    while let Some((t, result)) = fetches.next().await {
        match result {
            Ok(fetched) => {
                match fetched {
                    Fetched::Reused { read_back } => {
                        stats.reused_files += 1;
                        stats.reused_bytes += t.file.size;
                        if read_back {
                            stats.reused_read_back_bytes += t.file.size;
                        }
                    }
                    Fetched::Downloaded { fallback, mode } => {
                        stats.downloaded_files += 1;
                        stats.downloaded_bytes += t.file.size;
                        if mode == LocalWrite::Cached {
                            stats.cached_bytes += t.file.size;
                        }
                        stats.local_fallbacks += usize::from(fallback);
                    }
                }
                done_bytes += t.file.size;
                progress.add_done(t.file.size);
                if done_bytes >= next_report && total > 0 {
                    info!(bytes = done_bytes, of = total, "fetched");
                    next_report = done_bytes + total / 10;
                }
                remaining[t.input] -= 1;
                if remaining[t.input] == 0 && first_error.is_none() {
                    // A builder that already failed has hung up; its error is reported below.
                    let _ = ready.send(t.input);
                }
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    drop(ready);
    progress.advance(RestorePhase::Ingesting);
    stats.download_seconds = started.elapsed().as_secs_f64();
    if local.is_some() {
        info!(
            files = stats.reused_files,
            bytes = stats.reused_bytes,
            read_back = stats.reused_read_back_bytes,
            fallbacks = stats.local_fallbacks,
            "hard-linked from the local DB"
        );
    }
    let fetched = Instant::now();
    let merged = builder
        .await
        .map_err(|e| Error::Other(format!("restore task failed: {e}")))?;
    if let Some(e) = first_error {
        return Err(e);
    }
    let merged = merged?;
    stats.ingested_files = merged.ingested_files;
    stats.copied_keys = merged.copied_keys;
    stats.stored = merged.stored;
    stats.build_seconds = fetched.elapsed().as_secs_f64();
    Ok(stats)
}

/// Local files checked (read and checksummed) at once, beside the downloads.
const LOCAL_CHECK_PARALLELISM: usize = 2;

/// Download lanes (of [`DOWNLOAD_PARALLELISM`]) that may write through the page cache when a
/// restore downloads `bytes`: two up to [`SMALL_DOWNLOAD`], else one.
///
/// Two lanes were faster for small restores and slower for large ones, where more of the bytes
/// go through memory the VM may first have to fault in from its host (docs/benchmarks.md).
fn page_cache_lanes(bytes: u64) -> usize {
    if bytes <= SMALL_DOWNLOAD { 2 } else { 1 }
}

/// Downloads up to this size get a second page-cache lane ([`page_cache_lanes`]).
const SMALL_DOWNLOAD: u64 = 512 << 20;

/// How a download lane writes `t`: a page-cache lane writes a file meant for direct I/O
/// (unsynced) through the page cache if the rest of `budget` covers it.
fn lane_mode(t: &Transfer<'_>, page_cache_lane: bool, budget: &AtomicU64) -> LocalWrite {
    if t.mode == LocalWrite::Direct && page_cache_lane && take_budget(budget, t.file.size) {
        LocalWrite::Cached
    } else {
        t.mode
    }
}

/// Takes `bytes` from the page-cache `budget` if it has that many left.
fn take_budget(budget: &AtomicU64, bytes: u64) -> bool {
    budget
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
            b.checked_sub(bytes)
        })
        .is_ok()
}

/// One file the plan needs: where it goes, and the local DB's copy to try first, if any.
struct Transfer<'a> {
    /// Index of the input (in the plan) the file belongs to.
    input: usize,
    dest: PathBuf,
    file: &'a FileRef,
    referenced_in: Arc<str>,
    /// The file's name in the local DB, when the input's handle is the local DB.
    local_name: Option<&'a str>,
    /// For files the new DB takes in: durable when the restore syncs, else direct (a
    /// page-cache lane may write it cached instead, see [`lane_mode`]); cached for the files
    /// of a handle it copies records from (read once, then deleted).
    mode: LocalWrite,
}

/// Where a file came from.
enum Fetched {
    /// Hard-linked from the local DB, verified; `read_back` when by reading it.
    Reused { read_back: bool },
    /// Downloaded from the store, verified, written as `mode`; `fallback` when the local copy
    /// was unusable.
    Downloaded { fallback: bool, mode: LocalWrite },
}

/// The files of every input, input after input (so that whole handles arrive early), each
/// input's directory created and the files its handle carries written.
fn transfers<'a>(
    store: &CheckpointStore,
    meta: &'a CheckpointMetadata,
    plan: &SubtaskPlan,
    work: &Path,
    local: Option<&LocalSource>,
    options: &BuildOptions,
) -> Result<Vec<Transfer<'a>>> {
    let mut out = Vec::new();
    let taken_in = if options.sync {
        LocalWrite::Durable
    } else {
        LocalWrite::Direct
    };
    for (index, input) in plan.inputs.iter().enumerate() {
        let h = &meta.handles[input.old_subtask as usize];
        let referenced_in: Arc<str> = store
            .paths()
            .relative(&store.paths().handle(h.checkpoint_id, h.subtask))
            .into();
        let dir = input_dir(work, input);
        std::fs::create_dir_all(&dir).map_err(Error::io("create directory", &dir))?;
        let from_local = input.local && local.is_some_and(|l| l.old_subtask == input.old_subtask);
        let mode = match input.method {
            InputMethod::Copy => LocalWrite::Cached,
            InputMethod::Whole | InputMethod::Base | InputMethod::Ingest => taken_in,
        };
        for &i in &input.shared_files {
            let f = &h.shared[i];
            out.push(Transfer {
                input: index,
                dest: dir.join(&f.local_name),
                file: &f.file,
                referenced_in: referenced_in.clone(),
                local_name: from_local.then_some(f.local_name.as_str()),
                mode,
            });
        }
        if input.private_files {
            for i in &h.inline {
                write_inline(i, &dir.join(&i.local_name), mode, &referenced_in)?;
            }
            for p in &h.private {
                out.push(Transfer {
                    input: index,
                    dest: dir.join(&p.local_name),
                    file: &p.file,
                    referenced_in: referenced_in.clone(),
                    local_name: None,
                    mode,
                });
            }
        }
    }
    Ok(out)
}

/// Fetches one file: hard-linked from the local DB if it has a verified copy, else downloaded
/// (verified) as `mode` says — with a synced restore, a file the DB takes in is durable before
/// the DB references it; syncing here, several files at once and beside the other transfers,
/// leaves nothing for ingestion's own per-file sync.
async fn fetch(
    store: &CheckpointStore,
    local: Option<&LocalSource>,
    t: &Transfer<'_>,
    mode: LocalWrite,
    helpers: Option<&Arc<CopyHelpers>>,
) -> Result<Fetched> {
    let mut fallback = false;
    if let (Some(local), Some(name)) = (local, t.local_name) {
        let (source, dest, expected) = (local.db.join(name), t.dest.clone(), t.file.clone());
        let vouched = local.files.get(name).cloned();
        let outcome = tokio::task::spawn_blocking(move || {
            link_verified(&source, &dest, &expected, vouched.as_ref())
        })
        .await
        .unwrap_or_else(|e| Err(format!("verification task failed: {e}")));
        match outcome {
            Ok(read_back) => return Ok(Fetched::Reused { read_back }),
            Err(why) => {
                warn!(file = name, db = %local.db.display(), reason = %why, "local file not used: downloading it instead");
                let _ = std::fs::remove_file(&t.dest);
                fallback = true;
            }
        }
    }
    // A file written with direct I/O has the ends its ingestion reads in the page cache
    // (see `LocalFile`).
    store
        .download_file(t.file, &t.dest, &t.referenced_in, mode, helpers)
        .await?;
    Ok(Fetched::Downloaded { fallback, mode })
}

/// Asks the kernel to read, in the background, the parts of the SST file at `path` (of
/// `size` bytes) that its ingestion reads ([`table_metadata_ends`]), for a file linked from the
/// local DB unread (not in the page cache). RocksDB reads them one file after the other, a few
/// small reads each, which from a cold disk sit on the restore's critical path
/// (docs/benchmarks.md). Reading ahead 2 MiB of each file instead competed with the
/// downloads for the disk and was slower. Best effort: a failure leaves the reads to
/// ingestion.
fn read_ahead_table_metadata(path: &Path, size: u64) {
    use rustix::fs::{Advice, fadvise};
    use std::num::NonZeroU64;
    let Ok(f) = std::fs::File::open(path) else {
        return;
    };
    let (head_end, tail_start) = table_metadata_ends(size);
    let _ = fadvise(
        &f,
        tail_start,
        NonZeroU64::new(size - tail_start),
        Advice::WillNeed,
    );
    let _ = fadvise(&f, 0, NonZeroU64::new(head_end), Advice::WillNeed);
}

/// Hard-links `source` to `dest` and makes sure it is `file`: if the local DB's marker vouched
/// for it (`vouched`, see [`VouchedFile`]) with `file`'s size and checksum, and its identity is
/// still the recorded one, it is unchanged since the checkpoint read it; otherwise its size
/// and checksum are read back. Returns whether it was read back, or the reason it cannot be
/// used (the caller removes `dest`). Never copies: a copy costs what a download does. Linking
/// before reading (the same inode either way) spares reading a file that cannot be linked,
/// e.g. across devices; the identity is taken before linking, which changes its `ctime`.
fn link_verified(
    source: &Path,
    dest: &Path,
    file: &FileRef,
    vouched: Option<&VouchedFile>,
) -> std::result::Result<bool, String> {
    let unchanged = vouched
        .filter(|v| v.identity.size == file.size && v.checksum == file.checksum)
        .filter(|v| FileIdentity::read(source).is_ok_and(|now| now == v.identity))
        .map(|v| v.identity.inode);
    if vouched.is_some() && unchanged.is_none() {
        debug!(file = %source.display(), "local file changed since the worker's marker vouched for it: reading it back");
    }
    std::fs::hard_link(source, dest).map_err(|e| format!("cannot hard-link: {e}"))?;
    // The link names the inode just looked at unless the file was replaced in between.
    if unchanged.is_some()
        && FileIdentity::read(dest).is_ok_and(|linked| Some(linked.inode) == unchanged)
    {
        read_ahead_table_metadata(dest, file.size);
        return Ok(false);
    }
    let (size, checksum) = checksum_file(dest).map_err(|e| e.to_string())?;
    verify(file, size, checksum).map_err(|e| format!("local copy differs: {e}"))?;
    Ok(true)
}

/// Opens the DB being built: the worker's options, but no automatic compaction, so that no
/// background work races the ingestion or delays closing; the worker's own open re-enables it.
/// Unless `sync`, the DB syncs nothing (see [`BuildOptions::sync`]).
fn open_db(dir: &Path, column_families: &[String], max_parallelism: u32, sync: bool) -> Result<DB> {
    let options = || {
        let mut o = db_options(max_parallelism);
        o.set_disable_auto_compactions(true);
        if !sync {
            native::set_unsynced(&mut o);
        }
        o
    };
    let descriptors = column_families
        .iter()
        .map(|n| ColumnFamilyDescriptor::new(n, options()));
    DB::open_cf_descriptors(&options(), dir, descriptors)
        .map_err(Error::rocks(format!("open {}", dir.display())))
}

/// What the builder did.
#[derive(Debug, Default)]
struct Merged {
    ingested_files: usize,
    copied_keys: u64,
    stored: BTreeMap<String, SharedFile>,
}

/// A file's device and inode: what a hard link keeps.
type Inode = (u64, u64);

/// The stored files `input` placed in the work directory, by inode. Opening a DB in place and
/// ingesting with `move_files` (a hard link) keep the inode; RocksDB never rewrites an SST file.
fn placed_files(
    meta: &CheckpointMetadata,
    input: &PlannedInput,
    work: &Path,
) -> Result<Vec<(Inode, SharedFile)>> {
    if input.method == InputMethod::Copy {
        return Ok(Vec::new());
    }
    let h = &meta.handles[input.old_subtask as usize];
    let dir = input_dir(work, input);
    input
        .shared_files
        .iter()
        .map(|&i| {
            let f = &h.shared[i];
            let path = dir.join(&f.local_name);
            let m = std::fs::metadata(&path).map_err(Error::io("stat", &path))?;
            Ok(((m.dev(), m.ino()), f.clone()))
        })
        .collect()
}

/// The SST files of the DB in `db_dir` that are one of `placed`, under their name in the DB:
/// the worker's first checkpoint references them where the store holds them instead of
/// uploading the state again. A file RocksDB copied instead of linking is not among them.
fn stored_files(
    db_dir: &Path,
    placed: &HashMap<Inode, SharedFile>,
) -> Result<BTreeMap<String, SharedFile>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(db_dir).map_err(Error::io("list", db_dir))? {
        let entry = entry.map_err(Error::io("list", db_dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".sst") {
            continue;
        }
        let m = entry.metadata().map_err(Error::io("stat", entry.path()))?;
        if let Some(f) = placed.get(&(m.dev(), m.ino()))
            && f.file.size == m.len()
        {
            let mut f = f.clone();
            f.local_name = name.clone();
            out.insert(name, f);
        }
    }
    Ok(out)
}

/// Builds `work/db` from the inputs, each merged as soon as its index arrives on `ready` (all
/// its files in place): the base (or whole) input is opened as the DB, the others are ingested
/// or copied into it (the old handles' key groups are disjoint, so the order does not matter),
/// then the DB is clipped to the range. Fails if `ready` closes before every input arrived.
fn merge(
    meta: &CheckpointMetadata,
    plan: &SubtaskPlan,
    column_families: &[String],
    work: &Path,
    options: &BuildOptions,
    ready: Receiver<usize>,
) -> Result<Merged> {
    let db_dir = work.join(BUILT_DB_DIR);
    std::fs::create_dir_all(&db_dir).map_err(Error::io("create directory", &db_dir))?;
    let max_parallelism = meta.max_parallelism;
    let base = plan
        .inputs
        .iter()
        .position(|i| matches!(i.method, InputMethod::Whole | InputMethod::Base));
    let mut db = match base {
        Some(_) => None,
        None => Some(open_db(
            &db_dir,
            column_families,
            max_parallelism,
            options.sync,
        )?),
    };
    let mut waiting = Vec::new();
    let mut merged = Merged::default();
    let mut placed = HashMap::new();
    let phase = Instant::now();
    for _ in 0..plan.inputs.len() {
        let index = ready
            .recv()
            .map_err(|_| Error::Other("restore inputs incomplete".to_owned()))?;
        placed.extend(placed_files(meta, &plan.inputs[index], work)?);
        if Some(index) == base {
            db = Some(open_db(
                &db_dir,
                column_families,
                max_parallelism,
                options.sync,
            )?);
        } else {
            waiting.push(index);
        }
        if let Some(db) = &db {
            for index in waiting.drain(..) {
                add_input(db, meta, &plan.inputs[index], work, &mut merged)?;
            }
        }
    }
    let db = db.ok_or_else(|| Error::Other("restore base input missing".to_owned()))?;
    if plan.kind == RestoreKind::Unchanged {
        // The handle's files are the DB; opening it proves they form one.
        drop(db);
        merged.stored = stored_files(&db_dir, &placed)?;
        return Ok(merged);
    }
    for name in column_families {
        let handle = cf(&db, name)?;
        db.flush_cf(&handle)
            .map_err(Error::rocks(format!("flush column family {name}")))?;
    }
    let merged_seconds = phase.elapsed().as_secs_f64();
    let phase = Instant::now();
    options.progress.advance(RestorePhase::Clipping);
    clip(
        &db,
        column_families,
        plan.range,
        max_parallelism,
        options.compact,
    )?;
    let clipped = phase.elapsed().as_secs_f64();
    let phase = Instant::now();
    drop(db);
    merged.stored = stored_files(&db_dir, &placed)?;
    info!(
        merge_seconds = merged_seconds,
        clip_seconds = clipped,
        close_seconds = phase.elapsed().as_secs_f64(),
        "built"
    );
    Ok(merged)
}

/// Ingests or copies one non-base input into `db`.
fn add_input(
    db: &DB,
    meta: &CheckpointMetadata,
    input: &PlannedInput,
    work: &Path,
    merged: &mut Merged,
) -> Result<()> {
    let h = &meta.handles[input.old_subtask as usize];
    let dir = input_dir(work, input);
    match input.method {
        InputMethod::Ingest => merged.ingested_files += ingest_handle(db, h, input, &dir)?,
        InputMethod::Copy => {
            merged.copied_keys +=
                copy_handle(db, h, input.intersection, meta.max_parallelism, &dir)?;
            std::fs::remove_dir_all(&dir).map_err(Error::io("remove", &dir))?;
        }
        InputMethod::Whole | InputMethod::Base => {}
    }
    Ok(())
}

/// Ingests a handle's downloaded SST files, one call per column family, oldest data first
/// ([`sort_for_ingestion`]: the order RocksDB needs to keep newer versions above older ones).
fn ingest_handle(db: &DB, h: &SubtaskHandle, input: &PlannedInput, dir: &Path) -> Result<usize> {
    let mut by_cf: std::collections::BTreeMap<&str, Vec<&SharedFile>> = Default::default();
    for &i in &input.shared_files {
        let f = &h.shared[i];
        let name = f
            .column_family
            .as_deref()
            .unwrap_or(regroup_core::backend::DEFAULT_STATE);
        by_cf.entry(name).or_default().push(f);
    }
    let mut count = 0;
    for (name, mut files) in by_cf {
        sort_for_ingestion(&mut files);
        let downloaded: Vec<PathBuf> = files.iter().map(|f| dir.join(&f.local_name)).collect();
        let paths: Vec<&Path> = downloaded.iter().map(PathBuf::as_path).collect();
        let handle = cf(db, name)?;
        let context = format!(
            "{} files of column family {name} of the handle of subtask {} ({}), checkpoint {}",
            paths.len(),
            h.subtask,
            h.key_group_range,
            h.checkpoint_id
        );
        native::ingest_db_generated_files(db, &handle, &paths, &context)?;
        debug!(%context, "ingested");
        count += paths.len();
    }
    info!(subtask = h.subtask, files = count, "ingested handle");
    Ok(count)
}

/// Copies the records of `range` from the handle's DB in `dir` into `db`, in write batches
/// bounded in entries and bytes, WAL off.
fn copy_handle(
    db: &DB,
    h: &SubtaskHandle,
    range: KeyGroupRange,
    max_parallelism: u32,
    dir: &Path,
) -> Result<u64> {
    let context = format!(
        "the handle of subtask {} ({}) of checkpoint {} in {}",
        h.subtask,
        h.key_group_range,
        h.checkpoint_id,
        dir.display()
    );
    let opts = db_options(max_parallelism);
    let names = DB::list_cf(&opts, dir)
        .map_err(Error::rocks(format!("list column families of {context}")))?;
    let source = DB::open_cf_for_read_only(&opts, dir, &names, false)
        .map_err(Error::rocks(format!("open {context}")))?;
    let (lower, upper) = range.key_interval(max_parallelism);
    let mut copied = 0u64;
    for name in &names {
        let from = source
            .cf_handle(name)
            .ok_or_else(|| Error::Other(format!("column family {name} missing in {context}")))?;
        let to = cf(db, name)?;
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(upper.clone());
        ro.fill_cache(false);
        let mut batch = WriteBatch::default();
        let mut bytes = 0usize;
        for item in
            source.iterator_cf_opt(&from, ro, IteratorMode::From(&lower, Direction::Forward))
        {
            let (k, v) = item.map_err(Error::rocks(format!("read {context}")))?;
            bytes += k.len() + v.len();
            batch.put_cf(&to, &k, &v);
            copied += 1;
            if batch.len() >= BATCH_MAX_ENTRIES || bytes >= BATCH_MAX_BYTES {
                db.write_opt(std::mem::take(&mut batch), &write_options())
                    .map_err(Error::rocks(format!("write records of {context}")))?;
                bytes = 0;
            }
        }
        if !batch.is_empty() {
            db.write_opt(batch, &write_options())
                .map_err(Error::rocks(format!("write records of {context}")))?;
        }
    }
    info!(subtask = h.subtask, keys = copied, "copied handle");
    Ok(copied)
}
