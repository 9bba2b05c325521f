//! Local state reused across a rescale: the DB a worker left on its volume after a
//! stop-with-checkpoint, named by its [`LocalCheckpointMarker`], and which handle it equals.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use regroup_core::checkpoint::CheckpointMetadata;
use regroup_core::statedir::in_this_boot;
use regroup_core::statedir::marker::{
    LocalCheckpointMarker, MARKER_FILE, MARKER_VERSION, VouchedFile,
};

/// A local DB that equals one handle of the checkpoint being restored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalSource {
    /// Directory of the local DB (`<state-dir>/db`).
    pub db: PathBuf,
    /// Old subtask of the handle it equals.
    pub old_subtask: u32,
    /// The files the marker vouches for, by name: a file whose identity is still the recorded
    /// one is reused without reading it. Empty when the marker records none, or was written in
    /// another boot without its files synced first (every reused file is then read back).
    pub files: BTreeMap<String, VouchedFile>,
}

/// Which handle of `meta` the DB named by `marker` equals, or why it equals none: same job,
/// same checkpoint, and the handle of the marker's subtask written by the marker's DB instance
/// over the marker's key groups.
pub fn matching_handle(
    marker: &LocalCheckpointMarker,
    meta: &CheckpointMetadata,
) -> std::result::Result<u32, String> {
    if marker.job != meta.job {
        return Err(format!("it is of job {}, not {}", marker.job, meta.job));
    }
    if marker.checkpoint_id != meta.checkpoint_id {
        return Err(format!(
            "it equals checkpoint {}, not the restored checkpoint {}",
            marker.checkpoint_id, meta.checkpoint_id
        ));
    }
    let Some(h) = meta.handles.iter().find(|h| h.subtask == marker.subtask) else {
        return Err(format!(
            "checkpoint {} has no handle of subtask {}",
            meta.checkpoint_id, marker.subtask
        ));
    };
    if h.instance_id != marker.instance_id {
        return Err(format!(
            "it is DB instance {}, the handle of subtask {} was written by instance {}",
            marker.instance_id, h.subtask, h.instance_id
        ));
    }
    if h.key_group_range != marker.key_group_range || meta.max_parallelism != marker.max_parallelism
    {
        return Err(format!(
            "it holds key groups {} of {}, the handle of subtask {} holds {} of {}",
            marker.key_group_range,
            marker.max_parallelism,
            h.subtask,
            h.key_group_range,
            meta.max_parallelism
        ));
    }
    Ok(h.subtask)
}

/// Why a state directory offers no local DB for a restore.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalUnused {
    /// No marker of this format version: the worker did not stop with a checkpoint here.
    NoMarker,
    /// The marker cannot be read or parsed.
    UnreadableMarker(String),
    /// The marker matches a handle but its DB directory is missing.
    MissingDb(PathBuf),
    /// The marker names another job, checkpoint, instance or range (from [`matching_handle`]).
    Mismatch(String),
}

impl std::fmt::Display for LocalUnused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LocalUnused::NoMarker => write!(
                f,
                "no local checkpoint marker ({MARKER_FILE}) of format version {MARKER_VERSION}"
            ),
            LocalUnused::UnreadableMarker(e) => {
                write!(f, "the local checkpoint marker is unreadable: {e}")
            }
            LocalUnused::MissingDb(db) => write!(
                f,
                "the local checkpoint marker matches but its DB {} is missing",
                db.display()
            ),
            LocalUnused::Mismatch(why) => {
                write!(f, "the local checkpoint marker does not match: {why}")
            }
        }
    }
}

/// The local DB in `state_dir` usable for restoring `meta`, or why there is none (no logging:
/// [`find`] is what the restore calls; `regroup plan` shows the reason).
pub fn examine(
    state_dir: &Path,
    meta: &CheckpointMetadata,
) -> std::result::Result<LocalSource, LocalUnused> {
    let marker = match LocalCheckpointMarker::read(state_dir) {
        Ok(Some(m)) => m,
        Ok(None) => return Err(LocalUnused::NoMarker),
        Err(e) => return Err(LocalUnused::UnreadableMarker(e.to_string())),
    };
    let db = regroup_core::statedir::db_dir(state_dir);
    let old_subtask = matching_handle(&marker, meta).map_err(LocalUnused::Mismatch)?;
    if !db.is_dir() {
        return Err(LocalUnused::MissingDb(db));
    }
    let files = if marker.files_synced || in_this_boot(marker.boot_id.as_deref()) {
        marker.files
    } else {
        BTreeMap::new()
    };
    Ok(LocalSource {
        db,
        old_subtask,
        files,
    })
}

/// The local DB in `state_dir` usable for restoring `meta`, if any; logs why one is not used.
pub fn find(state_dir: &Path, meta: &CheckpointMetadata) -> Option<LocalSource> {
    match examine(state_dir, meta) {
        Ok(source) => {
            info!(db = %source.db.display(), old_subtask = source.old_subtask, checkpoint = meta.checkpoint_id, vouched_files = source.files.len(), "local DB equals a handle of the checkpoint: its files are reused (those its marker vouches for by identity, the others read back)");
            Some(source)
        }
        Err(LocalUnused::NoMarker) => None,
        Err(LocalUnused::UnreadableMarker(e)) => {
            warn!(dir = %state_dir.display(), error = %e, "local checkpoint marker unreadable: local state not used");
            None
        }
        Err(LocalUnused::MissingDb(db)) => {
            warn!(db = %db.display(), "local checkpoint marker without its DB: local state not used");
            None
        }
        Err(LocalUnused::Mismatch(why)) => {
            info!(dir = %state_dir.display(), reason = %why, "local DB not used");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use regroup_core::keygroup::KeyGroupRange;
    use regroup_core::statedir::marker::MARKER_VERSION;

    fn meta() -> CheckpointMetadata {
        regroup_core::checkpoint::testing::checkpoint(8, 2, 2)
    }

    fn marker() -> LocalCheckpointMarker {
        LocalCheckpointMarker {
            format_version: MARKER_VERSION,
            job: "ns/job".parse().unwrap(),
            checkpoint_id: 5,
            instance_id: "inst1".into(),
            subtask: 1,
            parallelism: 2,
            max_parallelism: 8,
            key_group_range: KeyGroupRange::for_subtask(8, 2, 1).unwrap(),
            epoch: 1,
            created_at: chrono::Utc::now(),
            boot_id: None,
            files_synced: false,
            files: BTreeMap::new(),
        }
    }

    #[test]
    fn a_marker_matches_only_its_own_handle() {
        let meta = meta();
        assert_eq!(matching_handle(&marker(), &meta), Ok(1));
        let mut other_job = marker();
        other_job.job = "ns/other".parse().unwrap();
        assert!(
            matching_handle(&other_job, &meta)
                .unwrap_err()
                .contains("ns/other")
        );
        let mut older = marker();
        older.checkpoint_id = 4;
        assert!(
            matching_handle(&older, &meta)
                .unwrap_err()
                .contains("checkpoint 4")
        );
        let mut instance = marker();
        instance.instance_id = "inst0".into();
        assert!(
            matching_handle(&instance, &meta)
                .unwrap_err()
                .contains("inst0")
        );
        let mut subtask = marker();
        subtask.subtask = 2;
        assert!(matching_handle(&subtask, &meta).is_err());
        let mut range = marker();
        range.key_group_range = KeyGroupRange::for_subtask(8, 2, 0).unwrap();
        assert!(matching_handle(&range, &meta).is_err());
    }

    /// A marker vouches for its files in the boot it was written in, and in any boot once
    /// they were synced before it.
    #[test]
    fn files_are_vouched_for_in_the_markers_boot_or_once_synced() {
        let meta = meta();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(regroup_core::statedir::DB_DIR)).unwrap();
        let file = VouchedFile {
            checksum: regroup_core::checkpoint::Checksum(7),
            identity: regroup_core::statedir::marker::FileIdentity {
                inode: 12,
                size: 1000,
                mtime_ns: 1,
                ctime_ns: 2,
            },
        };
        let mut m = marker();
        m.files = BTreeMap::from([("000001.sst".to_owned(), file)]);
        let boot = regroup_core::statedir::boot_id();
        assert!(
            boot.is_some(),
            "this test needs /proc/sys/kernel/random/boot_id"
        );
        // Files synced before the marker was written are vouched for in any boot.
        for (written_in, synced, vouched) in [
            (boot.clone(), false, true),
            (Some("another boot".into()), false, false),
            (None, false, false),
            (boot, true, true),
            (Some("another boot".into()), true, true),
            (None, true, true),
        ] {
            (m.boot_id, m.files_synced) = (written_in, synced);
            m.write(dir.path()).unwrap();
            let source = examine(dir.path(), &meta).unwrap();
            let case = format!("{:?}, synced {synced}", m.boot_id);
            assert_eq!(source.files == m.files, vouched, "{case}");
            assert_eq!(source.files.is_empty(), !vouched, "{case}");
        }
    }

    #[test]
    fn examine_says_why_a_state_dir_is_not_used() {
        let meta = meta();
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(examine(dir.path(), &meta), Err(LocalUnused::NoMarker));
        marker().write(dir.path()).unwrap();
        let db = dir.path().join(regroup_core::statedir::DB_DIR);
        assert_eq!(
            examine(dir.path(), &meta),
            Err(LocalUnused::MissingDb(db.clone()))
        );
        std::fs::create_dir(&db).unwrap();
        assert_eq!(
            examine(dir.path(), &meta),
            Ok(LocalSource {
                db: db.clone(),
                old_subtask: 1,
                files: BTreeMap::new(),
            })
        );
        assert_eq!(find(dir.path(), &meta), examine(dir.path(), &meta).ok());
        let mut older = marker();
        older.checkpoint_id = 4;
        older.write(dir.path()).unwrap();
        let why = examine(dir.path(), &meta).unwrap_err();
        assert!(matches!(why, LocalUnused::Mismatch(_)), "{why}");
        assert!(why.to_string().contains("checkpoint 4"), "{why}");
        assert_eq!(find(dir.path(), &meta), None);
        std::fs::write(dir.path().join(MARKER_FILE), b"{").unwrap();
        assert!(matches!(
            examine(dir.path(), &meta),
            Err(LocalUnused::UnreadableMarker(_))
        ));
    }
}
