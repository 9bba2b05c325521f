//! Which of a job's state claims are no longer used, as a pure decision.
//!
//! The StatefulSet keeps every claim of its `volumeClaimTemplates` (retention `Retain`) so that
//! a rescale's restore can reuse the files on the volumes of the old workers. Once the rescale
//! is recorded complete (phase `Running`, no rescale in progress), the claims of ordinals at or
//! above the parallelism hold state no worker will read again: the operator deletes them.
//! While a rescale or a suspend is in progress, and while suspended, nothing is deleted.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::ResourceExt;

use super::crd::Phase;
use super::lifecycle::JobState;
use super::resources::{JOB_LABEL, STATE_VOLUME};

/// A claim the operator deletes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnusedClaim {
    /// Claim name, `<template>-<statefulset>-<ordinal>`.
    pub name: String,
    /// Its UID, a precondition of the delete (a claim recreated meanwhile is not deleted).
    pub uid: Option<String>,
    /// The worker ordinal it was made for.
    pub ordinal: u32,
}

/// The ordinal of claim `name` if it is the claim of template `template` for a pod of
/// StatefulSet `set` (`<template>-<set>-<ordinal>`, the ordinal in decimal without leading
/// zeros, as the StatefulSet controller names it).
pub fn claim_ordinal(name: &str, template: &str, set: &str) -> Option<u32> {
    let rest = name.strip_prefix(template)?.strip_prefix('-')?;
    let rest = rest.strip_prefix(set)?.strip_prefix('-')?;
    let canonical = !rest.is_empty()
        && rest.bytes().all(|b| b.is_ascii_digit())
        && (rest == "0" || !rest.starts_with('0'));
    if !canonical {
        return None;
    }
    rest.parse().ok()
}

/// Names of the claims that `pods` mount.
pub fn claims_in_use(pods: &[Pod]) -> BTreeSet<String> {
    pods.iter()
        .filter_map(|p| p.spec.as_ref()?.volumes.as_ref())
        .flatten()
        .filter_map(|v| Some(v.persistent_volume_claim.as_ref()?.claim_name.clone()))
        .collect()
}

/// The claims of job `job` (StatefulSet `set`) to delete given the recorded `state`: only when
/// the job runs at its parallelism with no rescale in progress, only claims labelled with the
/// job whose name is the state template's claim of an ordinal at or above the parallelism, not
/// already being deleted and mounted by no pod (`in_use`). Sorted by ordinal.
pub fn unused_claims(
    job: &str,
    set: &str,
    state: &JobState,
    claims: &[PersistentVolumeClaim],
    in_use: &BTreeSet<String>,
) -> Vec<UnusedClaim> {
    // A suspended job (parallelism 0) keeps every claim; so does any stage of a rescale.
    let settled = state.phase == Phase::Running && state.rescale.is_none();
    if !settled || state.parallelism == 0 {
        return Vec::new();
    }
    let mut out: Vec<UnusedClaim> = claims
        .iter()
        .filter(|c| c.labels().get(JOB_LABEL).map(String::as_str) == Some(job))
        .filter(|c| c.metadata.deletion_timestamp.is_none())
        .filter(|c| !in_use.contains(&c.name_any()))
        .filter_map(|c| {
            let name = c.name_any();
            let ordinal = claim_ordinal(&name, STATE_VOLUME, set)?;
            (ordinal >= state.parallelism).then(|| UnusedClaim {
                name,
                uid: c.metadata.uid.clone(),
                ordinal,
            })
        })
        .collect();
    out.sort_by_key(|c| c.ordinal);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::crd::{RescaleReason, RescaleStatus, Stage};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    fn claim(name: &str, job: Option<&str>) -> PersistentVolumeClaim {
        let mut c = PersistentVolumeClaim::default();
        c.metadata.name = Some(name.to_owned());
        c.metadata.uid = Some(format!("uid-{name}"));
        if let Some(j) = job {
            c.metadata.labels = Some([(JOB_LABEL.to_owned(), j.to_owned())].into());
        }
        c
    }

    fn running(parallelism: u32) -> JobState {
        JobState {
            phase: Phase::Running,
            parallelism,
            epoch: 3,
            template_hash: Some("h".into()),
            rescale: None,
            ..JobState::pending()
        }
    }

    fn in_stage(from: u32, to: u32, stage: Stage) -> JobState {
        let t = Time(Timestamp::UNIX_EPOCH);
        let phase = match stage {
            Stage::Checkpointing => Phase::Checkpointing,
            Stage::Stopping => Phase::Stopping,
            Stage::Restoring => Phase::Restoring,
            Stage::RollingForward => Phase::RollingForward,
        };
        JobState {
            phase,
            parallelism: if matches!(stage, Stage::Checkpointing) {
                from
            } else {
                0
            },
            epoch: 3,
            template_hash: Some("h".into()),
            rescale: Some(RescaleStatus {
                from,
                to,
                stage,
                reason: if to == 0 {
                    RescaleReason::Suspend
                } else {
                    RescaleReason::Scale
                },
                checkpoint: Some(7),
                final_checkpoint: Some(7),
                started: t.clone(),
                stage_started: t,
            }),
            ..JobState::pending()
        }
    }

    fn names(v: &[UnusedClaim]) -> Vec<&str> {
        v.iter().map(|c| c.name.as_str()).collect()
    }

    /// The claims of a job scaled in from 4 to 1, plus look-alikes of other jobs and templates.
    fn claims() -> Vec<PersistentVolumeClaim> {
        vec![
            claim("state-orders-3", Some("orders")),
            claim("state-orders-0", Some("orders")),
            claim("state-orders-1", Some("orders")),
            claim("state-orders-2", Some("orders")),
            // Job "orders-2": its claim looks like ordinal "2-0" of "orders".
            claim("state-orders-2-0", Some("orders-2")),
            claim("state-orders-2-1", Some("orders-2")),
            // Labelled with another job, a name of ours: not ours.
            claim("state-orders-5", Some("payments")),
            // Unlabelled.
            claim("state-orders-6", None),
            // Our label, another template or a malformed ordinal.
            claim("data-orders-4", Some("orders")),
            claim("state-orders-07", Some("orders")),
            claim("state-orders-", Some("orders")),
            claim("state-orders-x", Some("orders")),
        ]
    }

    #[test]
    fn ordinals_from_names() {
        assert_eq!(claim_ordinal("state-orders-0", "state", "orders"), Some(0));
        assert_eq!(
            claim_ordinal("state-orders-12", "state", "orders"),
            Some(12)
        );
        assert_eq!(claim_ordinal("state-my-job-3", "state", "my-job"), Some(3));
        for other in [
            "state-orders-2-0",
            "state-orders-",
            "state-orders",
            "state-orders-01",
            "state-orders-+1",
            "state-orders-1a",
            "data-orders-1",
            "stateorders-1",
            "state-orders2-1",
            "state-orders-99999999999",
        ] {
            assert_eq!(claim_ordinal(other, "state", "orders"), None, "{other}");
        }
    }

    #[test]
    fn after_a_scale_in_the_claims_above_the_parallelism_go() {
        let out = unused_claims("orders", "orders", &running(1), &claims(), &BTreeSet::new());
        assert_eq!(
            names(&out),
            ["state-orders-1", "state-orders-2", "state-orders-3"]
        );
        assert_eq!(out[0].uid.as_deref(), Some("uid-state-orders-1"));
        assert_eq!(out.iter().map(|c| c.ordinal).collect::<Vec<_>>(), [1, 2, 3]);
        let out = unused_claims("orders", "orders", &running(3), &claims(), &BTreeSet::new());
        assert_eq!(names(&out), ["state-orders-3"]);
        // At the full parallelism (or above every claim) nothing goes.
        assert!(
            unused_claims("orders", "orders", &running(4), &claims(), &BTreeSet::new()).is_empty()
        );
        assert!(
            unused_claims("orders", "orders", &running(9), &claims(), &BTreeSet::new()).is_empty()
        );
    }

    #[test]
    fn only_the_jobs_own_claims() {
        // Job "orders-2" at parallelism 1 deletes its ordinal 1, never one of "orders".
        let out = unused_claims(
            "orders-2",
            "orders-2",
            &running(1),
            &claims(),
            &BTreeSet::new(),
        );
        assert_eq!(names(&out), ["state-orders-2-1"]);
        // No claim of the job: nothing.
        assert!(
            unused_claims(
                "billing",
                "billing",
                &running(1),
                &claims(),
                &BTreeSet::new()
            )
            .is_empty()
        );
    }

    #[test]
    fn nothing_goes_during_a_rescale_or_a_suspend() {
        for stage in [
            Stage::Checkpointing,
            Stage::Stopping,
            Stage::Restoring,
            Stage::RollingForward,
        ] {
            for (from, to) in [(4, 1), (4, 0), (1, 4)] {
                let state = in_stage(from, to, stage);
                assert!(
                    unused_claims("orders", "orders", &state, &claims(), &BTreeSet::new())
                        .is_empty(),
                    "{stage:?} {from}→{to}"
                );
            }
        }
        let mut suspended = running(0);
        suspended.phase = Phase::Suspended;
        assert!(
            unused_claims("orders", "orders", &suspended, &claims(), &BTreeSet::new()).is_empty()
        );
        // Running with no worker is not a state the lifecycle records; it keeps the claims too.
        assert!(
            unused_claims("orders", "orders", &running(0), &claims(), &BTreeSet::new()).is_empty()
        );
        for phase in [Phase::Pending, Phase::Stopping, Phase::Restoring] {
            let mut s = running(1);
            s.phase = phase;
            assert!(
                unused_claims("orders", "orders", &s, &claims(), &BTreeSet::new()).is_empty(),
                "{phase:?}"
            );
        }
    }

    #[test]
    fn claims_being_deleted_or_mounted_stay() {
        let mut list = claims();
        list[0].metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        let in_use = BTreeSet::from(["state-orders-2".to_owned()]);
        let out = unused_claims("orders", "orders", &running(1), &list, &in_use);
        assert_eq!(names(&out), ["state-orders-1"]);
        // Idempotent: once deleted, a second look finds nothing more.
        let left: Vec<_> = list
            .into_iter()
            .filter(|c| !names(&out).contains(&c.name_any().as_str()))
            .collect();
        let again = unused_claims("orders", "orders", &running(1), &left, &in_use);
        assert!(again.is_empty(), "{again:?}");
    }

    #[test]
    fn mounted_claims_come_from_pod_volumes() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "orders-0"},
            "spec": {"containers": [], "volumes": [
                {"name": "state", "persistentVolumeClaim": {"claimName": "state-orders-0"}},
                {"name": "tmp", "emptyDir": {}}
            ]}
        }))
        .unwrap();
        assert_eq!(
            claims_in_use(&[pod, Pod::default()]),
            BTreeSet::from(["state-orders-0".to_owned()])
        );
    }
}
