//! The marker a worker leaves next to its DB after a stop-with-checkpoint: which checkpoint the
//! local DB equals, so a later restore on the same volume can reuse local files instead of
//! downloading them (issue 9). A marker only says "this DB equals handle X"; whether checkpoint X
//! completed is for the reader to check in the store.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::checkpoint::JobId;
use crate::error::{Error, Result};
use crate::keygroup::KeyGroupRange;

/// File name of the marker in the state directory, beside `db/`.
pub const MARKER_FILE: &str = "checkpoint-marker.json";

/// Format version of the marker; readers ignore markers of another version.
pub const MARKER_VERSION: u32 = 1;

/// What the local DB equals after a stop-with-checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalCheckpointMarker {
    /// Always [`MARKER_VERSION`] when written by this build.
    pub format_version: u32,
    /// The job.
    pub job: JobId,
    /// The checkpoint whose handle the DB equals.
    pub checkpoint_id: u64,
    /// DB instance that wrote the handle's files (names its shared files in the store).
    pub instance_id: String,
    /// Subtask index of the worker.
    pub subtask: u32,
    /// Parallelism of the worker generation.
    pub parallelism: u32,
    /// Number of key groups of the job.
    pub max_parallelism: u32,
    /// Key groups the DB holds.
    pub key_group_range: KeyGroupRange,
    /// Epoch of the worker generation.
    pub epoch: u64,
    /// When the marker was written.
    pub created_at: DateTime<Utc>,
}

/// Path of the marker in `state_dir`.
pub fn marker_path(state_dir: &Path) -> PathBuf {
    state_dir.join(MARKER_FILE)
}

impl LocalCheckpointMarker {
    /// The marker saying a local DB equals `handle` (the DB that wrote it, as of its checkpoint).
    pub fn of_handle(handle: &crate::checkpoint::SubtaskHandle) -> Self {
        Self {
            format_version: MARKER_VERSION,
            job: handle.job.clone(),
            checkpoint_id: handle.checkpoint_id,
            instance_id: handle.instance_id.clone(),
            subtask: handle.subtask,
            parallelism: handle.parallelism,
            max_parallelism: handle.max_parallelism,
            key_group_range: handle.key_group_range,
            epoch: handle.epoch,
            created_at: Utc::now(),
        }
    }

    /// Writes the marker atomically (temporary file, then rename).
    pub fn write(&self, state_dir: &Path) -> Result<()> {
        let path = marker_path(state_dir);
        let tmp = state_dir.join(format!("{MARKER_FILE}.tmp"));
        let bytes = serde_json::to_vec_pretty(self).map_err(|source| Error::Json {
            file: path.display().to_string(),
            source,
        })?;
        std::fs::write(&tmp, bytes).map_err(Error::io("write", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(Error::io("rename", &path))
    }

    /// The marker in `state_dir`, if there is one of this format version.
    pub fn read(state_dir: &Path) -> Result<Option<Self>> {
        let path = marker_path(state_dir);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("read", &path)(e)),
        };
        let marker: Self = serde_json::from_slice(&bytes).map_err(|source| Error::Json {
            file: path.display().to_string(),
            source,
        })?;
        Ok((marker.format_version == MARKER_VERSION).then_some(marker))
    }

    /// Removes the marker: the DB is about to change and no longer equals the checkpoint.
    pub fn remove(state_dir: &Path) -> Result<()> {
        let path = marker_path(state_dir);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove", &path)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_read_remove() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(LocalCheckpointMarker::read(dir.path()).unwrap(), None);
        let m = LocalCheckpointMarker {
            format_version: MARKER_VERSION,
            job: "ns/j".parse().unwrap(),
            checkpoint_id: 7,
            instance_id: "abc".into(),
            subtask: 1,
            parallelism: 3,
            max_parallelism: 128,
            key_group_range: KeyGroupRange::for_subtask(128, 3, 1).unwrap(),
            epoch: 2,
            created_at: Utc::now(),
        };
        m.write(dir.path()).unwrap();
        assert_eq!(LocalCheckpointMarker::read(dir.path()).unwrap(), Some(m));
        LocalCheckpointMarker::remove(dir.path()).unwrap();
        assert_eq!(LocalCheckpointMarker::read(dir.path()).unwrap(), None);
    }
}
