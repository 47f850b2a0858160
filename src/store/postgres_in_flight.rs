//! Which claimed deliveries this instance still has in flight, kept in its memory.
//!
//! A hook's row in `hook_leases` already makes one instance the only one that claims its
//! deliveries, so which of them are in flight matters to that instance alone. Kept here instead
//! of as a lease column on each delivery row, a claim rewrites no delivery row (under load that
//! rewrite, a new entry in every index of `deliveries`, was most of a claim's cost) and giving
//! deliveries back costs no round trip. An entry lasts until its attempt is recorded, it is
//! released, or its lease runs out — as the hook's lease does, so a record that could not be
//! written leaves the delivery to be claimed again, here or by the instance taking the hook over.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Deliveries claimed and not yet settled: delivery id → (hook id, lease end in ms).
#[derive(Default)]
pub(super) struct InFlight(Mutex<HashMap<i64, (String, i64)>>);

impl InFlight {
    /// The hooks with a delivery in flight at `now`, which a claim must pass over (one attempt
    /// at a time per hook, in order); leases that ran out by then are forgotten.
    pub(super) fn busy_hooks(&self, now: i64) -> Vec<String> {
        let mut leased = self.lock();
        leased.retain(|_, (_, until)| *until > now);
        let hooks: HashSet<&String> = leased.values().map(|(hook, _)| hook).collect();
        hooks.into_iter().cloned().collect()
    }

    /// Claimed: each `(delivery, hook)` is in flight until `until` (ms).
    pub(super) fn leased<'a>(&self, deliveries: impl IntoIterator<Item = (i64, &'a str)>, until: i64) {
        let mut leased = self.lock();
        for (id, hook) in deliveries {
            leased.insert(id, (hook.to_owned(), until));
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
        self.lock().iter().filter(|(_, (_, until))| *until > now).map(|(id, _)| *id).collect()
    }

    /// The map stays consistent whatever panicked while holding it (each change is one insert
    /// or remove), so a poisoned lock is taken over rather than spread.
    fn lock(&self) -> MutexGuard<'_, HashMap<i64, (String, i64)>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(mut hooks: Vec<String>) -> Vec<String> {
        hooks.sort();
        hooks
    }

    #[test]
    fn a_hook_is_busy_while_any_of_its_deliveries_is_in_flight_and_leased() {
        let in_flight = InFlight::default();
        in_flight.leased([(1, "a"), (2, "a"), (3, "b")], 100);
        in_flight.leased([(4, "c")], 50);
        assert_eq!(sorted(in_flight.busy_hooks(10)), ["a", "b", "c"], "each hook once");
        in_flight.settled([1, 3]);
        assert_eq!(sorted(in_flight.busy_hooks(10)), ["a", "c"], "a still has delivery 2 in flight");
        assert_eq!(in_flight.busy_hooks(50), ["a"], "c's lease ran out at 50");
        assert_eq!(in_flight.ids(10), [2], "and it is forgotten, not only passed over");
        in_flight.settled([2]);
        assert!(in_flight.busy_hooks(10).is_empty());
    }
}
