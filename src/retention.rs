//! Retention: the store keeps finished history for `RELAY_RETENTION`, then deletes it, so under
//! steady traffic it stops growing.
//!
//! A pass deletes the events received before the window whose deliveries have all finished
//! (delivered or dead-lettered: dead letters go the same way), with those deliveries and their
//! attempts; an event with a delivery still pending stays until that one finishes. Since the
//! duplicate check's ids go with their events, a repeated id is caught within the window and
//! accepted again after it. A pass runs every minute, or every quarter of the window when that
//! is shorter than four minutes, so history lives at most one pass interval past the window.
//!
//! Deleted connections and detached hooks go the same way ([`reap_removals`]): the request's
//! own write makes them invisible, the rest is deleted in steps of `REAP_STEP` rows.
//!
//! A pass deletes in steps of `STEP` events, each its own small write, with a pause between
//! them: ingest and delivery writes go in between, so pruning never holds them up for long.
//! Imports `store` and `metrics`.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::model::now_ms;
use crate::store::Store;

/// Rows deleted per step of a removal (a deleted connection, a detached hook).
const REAP_STEP: usize = 500;
/// How often the store is asked whether a removal is queued (a check in memory).
const REAP_EVERY: Duration = Duration::from_millis(250);
/// Events looked at per step: with their deliveries and attempts, a hundred-odd rows, a fraction
/// of a millisecond of the writer's time (a commit shares it with ingests).
const STEP: usize = 32;
/// Pause between two steps of a pass: still room to delete several thousand events a second.
const BETWEEN_STEPS: Duration = Duration::from_millis(5);
/// Longest time between two passes.
const MAX_EVERY: Duration = Duration::from_secs(60);
/// Passes between two reclaims of the freed space (see [`Store::reclaim`]).
const RECLAIM_EVERY: u32 = 4;

/// The retention policy and its schedule.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    window: Duration,
    every: Duration,
}

impl Retention {
    /// Keeps history for `window`.
    pub fn new(window: Duration) -> Self {
        Self { window, every: MAX_EVERY.min(window / 4) }
    }

    /// How often a pass runs.
    pub fn every(&self) -> Duration {
        self.every
    }

    /// Runs a pass every [`Retention::every`] until `shutdown`.
    pub async fn run(self, store: Store, metrics: Metrics, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut passes = 0;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.cancelled() => return,
            }
            let rows = self.pass(&store, &metrics, &shutdown).await;
            passes += 1;
            if rows > 0 && passes >= RECLAIM_EVERY {
                passes = 0;
                if let Err(e) = store.reclaim().await {
                    tracing::warn!(cause = %e, "reclaiming the space of pruned rows failed; autovacuum will");
                }
            }
        }
    }

    /// Deletes what has left the window, step by step; returns how many rows went.
    async fn pass(&self, store: &Store, metrics: &Metrics, shutdown: &CancellationToken) -> u64 {
        let window = i64::try_from(self.window.as_millis()).unwrap_or(i64::MAX);
        let cutoff = now_ms().saturating_sub(window);
        let (mut after, mut rows) = (0, 0);
        while !shutdown.is_cancelled() {
            match store.prune(cutoff, after, STEP).await {
                Ok(step) => {
                    metrics.pruned(step.events, step.deliveries, step.attempts);
                    rows += step.rows();
                    match step.next {
                        Some(next) => after = next,
                        None => break,
                    }
                }
                Err(e) => {
                    tracing::warn!(cause = %e, "pruning old history failed; the next pass tries again");
                    break;
                }
            }
            tokio::time::sleep(BETWEEN_STEPS).await;
        }
        if rows > 0 {
            tracing::debug!(rows, "pruned history past the retention window");
        }
        rows
    }
}

/// Removes what deleted connections and detached hooks left behind, step by step, until
/// `shutdown`; a removal left by a previous process is finished too.
pub async fn reap_removals(store: Store, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(REAP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        while !shutdown.is_cancelled() {
            match store.reap(REAP_STEP).await {
                Ok(Some(_)) => tokio::time::sleep(BETWEEN_STEPS).await,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(cause = %e, "removing a deleted connection's or hook's rows failed; it goes on later");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_run_every_minute_or_every_quarter_of_a_short_window() {
        assert_eq!(Retention::new(Duration::from_secs(30 * 86_400)).every(), Duration::from_secs(60));
        assert_eq!(Retention::new(Duration::from_secs(240)).every(), Duration::from_secs(60));
        assert_eq!(Retention::new(Duration::from_secs(8)).every(), Duration::from_secs(2));
    }
}
