//! Per-hook bookkeeping that decides whether a new delivery may skip the store's claim queue.
//!
//! A delivery is *handed off* — leased in the ingest commit and attempted at once — only while
//! its hook has room (fewer than `per_hook` attempts in flight), nothing waits in the store for
//! it (so a backlog or a scheduled retry is not overtaken), and a global permit is free.
//! Permits bound the requests in flight: an attempt holds one only while its request runs.
//! When none is free the relay is behind, and new deliveries wait in the store rather than in
//! memory. Everything else goes through the claim queue.
//!
//! Where one instance owns every hook ([`HandOffs::Owner`], SQLite), it knows everything that
//! waits: the waiting counts also name the hooks a claim looks at ([`Slots::claimable`]), so a
//! claim costs a lookup per hook with work due instead of a pass over the whole backlog. Where
//! instances share the store ([`HandOffs::Leased`], PostgreSQL), a hook's deliveries are handed
//! off only while this instance holds the hook's lease and a claim has just found nothing else
//! of it due ([`Slots::after_leased_claim`]), and only for [`CLEAR_FOR`]: other instances may
//! queue deliveries for the hook meanwhile, and the next claim of it, at the latest a second
//! later, takes them in order. Every way this instance sees a delivery start waiting reports
//! here (queued at ingest, a retry scheduled, a dead letter replayed, a hand-off taken back),
//! each claim reports what it saw of its hooks, and [`Slots::resync`] replaces the counts with the
//! store's now and then: drift delays a delivery until the next resync at worst, and never
//! loses or duplicates one.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::health::Health;
use crate::model::now_ms;
use crate::store::Waiting;

/// How long after a claim found nothing else of a leased hook due its new deliveries may be
/// handed off ([`HandOffs::Leased`]): what other instances queue for the hook waits at most this
/// long for a claim, as long as a lost wake-up costs (the dispatcher's idle poll).
pub(super) const CLEAR_FOR: Duration = super::IDLE_POLL;

/// When deliveries may skip the claim queue.
#[derive(Debug, Clone, Copy)]
pub(super) enum HandOffs {
    /// One instance owns every hook and knows all that waits: whenever a hook has room and
    /// nothing waiting.
    Owner,
    /// Hooks are leased to one of several instances: also only while this one holds the hook's
    /// lease and a claim has lately found nothing else of it due.
    Leased,
}

/// In-flight and waiting deliveries per hook, and the global in-flight permits.
pub(super) struct Slots {
    hooks: DashMap<String, HookSlot>,
    permits: Arc<Semaphore>,
    /// The suspects' share of the permits (half): a suspect hook's request holds one of these
    /// as well, so failing and slow hooks together never hold more than half of all permits.
    suspects: Arc<Semaphore>,
    /// Which hooks are paused, probing or suspect.
    pub(super) health: Arc<Health>,
    per_hook: u32,
    hand_offs: HandOffs,
    /// Stamps each delivery that starts waiting, so that what a claim saw of a hook does not
    /// overwrite news that arrived while it ran.
    stamps: AtomicU64,
}

#[derive(Default)]
struct HookSlot {
    in_flight: u32,
    waiting: u64,
    /// When the earliest waiting delivery is due, as far as known (`i64::MAX`: none is known).
    due_at: i64,
    /// The stamp of the last delivery that started waiting.
    news: u64,
    /// [`HandOffs::Leased`]: new deliveries may be handed off until then (ms; 0: not at all).
    clear_until: i64,
    /// [`HandOffs::Leased`]: when this instance's lease of the hook runs out (ms), and with it
    /// the lease of its handed deliveries.
    lease_until: i64,
}

/// A hook a claim is asked to look at, and how many of its deliveries it may take.
pub(super) struct Asked {
    pub(super) hook_id: String,
    pub(super) limit: usize,
    news: u64,
}

impl HookSlot {
    /// Nothing in flight, waiting or cleared for hand-offs: the entry can go.
    fn is_idle(&self) -> bool {
        self.in_flight == 0 && self.waiting == 0 && (self.clear_until == 0 || self.clear_until <= now_ms())
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
    /// A suspect hook's permit from the suspects' share, held with `permit`.
    share: Option<OwnedSemaphorePermit>,
}

impl Ticket {
    /// The hook this ticket holds room on.
    pub(super) fn hook_id(&self) -> &str {
        &self.hook_id
    }

    /// Waits for a global permit unless the ticket holds one (`false` only if the permits are
    /// gone, which they never are while the dispatcher runs). A suspect hook's request first
    /// waits for the suspects' share, holding no global permit meanwhile: a claimed delivery's
    /// permit goes back while it waits, so waiting suspects cannot hold the healthy hooks' half.
    pub(super) async fn permit(&mut self) -> bool {
        if self.share.is_none() && self.slots.health.is_suspect(&self.hook_id) {
            self.permit = None;
            self.share = Arc::clone(&self.slots.suspects).acquire_owned().await.ok();
        }
        if self.permit.is_none() {
            self.permit = self.slots.permit().await;
        }
        self.permit.is_some()
    }

    /// The attempt's request is over: its permits go back, the hook's room stays taken.
    pub(super) fn sent(&mut self) {
        self.permit = None;
        self.share = None;
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
    /// Room for `permits` requests in flight, `per_hook` attempts of one hook at once.
    pub(super) fn new(permits: usize, per_hook: u32, hand_offs: HandOffs, health: Arc<Health>) -> Arc<Self> {
        Arc::new(Self {
            hooks: DashMap::new(),
            permits: Arc::new(Semaphore::new(permits)),
            suspects: Arc::new(Semaphore::new(permits.div_ceil(2))),
            health,
            per_hook,
            hand_offs,
            stamps: AtomicU64::new(0),
        })
    }

    /// Global permits free right now.
    pub(super) fn available(&self) -> usize {
        self.permits.available_permits()
    }

    /// Waits for a global permit (claimed deliveries are already leased, so they wait their turn).
    pub(super) async fn permit(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.permits).acquire_owned().await.ok()
    }

    /// A ticket for a delivery handed off at `now` (ms), if its hook has room and nothing
    /// waiting, is neither paused nor probing, a permit is free (the attempt takes one when it
    /// is about to send) and, on a shared store, the hook is cleared for hand-offs; with it,
    /// when the delivery's lease must end at the latest (the hook's own lease).
    pub(super) fn try_hand_off(self: &Arc<Self>, hook_id: &str, now: i64) -> Option<(Ticket, i64)> {
        if self.permits.available_permits() == 0 || !self.health.may_hand_off(hook_id) {
            return None;
        }
        let mut slot = match self.hand_offs {
            HandOffs::Owner => self.hooks.entry(hook_id.to_owned()).or_default(),
            HandOffs::Leased => self.hooks.get_mut(hook_id).filter(|s| now < s.clear_until)?,
        };
        if slot.waiting > 0 || slot.in_flight >= self.per_hook {
            return None;
        }
        slot.in_flight += 1;
        let lease_until = match self.hand_offs {
            HandOffs::Owner => i64::MAX,
            HandOffs::Leased => slot.lease_until,
        };
        drop(slot);
        Some((Ticket { slots: Arc::clone(self), hook_id: hook_id.to_owned(), permit: None, share: None }, lease_until))
    }

    /// A ticket for a delivery the claim queue gave out: it waited in the store until now.
    pub(super) fn claimed(self: &Arc<Self>, hook_id: &str, permit: OwnedSemaphorePermit) -> Ticket {
        let mut slot = self.hooks.entry(hook_id.to_owned()).or_default();
        slot.waiting = slot.waiting.saturating_sub(1);
        slot.in_flight += 1;
        drop(slot);
        Ticket { slots: Arc::clone(self), hook_id: hook_id.to_owned(), permit: Some(permit), share: None }
    }

    /// A delivery of this hook now waits in the store, due at `due_at` (ms): queued at ingest,
    /// a retry scheduled, a dead letter replayed, a hand-off taken back.
    pub(super) fn waiting(&self, hook_id: &str, due_at: i64) {
        let mut slot = self.hooks.entry(hook_id.to_owned()).or_default();
        slot.due_at = if slot.waiting == 0 { due_at } else { slot.due_at.min(due_at) };
        slot.waiting += 1;
        slot.news = self.stamps.fetch_add(1, Ordering::Relaxed) + 1;
    }

    /// The stamp of the latest news, to hand to [`Slots::after_leased_claim`] from before the claim.
    pub(super) fn latest_news(&self) -> u64 {
        self.stamps.load(Ordering::Relaxed)
    }

    /// The hooks a claim at `now` should look at, earliest due first, with room for at most
    /// `room` deliveries in all: those with deliveries due and none in flight, each for up to
    /// `per_hook` (one to probe a hook after a pause, none of a paused one). A hook with
    /// deliveries in flight waits for them: a claimed delivery then never has to race a newer
    /// one for its hook's next paced turn, so the oldest goes first.
    pub(super) fn claimable(&self, now: i64, room: usize) -> Vec<Asked> {
        let mut due: Vec<(i64, Asked)> = self
            .hooks
            .iter()
            .filter(|s| s.waiting > 0 && s.due_at <= now && s.in_flight == 0)
            .filter_map(|s| {
                let limit = self.health.claim_limit(s.key(), now, self.per_hook as usize);
                (limit > 0).then(|| (s.due_at, Asked { hook_id: s.key().clone(), limit, news: s.news }))
            })
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

    /// What a claim that started when the news stamp was `since` saw of the hooks it leased
    /// ([`HandOffs::Leased`]): each hook with whether the claim took everything of it then due.
    /// A hook it drained is cleared for hand-offs until `clear_until` (ms), under a lease that
    /// runs until `lease_until`, unless a delivery of it started waiting while the claim ran; a
    /// hook it left deliveries of waits for the next claim.
    pub(super) fn after_leased_claim(&self, leased: &[(String, bool)], since: u64, clear_until: i64, lease_until: i64) {
        for (hook_id, drained) in leased {
            let mut slot = self.hooks.entry(hook_id.clone()).or_default();
            if !drained {
                slot.clear_until = 0;
                slot.waiting = slot.waiting.max(1);
            } else if slot.news <= since {
                (slot.waiting, slot.clear_until, slot.lease_until) = (0, clear_until, lease_until);
            }
        }
    }

    /// Whether deliveries this instance knows of wait in the store for room to free up.
    pub(super) fn may_have_waiting(&self) -> bool {
        self.hooks.iter().any(|s| s.waiting > 0)
    }

    #[cfg(test)]
    fn has_waiting(&self, hook_id: &str) -> bool {
        self.hooks.get(hook_id).is_some_and(|s| s.waiting > 0)
    }

    /// Replaces the waiting counts with the store's (at start, and now and then against drift),
    /// and forgets hooks whose hand-off clearance ran out.
    pub(super) fn resync(&self, waiting: &HashMap<String, Waiting>) {
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

    /// Health with nothing to report.
    fn healthy() -> Arc<Health> {
        Arc::new(Health::new(5, Duration::from_secs(86_400)))
    }

    /// A hand-off at time 0, where only its ticket matters.
    fn hand_off(slots: &Arc<Slots>, hook_id: &str) -> Option<Ticket> {
        slots.try_hand_off(hook_id, 0).map(|(ticket, _)| ticket)
    }

    #[test]
    fn hand_off_needs_room_and_an_empty_queue() {
        let slots = Slots::new(10, 2, HandOffs::Owner, healthy());
        let first = hand_off(&slots, "h").expect("room");
        let second = hand_off(&slots, "h").expect("room");
        assert!(hand_off(&slots, "h").is_none(), "two in flight is the cap");
        drop(first);
        let third = hand_off(&slots, "h").expect("room again");
        drop((second, third));
        slots.waiting("h", 0);
        assert!(hand_off(&slots, "h").is_none(), "a waiting delivery goes first");
        let permit = slots.permits.clone().try_acquire_owned().unwrap();
        drop(slots.claimed("h", permit));
        assert!(hand_off(&slots, "h").is_some(), "the queue drained");
        assert!(slots.hooks.is_empty(), "idle hooks leave no entry");
    }

    #[tokio::test]
    async fn permits_are_held_only_while_a_request_runs() {
        let slots = Slots::new(1, 5, HandOffs::Owner, healthy());
        let mut a = hand_off(&slots, "a").unwrap();
        let mut b = hand_off(&slots, "b").expect("a hand-off takes its permit only to send");
        assert!(a.permit().await);
        assert_eq!(slots.available(), 0);
        assert!(hand_off(&slots, "c").is_none(), "with every permit taken, new work waits in the store");
        let b_sends = tokio::spawn(async move { b.permit().await.then_some(b) });
        tokio::task::yield_now().await;
        assert!(!b_sends.is_finished(), "the second request waits for the permit");
        a.sent();
        let b = b_sends.await.unwrap().expect("the permit came back once a's request was over");
        assert!(slots.hooks.contains_key("a"), "a's room stays taken until it is recorded");
        drop((a, b));
        assert!(slots.hooks.is_empty());
    }

    #[tokio::test]
    async fn suspect_hooks_together_hold_at_most_half_of_the_permits() {
        let health = healthy();
        let verdict = super::super::health::Verdict::Success;
        health.outcome("slow", verdict, 0, Duration::from_secs(9), false);
        health.outcome("fine", verdict, 0, Duration::from_millis(5), false);
        let slots = Slots::new(4, 5, HandOffs::Owner, health);
        let mut slow: Vec<Ticket> = (0..3).map(|_| hand_off(&slots, "slow").unwrap()).collect();
        assert!(slow[0].permit().await && slow[1].permit().await);
        let mut third = slow.pop().unwrap();
        let waiting = tokio::spawn(async move { third.permit().await.then_some(third) });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "a third suspect request waits for the suspects' share");
        let mut healthy_one = hand_off(&slots, "fine").unwrap();
        let mut healthy_two = hand_off(&slots, "fine").unwrap();
        assert!(healthy_one.permit().await && healthy_two.permit().await, "the other half stays free for proven hooks");
        slow[0].sent();
        let third = waiting.await.unwrap().expect("a suspect's request finished, the next one goes");
        drop((slow, third, healthy_one, healthy_two));
    }

    #[test]
    fn on_a_shared_store_hand_offs_wait_for_a_claim_that_drained_the_hook_and_last_a_while() {
        let slots = Slots::new(10, 5, HandOffs::Leased, healthy());
        let now = now_ms();
        let (clear_until, lease_until) = (now + 1_000, now + 5_000);
        assert!(slots.try_hand_off("a", now).is_none(), "no claim has leased the hook yet");
        let since = slots.latest_news();
        slots.waiting("b", now); // queued while the claim ran
        let leased = [("a".to_owned(), true), ("b".to_owned(), true), ("c".to_owned(), false)];
        slots.after_leased_claim(&leased, since, clear_until, lease_until);
        let (ticket, lease) = slots.try_hand_off("a", clear_until - 1).expect("drained and cleared");
        assert_eq!(lease, lease_until, "a handed delivery's lease ends with the hook's");
        assert!(slots.try_hand_off("a", clear_until).is_none(), "the clearance ran out");
        assert!(slots.try_hand_off("b", now).is_none(), "news since the claim started waits for the next one");
        assert!(slots.try_hand_off("c", now).is_none(), "deliveries of it were left waiting");
        assert!(slots.may_have_waiting(), "so the next record wakes a claim for them");
        slots.after_leased_claim(&[("c".to_owned(), true)], slots.latest_news(), clear_until, lease_until);
        assert!(slots.try_hand_off("c", now).is_some(), "drained by a later claim");
        drop(ticket);
        assert!(slots.hooks.contains_key("a"), "a cleared hook is remembered while it is cleared");
        slots.after_leased_claim(&[("a".to_owned(), true)], slots.latest_news(), now - 1, lease_until);
        slots.resync(&HashMap::new());
        assert!(!slots.hooks.contains_key("a"), "and forgotten once its clearance ran out");
    }

    #[test]
    fn claims_name_idle_hooks_with_work_due_earliest_first() {
        let slots = Slots::new(10, 2, HandOffs::Owner, healthy());
        let _in_flight = hand_off(&slots, "busy");
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
        let slots = Slots::new(10, 5, HandOffs::Owner, healthy());
        slots.waiting("a", 0);
        slots.waiting("a", 0);
        let _in_flight = hand_off(&slots, "b").unwrap();
        slots.resync(&HashMap::from([("c".to_owned(), Waiting { count: 3, due_at: 0 })]));
        assert!(!slots.has_waiting("a") && !slots.has_waiting("b") && slots.has_waiting("c"));
        assert!(hand_off(&slots, "a").is_some());
        assert!(slots.hooks.contains_key("b"), "in-flight attempts are kept");
    }
}
