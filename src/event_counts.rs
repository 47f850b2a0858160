//! Events received per connection and hour, for the operator view's "events in the last 24 h".
//!
//! Counted in memory after each ingest's commit and added to the store every few seconds with
//! one statement: counted in the ingest's own write instead, every batch of a connection would
//! update one row, and on PostgreSQL concurrent batches (and instances) would queue on its lock.
//! A crash loses at most the last few seconds' counts — a figure for people, never an event.
//! Each flush after the hour has changed also forgets the counts older than a day. Imports
//! `store` and `model`.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::model::{HOUR_MS, HourCount, now_ms};
use crate::store::Store;

/// How often the counts in memory are added to the store.
const FLUSH_EVERY: Duration = Duration::from_secs(5);
/// Hours of counts kept: the day the overview sums, and the hour it began in.
const HOURS_KEPT: i64 = 25;

/// Events counted since the last flush: per connection id, per hour.
#[derive(Default)]
pub struct EventCounts(Mutex<HashMap<String, HashMap<i64, u64>>>);

impl EventCounts {
    /// One event of `connection_id` received at `received_at` (ms) was committed.
    pub fn add(&self, connection_id: &str, received_at: i64) {
        let hour = received_at.div_euclid(HOUR_MS);
        let mut counts = self.lock();
        if let Some(hours) = counts.get_mut(connection_id) {
            *hours.entry(hour).or_default() += 1;
        } else {
            counts.insert(connection_id.to_owned(), HashMap::from([(hour, 1)]));
        }
    }

    /// Adds the counts to `store` every [`FLUSH_EVERY`] and once more at `shutdown`.
    pub async fn run(&self, store: Store, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut forgotten_before = None;
        loop {
            let stopping = tokio::select! {
                _ = tick.tick() => false,
                () = shutdown.cancelled() => true,
            };
            self.flush(&store).await;
            let before = now_ms().div_euclid(HOUR_MS) - HOURS_KEPT;
            if forgotten_before != Some(before) {
                match store.forget_event_counts(before).await {
                    Ok(_) => forgotten_before = Some(before),
                    Err(e) => {
                        tracing::warn!(cause = %e, "forgetting old event counts failed; the next flush tries again")
                    }
                }
            }
            if stopping {
                return;
            }
        }
    }

    /// Adds what was counted since the last flush to `store`; kept for the next one if that fails.
    async fn flush(&self, store: &Store) {
        let counts: Vec<HourCount> = std::mem::take(&mut *self.lock())
            .into_iter()
            .flat_map(|(connection_id, hours)| {
                hours.into_iter().map(move |(hour, events)| HourCount {
                    connection_id: connection_id.clone(),
                    hour,
                    events,
                })
            })
            .collect();
        if counts.is_empty() {
            return;
        }
        if let Err(e) = store.count_events(counts.clone()).await {
            tracing::warn!(cause = %e, "adding the event counts to the store failed; the next flush tries again");
            let mut kept = self.lock();
            for count in counts {
                *kept.entry(count.connection_id).or_default().entry(count.hour).or_default() += count.events;
            }
        }
    }

    /// Each change is one insert or addition, so a panic elsewhere cannot leave the map half
    /// changed: a poisoned lock is taken over.
    fn lock(&self) -> MutexGuard<'_, HashMap<String, HashMap<i64, u64>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
