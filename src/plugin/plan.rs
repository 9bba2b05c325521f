//! `kubectl regroup plan --to N`: what a rescale of a job to N workers would move, from its
//! newest completed checkpoint (the plan of `regroup plan`), with the state claims the job
//! keeps counted as reused.

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use serde::Serialize;

use super::cluster::Cluster;
use super::output::bytes;
use crate::operator::crd::{RestoreStrategy, StatefulJob};
use crate::restore::command::{PlanReport, local_states, plan_with_local, rescale_plan_text};
use crate::restore::plan::{PlanOptions, Strategy};

/// The plan as `plan` prints it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobPlan {
    /// NAMESPACE/NAME.
    pub job: String,
    /// The claims assumed to hold their old subtask's DB (`state-NAME-i` keeps ordinal i).
    pub kept_claims: Vec<String>,
    /// Why no claim is counted, when none is.
    pub kept_note: Option<String>,
    /// Bytes the kept claims save (reused instead of downloaded).
    pub bytes_saved: u64,
    /// The plan of `regroup plan`.
    #[serde(flatten)]
    pub report: PlanReport,
}

impl JobPlan {
    /// The text of `plan`.
    pub fn text(&self) -> String {
        let mut out = rescale_plan_text(&self.report);
        out.push('\n');
        if self.kept_claims.is_empty() {
            out.push_str(&format!(
                "kept volumes: none counted ({})\n",
                self.kept_note.as_deref().unwrap_or("-")
            ));
        } else {
            out.push_str(&format!(
                "kept volumes {} save {} ({} bytes); {} ({} bytes) to download\n",
                self.kept_claims.join(", "),
                bytes(self.bytes_saved),
                self.bytes_saved,
                bytes(self.report.plan.bytes_to_download()),
                self.report.plan.bytes_to_download()
            ));
        }
        out
    }
}

/// New subtask i keeps claim `state-NAME-i` through a rescale: for the ordinals below both
/// parallelisms whose claim exists, the `--local-subtask i=i` arguments of `regroup plan`, or
/// why there are none.
pub fn kept_ordinals(
    job: &StatefulJob,
    checkpoint_parallelism: u32,
    to: u32,
    claim_exists: &[bool],
) -> Result<Vec<u32>, String> {
    if job.spec.state_volume.empty_dir.is_some() {
        return Err("the job's state volume is an emptyDir: nothing is kept".to_owned());
    }
    let running = job.status.as_ref().map_or(0, |s| s.parallelism);
    if running != checkpoint_parallelism {
        return Err(format!(
            "the newest checkpoint was taken by {checkpoint_parallelism} workers, {running} run now: the volumes hold other ranges"
        ));
    }
    let kept: Vec<u32> = (0..checkpoint_parallelism.min(to))
        .filter(|&i| claim_exists.get(i as usize).copied().unwrap_or(false))
        .collect();
    if kept.is_empty() {
        return Err("no state claim exists".to_owned());
    }
    Ok(kept)
}

/// The plan options of the job's restores (spec.restore).
pub fn plan_options(job: &StatefulJob) -> PlanOptions {
    PlanOptions {
        strategy: match job.spec.restore.strategy {
            RestoreStrategy::Ingest => Strategy::Ingest,
            RestoreStrategy::Copy => Strategy::Copy,
        },
        overlap_fraction_threshold: job.spec.restore.overlap_fraction_threshold,
    }
}

/// The claim of ordinal `i` of job `name`.
pub fn claim_name(name: &str, i: u32) -> String {
    format!("{}-{name}-{i}", crate::operator::resources::STATE_VOLUME)
}

/// `plan NAME --to N`.
pub async fn run(
    cluster: &Cluster,
    name: &str,
    to: u32,
    checkpoint: Option<u64>,
) -> anyhow::Result<JobPlan> {
    let job = cluster.job(name).await?;
    let options = plan_options(&job);
    options.validate()?;
    let js = cluster.store(&job).await?;
    let meta = js
        .store
        .checkpoint_or_latest(checkpoint)
        .await
        .map_err(|e| js.failure(e))?;
    let claims = cluster.api::<PersistentVolumeClaim>();
    let mut exists = Vec::new();
    for i in 0..meta.parallelism.min(to) {
        exists.push(claims.get_opt(&claim_name(name, i)).await?.is_some());
    }
    let (kept, kept_note) = match kept_ordinals(&job, meta.parallelism, to, &exists) {
        Ok(k) => (k, None),
        Err(why) => (Vec::new(), Some(why)),
    };
    let what_if: Vec<String> = kept.iter().map(|i| format!("{i}={i}")).collect();
    let states = local_states(&[], &what_if, &meta, to)?;
    let report = plan_with_local(&meta, to, &options, states)?;
    Ok(JobPlan {
        job: js.store.job().to_string(),
        kept_claims: kept.iter().map(|&i| claim_name(name, i)).collect(),
        kept_note,
        bytes_saved: report.plan.subtasks.iter().map(|s| s.bytes_local).sum(),
        report,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(running: u32, empty_dir: bool) -> StatefulJob {
        let volume = if empty_dir {
            serde_json::json!({"emptyDir": {}})
        } else {
            serde_json::json!({})
        };
        serde_json::from_value(serde_json::json!({
            "apiVersion": "regroup.dev/v1alpha1", "kind": "StatefulJob",
            "metadata": {"name": "wc", "namespace": "jobs"},
            "spec": {"parallelism": running, "maxParallelism": 128, "storage": {"url": "s3://b/p"},
                "stateVolume": volume, "template": {"spec": {"containers": []}}},
            "status": {"parallelism": running, "epoch": 1}
        }))
        .unwrap()
    }

    #[test]
    fn kept_claims_are_the_ordinals_below_both_parallelisms() {
        assert_eq!(
            kept_ordinals(&job(4, false), 4, 2, &[true, true]),
            Ok(vec![0, 1])
        );
        assert_eq!(
            kept_ordinals(&job(2, false), 2, 5, &[true, true]),
            Ok(vec![0, 1])
        );
        // A missing claim is downloaded in full.
        assert_eq!(
            kept_ordinals(&job(3, false), 3, 3, &[true, false, true]),
            Ok(vec![0, 2])
        );
        let why = kept_ordinals(&job(2, true), 2, 3, &[]).unwrap_err();
        assert!(why.contains("emptyDir"), "{why}");
        // The volumes hold the ranges of the running generation, not the checkpoint's.
        let why = kept_ordinals(&job(3, false), 2, 4, &[true, true]).unwrap_err();
        assert!(why.contains("2 workers, 3 run now"), "{why}");
        assert_eq!(claim_name("wc", 3), "state-wc-3");
    }
}
