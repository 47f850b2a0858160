//! Per-hook bookkeeping that decides whether a new delivery may skip the store's claim queue.
//!
//! A delivery is *handed off* — leased in the ingest commit and attempted at once — only while
//! its hook has room (fewer than `per_hook` attempts in flight), nothing waits in the store for
//! it (so a backlog or a scheduled retry is never overtaken forever), and a global permit is
//! free. Permits bound the requests in flight: an attempt holds one only while its request
//! runs. When none is free the relay is behind, and new deliveries wait in the store rather
//! than in memory.
//! Everything else goes through the claim queue. Where hand-offs happen (one instance owns
//! every hook), the waiting counts also name the hooks a claim looks at ([`Slots::claimable`]),
//! so a claim costs a lookup per hook with work due instead of a pass over the whole backlog.
//! Every way a delivery starts waiting reports here (queued at ingest, a retry scheduled, a
//! dead letter replayed, a hand-off taken back), each claim reports what it saw of the hooks
//! it named, and [`Slots::resync`] replaces everything with the store's counts now and then:
//! drift delays a delivery until the next resync at worst, and never loses or duplicates one.

use std::collections::HashMap;
use std::sync::Arc;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::store::Waiting;

/// In-flight and waiting deliveries per hook, and the global in-flight permits.
pub(super) struct Slots {
    hooks: DashMap<String, HookSlot>,
    permits: Arc<Semaphore>,
    per_hook: u32,
    hand_off: bool,
}

#[derive(Default)]
struct HookSlot {
    in_flight: u32,
    waiting: u64,
    /// When the earliest waiting delivery is due, as far as known (`i64::MAX`: none is known).
    due_at: i64,
    /// Counts the deliveries that started waiting, so that what a claim saw of the hook does not
    /// overwrite news that arrived while it ran.
    news: u64,
}

/// A hook a claim is asked to look at, and how many of its deliveries it may take.
pub(super) struct Asked {
    pub(super) hook_id: String,
    pub(super) limit: usize,
    news: u64,
}

impl HookSlot {
    fn is_idle(&self) -> bool {
        self.in_flight == 0 && self.waiting == 0
    }
}

/// One attempt's claim on its hook's room, and on a global permit while its request runs;
/// dropping it gives both back.
///
/// The permit bounds requests in flight, so it is taken just before sending (`Ticket::permit`)
/// and goes back as soon as the request is over (`Ticket::sent`); the hook's room is held until
/// the outcome is recorded, because until then the delivery is still leased.
pub struct Ticket {
    slots: Arc<Slots>,
    hook_id: String,
    permit: Option<OwnedSemaphorePermit>,
}

impl Ticket {
    /// The hook this ticket holds room on.
    pub(super) fn hook_id(&self) -> &str {
        &self.hook_id
    }

    /// Waits for a global permit unless the ticket holds one (`false` only if the permits are
    /// gone, which they never are while the dispatcher runs).
    pub(super) async fn permit(&mut self) -> bool {
        if self.permit.is_none() {
            self.permit = self.slots.permit().await;
        }
        self.permit.is_some()
    }

    /// The attempt's request is over: its global permit goes back, the hook's room stays taken.
    pub(super) fn sent(&mut self) {
        self.permit = None;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Entry::Occupied(mut slot) = self.slots.hooks.entry(std::mem::take(&mut self.hook_id)) {
            let s = slot.get_mut();
            s.in_flight = s.in_flight.saturating_sub(1);
            if s.is_idle() {
                slot.remove();
            }
        }
    }
}

impl Slots {
    /// `hand_off` is off for stores several instances share, where a hook's deliveries are only
    /// leased together with the hook itself.
    pub(super) fn new(permits: usize, per_hook: u32, hand_off: bool) -> Arc<Self> {
        Arc::new(Self { hooks: DashMap::new(), permits: Arc::new(Semaphore::new(permits)), per_hook, hand_off })
    }

    /// Global permits free right now.
    pub(super) fn available(&self) -> usize {
        self.permits.available_permits()
    }

    /// Waits for a global permit (claimed deliveries are already leased, so they wait their turn).
    pub(super) async fn permit(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.permits).acquire_owned().await.ok()
    }

    /// A ticket for a delivery handed off at ingest, if its hook has room and nothing waiting
    /// and a permit is free (the attempt takes one when it is about to send).
    pub(super) fn try_hand_off(self: &Arc<Self>, hook_id: &str) -> Option<Ticket> {
        if !self.hand_off || self.permits.available_permits() == 0 {
            return None;
        }
        let mut slot = self.hooks.entry(hook_id.to_owned()).or_default();
        if slot.waiting > 0 || slot.in_flight >= self.per_hook {
            return None;
        }
        slot.in_flight += 1;
        drop(slot);
        Some(Ticket { slots: Arc::clone(self), hook_id: hook_id.to_owned(), permit: None })
    }

    /// A ticket for a delivery the claim queue gave out: it waited in the store until now.
    pub(super) fn claimed(self: &Arc<Self>, hook_id: &str, permit: OwnedSemaphorePermit) -> Ticket {
        let mut slot = self.hooks.entry(hook_id.to_owned()).or_default();
        slot.waiting = slot.waiting.saturating_sub(1);
        slot.in_flight += 1;
        drop(slot);
        Ticket { slots: Arc::clone(self), hook_id: hook_id.to_owned(), permit: Some(permit) }
    }

    /// A delivery of this hook now waits in the store, due at `due_at` (ms): queued at ingest,
    /// a retry scheduled, a dead letter replayed, a hand-off taken back.
    pub(super) fn waiting(&self, hook_id: &str, due_at: i64) {
        if self.hand_off {
            let mut slot = self.hooks.entry(hook_id.to_owned()).or_default();
            slot.due_at = if slot.waiting == 0 { due_at } else { slot.due_at.min(due_at) };
            slot.waiting += 1;
            slot.news += 1;
        }
    }

    /// The hooks a claim at `now` should look at, earliest due first, with room for at most
    /// `room` deliveries in all: those with deliveries due and none in flight, each for up to
    /// `per_hook`. A hook with deliveries in flight waits for them: a claimed delivery then never
    /// has to race a newer one for its hook's next paced turn, so the oldest goes first.
    pub(super) fn claimable(&self, now: i64, room: usize) -> Vec<Asked> {
        let mut due: Vec<(i64, Asked)> = self
            .hooks
            .iter()
            .filter(|s| s.waiting > 0 && s.due_at <= now && s.in_flight == 0)
            .map(|s| (s.due_at, Asked { hook_id: s.key().clone(), limit: self.per_hook as usize, news: s.news }))
            .collect();
        due.sort_unstable_by_key(|(at, _)| *at);
        let mut left = room;
        due.into_iter()
            .map_while(|(_, mut asked)| {
                asked.limit = asked.limit.min(left);
                left -= asked.limit;
                (asked.limit > 0).then_some(asked)
            })
            .collect()
    }

    /// What a claim saw of the hooks it was asked about, in the order asked: when each one's
    /// earliest delivery still waiting is due, or `None` if nothing of it waits. Ignored for a
    /// hook with news since it was asked about (it is simply asked about again).
    pub(super) fn after_claim(&self, asked: &[Asked], next_due: &[Option<i64>]) {
        for (asked, next) in asked.iter().zip(next_due) {
            let Entry::Occupied(mut slot) = self.hooks.entry(asked.hook_id.clone()) else { continue };
            let s = slot.get_mut();
            if s.news != asked.news {
                continue;
            }
            match next {
                Some(at) => {
                    s.due_at = *at;
                    s.waiting = s.waiting.max(1);
                }
                None => {
                    s.due_at = i64::MAX;
                    s.waiting = 0;
                }
            }
            if s.is_idle() {
                slot.remove();
            }
        }
    }

    /// Whether deliveries may wait in the store for room to free up: always on stores whose
    /// waiting deliveries are not counted here.
    pub(super) fn may_have_waiting(&self) -> bool {
        !self.hand_off || self.hooks.iter().any(|s| s.waiting > 0)
    }

    #[cfg(test)]
    fn has_waiting(&self, hook_id: &str) -> bool {
        self.hooks.get(hook_id).is_some_and(|s| s.waiting > 0)
    }

    /// Replaces the waiting counts with the store's (at start, and now and then against drift).
    pub(super) fn resync(&self, waiting: &HashMap<String, Waiting>) {
        if !self.hand_off {
            return;
        }
        self.hooks.retain(|hook, slot| {
            let w = waiting.get(hook).copied().unwrap_or(Waiting { count: 0, due_at: i64::MAX });
            (slot.waiting, slot.due_at) = (w.count, w.due_at);
            !slot.is_idle()
        });
        for (hook, w) in waiting {
            let mut slot = self.hooks.entry(hook.clone()).or_default();
            (slot.waiting, slot.due_at) = (w.count, w.due_at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_off_needs_room_and_an_empty_queue() {
        let slots = Slots::new(10, 2, true);
        let first = slots.try_hand_off("h").expect("room");
        let second = slots.try_hand_off("h").expect("room");
        assert!(slots.try_hand_off("h").is_none(), "two in flight is the cap");
        drop(first);
        let third = slots.try_hand_off("h").expect("room again");
        drop((second, third));
        slots.waiting("h", 0);
        assert!(slots.try_hand_off("h").is_none(), "a waiting delivery goes first");
        let permit = slots.permits.clone().try_acquire_owned().unwrap();
        drop(slots.claimed("h", permit));
        assert!(slots.try_hand_off("h").is_some(), "the queue drained");
        assert!(slots.hooks.is_empty(), "idle hooks leave no entry");
    }

    #[tokio::test]
    async fn permits_are_held_only_while_a_request_runs() {
        let slots = Slots::new(1, 5, true);
        let mut a = slots.try_hand_off("a").unwrap();
        let mut b = slots.try_hand_off("b").expect("a hand-off takes its permit only to send");
        assert!(a.permit().await);
        assert_eq!(slots.available(), 0);
        assert!(slots.try_hand_off("c").is_none(), "with every permit taken, new work waits in the store");
        let b_sends = tokio::spawn(async move { b.permit().await.then_some(b) });
        tokio::task::yield_now().await;
        assert!(!b_sends.is_finished(), "the second request waits for the permit");
        a.sent();
        let b = b_sends.await.unwrap().expect("the permit came back once a's request was over");
        assert!(slots.hooks.contains_key("a"), "a's room stays taken until it is recorded");
        drop((a, b));
        assert!(slots.hooks.is_empty());
        let shared = Slots::new(10, 5, false);
        assert!(shared.try_hand_off("a").is_none(), "no hand-offs on a shared store");
    }

    #[test]
    fn claims_name_idle_hooks_with_work_due_earliest_first() {
        let slots = Slots::new(10, 2, true);
        let _in_flight = slots.try_hand_off("busy");
        slots.waiting("late", 50);
        slots.waiting("early", 10);
        slots.waiting("future", 1_000);
        slots.waiting("busy", 5);
        let asked = slots.claimable(100, 3);
        let named = asked.iter().map(|a| (a.hook_id.as_str(), a.limit)).collect::<Vec<_>>();
        assert_eq!(named, [("early", 2), ("late", 1)], "due, none in flight, earliest first, within the room");
        slots.waiting("late", 20); // queued while the claim ran
        slots.after_claim(&asked, &[None, None]);
        assert!(!slots.has_waiting("early"), "nothing of it waits any more");
        assert!(slots.has_waiting("late"), "news since the claim is kept");
        assert_eq!(slots.claimable(100, 10).iter().map(|a| a.hook_id.as_str()).collect::<Vec<_>>(), ["late"]);
    }

    #[test]
    fn resync_replaces_drifted_counts() {
        let slots = Slots::new(10, 5, true);
        slots.waiting("a", 0);
        slots.waiting("a", 0);
        let _in_flight = slots.try_hand_off("b").unwrap();
        slots.resync(&HashMap::from([("c".to_owned(), Waiting { count: 3, due_at: 0 })]));
        assert!(!slots.has_waiting("a") && !slots.has_waiting("b") && slots.has_waiting("c"));
        assert!(slots.try_hand_off("a").is_some());
        assert!(slots.hooks.contains_key("b"), "in-flight attempts are kept");
    }
}
