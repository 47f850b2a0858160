//! The relay's Prometheus metrics: one registry per instance (no globals, so two relays in one
//! process stay apart) with typed handles the other modules record into. Every name starts with
//! `relay_`; labels are bounded outcomes only, never connections, hooks or URLs.
//! Imports nothing from the crate.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// What happened to an ingest request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestOutcome {
    /// 202.
    Accepted,
    /// 200 duplicate.
    Duplicate,
    /// 401.
    Unauthorized,
    /// 400.
    Invalid,
    /// 413.
    TooLarge,
    /// 429.
    RateLimited,
    /// 503.
    Unavailable,
}

impl IngestOutcome {
    fn label(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Duplicate => "duplicate",
            Self::Unauthorized => "unauthorized",
            Self::Invalid => "invalid",
            Self::TooLarge => "too_large",
            Self::RateLimited => "rate_limited",
            Self::Unavailable => "unavailable",
        }
    }
}

/// What an attempt did to its delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// 2xx.
    Delivered,
    /// Scheduled again.
    Retried,
    /// Gave up.
    DeadLettered,
    /// 410: the hook was removed.
    Detached,
}

impl DeliveryOutcome {
    fn label(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Retried => "retried",
            Self::DeadLettered => "dead_lettered",
            Self::Detached => "detached",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

/// Cheap-to-clone handle to the instance's metrics.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    ingest: Family<Outcome, Counter>,
    deliveries: Family<Outcome, Counter>,
    attempt_seconds: Histogram,
    delivered_after_seconds: Histogram,
    commit_batch: Histogram,
    pending: Gauge,
    hooks: Gauge,
    connections: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("relay");
        let ingest = Family::<Outcome, Counter>::default();
        registry.register("ingest_requests", "Ingest requests by outcome", ingest.clone());
        let deliveries = Family::<Outcome, Counter>::default();
        registry.register("deliveries", "Delivery attempts by what they did to the delivery", deliveries.clone());
        let attempt_seconds = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register("delivery_attempt_seconds", "Duration of one delivery attempt", attempt_seconds.clone());
        let delivered_after_seconds = Histogram::new(exponential_buckets(0.005, 4.0, 14));
        registry.register(
            "ingest_to_delivered_seconds",
            "Time from accepting an event to a hook's 2xx",
            delivered_after_seconds.clone(),
        );
        let commit_batch = Histogram::new(exponential_buckets(1.0, 2.0, 12));
        registry.register(
            "store_commit_batch_size",
            "Writes committed together in one transaction",
            commit_batch.clone(),
        );
        let pending = Gauge::default();
        registry.register("pending_deliveries", "Deliveries not yet delivered or dead-lettered", pending.clone());
        let hooks = Gauge::default();
        registry.register("hooks", "Attached hooks", hooks.clone());
        let connections = Gauge::default();
        registry.register("connections", "Connections", connections.clone());
        Self {
            inner: Arc::new(Inner {
                registry,
                ingest,
                deliveries,
                attempt_seconds,
                delivered_after_seconds,
                commit_batch,
                pending,
                hooks,
                connections,
            }),
        }
    }
}

impl Metrics {
    /// Counts an ingest request.
    pub fn ingest(&self, outcome: IngestOutcome) {
        self.inner.ingest.get_or_create(&Outcome { outcome: outcome.label() }).inc();
    }

    /// Counts a finished attempt and how long it took.
    pub fn attempt(&self, outcome: DeliveryOutcome, took: Duration) {
        self.inner.deliveries.get_or_create(&Outcome { outcome: outcome.label() }).inc();
        self.inner.attempt_seconds.observe(took.as_secs_f64());
    }

    /// Records the time from acceptance to delivery.
    pub fn delivered_after(&self, latency: Duration) {
        self.inner.delivered_after_seconds.observe(latency.as_secs_f64());
    }

    /// Records how many writes one store commit carried.
    pub fn commit_batch(&self, size: usize) {
        self.inner.commit_batch.observe(size as f64);
    }

    /// Renders the Prometheus text exposition with the given current levels.
    pub fn render(&self, pending: u64, hooks: usize, connections: usize) -> String {
        let level = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.inner.pending.set(level(pending));
        self.inner.hooks.set(level(hooks as u64));
        self.inner.connections.set(level(connections as u64));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.inner.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prefixed_bounded_metrics() {
        let m = Metrics::default();
        m.ingest(IngestOutcome::Accepted);
        m.ingest(IngestOutcome::RateLimited);
        m.attempt(DeliveryOutcome::Delivered, Duration::from_millis(20));
        m.commit_batch(3);
        let text = m.render(7, 2, 1);
        assert!(text.contains("relay_ingest_requests_total{outcome=\"accepted\"} 1"), "{text}");
        assert!(text.contains("relay_ingest_requests_total{outcome=\"rate_limited\"} 1"));
        assert!(text.contains("relay_deliveries_total{outcome=\"delivered\"} 1"));
        assert!(text.contains("relay_pending_deliveries 7"));
        assert!(text.contains("relay_hooks 2") && text.contains("relay_connections 1"));
        assert!(text.contains("relay_delivery_attempt_seconds_count 1"));
        assert!(text.contains("relay_store_commit_batch_size_sum 3"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("relay_"), "{line}");
        }
    }
}
