//! Pins: checkpoints that snapshots hold, recorded in the store (`_pins/<key>.json`) so that
//! every garbage collection (the operator's and `regroup checkpoints gc` run by hand) keeps
//! them and every file they reference, whatever the job's retention says.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::metadata::FORMAT_VERSION;
use super::paths::check_local_name;
use super::store::CheckpointStore;
use crate::error::Result;

/// A checkpoint held by a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pin {
    /// Metadata format version.
    pub format_version: u32,
    /// The checkpoint held.
    pub checkpoint_id: u64,
    /// Who holds it, for people reading the store (`StatefulJobSnapshot prod/before-release`).
    pub holder: String,
    /// When the pin was written.
    pub created_at: DateTime<Utc>,
}

/// Records that `holder` holds checkpoint `id` under `key` (written again, the same).
pub async fn pin(store: &CheckpointStore, key: &str, id: u64, holder: &str) -> Result<()> {
    check_local_name(key, "a pin key")?;
    let location = store.paths().pin(key);
    if let Some(existing) = store.get_json::<Pin>(&location).await?
        && existing.checkpoint_id == id
    {
        return Ok(());
    }
    let pin = Pin {
        format_version: FORMAT_VERSION,
        checkpoint_id: id,
        holder: holder.to_owned(),
        created_at: Utc::now(),
    };
    store.put_json(&location, &pin).await
}

/// Releases the pin recorded under `key` (none is fine).
pub async fn unpin(store: &CheckpointStore, key: &str) -> Result<()> {
    check_local_name(key, "a pin key")?;
    store.delete_all(vec![store.paths().pin(key)]).await
}

/// Every pin of the job.
pub async fn pins(store: &CheckpointStore) -> Result<Vec<Pin>> {
    store.read_json_under(&store.paths().pins_dir()).await
}

/// The ids the pins hold, ascending, without repeats.
pub fn pinned_ids(pins: &[Pin]) -> Vec<u64> {
    let mut ids: Vec<u64> = pins.iter().map(|p| p.checkpoint_id).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}
