//! Handles and checkpoint metadata built by hand, for tests (no store, no RocksDB): the one
//! place that spells out a whole [`SubtaskHandle`] besides the snapshotter.

use super::metadata::FORMAT_VERSION;
use super::{CheckpointMetadata, Checksum, FileRef, JobId, PrivateFile, SharedFile, SubtaskHandle};
use crate::keygroup::{KeyGroupRange, ranges};

/// The handle of subtask `subtask` of `parallelism` (of `max_parallelism` key groups) for
/// checkpoint `checkpoint_id`, epoch 1, DB instance `i`, with no files: tests set the fields
/// they care about with struct update syntax.
pub fn handle(
    job: JobId,
    checkpoint_id: u64,
    max_parallelism: u32,
    parallelism: u32,
    subtask: u32,
) -> SubtaskHandle {
    SubtaskHandle {
        format_version: FORMAT_VERSION,
        job,
        checkpoint_id,
        epoch: 1,
        subtask,
        parallelism,
        max_parallelism,
        key_group_range: KeyGroupRange::for_subtask(max_parallelism, parallelism, subtask)
            .expect("a subtask of a valid parallelism"),
        instance_id: "i".into(),
        column_families: vec!["default".into()],
        shared: vec![],
        private: vec![],
        inline: vec![],
        bytes_total: 0,
        bytes_uploaded: 0,
        created_at: chrono::Utc::now(),
        processed: None,
    }
}

/// Checkpoint 5 of `ns/job` at parallelism `p` (of `m` key groups), whose every handle has one SST per `files_per_handle` slice of its
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
                instance_id: format!("inst{i}"),
                shared,
                private: vec![PrivateFile {
                    local_name: "CURRENT".into(),
                    file: FileRef {
                        path: format!("chk-5/private/{i}/CURRENT"),
                        size: 16,
                        checksum: Checksum(0),
                    },
                }],
                ..handle("ns/job".parse().unwrap(), 5, m, p, i as u32)
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
