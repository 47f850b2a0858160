//! Which claimed or handed-off deliveries this instance still has in flight, kept in its memory.
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
//!
//! A delivery handed off at ingest is committed in flight (`HANDED`, which claims do not read)
//! and entered here after the commit. A claim drops what was settled while it ran (its snapshot
//! may predate the record), and an id already here is never entered twice.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::model::DueDelivery;

/// Deliveries claimed or handed off and not yet settled, by id.
#[derive(Default)]
pub(super) struct InFlight(Mutex<Leases>);

#[derive(Default)]
struct Leases {
    by_id: HashMap<i64, Lease>,
    /// Deliveries settled since the running claim computed what it passes over (`None`: no
    /// claim is running).
    settled_during_claim: Option<HashSet<i64>>,
}

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
    /// Starts a claim at `now`: what it must pass over. Leases that ran out by then are
    /// forgotten.
    pub(super) fn excluded(&self, now: i64) -> Excluded {
        let mut leases = self.lock();
        leases.settled_during_claim = Some(HashSet::new());
        leases.by_id.retain(|_, lease| lease.until > now);
        let mut hooks = HashSet::new();
        let mut deliveries = Vec::new();
        for (id, lease) in &leases.by_id {
            if lease.attempted {
                deliveries.push(*id);
            } else {
                hooks.insert(lease.hook_id.as_str());
            }
        }
        Excluded { hooks: hooks.into_iter().map(str::to_owned).collect(), deliveries }
    }

    /// Ends the claim started by [`InFlight::excluded`]: what it found is in flight until
    /// `until` (ms), except what a hand-off entered first or what was settled while it ran.
    pub(super) fn claimed(&self, due: &mut Vec<DueDelivery>, until: i64) {
        let mut leases = self.lock();
        let settled = leases.settled_during_claim.take().unwrap_or_default();
        due.retain(|d| !settled.contains(&d.id));
        leases.enter(due, until);
    }

    /// Handed off at ingest: in flight until `until` (ms).
    pub(super) fn handed(&self, handed: &mut Vec<DueDelivery>, until: i64) {
        self.lock().enter(handed, until);
    }

    /// The attempt of `id` is over: its hook no longer waits on it.
    pub(super) fn attempted(&self, id: i64) {
        if let Some(lease) = self.lock().by_id.get_mut(&id) {
            lease.attempted = true;
        }
    }

    /// Recorded or given back: these deliveries are no longer in flight.
    pub(super) fn settled(&self, ids: impl IntoIterator<Item = i64>) {
        let mut leases = self.lock();
        let Leases { by_id, settled_during_claim } = &mut *leases;
        for id in ids {
            by_id.remove(&id);
            if let Some(settled) = settled_during_claim {
                settled.insert(id);
            }
        }
    }

    /// The hooks with a delivery in flight, leased or not: their hook leases must stay.
    pub(super) fn hooks(&self) -> Vec<String> {
        let leases = self.lock();
        let hooks: HashSet<&str> = leases.by_id.values().map(|lease| lease.hook_id.as_str()).collect();
        hooks.into_iter().map(str::to_owned).collect()
    }

    /// The ids of the deliveries in flight at `now`.
    pub(super) fn ids(&self, now: i64) -> Vec<i64> {
        self.lock().by_id.iter().filter(|(_, lease)| lease.until > now).map(|(id, _)| *id).collect()
    }

    /// The map stays consistent whatever panicked while holding it (each change is one insert
    /// or remove), so a poisoned lock is taken over rather than spread.
    fn lock(&self) -> MutexGuard<'_, Leases> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Leases {
    /// Enters `deliveries` as in flight until `until`, keeping only those not in flight already.
    fn enter(&mut self, deliveries: &mut Vec<DueDelivery>, until: i64) {
        deliveries.retain(|d| match self.by_id.entry(d.id) {
            Entry::Occupied(_) => false,
            Entry::Vacant(v) => {
                v.insert(Lease { hook_id: d.hook_id.clone(), until, attempted: false });
                true
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deliveries with these `(id, hook)`s.
    fn deliveries(of: &[(i64, &str)]) -> Vec<DueDelivery> {
        of.iter()
            .map(|&(id, hook)| DueDelivery {
                id,
                connection_id: "c".into(),
                hook_id: hook.into(),
                url: "http://x".into(),
                event_id: format!("e{id}"),
                payload: "{}".into(),
                attempts: 0,
                received_at: 0,
                lease_until: i64::MAX,
                streak: None,
            })
            .collect()
    }

    /// Claims `of` in a claim started and ended at once, leased until `until`.
    fn claim(in_flight: &InFlight, of: &[(i64, &str)], until: i64) {
        in_flight.excluded(0);
        in_flight.claimed(&mut deliveries(of), until);
    }

    /// The hooks a claim at `now` passes over, sorted.
    fn busy_hooks(in_flight: &InFlight, now: i64) -> Vec<String> {
        let mut hooks = in_flight.excluded(now).hooks;
        hooks.sort();
        hooks
    }

    fn ids(due: &[DueDelivery]) -> Vec<i64> {
        due.iter().map(|d| d.id).collect()
    }

    #[test]
    fn a_hook_is_busy_while_any_of_its_deliveries_is_in_flight_and_leased() {
        let in_flight = InFlight::default();
        claim(&in_flight, &[(1, "a"), (2, "a"), (3, "b")], 100);
        in_flight.handed(&mut deliveries(&[(4, "c")]), 50);
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
        claim(&in_flight, &[(1, "a"), (2, "b")], 100);
        in_flight.attempted(1);
        let excluded = in_flight.excluded(10);
        assert_eq!((excluded.hooks, excluded.deliveries), (vec!["b".to_owned()], vec![1]));
        assert_eq!(in_flight.ids(10).len(), 2, "both are still in flight, neither waits");
        in_flight.settled([1]);
        assert_eq!(in_flight.excluded(10).deliveries, [0_i64; 0], "recorded: settled");
        in_flight.attempted(7);
        assert_eq!(in_flight.ids(10), [2], "an attempt of a delivery not in flight changes nothing");
    }

    #[test]
    fn a_delivery_found_by_both_a_claim_and_a_hand_off_goes_to_one_of_them() {
        let in_flight = InFlight::default();
        let mut handed = deliveries(&[(1, "a")]);
        in_flight.handed(&mut handed, 100);
        let mut found = deliveries(&[(1, "a"), (2, "b")]);
        in_flight.excluded(0);
        in_flight.claimed(&mut found, 100);
        assert_eq!((ids(&handed), ids(&found)), (vec![1], vec![2]), "the hand-off came first");
        let mut handed = deliveries(&[(2, "b")]);
        in_flight.handed(&mut handed, 100);
        assert!(handed.is_empty(), "the claim came first");

        in_flight.excluded(0);
        in_flight.settled([1]); // handed, attempted and recorded while the claim ran
        let mut found = deliveries(&[(1, "a"), (3, "c")]);
        in_flight.claimed(&mut found, 100);
        assert_eq!(ids(&found), [3], "its snapshot may predate the record: not attempted twice");
        in_flight.settled([3]);
        let mut found = deliveries(&[(1, "a")]);
        in_flight.claimed(&mut found, 100);
        assert_eq!(ids(&found), [1], "only settlements during a claim count against it");
    }
}
