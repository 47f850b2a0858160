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

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Status {
    status: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Table {
    table: &'static str,
}

/// The levels `/metrics` shows, as last read (off the request path, so that scraping never
/// waits on the store).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Levels {
    /// Deliveries neither delivered nor dead-lettered.
    pub pending: u64,
    /// How long the oldest of them has waited since its event arrived (zero without one): the
    /// backlog's age, which is what to alert on.
    pub oldest_pending_age: Duration,
    /// Bytes the store takes on disk.
    pub store_bytes: u64,
    /// Hooks attached.
    pub hooks: usize,
    /// Of them, paused at the moment.
    pub paused_hooks: u64,
    /// Of them, disabled.
    pub disabled_hooks: u64,
    /// Connections.
    pub connections: usize,
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
    oldest_pending_age: Gauge,
    store_bytes: Gauge,
    pruned: Family<Table, Counter>,
    hooks: Family<Status, Gauge>,
    hook_pauses: Counter,
    hook_disables: Counter,
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
        let oldest_pending_age = Gauge::default();
        registry.register(
            "oldest_pending_delivery_age_seconds",
            "Time since the event of the oldest pending delivery arrived (0: none pending)",
            oldest_pending_age.clone(),
        );
        let store_bytes = Gauge::default();
        registry.register("store_size_bytes", "Bytes the store takes on disk", store_bytes.clone());
        let pruned = Family::<Table, Counter>::default();
        registry.register("store_pruned_rows", "Rows deleted by retention, by table", pruned.clone());
        let hooks = Family::<Status, Gauge>::default();
        registry.register("hooks", "Attached hooks by status", hooks.clone());
        let hook_pauses = Counter::default();
        registry.register(
            "hook_pauses",
            "Times a hook was paused (Retry-After or a run of failures)",
            hook_pauses.clone(),
        );
        let hook_disables = Counter::default();
        registry.register(
            "hook_disables",
            "Hooks disabled after failing for RELAY_DISABLE_AFTER",
            hook_disables.clone(),
        );
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
                oldest_pending_age,
                store_bytes,
                pruned,
                hooks,
                hook_pauses,
                hook_disables,
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

    /// Counts rows deleted by retention.
    pub fn pruned(&self, events: u64, deliveries: u64, attempts: u64) {
        for (table, rows) in [("events", events), ("deliveries", deliveries), ("attempts", attempts)] {
            self.inner.pruned.get_or_create(&Table { table }).inc_by(rows);
        }
    }

    /// Counts a hook paused.
    pub fn hook_paused(&self) {
        self.inner.hook_pauses.inc();
    }

    /// Counts a hook disabled.
    pub fn hook_disabled(&self) {
        self.inner.hook_disables.inc();
    }

    /// Renders the Prometheus text exposition with the given current levels.
    pub fn render(&self, levels: &Levels) -> String {
        let level = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.inner.pending.set(level(levels.pending));
        self.inner.oldest_pending_age.set(level(levels.oldest_pending_age.as_secs()));
        self.inner.store_bytes.set(level(levels.store_bytes));
        let unwell = levels.paused_hooks.saturating_add(levels.disabled_hooks);
        let active = (levels.hooks as u64).saturating_sub(unwell);
        for (status, n) in [("active", active), ("paused", levels.paused_hooks), ("disabled", levels.disabled_hooks)] {
            self.inner.hooks.get_or_create(&Status { status }).set(level(n));
        }
        self.inner.connections.set(level(levels.connections as u64));
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
        m.pruned(4, 3, 2);
        let levels = Levels {
            pending: 7,
            oldest_pending_age: Duration::from_secs(90),
            store_bytes: 4096,
            hooks: 5,
            paused_hooks: 2,
            disabled_hooks: 1,
            connections: 1,
        };
        m.hook_paused();
        m.hook_disabled();
        let text = m.render(&levels);
        assert!(text.contains("relay_ingest_requests_total{outcome=\"accepted\"} 1"), "{text}");
        assert!(text.contains("relay_ingest_requests_total{outcome=\"rate_limited\"} 1"));
        assert!(text.contains("relay_deliveries_total{outcome=\"delivered\"} 1"));
        assert!(text.contains("relay_pending_deliveries 7"));
        assert!(text.contains("relay_hooks{status=\"active\"} 2") && text.contains("relay_connections 1"));
        assert!(
            text.contains("relay_hooks{status=\"paused\"} 2") && text.contains("relay_hooks{status=\"disabled\"} 1")
        );
        assert!(text.contains("relay_hook_pauses_total 1") && text.contains("relay_hook_disables_total 1"), "{text}");
        assert!(text.contains("relay_oldest_pending_delivery_age_seconds 90"), "{text}");
        assert!(text.contains("relay_store_size_bytes 4096"));
        assert!(text.contains("relay_store_pruned_rows_total{table=\"events\"} 4"));
        assert!(text.contains("relay_delivery_attempt_seconds_count 1"));
        assert!(text.contains("relay_store_commit_batch_size_sum 3"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("relay_"), "{line}");
        }
    }
}
