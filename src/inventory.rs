//! What a job's store holds, as rows: the tables of `regroup checkpoints list|show` and of
//! `kubectl regroup checkpoints` (which also prints them as JSON or YAML).

use std::fmt::Write;

use serde::Serialize;

use crate::checkpoint::registry::FileReferences;
use crate::checkpoint::{CheckpointMetadata, CheckpointStore};
use crate::error::Result;

/// One checkpoint of a store.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointRow {
    /// Id.
    pub id: u64,
    /// Whether its `_metadata.json` exists.
    pub completed: bool,
    /// The rest, for completed ones.
    #[serde(flatten)]
    pub detail: Option<CheckpointDetail>,
}

/// What a completed checkpoint's metadata says.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointDetail {
    /// Epoch of the workers that took it.
    pub epoch: u64,
    /// Workers that took it.
    pub parallelism: u32,
    /// When it completed (RFC 3339).
    pub completed_at: String,
    /// Bytes of all files it references.
    pub bytes_total: u64,
    /// Bytes uploaded for it.
    pub bytes_new: u64,
    /// Shared files it references.
    pub shared_files: usize,
    /// Private files it references.
    pub private_files: usize,
}

impl CheckpointDetail {
    /// The detail of `m`.
    pub fn of(m: &CheckpointMetadata) -> Self {
        Self {
            epoch: m.epoch,
            parallelism: m.parallelism,
            completed_at: m.completed_at.to_rfc3339(),
            bytes_total: m.bytes_total(),
            bytes_new: m.bytes_uploaded(),
            shared_files: m.handles.iter().map(|h| h.shared.len()).sum(),
            private_files: m
                .handles
                .iter()
                .map(|h| h.private.len() + h.inline.len())
                .sum(),
        }
    }
}

/// Every checkpoint of the store, oldest first.
pub async fn checkpoint_rows(store: &CheckpointStore) -> Result<Vec<CheckpointRow>> {
    let mut rows = Vec::new();
    for (id, completed) in store.checkpoint_ids().await? {
        let detail = if completed {
            Some(CheckpointDetail::of(&store.read_metadata(id).await?))
        } else {
            None
        };
        rows.push(CheckpointRow {
            id,
            completed,
            detail,
        });
    }
    Ok(rows)
}

/// The table of `checkpoints list`; `store` names the job and store when there are none.
pub fn rows_text(rows: &[CheckpointRow], job: &str, store: &str) -> String {
    let mut out = String::new();
    if rows.is_empty() {
        writeln!(out, "no checkpoints for job {job} in {store}").ok();
        return out;
    }
    writeln!(
        out,
        "{:>8}  {:<10}  {:>5}  {:>11}  {:>14}  {:>14}  {:>6}  {:>7}",
        "ID", "STATUS", "EPOCH", "PARALLELISM", "BYTES", "NEW BYTES", "SHARED", "PRIVATE"
    )
    .ok();
    for row in rows {
        match &row.detail {
            Some(d) => writeln!(
                out,
                "{:>8}  {:<10}  {:>5}  {:>11}  {:>14}  {:>14}  {:>6}  {:>7}",
                row.id,
                "completed",
                d.epoch,
                d.parallelism,
                d.bytes_total,
                d.bytes_new,
                d.shared_files,
                d.private_files
            ),
            None => writeln!(out, "{:>8}  {:<10}", row.id, "incomplete"),
        }
        .ok();
    }
    out
}

/// What `checkpoints show` prints as JSON or YAML.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Shown {
    /// The metadata of each checkpoint shown.
    pub checkpoints: Vec<CheckpointMetadata>,
    /// With `--files`: every file and the checkpoints that reference it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<FileRow>>,
}

/// A stored file and who references it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FileRow {
    /// Job-relative path.
    pub path: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Ids of the checkpoints that reference it.
    pub referenced_by: Vec<u64>,
}

impl Shown {
    /// `metas`, with their file references when `files`.
    pub fn new(metas: Vec<CheckpointMetadata>, files: bool) -> Self {
        let files = files.then(|| {
            FileReferences::from_checkpoints(&metas)
                .files
                .into_iter()
                .map(|(path, (bytes, ids))| FileRow {
                    path,
                    bytes,
                    referenced_by: ids.into_iter().collect(),
                })
                .collect()
        });
        Self {
            checkpoints: metas,
            files,
        }
    }

    /// The text of `checkpoints show`.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for m in &self.checkpoints {
            writeln!(
                out,
                "checkpoint {} of {}: epoch {}, parallelism {}, max parallelism {}, completed {}, {} bytes ({} new)",
                m.checkpoint_id,
                m.job,
                m.epoch,
                m.parallelism,
                m.max_parallelism,
                m.completed_at.to_rfc3339(),
                m.bytes_total(),
                m.bytes_uploaded()
            )
            .ok();
            for h in &m.handles {
                writeln!(
                    out,
                    "  subtask {:>4}  key groups {:<14}  instance {}  {} bytes ({} new)  {} shared, {} private files",
                    h.subtask,
                    h.key_group_range.to_string(),
                    h.instance_id,
                    h.bytes_total,
                    h.bytes_uploaded,
                    h.shared.len(),
                    h.private.len() + h.inline.len()
                )
                .ok();
            }
        }
        if let Some(files) = &self.files {
            writeln!(out, "\n{:<60}  {:>12}  REFERENCED BY", "FILE", "BYTES").ok();
            for f in files {
                let ids: Vec<String> = f.referenced_by.iter().map(|i| i.to_string()).collect();
                writeln!(out, "{:<60}  {:>12}  {}", f.path, f.bytes, ids.join(",")).ok();
            }
        }
        out
    }
}

/// The metadata of checkpoint `id`, or of every completed one.
pub async fn metadata(store: &CheckpointStore, id: Option<u64>) -> Result<Vec<CheckpointMetadata>> {
    let ids = match id {
        Some(id) => vec![id],
        None => store.completed_ids().await?,
    };
    let mut metas = Vec::with_capacity(ids.len());
    for id in ids {
        metas.push(store.read_metadata(id).await?);
    }
    Ok(metas)
}
