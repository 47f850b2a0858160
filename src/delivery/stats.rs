//! What the dashboard's chart shows: per connection, per minute of the last hour, how many
//! attempts delivered, were retried, dead-lettered or detached, and the end-to-end latency of
//! the deliveries (from the 202 to the hook's 2xx). Kept in memory by the instance that made the
//! attempts: since it started, at most an hour back, and on PostgreSQL each instance its own
//! share. Cheap on the hot path: one map look-up and a few additions per attempt.

use std::time::Duration;

use dashmap::DashMap;

use crate::metrics::DeliveryOutcome;

/// Minutes kept.
pub const MINUTES: usize = 60;
/// Upper bounds (ms) of the latency histogram's buckets; the last one catches the rest.
const BOUNDS_MS: [u64; 14] = [5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, u64::MAX];

/// One minute of one connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Minute {
    /// The minute's start (ms since the epoch).
    pub at: i64,
    /// Attempts answered 2xx.
    pub delivered: u32,
    /// Attempts to be made again.
    pub retried: u32,
    /// Attempts that ended as dead letters.
    pub dead_lettered: u32,
    /// Attempts answered 410 by a non-Make host (the hook was detached).
    pub detached: u32,
    latency: [u32; BOUNDS_MS.len()],
}

impl Minute {
    /// The bucket bound at or under which `share` of the deliveries' latencies fall (ms), if any
    /// was delivered.
    pub fn latency_ms(&self, share: f64) -> Option<u64> {
        let total: u32 = self.latency.iter().sum();
        if total == 0 {
            return None;
        }
        let wanted = (f64::from(total) * share).ceil().max(1.0) as u32;
        let mut seen = 0;
        for (bound, n) in BOUNDS_MS.iter().zip(self.latency) {
            seen += n;
            if seen >= wanted {
                return Some((*bound).min(BOUNDS_MS[BOUNDS_MS.len() - 2]));
            }
        }
        None
    }
}

/// Every connection's last hour.
#[derive(Default)]
pub struct DeliveryStats {
    connections: DashMap<String, Box<[Minute; MINUTES]>>,
}

impl DeliveryStats {
    /// Counts an attempt of `connection_id` at `now` (ms); `latency` for a delivered one.
    pub fn record(&self, connection_id: &str, outcome: DeliveryOutcome, latency: Option<Duration>, now: i64) {
        let minute = now.div_euclid(60_000) * 60_000;
        let mut ring = match self.connections.get_mut(connection_id) {
            Some(ring) => ring,
            None => self
                .connections
                .entry(connection_id.to_owned())
                .or_insert_with(|| Box::new([Minute::default(); MINUTES])),
        };
        let slot = &mut ring[usize::try_from(minute / 60_000).unwrap_or(0) % MINUTES];
        if slot.at > minute {
            return; // older than what the slot holds now (a clock step back): not in the hour
        }
        if slot.at != minute {
            *slot = Minute { at: minute, ..Minute::default() };
        }
        match outcome {
            DeliveryOutcome::Delivered => slot.delivered += 1,
            DeliveryOutcome::Retried => slot.retried += 1,
            DeliveryOutcome::DeadLettered => slot.dead_lettered += 1,
            DeliveryOutcome::Detached => slot.detached += 1,
        }
        if let Some(latency) = latency {
            let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
            let bucket = BOUNDS_MS.iter().position(|bound| ms <= *bound).unwrap_or(BOUNDS_MS.len() - 1);
            slot.latency[bucket] += 1;
        }
    }

    /// The last [`MINUTES`] minutes of `connection_id` up to `now` (ms), oldest first; minutes
    /// without attempts are zeros.
    pub fn last_hour(&self, connection_id: &str, now: i64) -> Vec<Minute> {
        let this_minute = now.div_euclid(60_000) * 60_000;
        let ring = self.connections.get(connection_id);
        (0..MINUTES as i64)
            .rev()
            .map(|back| {
                let at = this_minute - back * 60_000;
                let kept = ring.as_ref().map(|r| r[usize::try_from(at / 60_000).unwrap_or(0) % MINUTES]);
                kept.filter(|m| m.at == at).unwrap_or(Minute { at, ..Minute::default() })
            })
            .collect()
    }

    /// Forgets a deleted connection.
    pub fn forget(&self, connection_id: &str) {
        self.connections.remove(connection_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_hour_of_minutes_oldest_first_with_latency_quantiles() {
        let stats = DeliveryStats::default();
        let now = 10 * 3_600_000 + 30_000;
        for ms in [3, 4, 40, 400] {
            stats.record("c", DeliveryOutcome::Delivered, Some(Duration::from_millis(ms)), now);
        }
        stats.record("c", DeliveryOutcome::Retried, None, now - 60_000);
        stats.record("c", DeliveryOutcome::DeadLettered, None, now - 2 * 3_600_000); // more than an hour ago
        let hour = stats.last_hour("c", now);
        assert_eq!(hour.len(), MINUTES);
        let last = hour[MINUTES - 1];
        assert_eq!((last.at, last.delivered), (10 * 3_600_000, 4));
        assert_eq!((last.latency_ms(0.5), last.latency_ms(0.95)), (Some(5), Some(500)));
        assert_eq!(hour[MINUTES - 2].retried, 1);
        assert!(hour.iter().all(|m| m.dead_lettered == 0), "an hour-old minute is not shown");
        assert!(stats.last_hour("other", now).iter().all(|m| *m == Minute { at: m.at, ..Minute::default() }));
        assert_eq!(Minute::default().latency_ms(0.5), None);
    }
}
