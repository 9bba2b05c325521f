//! Argument types that several subcommands share (a leaf: the subcommands' modules import it,
//! it imports none of them).

use std::time::Duration;

use clap::Args;

use crate::checkpoint::{CheckpointStore, JobId};
use crate::error::Result;

/// Where a job's checkpoints are.
#[derive(Args, Debug, Clone)]
pub struct StoreArgs {
    /// Storage URL: file:///DIR, s3://BUCKET/PREFIX, gs://..., az://..., memory://NAME.
    #[arg(long, env = "REGROUP_STORE")]
    pub store: String,
    /// The job, as NAMESPACE/NAME.
    #[arg(long, env = "REGROUP_JOB")]
    pub job: JobId,
}

impl StoreArgs {
    /// Opens the job's checkpoint store.
    pub fn open(&self) -> Result<CheckpointStore> {
        CheckpointStore::from_url(&self.store, self.job.clone())
    }
}

/// Parses a duration such as `30s`, `10m`, `1h30m`.
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration like 30s, 10m or 1h ({e})"))
}
