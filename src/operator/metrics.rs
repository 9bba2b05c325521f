//! The operator's Prometheus metrics, served on `/metrics`. Per-job series carry `namespace`
//! and `job` (the StatefulJob) and otherwise only labels from fixed sets (phase, stage,
//! outcome, reason), so their number grows with the jobs alone; a deleted job's go with it.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::jiff::Timestamp;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::crd::{Phase, RescaleReason, Stage, StatefulJob, StatefulJobStatus};

type Labels = Vec<(String, String)>;
type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

fn histogram() -> Histogram {
    // 0.1 s .. ~1.8 h
    Histogram::new(exponential_buckets(0.1, 2.0, 17))
}

/// Buckets for the control plane's own latencies: fine below a second, with 1 s a bound (the
/// trigger delay's target).
fn latency_histogram() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ])
}

/// Every phase, for the one-hot `job_phase` series.
const PHASES: [Phase; 8] = [
    Phase::Pending,
    Phase::Running,
    Phase::Checkpointing,
    Phase::Stopping,
    Phase::Restoring,
    Phase::RollingForward,
    Phase::Suspended,
    Phase::Failed,
];

/// Why a checkpoint did not complete: the `reason` label of `checkpoint_failures_total`.
pub mod failure {
    /// The workers refused to start it.
    pub const REFUSED: &str = "refused";
    /// A worker reported that its part failed.
    pub const WORKER: &str = "worker";
    /// What is in the store makes it impossible.
    pub const STORE: &str = "store";
    /// Not completed within spec.checkpointing.timeout.
    pub const TIMEOUT: &str = "timeout";
    /// Taken by workers that have since been replaced.
    pub const EPOCH_CHANGED: &str = "epoch_changed";
    /// A rescale's final checkpoint failed.
    pub const FINAL: &str = "final_failed";
    /// Every reason.
    pub const ALL: [&str; 6] = [REFUSED, WORKER, STORE, TIMEOUT, EPOCH_CHANGED, FINAL];
}

/// Every `outcome` of `checkpoints_total`.
const OUTCOMES: [&str; 3] = ["completed", "failed", "aborted"];

/// Every metric of the operator.
pub struct OperatorMetrics {
    registry: Registry,
    /// Reconciliations run.
    pub reconciles: Counter,
    /// Failed reconciliations, by error kind.
    pub reconcile_errors: Family<Labels, Counter>,
    /// Seconds one reconciliation took (reads, writes and worker calls included).
    pub reconcile_duration: Histogram,
    /// Seconds from when a periodic checkpoint was due to when the workers were asked for it.
    pub checkpoint_trigger_delay: Histogram,
    /// Checkpoints that completed, were aborted or failed, by job and outcome.
    pub checkpoints: Family<Labels, Counter>,
    /// Checkpoints that failed or were given up, by job and reason (see [`failure`]).
    pub checkpoint_failures: Family<Labels, Counter>,
    /// Seconds from trigger to completion of completed checkpoints, by job.
    pub checkpoint_duration: Family<Labels, Histogram, fn() -> Histogram>,
    /// Bytes uploaded by completed checkpoints, by job.
    pub checkpoint_uploaded_bytes: Family<Labels, Counter>,
    /// Bytes the newest completed checkpoint references, by job.
    pub checkpoint_size_bytes: Family<Labels, Gauge>,
    /// When the newest completed checkpoint completed (Unix seconds), by job.
    pub last_checkpoint_timestamp: Family<Labels, Gauge>,
    /// spec.checkpointing.interval in seconds, by job.
    pub checkpoint_interval: Family<Labels, FloatGauge>,
    /// spec.checkpointing.progressDeadline in seconds, by job.
    pub progress_deadline: Family<Labels, FloatGauge>,
    /// Seconds spent in each rescale stage, by job and stage.
    pub rescale_stage_duration: Family<Labels, Histogram, fn() -> Histogram>,
    /// Rescales (and starts, suspends, resumes) completed, by job and reason.
    pub rescales: Family<Labels, Counter>,
    /// When the rescale in progress started (Unix seconds), by job; absent when none is.
    pub rescale_started: Family<Labels, Gauge>,
    /// Workers of the current generation, by job.
    pub parallelism: Family<Labels, Gauge>,
    /// 1 for the job's phase, 0 for the others, by job and phase.
    pub phase: Family<Labels, Gauge>,
    /// 1 while the job is Degraded, by job and the condition's reason.
    pub degraded: Family<Labels, Gauge>,
    /// Bytes the restores of the current (or last) rescale have written, by job.
    pub restore_bytes: Family<Labels, Gauge>,
    /// Bytes the restores of the current (or last) rescale have to write, by job.
    pub restore_size_bytes: Family<Labels, Gauge>,
    /// Seconds the current (or last) rescale has spent restoring, by job.
    pub restore_seconds: Family<Labels, FloatGauge>,
    /// 1 while this replica holds the leader lease.
    pub leader: Gauge,
    /// The Degraded reason each job's series shows, to remove it when it changes.
    degraded_shown: Mutex<HashMap<Labels, String>>,
}

impl Default for OperatorMetrics {
    fn default() -> Self {
        let mut r = Registry::with_prefix("regroup_operator");
        let m = Self {
            reconciles: Counter::default(),
            reconcile_errors: Family::default(),
            reconcile_duration: latency_histogram(),
            checkpoint_trigger_delay: latency_histogram(),
            checkpoints: Family::default(),
            checkpoint_failures: Family::default(),
            checkpoint_duration: Family::new_with_constructor(histogram as fn() -> Histogram),
            checkpoint_uploaded_bytes: Family::default(),
            checkpoint_size_bytes: Family::default(),
            last_checkpoint_timestamp: Family::default(),
            checkpoint_interval: Family::default(),
            progress_deadline: Family::default(),
            rescale_stage_duration: Family::new_with_constructor(histogram as fn() -> Histogram),
            rescales: Family::default(),
            rescale_started: Family::default(),
            parallelism: Family::default(),
            phase: Family::default(),
            degraded: Family::default(),
            restore_bytes: Family::default(),
            restore_size_bytes: Family::default(),
            restore_seconds: Family::default(),
            leader: Gauge::default(),
            registry: Registry::default(),
            degraded_shown: Mutex::default(),
        };
        r.register("reconciles", "Reconciliations run", m.reconciles.clone());
        r.register(
            "reconcile_errors",
            "Failed reconciliations by error kind",
            m.reconcile_errors.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Seconds one reconciliation took",
            m.reconcile_duration.clone(),
        );
        r.register(
            "checkpoint_trigger_delay_seconds",
            "Seconds from when a periodic checkpoint was due (last trigger + interval) to its trigger",
            m.checkpoint_trigger_delay.clone(),
        );
        r.register(
            "checkpoints",
            "Checkpoints by job and outcome (completed, failed, aborted)",
            m.checkpoints.clone(),
        );
        r.register(
            "checkpoint_failures",
            "Checkpoints that failed or were given up, by job and reason",
            m.checkpoint_failures.clone(),
        );
        r.register(
            "checkpoint_duration_seconds",
            "Seconds from trigger to completion of completed checkpoints",
            m.checkpoint_duration.clone(),
        );
        r.register(
            "checkpoint_uploaded_bytes",
            "Bytes uploaded by completed checkpoints",
            m.checkpoint_uploaded_bytes.clone(),
        );
        r.register(
            "checkpoint_size_bytes",
            "Bytes the newest completed checkpoint references",
            m.checkpoint_size_bytes.clone(),
        );
        r.register(
            "last_checkpoint_timestamp_seconds",
            "When the newest completed checkpoint completed",
            m.last_checkpoint_timestamp.clone(),
        );
        r.register(
            "checkpoint_interval_seconds",
            "spec.checkpointing.interval",
            m.checkpoint_interval.clone(),
        );
        r.register(
            "progress_deadline_seconds",
            "spec.checkpointing.progressDeadline (default 3 intervals)",
            m.progress_deadline.clone(),
        );
        r.register(
            "rescale_stage_duration_seconds",
            "Seconds spent in each rescale stage",
            m.rescale_stage_duration.clone(),
        );
        r.register(
            "rescales",
            "Rescales completed by reason",
            m.rescales.clone(),
        );
        r.register(
            "rescale_started_timestamp_seconds",
            "When the rescale in progress started (absent when none is)",
            m.rescale_started.clone(),
        );
        r.register(
            "parallelism",
            "Workers of the current generation",
            m.parallelism.clone(),
        );
        r.register(
            "phase",
            "1 for the job's phase, 0 for the others",
            m.phase.clone(),
        );
        r.register(
            "degraded",
            "1 while the job is Degraded, by the condition's reason",
            m.degraded.clone(),
        );
        r.register(
            "restore_bytes",
            "Bytes the restores of the current or last rescale have written",
            m.restore_bytes.clone(),
        );
        r.register(
            "restore_size_bytes",
            "Bytes the restores of the current or last rescale have to write",
            m.restore_size_bytes.clone(),
        );
        r.register(
            "restore_seconds",
            "Seconds the current or last rescale has spent restoring",
            m.restore_seconds.clone(),
        );
        r.register(
            "leader",
            "1 while this replica holds the leader lease",
            m.leader.clone(),
        );
        Self { registry: r, ..m }
    }
}

/// A single-label set.
pub fn label(key: &str, value: &str) -> Labels {
    vec![(key.to_owned(), value.to_owned())]
}

/// The labels of a job's series.
pub fn job_labels(namespace: &str, job: &str) -> Labels {
    vec![
        ("namespace".to_owned(), namespace.to_owned()),
        ("job".to_owned(), job.to_owned()),
    ]
}

/// `labels` and one more.
fn with(labels: &Labels, key: &str, value: &str) -> Labels {
    let mut l = labels.clone();
    l.push((key.to_owned(), value.to_owned()));
    l
}

fn unix_seconds(t: &Timestamp) -> i64 {
    t.as_second()
}

impl OperatorMetrics {
    /// Counts a checkpoint of `job` that ended with `outcome` (completed, failed, aborted),
    /// and as a failure when `failure` names why.
    pub fn checkpoint_ended(&self, job: &Labels, outcome: &str, failure: Option<&str>) {
        self.checkpoints
            .get_or_create(&with(job, "outcome", outcome))
            .inc();
        if let Some(reason) = failure {
            self.checkpoint_failures
                .get_or_create(&with(job, "reason", reason))
                .inc();
        }
    }

    /// Counts a completed checkpoint of `job`, its duration and bytes.
    pub fn checkpoint_completed(
        &self,
        job: &Labels,
        record: &crate::operator::crd::CheckpointRecord,
    ) {
        self.checkpoint_ended(job, "completed", None);
        self.checkpoint_duration
            .get_or_create(job)
            .observe(record.duration_seconds);
        self.checkpoint_uploaded_bytes
            .get_or_create(job)
            .inc_by(record.bytes_new);
    }

    /// A rescale of `job` left `stage` after `seconds`.
    pub fn stage_ended(&self, job: &Labels, stage: Stage, seconds: f64) {
        self.rescale_stage_duration
            .get_or_create(&with(job, "stage", stage.as_str()))
            .observe(seconds);
        if stage == Stage::Restoring {
            self.restore_seconds.get_or_create(job).set(seconds);
        }
    }

    /// Sets the gauges of `job` from the status just recorded; `degraded` is the Degraded
    /// condition's reason, if it is True.
    pub fn job_recorded(
        &self,
        job: &StatefulJob,
        status: &StatefulJobStatus,
        degraded: Option<&str>,
        now: &Timestamp,
    ) {
        let ns = job.metadata.namespace.as_deref().unwrap_or_default();
        let name = job.metadata.name.as_deref().unwrap_or_default();
        let l = job_labels(ns, name);
        // From 0, so that rate() and increase() see a job's first failure.
        for r in failure::ALL {
            let _ = self
                .checkpoint_failures
                .get_or_create(&with(&l, "reason", r));
        }
        self.parallelism
            .get_or_create(&l)
            .set(i64::from(status.parallelism));
        let current = status.phase.unwrap_or(Phase::Pending);
        for p in PHASES {
            self.phase
                .get_or_create(&with(&l, "phase", p.as_str()))
                .set(i64::from(p == current));
        }
        if let Some(c) = &status.last_checkpoint {
            self.last_checkpoint_timestamp
                .get_or_create(&l)
                .set(unix_seconds(&c.time.0));
            self.checkpoint_size_bytes
                .get_or_create(&l)
                .set(c.bytes_total as i64);
        }
        let checkpointing = &job.spec.checkpointing;
        if let Ok(d) = checkpointing.interval() {
            self.checkpoint_interval
                .get_or_create(&l)
                .set(d.as_secs_f64());
        }
        if let Ok(d) = checkpointing.progress_deadline() {
            self.progress_deadline
                .get_or_create(&l)
                .set(d.as_secs_f64());
        }
        match &status.rescale {
            Some(r) => {
                self.rescale_started
                    .get_or_create(&l)
                    .set(unix_seconds(&r.started.0));
                if r.stage == Stage::Restoring {
                    let seconds = now.duration_since(r.stage_started.0).as_secs_f64();
                    self.restore_seconds.get_or_create(&l).set(seconds.max(0.0));
                }
            }
            None => {
                self.rescale_started.remove(&l);
            }
        }
        if let Some(p) = &status.restore_progress {
            let done: u64 = p.subtasks.iter().map(|s| s.bytes_done).sum();
            let total: u64 = p.subtasks.iter().map(|s| s.bytes_total).sum();
            self.restore_bytes.get_or_create(&l).set(done as i64);
            self.restore_size_bytes.get_or_create(&l).set(total as i64);
        }
        let mut shown = self
            .degraded_shown
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let before = shown.get(&l).cloned();
        if before.as_deref() != degraded {
            if let Some(old) = before {
                self.degraded.remove(&with(&l, "reason", &old));
            }
            match degraded {
                Some(reason) => {
                    self.degraded
                        .get_or_create(&with(&l, "reason", reason))
                        .set(1);
                    shown.insert(l.clone(), reason.to_owned());
                }
                None => {
                    shown.remove(&l);
                }
            }
        }
    }

    /// Removes every series of the deleted job `namespace/job`.
    pub fn job_deleted(&self, namespace: &str, job: &str) {
        let l = job_labels(namespace, job);
        // Families with a label beyond the job's hold only values from fixed sets.
        for o in OUTCOMES {
            self.checkpoints.remove(&with(&l, "outcome", o));
        }
        for r in failure::ALL {
            self.checkpoint_failures.remove(&with(&l, "reason", r));
        }
        for s in Stage::ALL {
            self.rescale_stage_duration
                .remove(&with(&l, "stage", s.as_str()));
        }
        for r in RescaleReason::ALL {
            self.rescales.remove(&with(&l, "reason", r.as_str()));
        }
        for p in PHASES {
            self.phase.remove(&with(&l, "phase", p.as_str()));
        }
        if let Some(reason) = self
            .degraded_shown
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&l)
        {
            self.degraded.remove(&with(&l, "reason", &reason));
        }
        self.checkpoint_duration.remove(&l);
        self.checkpoint_uploaded_bytes.remove(&l);
        self.checkpoint_size_bytes.remove(&l);
        self.last_checkpoint_timestamp.remove(&l);
        self.checkpoint_interval.remove(&l);
        self.progress_deadline.remove(&l);
        self.rescale_started.remove(&l);
        self.parallelism.remove(&l);
        self.restore_bytes.remove(&l);
        self.restore_size_bytes.remove(&l);
        self.restore_seconds.remove(&l);
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        crate::telemetry::exposition(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::crd::{CheckpointRecord, StatefulJobSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn job(ns: &str, name: &str) -> StatefulJob {
        let spec: StatefulJobSpec = serde_json::from_value(serde_json::json!({
            "parallelism": 2,
            "storage": {"url": "memory:///"},
            "checkpointing": {"interval": "10s"},
            "template": {"spec": {"containers": []}}
        }))
        .unwrap();
        let mut j = StatefulJob::new(name, spec);
        j.metadata.namespace = Some(ns.to_owned());
        j
    }

    fn status(phase: Phase) -> StatefulJobStatus {
        StatefulJobStatus {
            phase: Some(phase),
            parallelism: 2,
            last_checkpoint: Some(CheckpointRecord {
                id: 7,
                time: Time(Timestamp::from_second(1_700_000_000).unwrap()),
                epoch: 1,
                bytes_total: 4096,
                bytes_new: 1024,
                duration_seconds: 1.5,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn job_series_follow_the_status_and_go_with_the_job() {
        let m = OperatorMetrics::default();
        let now = Timestamp::from_second(1_700_000_100).unwrap();
        let a = job("ns1", "wc");
        let b = job("ns2", "wc");
        m.job_recorded(&a, &status(Phase::Running), Some("RestoreFailed"), &now);
        m.job_recorded(&b, &status(Phase::Suspended), None, &now);
        let la = job_labels("ns1", "wc");
        m.checkpoint_ended(&la, "failed", Some(failure::WORKER));
        let text = m.render();
        for line in [
            r#"regroup_operator_phase{namespace="ns1",job="wc",phase="Running"} 1"#,
            r#"regroup_operator_phase{namespace="ns1",job="wc",phase="Suspended"} 0"#,
            r#"regroup_operator_phase{namespace="ns2",job="wc",phase="Suspended"} 1"#,
            r#"regroup_operator_last_checkpoint_timestamp_seconds{namespace="ns1",job="wc"} 1700000000"#,
            r#"regroup_operator_checkpoint_size_bytes{namespace="ns1",job="wc"} 4096"#,
            r#"regroup_operator_checkpoint_interval_seconds{namespace="ns1",job="wc"} 10.0"#,
            r#"regroup_operator_progress_deadline_seconds{namespace="ns1",job="wc"} 30.0"#,
            r#"regroup_operator_degraded{namespace="ns1",job="wc",reason="RestoreFailed"} 1"#,
            r#"regroup_operator_checkpoint_failures_total{namespace="ns1",job="wc",reason="worker"} 1"#,
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
        // The reason changes, then the condition clears: one series at most, then none.
        m.job_recorded(&a, &status(Phase::Running), Some("WorkerFailing"), &now);
        let text = m.render();
        assert!(!text.contains("RestoreFailed"), "{text}");
        assert!(text.contains(r#"reason="WorkerFailing"} 1"#), "{text}");
        m.job_recorded(&a, &status(Phase::Running), None, &now);
        assert!(!m.render().contains("regroup_operator_degraded{"));

        m.job_deleted("ns1", "wc");
        let text = m.render();
        assert!(!text.contains(r#"namespace="ns1""#), "{text}");
        assert!(text.contains(r#"namespace="ns2""#), "{text}");
    }

    #[test]
    fn a_rescale_shows_its_start_and_restore_time_until_it_ends() {
        let m = OperatorMetrics::default();
        let a = job("ns", "wc");
        let started = Timestamp::from_second(1_700_000_000).unwrap();
        let mut s = status(Phase::Restoring);
        s.rescale = Some(crate::operator::crd::RescaleStatus {
            from: 2,
            to: 3,
            stage: Stage::Restoring,
            reason: crate::operator::crd::RescaleReason::Scale,
            checkpoint: Some(7),
            final_checkpoint: Some(7),
            started: Time(started),
            stage_started: Time(Timestamp::from_second(1_700_000_040).unwrap()),
        });
        let now = Timestamp::from_second(1_700_000_050).unwrap();
        m.job_recorded(&a, &s, None, &now);
        let text = m.render();
        assert!(
            text.contains(r#"regroup_operator_rescale_started_timestamp_seconds{namespace="ns",job="wc"} 1700000000"#),
            "{text}"
        );
        assert!(
            text.contains(r#"regroup_operator_restore_seconds{namespace="ns",job="wc"} 10.0"#),
            "{text}"
        );
        m.stage_ended(&job_labels("ns", "wc"), Stage::Restoring, 12.0);
        m.job_recorded(&a, &status(Phase::Running), None, &now);
        let text = m.render();
        assert!(
            !text.contains("rescale_started_timestamp_seconds{"),
            "{text}"
        );
        assert!(
            text.contains(r#"regroup_operator_restore_seconds{namespace="ns",job="wc"} 12.0"#),
            "{text}"
        );
    }
}
