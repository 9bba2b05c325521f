//! How far a restore got: each restore writes its progress to the store
//! (`_progress/epoch-<E>/<subtask>.json`) every few seconds, and the operator reads the
//! epoch's progress into the job's status while it restores. No API access is needed in the
//! init container, only the store credentials it has anyway.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::metadata::FORMAT_VERSION;
use super::store::CheckpointStore;
use crate::error::Result;

/// The phases of a restore, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RestorePhase {
    /// Reading the checkpoint and planning.
    Planning,
    /// Fetching files (downloads, and hard links from the kept volume).
    Downloading,
    /// Building the DB from them (ingest or copy).
    Ingesting,
    /// Dropping what lies outside the new range.
    Clipping,
    /// Finished.
    Done,
}

impl RestorePhase {
    const ALL: [RestorePhase; 5] = [
        RestorePhase::Planning,
        RestorePhase::Downloading,
        RestorePhase::Ingesting,
        RestorePhase::Clipping,
        RestorePhase::Done,
    ];
}

/// One subtask's restore progress, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestoreProgress {
    /// Metadata format version.
    pub format_version: u32,
    /// The new subtask.
    pub subtask: u32,
    /// Its phase.
    pub phase: RestorePhase,
    /// Bytes fetched so far.
    pub bytes_done: u64,
    /// Bytes to fetch in all.
    pub bytes_total: u64,
    /// When this was written.
    pub updated_at: DateTime<Utc>,
}

/// A restore's progress as it runs, shared between its tasks.
#[derive(Debug, Default)]
pub struct Tracker {
    phase: AtomicU8,
    done: AtomicU64,
    total: AtomicU64,
}

impl Tracker {
    /// Moves to `phase` unless a later one was reached.
    pub fn advance(&self, phase: RestorePhase) {
        self.phase.fetch_max(phase as u8, Ordering::Relaxed);
    }

    /// Sets the bytes to fetch.
    pub fn set_total(&self, bytes: u64) {
        self.total.store(bytes, Ordering::Relaxed);
    }

    /// Counts `bytes` fetched.
    pub fn add_done(&self, bytes: u64) {
        self.done.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The progress of `subtask` now.
    pub fn snapshot(&self, subtask: u32) -> RestoreProgress {
        let phase = RestorePhase::ALL
            .get(self.phase.load(Ordering::Relaxed) as usize)
            .copied()
            .unwrap_or(RestorePhase::Done);
        RestoreProgress {
            format_version: FORMAT_VERSION,
            subtask,
            phase,
            bytes_done: self.done.load(Ordering::Relaxed),
            bytes_total: self.total.load(Ordering::Relaxed),
            updated_at: Utc::now(),
        }
    }
}

/// Writes the progress of a restore of `epoch`.
pub async fn write(store: &CheckpointStore, epoch: u64, progress: &RestoreProgress) -> Result<()> {
    store
        .put_json(&store.paths().progress(epoch, progress.subtask), progress)
        .await
}

/// The progress every restore of `epoch` wrote so far, by subtask.
pub async fn read_epoch(store: &CheckpointStore, epoch: u64) -> Result<Vec<RestoreProgress>> {
    let mut out: Vec<RestoreProgress> = store
        .read_json_under(&store.paths().progress_dir(epoch))
        .await?;
    out.sort_by_key(|p| p.subtask);
    Ok(out)
}

/// Deletes the progress of every epoch before `epoch`.
pub async fn clear_before(store: &CheckpointStore, epoch: u64) -> Result<()> {
    let listed = store.list_under(&store.paths().progress_root()).await?;
    let old = listed
        .into_iter()
        .filter(|m| {
            store
                .paths()
                .relative(&m.location)
                .split('/')
                .nth(1)
                .and_then(|d| d.strip_prefix("epoch-"))
                .and_then(|e| e.parse::<u64>().ok())
                .is_some_and(|e| e < epoch)
        })
        .map(|m| m.location)
        .collect();
    store.delete_all(old).await
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use object_store::memory::InMemory;
    use object_store::path::Path;

    use super::*;

    #[tokio::test]
    async fn progress_is_written_read_and_cleared_by_epoch() {
        let store = CheckpointStore::new(
            Arc::new(InMemory::new()),
            Path::from("jobs"),
            "prod/orders".parse().unwrap(),
        );
        let t = Tracker::default();
        t.set_total(100);
        t.advance(RestorePhase::Downloading);
        t.add_done(40);
        t.advance(RestorePhase::Planning);
        let p = t.snapshot(1);
        assert_eq!(
            (p.phase, p.bytes_done, p.bytes_total),
            (RestorePhase::Downloading, 40, 100)
        );
        write(&store, 3, &p).await.unwrap();
        write(&store, 2, &t.snapshot(0)).await.unwrap();
        assert_eq!(read_epoch(&store, 3).await.unwrap(), vec![p.clone()]);
        clear_before(&store, 3).await.unwrap();
        assert!(read_epoch(&store, 2).await.unwrap().is_empty());
        assert_eq!(read_epoch(&store, 3).await.unwrap(), vec![p]);
    }
}
