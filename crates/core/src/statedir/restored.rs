//! The marker a restore leaves in the DB it built, so that a later restore of the same
//! checkpoint and range into the same directory is a no-op (local recovery).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::checkpoint::{JobId, SharedFile};
use crate::error::{Error, Result};
use crate::keygroup::KeyGroupRange;

/// Name of the marker file the restore writes into the DB directory it produced.
pub const RESTORE_MARKER_FILE: &str = "REGROUP-RESTORE.json";

/// The marker a restore leaves in the DB it built: which restore produced it, and its files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestoreMarker {
    /// The job.
    pub job: JobId,
    /// The checkpoint restored.
    pub checkpoint_id: u64,
    /// Key groups of the job.
    pub max_parallelism: u32,
    /// Key groups of the DB.
    pub range: KeyGroupRange,
    /// Every file of the directory (the marker excepted) with its size, when the restore ended.
    pub files: BTreeMap<String, u64>,
    /// The files were synced before the restore ended (markers older than this field were).
    #[serde(default = "synced_by_default")]
    pub synced: bool,
    /// The boot of the node the restore ran on (`/proc/sys/kernel/random/boot_id`): the files of
    /// an unsynced restore are only sure to be what it wrote until the node restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// The SST files that are, byte for byte, stored files of the checkpoint, by their name in
    /// the DB: the worker's snapshots reference them instead of uploading them again.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stored: BTreeMap<String, SharedFile>,
}

impl RestoreMarker {
    /// The marker in `dir`, if there is one this build can read.
    pub fn read(dir: &Path) -> Option<Self> {
        let bytes = std::fs::read(dir.join(RESTORE_MARKER_FILE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Writes the marker into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(RESTORE_MARKER_FILE);
        let bytes = serde_json::to_vec_pretty(self).map_err(|source| Error::Json {
            file: path.display().to_string(),
            source,
        })?;
        std::fs::write(&path, bytes).map_err(Error::io("write", &path))
    }
}

fn synced_by_default() -> bool {
    true
}
