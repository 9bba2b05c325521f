//! `kubectl regroup checkpoints`: the job's store, as `regroup checkpoints list|show` prints it.

use serde::Serialize;

use super::cluster::Cluster;
use super::output::{Output, render};
use crate::inventory::{self, CheckpointRow, Shown};

/// `checkpoints NAME` as JSON or YAML.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Listed {
    /// NAMESPACE/NAME.
    pub job: String,
    /// The storage URL.
    pub store: String,
    /// Every checkpoint, oldest first.
    pub checkpoints: Vec<CheckpointRow>,
}

/// `checkpoints NAME [--files] [--checkpoint ID]`: the list, or with `--files` or
/// `--checkpoint` the handles and files of completed checkpoints.
pub async fn run(
    cluster: &Cluster,
    name: &str,
    files: bool,
    checkpoint: Option<u64>,
    output: Output,
) -> anyhow::Result<String> {
    let job = cluster.job(name).await?;
    let js = cluster.store(&job).await?;
    let store = &js.store;
    if files || checkpoint.is_some() {
        let metas = inventory::metadata(store, checkpoint)
            .await
            .map_err(|e| js.failure(e))?;
        return render(output, &Shown::new(metas, files), Shown::text);
    }
    let rows = inventory::checkpoint_rows(store)
        .await
        .map_err(|e| js.failure(e))?;
    let listed = Listed {
        job: store.job().to_string(),
        store: store.url().to_owned(),
        checkpoints: rows,
    };
    render(output, &listed, |l| {
        inventory::rows_text(&l.checkpoints, &l.job, &l.store)
    })
}
