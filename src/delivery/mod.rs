//! Fan-out workers: claim due deliveries from the store under a lease, pace them per hook,
//! send them, and record what happened.
//!
//! The store is the queue; [`DeliveryQueue::wake`] only hints that work may be due, so a lost
//! hint costs at most the one-second poll, never a delivery. A claim takes at most
//! `hook_rate` deliveries of one hook and none of a hook with deliveries still in flight, so one
//! busy hook cannot starve the others. Imports `store`, `registry`, `model`, `target`, `metrics`.

mod client;
pub mod retry;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub use client::{DeliveryClient, MAX_RESPONSE_BYTES, USER_AGENT};
use retry::Decision;

use crate::metrics::{DeliveryOutcome, Metrics};
use crate::model::{Attempt, AttemptRecord, DueDelivery, NextStep, now_ms};
use crate::registry::Registry;
use crate::store::{Claim, Store};

/// Attempts in flight at once, across all hooks.
pub const MAX_IN_FLIGHT: usize = 512;
/// How long recording an attempt is retried before the lease is left to expire.
const RECORD_PATIENCE: Duration = Duration::from_secs(30);
/// Longest pause between polls of the store when nothing wakes the dispatcher.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// Handle the ingest path uses to say "new deliveries are due".
#[derive(Clone, Default)]
pub struct DeliveryQueue {
    wake: Arc<Notify>,
}

impl DeliveryQueue {
    /// Wakes the dispatcher (coalesced; never blocks).
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// Everything the dispatcher and its attempts share.
pub struct Dispatcher {
    /// Source of due work and sink of outcomes.
    pub store: Store,
    /// Updated when a target answers 410.
    pub registry: Registry,
    /// Sends the requests.
    pub client: DeliveryClient,
    /// Waits between attempts.
    pub schedule: Vec<Duration>,
    /// Requests per second per hook.
    pub hook_rate: u32,
    /// How long a claim is leased; longer than any attempt, shorter than an outage should last.
    pub lease: Duration,
    /// The wake-up hint shared with the ingest path.
    pub queue: DeliveryQueue,
    /// Where outcomes and latencies are counted.
    pub metrics: Metrics,
}

struct Shared {
    dispatcher: Dispatcher,
    pacer: DefaultKeyedRateLimiter<String>,
    permits: Arc<Semaphore>,
    shutdown: CancellationToken,
}

impl Dispatcher {
    /// Runs until `shutdown`; attempts are spawned on `tracker`, which the caller drains.
    pub async fn run(self, tracker: TaskTracker, shutdown: CancellationToken) {
        let shared = Arc::new(Shared {
            pacer: RateLimiter::keyed(pacing(self.hook_rate)),
            permits: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            shutdown: shutdown.clone(),
            dispatcher: self,
        });
        let mut janitor = tokio::time::interval(Duration::from_secs(60));
        while !shutdown.is_cancelled() {
            let claimed_all = shared.claim_and_spawn(&tracker).await;
            if claimed_all {
                continue;
            }
            let now = now_ms();
            let wait = match shared.dispatcher.store.next_due(now).await {
                Ok(Some(at)) => Duration::from_millis(u64::try_from(at - now).unwrap_or(0)).min(IDLE_POLL),
                _ => IDLE_POLL,
            };
            tokio::select! {
                () = shared.dispatcher.queue.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
                _ = janitor.tick() => shared.pacer.retain_recent(),
                () = shutdown.cancelled() => {}
            }
        }
    }
}

/// Requests to one hook are spread evenly, one every `1/rate` s plus 5 %: no burst, so no
/// one-second window at the target ever holds more than `rate` of them, even when network
/// jitter brings one request a little closer to the next (Make answers 429 above 5/s).
fn pacing(rate: u32) -> Quota {
    let period = Duration::from_secs(1).mul_f64(PACING_HEADROOM / f64::from(rate.max(1)));
    Quota::with_period(period).expect("the period is above zero").allow_burst(NonZeroU32::MIN)
}

/// How much slower than `RELAY_HOOK_RATE` deliveries to one hook are spaced.
const PACING_HEADROOM: f64 = 1.05;

impl Shared {
    /// Claims as much as there is room for; `true` if the claim came back full (more may wait).
    async fn claim_and_spawn(self: &Arc<Self>, tracker: &TaskTracker) -> bool {
        let room = self.permits.available_permits();
        if room == 0 {
            return false;
        }
        let now = now_ms();
        let lease = i64::try_from(self.dispatcher.lease.as_millis()).unwrap_or(i64::MAX);
        let claim = Claim {
            now,
            lease_until: now.saturating_add(lease),
            limit: room,
            per_hook: self.dispatcher.hook_rate.max(1) as usize,
        };
        let due = match self.dispatcher.store.claim(claim).await {
            Ok(due) => due,
            Err(e) => {
                tracing::error!(cause = %e, "claiming due deliveries failed");
                return false;
            }
        };
        let full = due.len() == room;
        for delivery in due {
            let Ok(permit) = Arc::clone(&self.permits).acquire_owned().await else {
                break;
            };
            let span = tracing::info_span!(
                "delivery",
                connection = %delivery.connection_id,
                hook = %delivery.hook_id,
                event = %delivery.event_id,
                attempt = delivery.attempts + 1,
            );
            tracker.spawn(Arc::clone(self).attempt(delivery, permit).instrument(span));
        }
        full
    }

    async fn attempt(self: Arc<Self>, d: DueDelivery, _permit: OwnedSemaphorePermit) {
        let store = &self.dispatcher.store;
        tokio::select! {
            () = self.pacer.until_key_ready(&d.hook_id) => {}
            () = self.shutdown.cancelled() => {}
        }
        if self.shutdown.is_cancelled() {
            let _ = store.release(vec![d.id]).await;
            return;
        }
        let number = d.attempts + 1;
        let at = now_ms();
        let sent = self.dispatcher.client.send(&d, number).await;
        let decision = retry::decide(sent.outcome, number, &self.dispatcher.schedule, sent.retry_after);
        let status_code = match sent.outcome {
            retry::Outcome::Status(s) => Some(s),
            retry::Outcome::Failed => None,
        };
        tracing::info!(status = status_code, outcome = ?decision, ms = sent.duration.as_millis() as u64, "attempt finished");
        let metrics = &self.dispatcher.metrics;
        let next = match decision {
            Decision::Detach => {
                metrics.attempt(DeliveryOutcome::Detached, sent.duration);
                self.detach(&d).await;
                return;
            }
            Decision::Delivered => {
                metrics.attempt(DeliveryOutcome::Delivered, sent.duration);
                let waited = now_ms().saturating_sub(d.received_at);
                metrics.delivered_after(Duration::from_millis(u64::try_from(waited).unwrap_or(0)));
                NextStep::Delivered
            }
            Decision::Retry(wait) => {
                metrics.attempt(DeliveryOutcome::Retried, sent.duration);
                NextStep::RetryAt(now_ms().saturating_add(wait.as_millis() as i64))
            }
            Decision::DeadLetter => {
                metrics.attempt(DeliveryOutcome::DeadLettered, sent.duration);
                NextStep::DeadLetter
            }
        };
        let record = AttemptRecord {
            delivery_id: d.id,
            hook_id: d.hook_id.clone(),
            attempt: Attempt {
                event_id: d.event_id.clone(),
                attempt: number,
                status_code,
                error: sent.error,
                duration_ms: sent.duration.as_millis() as u64,
                at,
            },
            next,
        };
        self.record(record).await;
        self.dispatcher.queue.wake();
    }

    /// Records an attempt, retrying while the store refuses (a full disk, a failover) so the
    /// delivery does not sit leased — blocking its hook — until the lease expires. If the store
    /// stays down, the lease runs out and the delivery is attempted again: at least once.
    async fn record(&self, record: AttemptRecord) {
        let mut wait = Duration::from_millis(100);
        loop {
            match self.dispatcher.store.record(record.clone()).await {
                Ok(()) => return,
                Err(e) if wait > RECORD_PATIENCE || self.shutdown.is_cancelled() => {
                    tracing::error!(cause = %e, "recording an attempt failed; it is attempted again when its lease expires");
                    return;
                }
                Err(e) => tracing::warn!(cause = %e, retry_in = ?wait, "recording an attempt failed"),
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.shutdown.cancelled() => {}
            }
            wait *= 2;
        }
    }

    async fn detach(&self, d: &DueDelivery) {
        match self.dispatcher.store.detach_hook(&d.connection_id, &d.hook_id).await {
            Ok(_) => {
                self.dispatcher.registry.remove_hook(&d.connection_id, &d.hook_id);
                tracing::info!("target answered 410 Gone; hook detached");
            }
            Err(e) => tracing::error!(cause = %e, "detaching a gone hook failed; it is retried"),
        }
        self.dispatcher.queue.wake();
    }
}
