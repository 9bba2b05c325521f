//! The operator's Prometheus metrics, served on `/metrics`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

fn histogram() -> Histogram {
    // 0.1 s .. ~1.8 h
    Histogram::new(exponential_buckets(0.1, 2.0, 17))
}

/// Every metric of the operator.
pub struct OperatorMetrics {
    registry: Registry,
    /// Reconciliations run.
    pub reconciles: Counter,
    /// Failed reconciliations, by error kind.
    pub reconcile_errors: Family<Labels, Counter>,
    /// Checkpoints that completed, were aborted or failed to start, by outcome.
    pub checkpoints: Family<Labels, Counter>,
    /// Seconds from trigger to completion of completed checkpoints.
    pub checkpoint_duration: Histogram,
    /// Bytes referenced by completed checkpoints, cumulative.
    pub checkpoint_bytes_total: Counter,
    /// Bytes uploaded by completed checkpoints, cumulative.
    pub checkpoint_bytes_new: Counter,
    /// Seconds spent in each rescale stage, by stage.
    pub rescale_stage_duration: Family<Labels, Histogram, fn() -> Histogram>,
    /// Rescales (and starts, suspends, resumes) completed, by reason.
    pub rescales: Family<Labels, Counter>,
    /// 1 while this replica holds the leader lease.
    pub leader: Gauge,
}

impl Default for OperatorMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("regroup_operator");
        let m = Self {
            reconciles: Counter::default(),
            reconcile_errors: Family::default(),
            checkpoints: Family::default(),
            checkpoint_duration: histogram(),
            checkpoint_bytes_total: Counter::default(),
            checkpoint_bytes_new: Counter::default(),
            rescale_stage_duration: Family::new_with_constructor(histogram as fn() -> Histogram),
            rescales: Family::default(),
            leader: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("reconciles", "Reconciliations run", m.reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Failed reconciliations by error kind",
            m.reconcile_errors.clone(),
        );
        registry.register(
            "checkpoints",
            "Checkpoints by outcome",
            m.checkpoints.clone(),
        );
        registry.register(
            "checkpoint_duration_seconds",
            "Seconds from trigger to completion of completed checkpoints",
            m.checkpoint_duration.clone(),
        );
        registry.register(
            "checkpoint_bytes",
            "Bytes referenced by completed checkpoints",
            m.checkpoint_bytes_total.clone(),
        );
        registry.register(
            "checkpoint_uploaded_bytes",
            "Bytes uploaded by completed checkpoints",
            m.checkpoint_bytes_new.clone(),
        );
        registry.register(
            "rescale_stage_duration_seconds",
            "Seconds spent in each rescale stage",
            m.rescale_stage_duration.clone(),
        );
        registry.register(
            "rescales",
            "Rescales completed by reason",
            m.rescales.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader lease",
            m.leader.clone(),
        );
        Self { registry, ..m }
    }
}

/// A single-label set.
pub fn label(key: &str, value: &str) -> Labels {
    vec![(key.to_owned(), value.to_owned())]
}

impl OperatorMetrics {
    /// Counts a checkpoint that ended with `outcome` (completed, failed, aborted).
    pub fn checkpoint_ended(&self, outcome: &str) {
        self.checkpoints
            .get_or_create(&label("outcome", outcome))
            .inc();
    }

    /// Counts a completed checkpoint, its duration and bytes.
    pub fn checkpoint_completed(&self, record: &crate::operator::crd::CheckpointRecord) {
        self.checkpoint_ended("completed");
        self.checkpoint_duration.observe(record.duration_seconds);
        self.checkpoint_bytes_total.inc_by(record.bytes_total);
        self.checkpoint_bytes_new.inc_by(record.bytes_new);
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        crate::telemetry::exposition(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_what_was_counted() {
        let m = OperatorMetrics::default();
        m.reconciles.inc();
        m.checkpoints
            .get_or_create(&label("outcome", "completed"))
            .inc();
        m.rescale_stage_duration
            .get_or_create(&label("stage", "Stopping"))
            .observe(3.0);
        let text = m.render();
        assert!(
            text.contains("regroup_operator_reconciles_total 1"),
            "{text}"
        );
        assert!(
            text.contains("regroup_operator_checkpoints_total{outcome=\"completed\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "regroup_operator_rescale_stage_duration_seconds_count{stage=\"Stopping\"} 1"
            ),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
