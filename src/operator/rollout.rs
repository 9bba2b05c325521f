//! `spec.rollout`: a rescale or template change whose new workers are not ready within
//! `readinessTimeout` rolls back to the previous parallelism and template, from the same final
//! checkpoint. Pure: whether to roll back now, and what the lifecycle should aim for while a
//! rollback holds (the spec of the failed generation is left as the user wrote it).

use std::time::Duration;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::crd::{RescaleReason, RolledBack, Stage, StatefulJobStatus};
use super::lifecycle::{JobState, elapsed};
use super::resources::template_hash;

/// The rollback in force for spec `generation`, if any (a newer spec ends it).
pub fn in_force(status: &StatefulJobStatus, generation: Option<i64>) -> Option<&RolledBack> {
    status
        .rolled_back
        .as_ref()
        .filter(|r| Some(r.generation) == generation)
}

/// Whether the rescale of `state` is overdue and rolls back now: its new workers are not all
/// ready `timeout` after it started. The rollback goes to the parallelism it started from and
/// to the last template whose workers got ready (`last_ready`; the spec's when the template is
/// unchanged); none when that template is unknown.
pub fn overdue(
    state: &JobState,
    generation: Option<i64>,
    spec_template: &PodTemplateSpec,
    last_ready: Option<&serde_json::Value>,
    timeout: Option<Duration>,
    now: &Time,
) -> Option<RolledBack> {
    let r = state.rescale.as_ref()?;
    let timeout = timeout?;
    let rolling = matches!(r.stage, Stage::Restoring | Stage::RollingForward)
        && matches!(
            r.reason,
            RescaleReason::Scale | RescaleReason::TemplateChange
        );
    if !rolling || elapsed(&r.started, now) < timeout || r.from == 0 {
        return None;
    }
    let spec_hash = template_hash(spec_template);
    let previous = match r.reason {
        RescaleReason::Scale => spec_hash.clone(),
        _ => last_ready
            .and_then(|t| serde_json::from_value::<PodTemplateSpec>(t.clone()).ok())
            .map(|t| template_hash(&t))?,
    };
    let what = if r.reason == RescaleReason::Scale {
        format!("the rescale from {} to {} workers", r.from, r.to)
    } else {
        "the pod template change".to_owned()
    };
    Some(RolledBack {
        generation: generation?,
        parallelism: r.from,
        template_hash: previous,
        message: format!(
            "{what} did not get every new worker ready within spec.rollout.readinessTimeout ({}): rolled back to {} workers of the previous template from checkpoint {}; the spec is left as written: fix it (see the workers' events and logs) and change it again",
            humantime::format_duration(timeout),
            r.from,
            r.checkpoint.map_or("none".to_owned(), |c| c.to_string())
        ),
    })
}

/// The template to run while `rolled_back` holds, when it is not the spec's.
pub fn template(
    rolled_back: &RolledBack,
    spec_template: &PodTemplateSpec,
    last_ready: Option<&serde_json::Value>,
) -> Option<PodTemplateSpec> {
    if rolled_back.template_hash == template_hash(spec_template) {
        return None;
    }
    last_ready
        .and_then(|t| serde_json::from_value::<PodTemplateSpec>(t.clone()).ok())
        .filter(|t| template_hash(t) == rolled_back.template_hash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::crd::{Phase, RescaleStatus};
    use k8s_openapi::jiff::Timestamp;

    fn at(s: i64) -> Time {
        Time(Timestamp::from_second(1_800_000_000 + s).unwrap())
    }

    fn template(image: &str) -> PodTemplateSpec {
        serde_json::from_value(serde_json::json!({
            "spec": {"containers": [{"name": "worker", "image": image}]}
        }))
        .unwrap()
    }

    fn rolling(reason: RescaleReason, stage: Stage) -> JobState {
        JobState {
            phase: stage.phase(),
            parallelism: 0,
            epoch: 3,
            template_hash: None,
            rescale: Some(RescaleStatus {
                from: 2,
                to: 3,
                stage,
                reason,
                checkpoint: Some(7),
                final_checkpoint: Some(7),
                started: at(0),
                stage_started: at(0),
            }),
            restarts: vec![],
            restart_nonce: None,
        }
    }

    #[test]
    fn a_template_change_not_ready_in_time_goes_back_to_the_last_ready_template() {
        let good = template("regroup:1");
        let bad = template("regroup:2");
        let last = serde_json::to_value(&good).unwrap();
        let s = rolling(RescaleReason::TemplateChange, Stage::RollingForward);
        let timeout = Some(Duration::from_secs(60));
        assert_eq!(
            overdue(&s, Some(4), &bad, Some(&last), timeout, &at(59)),
            None
        );
        let r = overdue(&s, Some(4), &bad, Some(&last), timeout, &at(61)).unwrap();
        assert_eq!((r.generation, r.parallelism), (4, 2));
        assert_eq!(r.template_hash, template_hash(&good));
        assert!(
            r.message.contains("spec.rollout.readinessTimeout"),
            "{}",
            r.message
        );
        assert_eq!(super::template(&r, &bad, Some(&last)), Some(good));
        // Without a last ready template there is nothing to go back to; without a timeout, no
        // rollback at all.
        assert_eq!(overdue(&s, Some(4), &bad, None, timeout, &at(61)), None);
        assert_eq!(overdue(&s, Some(4), &bad, Some(&last), None, &at(61)), None);
    }

    #[test]
    fn a_rescale_goes_back_to_its_parallelism_and_holds_for_that_spec_only() {
        let t = template("regroup:1");
        let s = rolling(RescaleReason::Scale, Stage::Restoring);
        let r = overdue(
            &s,
            Some(4),
            &t,
            None,
            Some(Duration::from_secs(60)),
            &at(61),
        )
        .unwrap();
        assert_eq!(
            (r.parallelism, r.template_hash.clone()),
            (2, template_hash(&t))
        );
        assert_eq!(
            super::template(&r, &t, None),
            None,
            "the spec's template runs"
        );
        let status = StatefulJobStatus {
            phase: Some(Phase::RollingForward),
            rolled_back: Some(r),
            ..Default::default()
        };
        assert!(in_force(&status, Some(4)).is_some());
        assert!(in_force(&status, Some(5)).is_none(), "a new spec ends it");
        // A start, a suspend or a recovery never rolls back.
        for reason in [
            RescaleReason::Start,
            RescaleReason::Resume,
            RescaleReason::Recovery,
        ] {
            let s = rolling(reason, Stage::RollingForward);
            assert_eq!(
                overdue(&s, Some(4), &t, None, Some(Duration::from_secs(1)), &at(61)),
                None
            );
        }
    }
}
