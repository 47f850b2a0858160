//! Per-hook bookkeeping that decides whether a new delivery may skip the store's claim queue.
//!
//! A delivery is *handed off* — leased in the ingest commit and attempted at once — only while
//! its hook has room (fewer than `per_hook` attempts in flight), nothing waits in the store for
//! it (so a backlog or a scheduled retry is never overtaken forever), and a global permit is
//! free. Permits bound the requests in flight: an attempt holds one only while its request
//! runs. When none is free the relay is behind, and new deliveries wait in the store rather
//! than in memory.
//! Everything else goes through the claim queue, which stays complete on its own: the counts
//! here only pick the fast path, so when they drift (a lease that expired after a crash, a
//! replayed dead letter) the cost is a slower path until the next [`Slots::resync`], never a
//! lost or duplicated delivery.

use std::collections::HashMap;
use std::sync::Arc;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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
}

impl HookSlot {
    fn is_idle(&self) -> bool {
        self.in_flight == 0 && self.waiting == 0
    }
}

/// One attempt's claim on its hook's room, and on a global permit while its request runs;
/// dropping it gives both back.
///
/// The permit bounds requests in flight, so it is taken just before sending ([`Ticket::permit`])
/// and goes back as soon as the request is over ([`Ticket::sent`]); the hook's room is held until
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

    /// A delivery of this hook now waits in the store (queued at ingest, or a retry scheduled).
    pub(super) fn waiting(&self, hook_id: &str) {
        if self.hand_off {
            self.hooks.entry(hook_id.to_owned()).or_default().waiting += 1;
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
    pub(super) fn resync(&self, waiting: &HashMap<String, u64>) {
        if !self.hand_off {
            return;
        }
        self.hooks.retain(|hook, slot| {
            slot.waiting = waiting.get(hook).copied().unwrap_or(0);
            !slot.is_idle()
        });
        for (hook, &count) in waiting {
            self.hooks.entry(hook.clone()).or_default().waiting = count;
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
        slots.waiting("h");
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
    fn resync_replaces_drifted_counts() {
        let slots = Slots::new(10, 5, true);
        slots.waiting("a");
        slots.waiting("a");
        let _in_flight = slots.try_hand_off("b").unwrap();
        slots.resync(&HashMap::from([("c".to_owned(), 3)]));
        assert!(!slots.has_waiting("a") && !slots.has_waiting("b") && slots.has_waiting("c"));
        assert!(slots.try_hand_off("a").is_some());
        assert!(slots.hooks.contains_key("b"), "in-flight attempts are kept");
    }
}
