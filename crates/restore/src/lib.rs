//! Restore: builds one subtask's RocksDB from a completed checkpoint, with or without rescaling.
//!
//! [`restore_subtask`] is what the `regroup restore` init container (and any worker or operator
//! code) calls. Three paths:
//!
//! - **local recovery**: the target already holds the result of restoring exactly this
//!   checkpoint for exactly this range (a marker file written by the restore, plus the names and
//!   sizes of every file) — nothing is downloaded;
//! - **unchanged** range: the handle's files are downloaded into place and the DB is opened;
//! - **rescaled**: the handles intersecting the range are downloaded (only the SST files that
//!   intersect it, for `ingest`) and merged by [`Strategy::Copy`] or [`Strategy::Ingest`], then
//!   the DB is clipped to the range.
//!
//! - **local state reused**: when the target's parent (the pod's volume) holds the DB a worker
//!   left after a stop-with-checkpoint, and its marker (`checkpoint-marker.json`, see
//!   [`regroup_core::statedir::marker`]) names a handle of the restored checkpoint (same job, checkpoint
//!   and DB instance), that handle is preferred as the initial one and the SST files the plan
//!   needs from it are hard-linked from the local DB after checking them (any that do not
//!   verify or cannot be linked are downloaded, and logged); only the rest is fetched. A file
//!   the marker vouches for is checked by its identity (inode, size, modification and change
//!   times as the worker recorded them after its checkpoint, in the same boot of the node);
//!   any other is read back for its size and checksum.
//!
//! The DB is built in a hidden sibling directory of the target and renamed into place only when
//! complete; on any failure that directory is removed, so the target never holds a partial DB
//! and a reused local DB (only ever hard-linked from) stays intact for a retry.
//!
//! Nothing is synced unless [`RestoreRequest::sync`]: the kernel writes the new DB back while
//! the worker runs. The DB is a copy of the checkpoint, which stays in the store; after a crash
//! of the node, local recovery refuses an unsynced restore ([`is_local_copy`] compares the boot)
//! and reused local files are verified by reading them (a marker vouches for its files only
//! within its boot).

mod build;
pub mod command;
pub mod local;
pub mod order;
pub mod page_cache;
pub mod plan;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use regroup_core::checkpoint::progress::{RestorePhase, Tracker};
use regroup_core::checkpoint::{CheckpointMetadata, CheckpointStore, JobId};
use regroup_core::error::{Error, Result};
use regroup_core::keygroup::KeyGroupRange;
use regroup_core::statedir::restored::{RESTORE_MARKER_FILE, RestoreMarker};
use regroup_core::statedir::{self, in_this_boot, sync_path};

use local::LocalSource;

pub use plan::{
    InputMethod, PlanOptions, RescalePlan, RestoreKind, Strategy, SubtaskPlan, plan, plan_ranges,
    plan_subtask, plan_subtask_with_local,
};

/// What to restore, and where.
#[derive(Clone, Debug)]
pub struct RestoreRequest {
    /// Checkpoint to restore; `None` means the latest completed one.
    pub checkpoint: Option<u64>,
    /// New subtask index.
    pub subtask: u32,
    /// New parallelism.
    pub parallelism: u32,
    /// Directory of the DB to build. Its parent must exist or be creatable, on the volume the
    /// worker will use (the DB is built next to it and renamed into place).
    pub target: PathBuf,
    /// How the inputs of a rescaling restore are merged.
    pub strategy: Strategy,
    /// See [`PlanOptions::overlap_fraction_threshold`].
    pub overlap_fraction_threshold: f64,
    /// Compact the key intervals the restore clipped (files straddling a boundary of the new
    /// range, and range tombstones) before it ends. Off by default: the restore ends sooner and
    /// the worker runs [`StateBackend::compact_outside_range`] in the background once running;
    /// until that ends, its checkpoints' files reach outside its range and a later restore
    /// copies those handles instead of ingesting them.
    ///
    /// [`StateBackend::compact_outside_range`]: regroup_core::backend::StateBackend::compact_outside_range
    pub compact: bool,
    /// Make the new DB durable before the restore returns: its files written with direct I/O
    /// and synced, and RocksDB's own syncs kept. Off by default: nothing is synced (one
    /// download lane writes through the page cache, the others with direct I/O) and the kernel
    /// writes the files back while the worker runs. The DB is a copy of the checkpoint (the
    /// worker runs with the WAL off, so its DB is not durable between checkpoints either), and
    /// a restore trusts an unsynced one only until the node restarts: after a reboot,
    /// [`is_local_copy`] refuses it, and a kept volume's files are reused unread only where
    /// the worker's stop marker vouches for them, which it does in another boot only after
    /// syncing them (`LocalCheckpointMarker::files_synced`); the others are read back.
    pub sync: bool,
    /// Without `sync`: at most how many bytes of downloads go through the page cache (one of the
    /// download lanes writes there), the rest with direct I/O, unsynced; `None`:
    /// [`page_cache::budget`] of this machine.
    pub page_cache_budget: Option<u64>,
    /// Fault injection for end-to-end tests: wait this long with the new DB complete in its work
    /// directory, before it is renamed into place, so a test can kill the restore there.
    pub fault_pause_before_rename: Option<std::time::Duration>,
    /// Where the restore counts its progress (phase, bytes fetched of bytes to fetch).
    pub progress: Arc<Tracker>,
}

impl RestoreRequest {
    /// A request with the default strategy (`ingest`) and threshold (0).
    pub fn new(checkpoint: Option<u64>, subtask: u32, parallelism: u32, target: &Path) -> Self {
        Self {
            checkpoint,
            subtask,
            parallelism,
            target: target.to_path_buf(),
            strategy: Strategy::Ingest,
            overlap_fraction_threshold: 0.0,
            compact: false,
            sync: false,
            page_cache_budget: None,
            fault_pause_before_rename: None,
            progress: Arc::default(),
        }
    }

    fn plan_options(&self) -> PlanOptions {
        PlanOptions {
            strategy: self.strategy,
            overlap_fraction_threshold: self.overlap_fraction_threshold,
        }
    }
}

/// Which path a restore took.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestoreMode {
    /// The target already held this restore's result; nothing was downloaded.
    LocalRecovery,
    /// One handle's files, downloaded into place.
    Unchanged,
    /// Several handles merged and clipped.
    Rescaled,
}

/// What a restore did.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RestoreSummary {
    /// The job.
    pub job: JobId,
    /// The checkpoint restored.
    pub checkpoint_id: u64,
    /// New subtask index.
    pub subtask: u32,
    /// New parallelism.
    pub parallelism: u32,
    /// Key groups of the job.
    pub max_parallelism: u32,
    /// Key groups of the restored DB.
    pub range: KeyGroupRange,
    /// The path taken.
    pub mode: RestoreMode,
    /// The merge strategy (rescaled restores only).
    pub strategy: Option<Strategy>,
    /// Old subtask of the initial handle, if any.
    pub initial: Option<u32>,
    /// Old subtasks whose handles fed the DB, with how each was used.
    pub inputs: Vec<(u32, InputMethod)>,
    /// Column families of the restored DB.
    pub column_families: Vec<String>,
    /// Files downloaded.
    pub downloaded_files: usize,
    /// Bytes downloaded (0 for local recovery).
    pub downloaded_bytes: u64,
    /// Bytes of the downloads written through the page cache, unsynced; the others were
    /// written with direct I/O (synced with [`RestoreRequest::sync`]).
    pub cached_bytes: u64,
    /// Old subtask whose handle's DB was found on the volume and reused, if any.
    pub local_handle: Option<u32>,
    /// SST files hard-linked from the local DB instead of downloaded.
    pub reused_files: usize,
    /// Bytes of those files.
    pub reused_bytes: u64,
    /// Bytes of those read back to verify their checksum: the files the worker's marker does
    /// not vouch for unchanged (the others are verified by identity).
    pub reused_read_back_bytes: u64,
    /// Local files that did not verify (or could not be linked) and were downloaded instead.
    pub local_fallbacks: usize,
    /// SST files of intersecting handles not downloaded because they hold no key of the range.
    pub skipped_files: usize,
    /// SST files ingested without rewriting.
    pub ingested_files: usize,
    /// Records copied one by one.
    pub copied_keys: u64,
    /// Seconds spent downloading.
    pub download_seconds: f64,
    /// Seconds spent building the DB after the downloads.
    pub build_seconds: f64,
    /// Seconds in all.
    pub total_seconds: f64,
    /// Target directory.
    pub target: PathBuf,
}

impl RestoreSummary {
    /// One human-readable line.
    pub fn line(&self) -> String {
        let inputs: Vec<String> = self
            .inputs
            .iter()
            .map(|(s, m)| format!("{s}:{m}"))
            .collect();
        format!(
            "restored checkpoint {} of {} for subtask {}/{} key groups {} into {}: {}{}, inputs [{}], downloaded {} files {} bytes ({} through the page cache, {} skipped), reused locally {} files {} bytes ({} read back){}{}, ingested {} files, copied {} keys, {:.2}s (download {:.2}s, build {:.2}s)",
            self.checkpoint_id,
            self.job,
            self.subtask,
            self.parallelism,
            self.range,
            self.target.display(),
            match self.mode {
                RestoreMode::LocalRecovery => "local recovery",
                RestoreMode::Unchanged => "unchanged range",
                RestoreMode::Rescaled => "rescaled",
            },
            self.strategy.map(|s| format!(" ({s})")).unwrap_or_default(),
            inputs.join(", "),
            self.downloaded_files,
            self.downloaded_bytes,
            self.cached_bytes,
            self.skipped_files,
            self.reused_files,
            self.reused_bytes,
            self.reused_read_back_bytes,
            self.local_handle
                .map(|s| format!(" (handle {s})"))
                .unwrap_or_default(),
            if self.local_fallbacks > 0 {
                format!(", {} local files unusable", self.local_fallbacks)
            } else {
                String::new()
            },
            self.ingested_files,
            self.copied_keys,
            self.total_seconds,
            self.download_seconds,
            self.build_seconds,
        )
    }
}

/// Names and sizes of the files of `dir`, the marker excepted.
fn list_files(dir: &Path) -> Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(Error::io("list", dir))? {
        let entry = entry.map_err(Error::io("list", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == RESTORE_MARKER_FILE {
            continue;
        }
        let meta = entry.metadata().map_err(Error::io("stat", entry.path()))?;
        out.insert(name, meta.len());
    }
    Ok(out)
}

/// True when `dir` holds, untouched, the result of restoring `checkpoint_id` for `range`: the
/// marker matches and the directory holds exactly the files it lists, with their sizes. A DB
/// that a worker has opened since (new MANIFEST, LOG, SST files) no longer matches, nor does an
/// unsynced restore once the node has restarted (its files may not have reached the disk).
pub fn is_local_copy(
    dir: &Path,
    job: &JobId,
    checkpoint_id: u64,
    max_parallelism: u32,
    range: KeyGroupRange,
) -> bool {
    let Some(marker) = RestoreMarker::read(dir) else {
        return false;
    };
    marker.job == *job
        && marker.checkpoint_id == checkpoint_id
        && marker.max_parallelism == max_parallelism
        && marker.range == range
        && (marker.synced || in_this_boot(marker.boot_id.as_deref()))
        && list_files(dir).is_ok_and(|files| files == marker.files)
}

/// Builds the DB of `request.subtask` at `request.target` from a completed checkpoint.
pub async fn restore_subtask(
    store: &CheckpointStore,
    request: &RestoreRequest,
) -> Result<RestoreSummary> {
    let started = Instant::now();
    let options = request.plan_options();
    options.validate()?;
    let meta = store.checkpoint_or_latest(request.checkpoint).await?;
    let target = absolute(&request.target)?;
    // The volume's state directory: the DB a previous pod of this ordinal left, and its marker.
    let range =
        KeyGroupRange::for_subtask(meta.max_parallelism, request.parallelism, request.subtask)?;
    let local_copy = is_local_copy(
        &target,
        &meta.job,
        meta.checkpoint_id,
        meta.max_parallelism,
        range,
    );
    let local = if local_copy {
        None
    } else {
        target.parent().and_then(|d| local::find(d, &meta))
    };
    let plan = plan_subtask_with_local(
        &meta,
        request.parallelism,
        request.subtask,
        &options,
        local.as_ref().map(|l| l.old_subtask),
    )?;
    request
        .progress
        .set_total(plan.bytes_to_download + plan.bytes_local);
    request.progress.advance(RestorePhase::Downloading);
    let mut summary = RestoreSummary {
        job: meta.job.clone(),
        checkpoint_id: meta.checkpoint_id,
        subtask: request.subtask,
        parallelism: request.parallelism,
        max_parallelism: meta.max_parallelism,
        range: plan.range,
        mode: match plan.kind {
            RestoreKind::Unchanged => RestoreMode::Unchanged,
            RestoreKind::Rescaled => RestoreMode::Rescaled,
        },
        strategy: (plan.kind == RestoreKind::Rescaled).then_some(request.strategy),
        initial: plan.initial,
        inputs: plan
            .inputs
            .iter()
            .map(|i| (i.old_subtask, i.method))
            .collect(),
        column_families: column_families(&meta, &plan),
        downloaded_files: 0,
        downloaded_bytes: 0,
        cached_bytes: 0,
        local_handle: None,
        reused_files: 0,
        reused_bytes: 0,
        reused_read_back_bytes: 0,
        local_fallbacks: 0,
        skipped_files: plan.inputs.iter().map(|i| i.skipped_files).sum(),
        ingested_files: 0,
        copied_keys: 0,
        download_seconds: 0.0,
        build_seconds: 0.0,
        total_seconds: 0.0,
        target: target.clone(),
    };

    if local_copy {
        summary.mode = RestoreMode::LocalRecovery;
        summary.strategy = None;
        summary.skipped_files = 0;
        summary.total_seconds = started.elapsed().as_secs_f64();
        info!(target = %target.display(), checkpoint = meta.checkpoint_id, "local recovery: the target already holds this restore");
        return Ok(summary);
    }

    let parent = target
        .parent()
        .ok_or_else(|| Error::invalid("target", target.display(), "a directory with a parent"))?;
    std::fs::create_dir_all(parent).map_err(Error::io("create directory", parent))?;
    let name = target
        .file_name()
        .ok_or_else(|| Error::invalid("target", target.display(), "a directory name"))?
        .to_string_lossy()
        .into_owned();
    remove_stale_work_dirs(parent, &name);
    check_space(parent, plan.bytes_to_download)?;
    let work = parent.join(format!(".{name}.restore-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir(&work).map_err(Error::io("create directory", &work))?;

    let result = build::build(
        store,
        &meta,
        &plan,
        &summary.column_families,
        &work,
        build::BuildOptions {
            progress: request.progress.clone(),
            compact: request.compact,
            sync: request.sync,
            page_cache_budget: if request.sync {
                0
            } else {
                request.page_cache_budget.unwrap_or_else(page_cache::budget)
            },
        },
        local.as_ref(),
    )
    .await;
    let outcome = match result {
        Ok(stats) => {
            if let Some(pause) = request.fault_pause_before_rename {
                warn!(?pause, dir = %work.display(), "fault injection: pausing before the rename");
                tokio::time::sleep(pause).await;
            }
            finish(
                &work,
                &target,
                &meta,
                &plan,
                &stats,
                local.as_ref(),
                request.sync,
            )
            .map(|()| stats)
        }
        Err(e) => Err(e),
    };
    if let Err(e) = std::fs::remove_dir_all(&work)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        warn!(dir = %work.display(), error = %e, "cannot remove the restore's work directory");
    }
    let stats = outcome?;
    summary.downloaded_files = stats.downloaded_files;
    summary.downloaded_bytes = stats.downloaded_bytes;
    summary.cached_bytes = stats.cached_bytes;
    summary.local_handle = local.as_ref().map(|l| l.old_subtask);
    summary.reused_files = stats.reused_files;
    summary.reused_bytes = stats.reused_bytes;
    summary.reused_read_back_bytes = stats.reused_read_back_bytes;
    summary.local_fallbacks = stats.local_fallbacks;
    summary.ingested_files = stats.ingested_files;
    summary.copied_keys = stats.copied_keys;
    summary.download_seconds = stats.download_seconds;
    summary.build_seconds = stats.build_seconds;
    summary.total_seconds = started.elapsed().as_secs_f64();
    info!(
        checkpoint = summary.checkpoint_id,
        subtask = summary.subtask,
        mode = ?summary.mode,
        downloaded_bytes = summary.downloaded_bytes,
        through_page_cache = summary.cached_bytes,
        reused_bytes = summary.reused_bytes,
        reused_read_back_bytes = summary.reused_read_back_bytes,
        ingested_files = summary.ingested_files,
        copied_keys = summary.copied_keys,
        seconds = summary.total_seconds,
        "restore complete"
    );
    Ok(summary)
}

/// Column families of the restored DB: those of every input handle, `default` first.
fn column_families(meta: &CheckpointMetadata, plan: &SubtaskPlan) -> Vec<String> {
    let mut out = vec![regroup_core::backend::DEFAULT_STATE.to_owned()];
    for input in &plan.inputs {
        let h = &meta.handles[input.old_subtask as usize];
        let names = h
            .column_families
            .iter()
            .chain(h.shared.iter().filter_map(|f| f.column_family.as_ref()));
        for name in names {
            if !out.contains(name) {
                out.push(name.clone());
            }
        }
    }
    out
}

/// Writes the marker, then renames the finished DB over the target; the DB it replaces (and a
/// local DB it reused) is removed only now that the new one is complete, its checkpoint marker
/// first, so that no crash leaves a marker naming a DB that no longer equals the checkpoint.
/// With `sync`, the directories are synced too.
fn finish(
    work: &Path,
    target: &Path,
    meta: &CheckpointMetadata,
    plan: &SubtaskPlan,
    stats: &build::BuildStats,
    local: Option<&LocalSource>,
    sync: bool,
) -> Result<()> {
    let db = work.join(build::BUILT_DB_DIR);
    let marker = RestoreMarker {
        job: meta.job.clone(),
        checkpoint_id: meta.checkpoint_id,
        max_parallelism: meta.max_parallelism,
        range: plan.range,
        files: list_files(&db)?,
        synced: sync,
        boot_id: if sync { None } else { statedir::boot_id() },
        stored: stats.stored.clone(),
    };
    marker.write(&db)?;
    if sync {
        sync_path(&db)?;
    }
    let state_dir = target.parent();
    let target_is_marked_db = state_dir.is_some_and(|d| statedir::db_dir(d) == target);
    if let Some(d) = state_dir
        && (target_is_marked_db || local.is_some())
    {
        regroup_core::statedir::marker::LocalCheckpointMarker::remove(d)?;
    }
    if target.exists() {
        // A stale DB (another checkpoint, another range, or opened since): replaced only now
        // that the new one is complete.
        std::fs::remove_dir_all(target).map_err(Error::io("remove", target))?;
    }
    std::fs::rename(&db, target).map_err(Error::io("rename into place", target))?;
    if let Some(parent) = target.parent()
        && sync
    {
        sync_path(parent)?;
    }
    if let Some(l) = local
        && l.db != target
        && l.db.exists()
    {
        std::fs::remove_dir_all(&l.db).map_err(Error::io("remove the reused local DB", &l.db))?;
    }
    Ok(())
}

/// Refuses a restore whose downloads cannot fit on the volume of `dir`, before downloading
/// anything: the message says how much is needed, how much is there and what to do.
fn check_space(dir: &Path, needed: u64) -> Result<()> {
    let stat = rustix::fs::statvfs(dir).map_err(|e| Error::io("statvfs", dir)(e.into()))?;
    let available = stat.f_bavail.saturating_mul(stat.f_frsize);
    if needed <= available {
        return Ok(());
    }
    Err(Error::Other(format!(
        "no space left for the restore on {}: it downloads {needed} bytes, {available} bytes are available; give the worker a larger state volume (expand its claim, e.g. kubectl patch pvc state-<job>-<ordinal> with a larger spec.resources.requests.storage, where the storage class allows expansion)",
        dir.display()
    )))
}

/// What [`start_empty`] removed from a kept volume.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Emptied {
    /// Files removed.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Prepares `target` for a worker whose generation restores no checkpoint (none completed
/// yet): removes the DB, the checkpoint marker and the native checkpoints a kept volume holds
/// (an earlier generation's, or an earlier job's of the same name), so that the worker starts
/// with empty state and no stale key group comes back.
pub fn start_empty(target: &Path) -> Result<Emptied> {
    fn measure(path: &Path, out: &mut Emptied) {
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            return;
        };
        if meta.is_dir() {
            for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
                measure(&entry.path(), out);
            }
        } else {
            out.files += 1;
            out.bytes += meta.len();
        }
    }
    let target = absolute(target)?;
    let state_dir = target.parent().ok_or_else(|| {
        Error::invalid(
            "target",
            target.display(),
            "a directory below the worker's volume",
        )
    })?;
    let mut emptied = Emptied::default();
    let marker = regroup_core::statedir::marker::marker_path(state_dir);
    let snapshots = statedir::snapshot_dir(state_dir);
    for path in [&marker, &target, &snapshots] {
        measure(path, &mut emptied);
    }
    // The marker first: no crash leaves a marker naming a DB that is half gone.
    regroup_core::statedir::marker::LocalCheckpointMarker::remove(state_dir)?;
    for dir in [&target, &snapshots] {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove", dir.as_path())(e)),
        }
    }
    if let Some(name) = target.file_name() {
        remove_stale_work_dirs(state_dir, &name.to_string_lossy());
    }
    if state_dir.exists() {
        sync_path(state_dir)?;
    }
    Ok(emptied)
}

/// Removes work directories a killed restore of the same target left behind.
fn remove_stale_work_dirs(parent: &Path, name: &str) {
    let prefix = format!(".{name}.restore-");
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let path = entry.path();
            warn!(dir = %path.display(), "removing the work directory of an interrupted restore");
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(Error::io("resolve", path))
}
