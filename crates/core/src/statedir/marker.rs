//! The marker a worker leaves next to its DB after a stop-with-checkpoint: which checkpoint the
//! local DB equals, so a later restore on the same volume can reuse local files instead of
//! downloading them. A marker only says "this DB equals handle X"; whether checkpoint X
//! completed is for the reader to check in the store.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::sync_path;
use crate::checkpoint::{Checksum, JobId, SubtaskHandle};
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
    /// The boot of the node when the marker was written (`/proc/sys/kernel/random/boot_id`):
    /// unless [`Self::files_synced`], [`Self::files`] vouch for the files only within that
    /// boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// Every file of [`Self::files`] (and the DB directory) was synced to disk before the
    /// marker was written, and the marker before it was renamed into place: the files vouched
    /// for survive a crash of the node, so they are vouched for in any later boot too (a
    /// restart of the node, or the volume attached to another node). False in markers written
    /// before this field.
    #[serde(default)]
    pub files_synced: bool,
    /// The handle's SST files as the DB held them when the marker was written, by name: what
    /// the checkpoint recorded of each (size, checksum) and the file's identity then (see
    /// [`VouchedFile`]). Empty in markers written before this field.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, VouchedFile>,
}

/// One SST file of the local DB as it was when the marker was written. The checkpoint read the
/// same inode for its checksum; a file whose inode, size, modification time and status-change
/// time (`ctime`, which every write, truncation, rename, link or unlink of the inode sets, and
/// no process can set back) are still these has not changed since, within the same boot of
/// the node, or in any boot if the file was synced before the marker was written
/// ([`LocalCheckpointMarker::files_synced`]). Otherwise, in another boot the file may have lost
/// writes the kernel had not yet written back, so a restore reads it back instead.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VouchedFile {
    /// Checksum of the content, as the checkpoint recorded it.
    pub checksum: Checksum,
    /// The file's identity when the marker was written; its size is the one the checkpoint
    /// recorded (a file of another size is not vouched for).
    pub identity: FileIdentity,
}

/// What identifies a file's content without reading it: inode, size and the nanosecond
/// modification and status-change times.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileIdentity {
    /// Inode number.
    pub inode: u64,
    /// Size in bytes.
    pub size: u64,
    /// Last modification, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Last status change, nanoseconds since the epoch.
    pub ctime_ns: i64,
}

impl FileIdentity {
    /// The identity of the file `meta` describes.
    pub fn of(meta: &std::fs::Metadata) -> Self {
        let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
        Self {
            inode: meta.ino(),
            size: meta.size(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// Whether the change time has a fraction of a second. File systems that keep whole
    /// seconds (ext4 with 128-byte inodes, some network file systems) would give a file
    /// changed within the same second as its last recorded change the same identity; their
    /// files are never vouched for. (On others, the change time is set from the kernel's clock
    /// tick, a few milliseconds.)
    pub fn fine_grained(&self) -> bool {
        self.ctime_ns % 1_000_000_000 != 0
    }

    /// The identity of the file at `path` (not following a final symbolic link).
    pub fn read(path: &Path) -> std::io::Result<Self> {
        std::fs::symlink_metadata(path).map(|m| Self::of(&m))
    }
}

/// Path of the marker in `state_dir`.
pub fn marker_path(state_dir: &Path) -> PathBuf {
    state_dir.join(MARKER_FILE)
}

impl LocalCheckpointMarker {
    /// The marker saying a local DB equals `handle` (the DB that wrote it, as of its checkpoint).
    /// It records no files: a restore reads back every file it reuses (see [`Self::of_local_db`]).
    pub fn of_handle(handle: &SubtaskHandle) -> Self {
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
            boot_id: None,
            files_synced: false,
            files: BTreeMap::new(),
        }
    }

    /// The marker a worker writes after its stop-with-checkpoint, once nothing changes its DB
    /// `db` any more: it equals `handle`, and records the identity of each of the handle's SST
    /// files found in `db` with the size the checkpoint recorded, and the node's boot, so that
    /// a restore in the same boot reuses an unchanged file without reading it (files missing
    /// or of another size are left out: a restore downloads them; files whose change time is
    /// in whole seconds too, see [`FileIdentity::fine_grained`]: a restore reads them back).
    pub fn of_local_db(handle: &SubtaskHandle, db: &Path) -> Self {
        let mut marker = Self::of_handle(handle);
        marker.boot_id = super::boot_id();
        marker.files = handle
            .shared
            .iter()
            .filter_map(|f| {
                let identity = FileIdentity::read(&db.join(&f.local_name)).ok()?;
                (identity.size == f.file.size && identity.fine_grained()).then(|| {
                    let file = VouchedFile {
                        checksum: f.file.checksum,
                        identity,
                    };
                    (f.local_name.clone(), file)
                })
            })
            .collect();
        marker
    }

    /// Syncs every file the marker vouches for in `db`, then `db` itself (their names), and
    /// records that they were ([`Self::files_synced`]). Files the worker's RocksDB wrote are
    /// synced already; files a restore took in unsynced may not be. The first failure is
    /// returned and the marker left as it was.
    pub fn sync_files(&mut self, db: &Path) -> Result<()> {
        for name in self.files.keys() {
            sync_path(&db.join(name))?;
        }
        sync_path(db)?;
        self.files_synced = true;
        Ok(())
    }

    /// Writes the marker atomically: a temporary file, synced, renamed into place, and the
    /// directory synced, so that after a crash of the node the marker is either whole or
    /// absent.
    pub fn write(&self, state_dir: &Path) -> Result<()> {
        let path = marker_path(state_dir);
        let tmp = state_dir.join(format!("{MARKER_FILE}.tmp"));
        let bytes = serde_json::to_vec_pretty(self).map_err(|source| Error::Json {
            file: path.display().to_string(),
            source,
        })?;
        std::fs::write(&tmp, bytes).map_err(Error::io("write", &tmp))?;
        sync_path(&tmp)?;
        std::fs::rename(&tmp, &path).map_err(Error::io("rename", &path))?;
        sync_path(state_dir)
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

    fn sample() -> LocalCheckpointMarker {
        LocalCheckpointMarker {
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
            boot_id: Some("b".into()),
            files_synced: true,
            files: BTreeMap::from([(
                "000009.sst".to_owned(),
                VouchedFile {
                    checksum: Checksum(9),
                    identity: FileIdentity {
                        inode: 1,
                        size: 3,
                        mtime_ns: 2,
                        ctime_ns: 3,
                    },
                },
            )]),
        }
    }

    #[test]
    fn write_read_remove() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(LocalCheckpointMarker::read(dir.path()).unwrap(), None);
        let m = sample();
        m.write(dir.path()).unwrap();
        assert_eq!(LocalCheckpointMarker::read(dir.path()).unwrap(), Some(m));
        LocalCheckpointMarker::remove(dir.path()).unwrap();
        assert_eq!(LocalCheckpointMarker::read(dir.path()).unwrap(), None);
    }

    /// Syncing records that the files were synced; a vouched file that is gone fails it and
    /// leaves the marker as it was.
    #[test]
    fn files_synced_only_when_every_vouched_file_was() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        std::fs::create_dir(&db).unwrap();
        std::fs::write(db.join("000001.sst"), b"x").unwrap();
        let vouched = |name: &str| {
            let identity = FileIdentity::read(&db.join("000001.sst")).unwrap();
            let file = VouchedFile {
                checksum: Checksum::of(b"x"),
                identity,
            };
            (name.to_owned(), file)
        };
        let mut m = LocalCheckpointMarker {
            files: BTreeMap::from([vouched("000001.sst")]),
            files_synced: false,
            ..sample()
        };
        m.sync_files(&db).unwrap();
        assert!(m.files_synced);

        m.files_synced = false;
        m.files.extend([vouched("000002.sst")]);
        let e = m.sync_files(&db).unwrap_err().to_string();
        assert!(e.contains("000002.sst"), "{e}");
        assert!(!m.files_synced);
    }

    /// A change time in whole seconds (a coarse file system) could hide a change in the same
    /// second: such a file is not fine-grained, one with a fraction is.
    #[test]
    fn whole_second_change_times_are_not_fine_grained() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"x").unwrap();
        let mut identity = FileIdentity::read(&path).unwrap();
        identity.ctime_ns = 1_700_000_000 * 1_000_000_000;
        assert!(!identity.fine_grained());
        identity.ctime_ns += 4_000_000;
        assert!(identity.fine_grained());
    }
}
