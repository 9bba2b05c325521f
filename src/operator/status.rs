//! Status conditions from a fixed set, computed purely from the lifecycle state; a condition's
//! `lastTransitionTime` moves only when its status really changes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::crd::Phase;
use super::lifecycle::JobState;
use super::reasons;

/// All workers of the current epoch are ready and the target is met.
pub const READY: &str = "Ready";
/// Workers are being replaced (rescale, start, suspend, resume, template change).
pub const PROGRESSING: &str = "Progressing";
/// Something needs attention: a failed checkpoint, a fallback, an error reconciling.
pub const DEGRADED: &str = "Degraded";

/// A problem to report in the Degraded condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// PascalCase reason.
    pub reason: String,
    /// Human-readable detail.
    pub message: String,
}

impl Problem {
    /// A problem with `reason` (one of [`super::reasons`]) and its detail.
    pub fn new(reason: &str, message: impl Into<String>) -> Self {
        Problem {
            reason: reason.to_owned(),
            message: message.into(),
        }
    }
}

/// The three conditions for `state`, keeping transition times of unchanged ones from `previous`.
pub fn conditions(
    previous: &[Condition],
    state: &JobState,
    problem: Option<&Problem>,
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    let (ready, ready_reason, ready_message) = match state.phase {
        Phase::Running => (
            true,
            reasons::WORKERS_READY.to_owned(),
            format!(
                "{} workers of epoch {} ready",
                state.parallelism, state.epoch
            ),
        ),
        Phase::Suspended => (
            false,
            reasons::SUSPENDED.to_owned(),
            "spec.suspend is true".to_owned(),
        ),
        Phase::Failed => (
            false,
            reasons::RESTART_LIMIT_REACHED.to_owned(),
            "every worker stopped after spec.restartPolicy.limit restarts; see the Degraded condition"
                .to_owned(),
        ),
        p => (false, p.as_str().to_owned(), format!("phase {p}")),
    };
    let (progressing, prog_reason, prog_message) = match &state.rescale {
        Some(r) => (
            true,
            r.stage.as_str().to_owned(),
            format!(
                "{}: {} -> {} workers, stage {}, checkpoint {}",
                r.reason.as_str(),
                r.from,
                r.to,
                r.stage.as_str(),
                r.checkpoint
                    .or(r.final_checkpoint)
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "none".to_owned())
            ),
        ),
        None => (
            false,
            reasons::STABLE.to_owned(),
            "no rescale in progress".to_owned(),
        ),
    };
    let (degraded, deg_reason, deg_message) = match problem {
        Some(p) => (true, p.reason.clone(), p.message.clone()),
        None => (
            false,
            reasons::AS_EXPECTED.to_owned(),
            "no problem observed".to_owned(),
        ),
    };
    [
        (READY, ready, ready_reason, ready_message),
        (PROGRESSING, progressing, prog_reason, prog_message),
        (DEGRADED, degraded, deg_reason, deg_message),
    ]
    .into_iter()
    .map(|(type_, status, reason, message)| {
        let status = if status { "True" } else { "False" }.to_owned();
        let last_transition_time = previous
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| now.clone());
        Condition {
            type_: type_.to_owned(),
            status,
            reason,
            message,
            observed_generation: generation,
            last_transition_time,
        }
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::crd::{RescaleReason, RescaleStatus, Stage};
    use k8s_openapi::jiff::Timestamp;

    fn t(s: i64) -> Time {
        Time(Timestamp::from_second(s).unwrap())
    }

    fn get<'a>(c: &'a [Condition], t: &str) -> &'a Condition {
        c.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn running_rescaling_degraded() {
        let mut s = JobState::pending();
        s.phase = Phase::Running;
        s.parallelism = 3;
        s.epoch = 2;
        let c1 = conditions(&[], &s, None, Some(4), &t(100));
        assert_eq!(get(&c1, READY).status, "True");
        assert_eq!(get(&c1, PROGRESSING).status, "False");
        assert_eq!(get(&c1, DEGRADED).status, "False");
        assert_eq!(get(&c1, READY).observed_generation, Some(4));

        // Unchanged statuses keep their transition time.
        let c2 = conditions(&c1, &s, None, Some(4), &t(200));
        assert_eq!(c1, c2);

        s.phase = Phase::Stopping;
        s.rescale = Some(RescaleStatus {
            from: 3,
            to: 5,
            stage: Stage::Stopping,
            reason: RescaleReason::Scale,
            checkpoint: Some(9),
            final_checkpoint: Some(9),
            started: t(150),
            stage_started: t(190),
        });
        let problem = Problem {
            reason: reasons::FINAL_CHECKPOINT_FAILED.to_owned(),
            message: "x".into(),
        };
        let c3 = conditions(&c2, &s, Some(&problem), Some(5), &t(300));
        assert_eq!(get(&c3, READY).status, "False");
        assert_eq!(get(&c3, READY).reason, "Stopping");
        assert_eq!(get(&c3, READY).last_transition_time, t(300));
        assert_eq!(get(&c3, PROGRESSING).status, "True");
        assert!(get(&c3, PROGRESSING).message.contains("3 -> 5"));
        assert_eq!(get(&c3, DEGRADED).status, "True");
        assert_eq!(get(&c3, DEGRADED).reason, reasons::FINAL_CHECKPOINT_FAILED);
        // A change of reason alone does not move the time.
        s.rescale.as_mut().unwrap().stage = Stage::Restoring;
        s.phase = Phase::Restoring;
        let c4 = conditions(&c3, &s, Some(&problem), Some(5), &t(400));
        assert_eq!(get(&c4, PROGRESSING).last_transition_time, t(300));
        assert_eq!(get(&c4, PROGRESSING).reason, "Restoring");
    }
}
