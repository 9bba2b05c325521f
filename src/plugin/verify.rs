//! `kubectl regroup verify`: the oracle of the reference job (`regroup verify`) on a job's
//! checkpoint, with the store credentials read from the cluster.

use serde::Serialize;

use super::cluster::Cluster;
use crate::worker::oracle::{Verdict, verify};

/// The verdict as JSON or YAML.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Verified {
    /// No difference found.
    pub ok: bool,
    /// Events over all subtasks.
    pub events: u64,
    /// Keys over all subtasks.
    pub keys: u64,
    /// The oracle's finding.
    #[serde(flatten)]
    pub verdict: Verdict,
}

/// Verifies checkpoint `checkpoint` (default: the newest completed one) of job `name`.
pub async fn run(
    cluster: &Cluster,
    name: &str,
    checkpoint: Option<u64>,
) -> anyhow::Result<Verified> {
    let job = cluster.job(name).await?;
    let js = cluster.store(&job).await?;
    let verdict = verify(&js.store, checkpoint)
        .await
        .map_err(|e| js.failure(e))?;
    Ok(Verified {
        ok: verdict.ok(),
        events: verdict.events(),
        keys: verdict.keys(),
        verdict,
    })
}
