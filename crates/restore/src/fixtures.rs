//! Checkpoint metadata built by hand for the restore's unit tests (no store, no RocksDB).

use regroup_core::checkpoint::metadata::FORMAT_VERSION;
use regroup_core::checkpoint::{
    CheckpointMetadata, Checksum, FileRef, PrivateFile, SharedFile, SubtaskHandle,
};
use regroup_core::keygroup::{KeyGroupRange, ranges};

/// A checkpoint at `p` whose every handle has one SST per `files_per_handle` slice of its
/// range plus one private file.
pub fn checkpoint(m: u32, p: u32, files_per_handle: u32) -> CheckpointMetadata {
    let handles = ranges(m, p)
        .unwrap()
        .into_iter()
        .enumerate()
        .map(|(i, range)| {
            let n = files_per_handle.min(range.len());
            let shared = (0..n)
                .map(|f| {
                    let start = range.start + f * range.len() / n;
                    let end = range.start + (f + 1) * range.len() / n - 1;
                    SharedFile {
                        local_name: format!("{:06}.sst", f + 10),
                        file: FileRef {
                            path: format!("shared/inst{i}/{:06}.sst", f + 10),
                            size: 1000 + u64::from(f),
                            checksum: Checksum(0),
                        },
                        column_family: Some("default".into()),
                        level: Some(6),
                        key_groups: Some(KeyGroupRange { start, end }),
                        order: None,
                    }
                })
                .collect();
            SubtaskHandle {
                format_version: FORMAT_VERSION,
                job: "ns/job".parse().unwrap(),
                checkpoint_id: 5,
                epoch: 1,
                subtask: i as u32,
                parallelism: p,
                max_parallelism: m,
                key_group_range: range,
                instance_id: format!("inst{i}"),
                column_families: vec!["default".into()],
                shared,
                private: vec![PrivateFile {
                    local_name: "CURRENT".into(),
                    file: FileRef {
                        path: format!("chk-5/private/{i}/CURRENT"),
                        size: 16,
                        checksum: Checksum(0),
                    },
                }],
                bytes_total: 0,
                bytes_uploaded: 0,
                created_at: chrono::Utc::now(),
            }
        })
        .collect();
    CheckpointMetadata {
        format_version: FORMAT_VERSION,
        job: "ns/job".parse().unwrap(),
        checkpoint_id: 5,
        epoch: 1,
        parallelism: p,
        max_parallelism: m,
        completed_at: chrono::Utc::now(),
        handles,
    }
}
