//! `kubectl regroup snapshot`: creates a StatefulJobSnapshot of a job and waits until it holds
//! its checkpoint.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use serde::Serialize;

use super::cluster::Cluster;
use crate::operator::snapshot::{
    SnapshotPhase, StatefulJobSnapshot, StatefulJobSnapshotSpec, StatefulJobSnapshotStatus,
};

/// A snapshot, as `snapshot` prints it once ready.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotLine {
    /// Its name.
    pub name: String,
    /// The job.
    pub job: String,
    /// The checkpoint it holds.
    pub checkpoint_id: Option<u64>,
    /// Its size.
    pub bytes: Option<u64>,
    /// Workers that took it.
    pub parallelism: Option<u32>,
}

/// The default name of a snapshot of `job` taken at `now`: `JOB-YYYYMMDD-HHMMSS`.
pub fn default_name(job: &str, now: Timestamp) -> String {
    let stamp = now.strftime("%Y%m%d-%H%M%S").to_string();
    // Names are at most 253 characters; a job name is at most 52.
    format!("{job}-{stamp}")
}

/// Where a snapshot is, in words; `Err` once it failed.
pub fn describe(status: Option<&StatefulJobSnapshotStatus>) -> Result<String, String> {
    let Some(s) = status else {
        return Ok("created; waiting for the operator".to_owned());
    };
    match s.phase {
        None => Ok("created; waiting for the operator".to_owned()),
        Some(SnapshotPhase::Pending) => Ok("pending: waiting for the job to run".to_owned()),
        Some(SnapshotPhase::InProgress) => Ok(match s.checkpoint_id {
            Some(id) => format!("checkpoint {id} in flight"),
            None => "a checkpoint is being taken".to_owned(),
        }),
        Some(SnapshotPhase::Completed) => Ok(format!(
            "ready: holds checkpoint {} ({} bytes)",
            s.checkpoint_id.map_or("?".to_owned(), |i| i.to_string()),
            s.bytes.unwrap_or(0)
        )),
        Some(SnapshotPhase::Failed) => Err(s
            .failure_reason
            .clone()
            .unwrap_or_else(|| "no reason given".to_owned())),
    }
}

/// Creates snapshot `snapshot` (default: [`default_name`]) of `job` and waits up to `timeout`.
pub async fn run(
    cluster: &Cluster,
    job: &str,
    snapshot: Option<String>,
    timeout: Duration,
) -> anyhow::Result<SnapshotLine> {
    cluster.job(job).await?;
    let name = snapshot.unwrap_or_else(|| default_name(job, Timestamp::now()));
    let object = StatefulJobSnapshot {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(cluster.namespace.clone()),
            ..Default::default()
        },
        spec: StatefulJobSnapshotSpec {
            job: job.to_owned(),
            dispose_on_delete: true,
            retain: None,
        },
        status: None,
    };
    let api = cluster.api::<StatefulJobSnapshot>();
    api.create(&PostParams::default(), &object)
        .await
        .with_context(|| format!("creating StatefulJobSnapshot {}/{name}", cluster.namespace))?;
    eprintln!(
        "created StatefulJobSnapshot {}/{name} of {job}",
        cluster.namespace
    );
    let start = Instant::now();
    let mut shown = String::new();
    loop {
        let snap = api.get(&name).await?;
        let line = match describe(snap.status.as_ref()) {
            Ok(line) => line,
            Err(why) => bail!("snapshot {}/{name} failed: {why}", cluster.namespace),
        };
        if line != shown {
            eprintln!("[{:>3}s] {line}", start.elapsed().as_secs());
            shown = line;
        }
        if let Some(s) = snap
            .status
            .as_ref()
            .filter(|s| s.phase == Some(SnapshotPhase::Completed))
        {
            return Ok(SnapshotLine {
                name,
                job: job.to_owned(),
                checkpoint_id: s.checkpoint_id,
                bytes: s.bytes,
                parallelism: s.parallelism,
            });
        }
        if start.elapsed() >= timeout {
            bail!(
                "snapshot {}/{name} not ready within {} ({shown}); it stays and becomes ready later (kubectl get sjsnap {name} -w), or pass a longer --timeout",
                cluster.namespace,
                humantime::format_duration(timeout)
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_phases() {
        let now = Timestamp::from_second(1_796_000_000).unwrap();
        assert_eq!(default_name("wc", now), "wc-20261130-005320");
        assert_eq!(describe(None).unwrap(), "created; waiting for the operator");
        let done = StatefulJobSnapshotStatus {
            phase: Some(SnapshotPhase::Completed),
            checkpoint_id: Some(12),
            bytes: Some(4096),
            ..Default::default()
        };
        assert_eq!(
            describe(Some(&done)).unwrap(),
            "ready: holds checkpoint 12 (4096 bytes)"
        );
        let failed = StatefulJobSnapshotStatus {
            phase: Some(SnapshotPhase::Failed),
            failure_reason: Some("job wc is gone".into()),
            ..Default::default()
        };
        assert_eq!(describe(Some(&failed)).unwrap_err(), "job wc is gone");
    }
}
