//! The worker's Prometheus metrics (text exposition on `/metrics`).

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Every metric of one worker; cheap to clone (the values are shared).
#[derive(Clone)]
pub struct WorkerMetrics {
    registry: Arc<Registry>,
    /// Events the job applied to its state.
    pub events_processed: Counter,
    /// Seconds spent in steps that applied events (its rate is the share of time busy).
    pub busy_seconds: Counter<f64, AtomicU64>,
    /// Events the source holds that are not applied yet, for jobs that know it.
    pub backlog: Gauge,
    /// Time processing was held for a native checkpoint.
    pub capture_seconds: Histogram,
    /// Time from the request to the handle in the store.
    pub checkpoint_seconds: Histogram,
    /// Bytes uploaded by checkpoints (new files only).
    pub checkpoint_uploaded_bytes: Counter,
    /// Bytes referenced by the newest handle (the full state size).
    pub checkpoint_size_bytes: Gauge,
    /// Checkpoints whose handle was written.
    pub checkpoints_completed: Counter,
    /// Checkpoints that failed on this worker.
    pub checkpoints_failed: Counter,
    /// RocksDB's estimate of the keys in every named state, refreshed on each scrape.
    pub keys: Gauge,
    /// Key groups this worker owns.
    pub key_groups: Gauge,
    /// Fencing epoch of this worker.
    pub epoch: Gauge,
}

impl std::fmt::Debug for WorkerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkerMetrics")
    }
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl WorkerMetrics {
    /// Registers every metric under the `regroup_worker_` prefix.
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("regroup_worker");
        let m = Self {
            registry: Arc::new(Registry::default()),
            events_processed: Counter::default(),
            busy_seconds: Counter::default(),
            backlog: Gauge::default(),
            capture_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            checkpoint_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            checkpoint_uploaded_bytes: Counter::default(),
            checkpoint_size_bytes: Gauge::default(),
            checkpoints_completed: Counter::default(),
            checkpoints_failed: Counter::default(),
            keys: Gauge::default(),
            key_groups: Gauge::default(),
            epoch: Gauge::default(),
        };
        r.register(
            "events_processed",
            "Events applied to keyed state",
            m.events_processed.clone(),
        );
        r.register(
            "busy_seconds",
            "Seconds spent processing events; rate() of it is the share of time busy",
            m.busy_seconds.clone(),
        );
        r.register(
            "backlog_events",
            "Events the source holds that are not applied yet (jobs that know it)",
            m.backlog.clone(),
        );
        r.register(
            "checkpoint_capture_seconds",
            "Time processing was held for a native RocksDB checkpoint",
            m.capture_seconds.clone(),
        );
        r.register(
            "checkpoint_duration_seconds",
            "Time from a checkpoint request to its handle in the store",
            m.checkpoint_seconds.clone(),
        );
        r.register(
            "checkpoint_uploaded_bytes",
            "Bytes uploaded by checkpoints (files not reused from completed ones)",
            m.checkpoint_uploaded_bytes.clone(),
        );
        r.register(
            "checkpoint_size_bytes",
            "Bytes referenced by the newest handle",
            m.checkpoint_size_bytes.clone(),
        );
        r.register(
            "checkpoints_completed",
            "Handles written",
            m.checkpoints_completed.clone(),
        );
        r.register(
            "checkpoints_failed",
            "Checkpoints failed on this worker",
            m.checkpoints_failed.clone(),
        );
        r.register("keys", "Estimated keys in all named states", m.keys.clone());
        r.register(
            "key_groups",
            "Key groups owned by this worker",
            m.key_groups.clone(),
        );
        r.register(
            "epoch",
            "Fencing epoch of this worker generation",
            m.epoch.clone(),
        );
        Self {
            registry: Arc::new(r),
            ..m
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        crate::telemetry::exposition(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_the_metrics_with_values() {
        let m = WorkerMetrics::new();
        m.events_processed.inc_by(42);
        m.checkpoint_seconds.observe(0.5);
        m.epoch.set(3);
        let text = m.encode();
        assert!(
            text.contains("regroup_worker_events_processed_total 42"),
            "{text}"
        );
        assert!(
            text.contains("regroup_worker_checkpoint_duration_seconds_count 1"),
            "{text}"
        );
        assert!(text.contains("regroup_worker_epoch 3"), "{text}");
    }
}
