//! The worker's state volume, which the worker and the restore init container share:
//!
//! ```text
//! <state dir>/
//!   db/                       the subtask's RocksDB (built by a restore, opened by the worker)
//!     REGROUP-RESTORE.json    which restore built it and which of its files are stored ones
//!                             ([`restored::RestoreMarker`])
//!   snapshots/                native checkpoints before their upload
//!   checkpoint-marker.json    which checkpoint the DB equals after a stop ([`marker`])
//!   ...                       the job's own files (the reference job caches its key table)
//! ```
//!
//! Both markers record the node's boot: unsynced files are trusted only within it.

pub mod marker;
pub mod restored;

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Directory of the DB inside the state directory.
pub const DB_DIR: &str = "db";
/// Directory of native checkpoints inside the state directory.
pub const SNAPSHOT_DIR: &str = "snapshots";

/// The DB directory of a state directory.
pub fn db_dir(state_dir: &Path) -> PathBuf {
    state_dir.join(DB_DIR)
}

/// The directory of native checkpoints of a state directory.
pub fn snapshot_dir(state_dir: &Path) -> PathBuf {
    state_dir.join(SNAPSHOT_DIR)
}

/// The current boot of this machine, where the kernel says it (Linux).
pub fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// Whether `recorded` (a marker's boot id) is this boot of the machine: files not yet written
/// back when the marker was written may have been lost in a crash since. An unknown boot never
/// is.
pub fn in_this_boot(recorded: Option<&str>) -> bool {
    recorded.is_some() && recorded == boot_id().as_deref()
}

/// Syncs the file or directory at `path` to disk.
pub fn sync_path(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(Error::io("sync", path))
}
