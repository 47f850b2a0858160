//! Which claimed deliveries this instance still has in flight, kept in its memory.
//!
//! A hook's row in `hook_leases` already makes one instance the only one that claims its
//! deliveries, so which of them are in flight matters to that instance alone. Kept here instead
//! of as a lease column on each delivery row, a claim rewrites no delivery row (under load that
//! rewrite, a new entry in every index of `deliveries`, was most of a claim's cost) and giving
//! deliveries back costs no round trip. An entry lasts until its attempt is recorded, it is
//! released, or its lease runs out — as the hook's lease does, so a record that could not be
//! written leaves the delivery to be claimed again, here or by the instance taking the hook over.
//!
//! Once its attempt is over, a delivery no longer holds its hook back: the hook's next
//! deliveries may be claimed while the record waits to share a commit with others, and only the
//! attempted delivery itself is passed over until its record is written.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Deliveries claimed and not yet settled, by id.
#[derive(Default)]
pub(super) struct InFlight(Mutex<HashMap<i64, Lease>>);

/// One claimed delivery.
struct Lease {
    hook_id: String,
    /// When the lease runs out (ms).
    until: i64,
    /// Its attempt is over; the record is on its way.
    attempted: bool,
}

/// What a claim must pass over.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Excluded {
    /// Hooks with an attempt under way: one batch at a time per hook, in order.
    pub(super) hooks: Vec<String>,
    /// Deliveries attempted whose records are not written yet.
    pub(super) deliveries: Vec<i64>,
}

impl InFlight {
    /// What a claim at `now` must pass over; leases that ran out by then are forgotten.
    pub(super) fn excluded(&self, now: i64) -> Excluded {
        let mut leased = self.lock();
        leased.retain(|_, lease| lease.until > now);
        let mut hooks = HashSet::new();
        let mut deliveries = Vec::new();
        for (id, lease) in leased.iter() {
            if lease.attempted {
                deliveries.push(*id);
            } else {
                hooks.insert(lease.hook_id.as_str());
            }
        }
        Excluded { hooks: hooks.into_iter().map(str::to_owned).collect(), deliveries }
    }

    /// Claimed: each `(delivery, hook)` is in flight until `until` (ms).
    pub(super) fn leased<'a>(&self, deliveries: impl IntoIterator<Item = (i64, &'a str)>, until: i64) {
        let mut leased = self.lock();
        for (id, hook) in deliveries {
            leased.insert(id, Lease { hook_id: hook.to_owned(), until, attempted: false });
        }
    }

    /// The attempt of `id` is over: its hook no longer waits on it.
    pub(super) fn attempted(&self, id: i64) {
        if let Some(lease) = self.lock().get_mut(&id) {
            lease.attempted = true;
        }
    }

    /// Recorded or given back: these deliveries are no longer in flight.
    pub(super) fn settled(&self, ids: impl IntoIterator<Item = i64>) {
        let mut leased = self.lock();
        for id in ids {
            leased.remove(&id);
        }
    }

    /// The ids of the deliveries in flight at `now`.
    pub(super) fn ids(&self, now: i64) -> Vec<i64> {
        self.lock().iter().filter(|(_, lease)| lease.until > now).map(|(id, _)| *id).collect()
    }

    /// The map stays consistent whatever panicked while holding it (each change is one insert
    /// or remove), so a poisoned lock is taken over rather than spread.
    fn lock(&self) -> MutexGuard<'_, HashMap<i64, Lease>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hooks a claim at `now` passes over, sorted.
    fn busy_hooks(in_flight: &InFlight, now: i64) -> Vec<String> {
        let mut hooks = in_flight.excluded(now).hooks;
        hooks.sort();
        hooks
    }

    #[test]
    fn a_hook_is_busy_while_any_of_its_deliveries_is_in_flight_and_leased() {
        let in_flight = InFlight::default();
        in_flight.leased([(1, "a"), (2, "a"), (3, "b")], 100);
        in_flight.leased([(4, "c")], 50);
        assert_eq!(busy_hooks(&in_flight, 10), ["a", "b", "c"], "each hook once");
        in_flight.settled([1, 3]);
        assert_eq!(busy_hooks(&in_flight, 10), ["a", "c"], "a still has delivery 2 in flight");
        assert_eq!(busy_hooks(&in_flight, 50), ["a"], "c's lease ran out at 50");
        assert_eq!(in_flight.ids(10), [2], "and it is forgotten, not only passed over");
        in_flight.settled([2]);
        assert_eq!(in_flight.excluded(10), Excluded::default());
    }

    #[test]
    fn an_attempted_delivery_frees_its_hook_but_is_passed_over_until_recorded() {
        let in_flight = InFlight::default();
        in_flight.leased([(1, "a"), (2, "b")], 100);
        in_flight.attempted(1);
        let excluded = in_flight.excluded(10);
        assert_eq!((excluded.hooks, excluded.deliveries), (vec!["b".to_owned()], vec![1]));
        assert_eq!(in_flight.ids(10).len(), 2, "both are still in flight, neither waits");
        in_flight.settled([1]);
        assert_eq!(in_flight.excluded(10).deliveries, [0_i64; 0], "recorded: settled");
        in_flight.attempted(7);
        assert_eq!(in_flight.ids(10), [2], "an attempt of a delivery not in flight changes nothing");
    }
}
