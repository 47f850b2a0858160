//! Fan-out workers: attempt deliveries, pace them per hook, and record what happened. This
//! module and `slots` and `recorder` are the scheduler; the store's claims are the only part
//! that differs by backend ([`Scheduling`]).
//!
//! # One delivery, from ingest commit to recorded outcome
//!
//! 1. **Plan** ([`DeliveryQueue::plan`]): at ingest, each matching hook either gets a *hand-off*
//!    ticket (the hook has room and nothing waiting, a request slot is free, and — leasing only
//!    — this instance holds the hook's lease and a claim lately found nothing else of it due) or
//!    is *queued*. The commit stores both kinds; a handed-off delivery is stored already leased
//!    to this instance.
//! 2. **Start**: after the commit, [`DeliveryQueue::accepted`] sends hand-offs straight to an
//!    attempt; queued hooks are marked waiting and the dispatcher woken.
//! 3. **Claim** ([`Dispatcher::run`]'s loop, the only caller, so one claim runs at a time):
//!    *owning* (SQLite) names the hooks `slots` knows to be due with how many of each to take;
//!    *leasing* (PostgreSQL) lets the store find due hooks and lease each whole hook with at
//!    most `hook_rate` of its deliveries. Either way a claim takes none of a hook with an
//!    attempt under way, so one hook's backlog cannot starve the others and retries are not
//!    overtaken.
//! 4. **Attempt** (`Shared::attempt`): wait for the hook's pace (the steady one, then the
//!    adaptive one of `health`), holding no request slot; then a slot (a suspect hook's also
//!    from the suspects' share); then, unless the hook is paused (the delivery is then handed
//!    back unsent), send. The answer becomes a [`Decision`] for the delivery and a [`Verdict`]
//!    for the hook, which may pause, probe, slow or disable it.
//! 5. **Record** (`recorder`): outcomes finishing close together share one commit (attempt row
//!    and the delivery's new state together); only then is the ticket returned and the lease
//!    gone.
//!
//! # Invariants
//!
//! - A delivery is in flight on at most one instance: it is leased (hand-off or claim) until
//!   its outcome is recorded, and a lease that runs out (crash, lost instance) puts it back in
//!   the queue, to be attempted again — at least once, never lost.
//! - Per hook, at most `hook_rate` attempts are in flight and requests are spaced
//!   `1/hook_rate` s apart (see `pacing`); on PostgreSQL the hook's lease makes one instance
//!   its only sender, so the pace holds across instances.
//! - At most [`MAX_IN_FLIGHT`] requests run at once, and at most half of them for hooks that are
//!   not proven healthy; a delivery holds a slot only while its request runs.
//! - A paused or disabled hook gets no request; after a pause, one probe at a time until one
//!   succeeds.
//! - The waiting counts in `slots` may drift from the store (a missed wake-up, another
//!   process's writes); they are replaced from the store every `RESYNC_EVERY`, and on
//!   PostgreSQL the claim does not depend on them at all.
//!
//! Imports `store`, `registry`, `model`, `target`, `metrics`.

mod client;
mod health;
mod recorder;
pub mod retry;
mod signing;
mod slots;
pub mod stats;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub use client::{ClientError, DeliveryClient, MAX_RESPONSE_BYTES, USER_AGENT, tls_config};
use health::{Admission, Change, Health, Verdict};
use retry::{Decision, Gone};
pub use slots::Ticket;
use slots::{CLEAR_FOR, HandOffs, Slots};

use crate::metrics::{DeliveryOutcome, Metrics};
use crate::model::{Attempt, AttemptRecord, DueDelivery, HookKeys, HookStatus, NextStep, Streak, now_ms};
use crate::registry::Registry;
use crate::store::{Claim, Fanout, FanoutHook, Scheduling, Store, StoreError};
use crate::target::{HostPattern, host_matches};

/// Delivery requests in flight at once, across all hooks.
pub const MAX_IN_FLIGHT: usize = 512;
/// Longest pause between polls of the store when nothing wakes the dispatcher.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// How often the waiting counts are checked against the store.
const RESYNC_EVERY: Duration = Duration::from_secs(60);

/// The ingest path's handle on the workers: it plans each event's fan-out, hands deliveries
/// over, and wakes the claim queue. Clones share one queue.
#[derive(Clone)]
pub struct DeliveryQueue {
    shared: Arc<QueueShared>,
}

struct QueueShared {
    wake: Notify,
    stats: stats::DeliveryStats,
    slots: Arc<Slots>,
    handed: mpsc::UnboundedSender<(DueDelivery, Ticket)>,
    lease: Duration,
}

/// Deliveries handed over at ingest, for [`Dispatcher::run`] to start.
pub struct HandedOff(mpsc::UnboundedReceiver<(DueDelivery, Ticket)>);

/// The tickets of a planned fan-out, held until its commit says which deliveries were made.
pub struct Reserved {
    tickets: Vec<Ticket>,
    queued: Vec<String>,
    /// When the queued deliveries are due (ms).
    at: i64,
}

impl DeliveryQueue {
    /// A queue for `store`; `lease` is how long a delivery stays leased to its attempt, and a
    /// hook failing for `disable_after` is disabled.
    pub fn new(store: &Store, hook_rate: u32, lease: Duration, disable_after: Duration) -> (Self, HandedOff) {
        let (handed, receiver) = mpsc::unbounded_channel();
        let hand_offs = match store.scheduling() {
            Scheduling::Owning(_) => HandOffs::Owner,
            Scheduling::Leasing(_) => HandOffs::Leased,
        };
        let health = Arc::new(Health::new(hook_rate, disable_after));
        let slots = Slots::new(MAX_IN_FLIGHT, hook_rate.max(1), hand_offs, health);
        let shared = QueueShared { wake: Notify::new(), stats: stats::DeliveryStats::default(), slots, handed, lease };
        (Self { shared: Arc::new(shared) }, HandedOff(receiver))
    }

    /// Wakes the dispatcher (coalesced; never blocks).
    pub fn wake(&self) {
        self.shared.wake.notify_one();
    }

    /// Splits an event's matching hooks into those whose first attempt starts at once and
    /// those that wait in the store.
    pub fn plan(&self, hooks: Vec<FanoutHook>, now: i64) -> (Fanout, Reserved) {
        let mut fanout = Fanout { queued: Vec::new(), handed: Vec::new(), lease_until: self.lease_until(now) };
        let mut tickets = Vec::new();
        for hook in hooks {
            match self.shared.slots.try_hand_off(&hook.id, now) {
                Some((ticket, lease_until)) => {
                    tickets.push(ticket);
                    fanout.handed.push(hook);
                    fanout.lease_until = fanout.lease_until.min(lease_until);
                }
                None => fanout.queued.push(hook),
            }
        }
        let queued = fanout.queued.iter().map(|h| h.id.clone()).collect();
        (fanout, Reserved { tickets, queued, at: now })
    }

    /// After the commit: starts the handed-over deliveries and wakes the claim queue for the
    /// rest. Tickets the store did not use are given back.
    pub fn accepted(&self, reserved: Reserved, handed: Vec<DueDelivery>) {
        let Reserved { mut tickets, queued, at } = reserved;
        for delivery in handed {
            let Some(i) = tickets.iter().position(|t| t.hook_id() == delivery.hook_id) else { continue };
            // The receiver lives as long as the dispatcher; after shutdown the lease expires.
            let _ = self.shared.handed.send((delivery, tickets.swap_remove(i)));
        }
        for hook in &queued {
            self.shared.slots.waiting(hook, at);
        }
        if !queued.is_empty() {
            self.wake();
        }
    }

    /// The hook's streak as this instance knows it, when it knows more than the store may
    /// (the store's copy of the last success is refreshed only now and then).
    pub fn known_streak(&self, hook_id: &str) -> Option<Streak> {
        self.health().streak(hook_id)
    }

    /// The hook was just enabled (or attached again) with a clean record: what this instance
    /// remembered of its failures goes, and its waiting deliveries are claimed.
    pub fn hook_enabled(&self, hook_id: &str) {
        self.health().forget(hook_id);
        self.wake();
    }

    /// Starts from the stored health of the hooks that have failures or a pause.
    ///
    /// # Errors
    /// The store cannot be read.
    pub async fn load_health(&self, store: &Store) -> Result<(), StoreError> {
        for (hook_id, streak) in store.unwell_hooks().await? {
            self.health().seed(&hook_id, streak);
        }
        Ok(())
    }

    /// What this instance's attempts did, per connection and minute (the dashboard's chart).
    pub fn stats(&self) -> &stats::DeliveryStats {
        &self.shared.stats
    }

    fn health(&self) -> &Health {
        &self.shared.slots.health
    }

    /// A delivery of `hook_id` waits in the store again, due at `due_at` (a replayed dead
    /// letter, an attempt handed back unsent): the claim queue is told and woken.
    pub fn rescheduled(&self, hook_id: &str, due_at: i64) {
        self.shared.slots.waiting(hook_id, due_at);
        self.wake();
    }

    /// When a delivery leased at `now` (ms) may be taken over by a claim.
    fn lease_until(&self, now: i64) -> i64 {
        now.saturating_add(i64::try_from(self.shared.lease.as_millis()).unwrap_or(i64::MAX))
    }

    /// Until when a hook a claim at `now` found drained may have its deliveries handed off:
    /// [`CLEAR_FOR`], and no later than three quarters of a lease before the hook's lease runs
    /// out, so a handed delivery's lease (which ends with the hook's) always has that long to
    /// run: an attempt's timeout (at most half a lease) and a quarter of a lease to wait for the
    /// hook's pace.
    fn clear_until(&self, now: i64) -> i64 {
        let clear = CLEAR_FOR.min(self.shared.lease / 4);
        now.saturating_add(i64::try_from(clear.as_millis()).unwrap_or(i64::MAX))
    }

    fn slots(&self) -> &Arc<Slots> {
        &self.shared.slots
    }
}

/// Everything the dispatcher and its attempts share.
pub struct Dispatcher {
    /// Source of due work and sink of outcomes.
    pub store: Store,
    /// Where hooks' signing keys are read, and updated when a target answers 410.
    pub registry: Registry,
    /// Sends the requests.
    pub client: DeliveryClient,
    /// Waits between attempts.
    pub schedule: Vec<Duration>,
    /// Make's hosts, whose 410 does not detach (see [`Gone`]).
    pub make_hosts: Vec<HostPattern>,
    /// Requests per second per hook.
    pub hook_rate: u32,
    /// The queue shared with the ingest path.
    pub queue: DeliveryQueue,
    /// Where outcomes and latencies are counted.
    pub metrics: Metrics,
}

struct Shared {
    dispatcher: Dispatcher,
    pacer: DefaultKeyedRateLimiter<String>,
    records: recorder::Records,
    shutdown: CancellationToken,
}

impl Dispatcher {
    /// Runs until `shutdown`; attempts are spawned on `tracker`, which the caller drains.
    pub async fn run(self, handed: HandedOff, tracker: TaskTracker, shutdown: CancellationToken) {
        let (records, written) = mpsc::unbounded_channel();
        tracker.spawn(recorder::run(self.store.clone(), self.queue.clone(), written, shutdown.clone()));
        let shared = Arc::new(Shared {
            pacer: RateLimiter::keyed(pacing(self.hook_rate)),
            records,
            shutdown: shutdown.clone(),
            dispatcher: self,
        });
        tracker.spawn(Arc::clone(&shared).start_handed(handed, tracker.clone()));
        let mut resync = tokio::time::interval(RESYNC_EVERY);
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
                () = shared.dispatcher.queue.shared.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
                _ = resync.tick() => shared.resync().await,
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

/// A random number in `[0, 1)`, for spreading retries (no secret depends on it).
fn random_unit() -> f64 {
    let mut bytes = [0u8; 8];
    let _ = getrandom::fill(&mut bytes);
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

/// What an attempt does once its turn and a request slot came, or did not.
enum Start {
    /// Send it.
    Go,
    /// Its lease would run out before the attempt could end: back to the queue, unsent.
    HandBack,
    /// Shutting down: the lease is given back.
    Stop,
}

/// How much slower than `RELAY_HOOK_RATE` deliveries to one hook are spaced.
const PACING_HEADROOM: f64 = 1.05;

impl Shared {
    /// Starts the deliveries the ingest path handed over, until it stops handing any.
    async fn start_handed(self: Arc<Self>, mut handed: HandedOff, tracker: TaskTracker) {
        loop {
            let next = tokio::select! {
                next = handed.0.recv() => next,
                () = self.shutdown.cancelled() => None,
            };
            let Some((delivery, ticket)) = next else { return };
            self.spawn_attempt(&tracker, delivery, ticket);
        }
    }

    /// Claims as much as there is room for, by the store's protocol; `true` if the claim came
    /// back full or took hand-offs back (more may wait). Only [`Dispatcher::run`]'s loop calls
    /// it, so claims of this instance never overlap.
    async fn claim_and_spawn(self: &Arc<Self>, tracker: &TaskTracker) -> bool {
        let slots = self.dispatcher.queue.slots();
        let room = slots.available();
        if room == 0 {
            return false;
        }
        let now = now_ms();
        let claim = Claim { now, lease_until: self.dispatcher.queue.lease_until(now), limit: room };
        let failed = |e: StoreError| tracing::error!(cause = %e, "claiming due deliveries failed");
        match self.dispatcher.store.scheduling() {
            Scheduling::Owning(store) => {
                // Only the hooks known to have deliveries due (still a store call when there are
                // none: it takes back expired hand-offs).
                let asked = slots.claimable(now, room);
                let named = asked.iter().map(|a| (a.hook_id.clone(), a.limit)).collect();
                let Ok(claimed) = store.claim(claim, named).await.map_err(failed) else { return false };
                for (hook, due_at) in &claimed.taken_back {
                    slots.waiting(hook, *due_at);
                }
                let full = claimed.due.len() == room;
                self.spawn_claimed(tracker, claimed.due).await;
                slots.after_claim(&asked, &claimed.next_due);
                full || !claimed.taken_back.is_empty()
            }
            Scheduling::Leasing(store) => {
                let since = slots.latest_news();
                let per_hook = self.dispatcher.hook_rate.max(1) as usize;
                let held_back = slots.health.held_back(now);
                let Ok(claimed) = store.claim(claim, per_hook, held_back).await.map_err(failed) else { return false };
                for d in &claimed.due {
                    if let Some(streak) = d.streak {
                        slots.health.seed(&d.hook_id, streak);
                    }
                }
                let full = claimed.due.len() == room;
                self.spawn_claimed(tracker, claimed.due).await;
                let clear_until = self.dispatcher.queue.clear_until(now);
                slots.after_leased_claim(&claimed.leased_hooks, since, clear_until, claim.lease_until);
                full
            }
        }
    }

    /// Starts the attempts of claimed deliveries, each with a request slot's permit.
    async fn spawn_claimed(self: &Arc<Self>, tracker: &TaskTracker, due: Vec<DueDelivery>) {
        let slots = self.dispatcher.queue.slots();
        for delivery in due {
            let Some(permit) = slots.permit().await else { break };
            let ticket = slots.claimed(&delivery.hook_id, permit);
            self.spawn_attempt(tracker, delivery, ticket);
        }
    }

    /// Re-reads how many deliveries wait in the store per hook, and forgets idle pacers and
    /// healthy hooks' health.
    async fn resync(&self) {
        self.pacer.retain_recent();
        self.dispatcher.queue.health().forget_idle(now_ms());
        match self.dispatcher.store.waiting_by_hook(now_ms()).await {
            Ok(waiting) => self.dispatcher.queue.slots().resync(&waiting),
            Err(e) => tracing::warn!(cause = %e, "reading waiting deliveries failed"),
        }
    }

    fn spawn_attempt(self: &Arc<Self>, tracker: &TaskTracker, delivery: DueDelivery, ticket: Ticket) {
        let span = tracing::info_span!(
            "delivery",
            connection = %delivery.connection_id,
            hook = %delivery.hook_id,
            event = %delivery.event_id,
            attempt = delivery.attempts + 1,
        );
        tracker.spawn(Arc::clone(self).attempt(delivery, ticket).instrument(span));
    }

    async fn attempt(self: Arc<Self>, d: DueDelivery, mut ticket: Ticket) {
        let health = self.dispatcher.queue.health();
        // An attempt that could outlive its lease is not started: the delivery may be another
        // instance's by the time it ends, and would be attempted twice. A delivery whose turn
        // (the hook's pace held up by 429s, a busy share of request slots) comes too late for
        // that goes back to the queue without taking the turn from the next one.
        let timeout = i64::try_from(self.dispatcher.client.timeout().as_millis()).unwrap_or(i64::MAX);
        let in_time = |wait: Duration| {
            let wait = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
            now_ms().saturating_add(wait).saturating_add(timeout) <= d.lease_until
        };
        // Paced first (the steady pace, then the hook's adaptive one), then a permit: a delivery
        // waiting for its hook's turn holds no permit.
        let start = async {
            self.pacer.until_key_ready(&d.hook_id).await;
            loop {
                let now = std::time::Instant::now();
                let Some(turn) = health.turn(&d.hook_id, now) else { break };
                if !in_time(turn - now) {
                    return Start::HandBack;
                }
                tokio::time::sleep_until(turn.into()).await;
            }
            if !ticket.permit().await {
                return Start::Stop;
            }
            if in_time(Duration::ZERO) { Start::Go } else { Start::HandBack }
        };
        let start = tokio::select! {
            start = start => start,
            () = self.shutdown.cancelled() => Start::Stop,
        };
        match start {
            Start::Go => {}
            Start::Stop => {
                let _ = self.dispatcher.store.release(vec![d.id]).await;
                return;
            }
            Start::HandBack => {
                tracing::info!("the delivery's lease would run out before its attempt could end; handed back");
                return self.hand_back(d, ticket, now_ms()).await;
            }
        }
        let probe = match health.admit(&d.hook_id, now_ms()) {
            Admission::Send { probe } => probe,
            Admission::HandBack(due_at) => return self.hand_back(d, ticket, due_at).await,
        };
        let number = d.attempts + 1;
        let at = now_ms();
        let keys = match self.signing_keys(&d).await {
            Ok(Some(keys)) => Some(keys),
            Ok(None) => {
                // The hook is gone from the store, and its deliveries with it: nothing to record.
                tracing::info!("the hook was detached before its delivery; nothing sent");
                return;
            }
            Err(e) => {
                tracing::warn!(cause = %e, "reading the hook's signing keys failed");
                None
            }
        };
        // A request out for long makes its hook's next ones suspect before its answer comes.
        let sent = {
            let request = self.dispatcher.client.send(&d, number, keys.as_ref());
            tokio::pin!(request);
            tokio::select! {
                sent = &mut request => sent,
                () = tokio::time::sleep(health::SLOW) => {
                    health.slow(&d.hook_id);
                    request.await
                }
            }
        };
        ticket.sent();
        // Who answered matters only for a 410; the URL is not parsed again for any other answer.
        let from_make =
            sent.outcome == retry::Outcome::Status(410) && host_matches(&d.url, &self.dispatcher.make_hosts);
        let gone = if from_make { Gone::NotListening } else { Gone::Unsubscribed };
        let decision = retry::decide(sent.outcome, number, &self.dispatcher.schedule, sent.retry_after, gone);
        let verdict = Verdict::of(sent.outcome, sent.retry_after, gone);
        let change = health.outcome(&d.hook_id, verdict, now_ms(), sent.duration, probe);
        let status_code = match sent.outcome {
            retry::Outcome::Status(s) => Some(s),
            retry::Outcome::Failed | retry::Outcome::Refused => None,
        };
        tracing::info!(status = status_code, outcome = ?decision, ms = sent.duration.as_millis() as u64, "attempt finished");
        let metrics = &self.dispatcher.metrics;
        let stats = &self.dispatcher.queue.shared.stats;
        let ended = now_ms();
        let next = match decision {
            Decision::Detach => {
                metrics.attempt(DeliveryOutcome::Detached, sent.duration);
                stats.record(&d.connection_id, DeliveryOutcome::Detached, None, ended);
                self.detach(&d).await;
                return;
            }
            Decision::Delivered => {
                metrics.attempt(DeliveryOutcome::Delivered, sent.duration);
                let waited = Duration::from_millis(u64::try_from(ended.saturating_sub(d.received_at)).unwrap_or(0));
                metrics.delivered_after(waited);
                stats.record(&d.connection_id, DeliveryOutcome::Delivered, Some(waited), ended);
                NextStep::Delivered
            }
            Decision::Retry(wait) => {
                metrics.attempt(DeliveryOutcome::Retried, sent.duration);
                stats.record(&d.connection_id, DeliveryOutcome::Retried, None, ended);
                let wait = retry::spread(wait, random_unit());
                NextStep::RetryAt(ended.saturating_add(wait.as_millis() as i64))
            }
            Decision::DeadLetter => {
                metrics.attempt(DeliveryOutcome::DeadLettered, sent.duration);
                stats.record(&d.connection_id, DeliveryOutcome::DeadLettered, None, ended);
                NextStep::DeadLetter
            }
        };
        // The attempt that disables its hook ends as a dead letter, like the hook's others.
        let next = if change.disable { NextStep::DeadLetter } else { next };
        let record = AttemptRecord {
            delivery_id: d.id,
            hook_id: d.hook_id,
            attempt: Attempt {
                event_id: d.event_id,
                attempt: number,
                status_code,
                error: sent.error,
                duration_ms: sent.duration.as_millis() as u64,
                at,
            },
            next,
            streak: change.streak,
        };
        if let Scheduling::Leasing(store) = self.dispatcher.store.scheduling() {
            store.attempted(record.delivery_id);
        }
        let (connection_id, hook_id) = (d.connection_id, record.hook_id.clone());
        // The recorder outlives every attempt (it stops once all senders are gone).
        let _ = self.records.send((record, ticket));
        self.hook_changed(&connection_id, &hook_id, &change, d.id).await;
    }

    /// Gives a delivery its hook may not be sent now back to the claim queue, unsent (no
    /// attempt is used up), due at `due_at`.
    async fn hand_back(&self, d: DueDelivery, ticket: Ticket, due_at: i64) {
        if let Err(e) = self.dispatcher.store.release(vec![d.id]).await {
            tracing::warn!(cause = %e, "handing a delivery back failed; it is taken back when its lease runs out");
        }
        drop(ticket);
        self.dispatcher.queue.rescheduled(&d.hook_id, due_at);
    }

    /// Acts on what an attempt changed about its hook: logs a new status, counts it, wakes the
    /// claim queue when a pause ends, disables the hook (sparing `attempted`, the delivery
    /// whose record says so itself).
    async fn hook_changed(&self, connection_id: &str, hook_id: &str, change: &Change, attempted: i64) {
        let metrics = &self.dispatcher.metrics;
        match change.became {
            Some(HookStatus::Paused) => {
                let until = change.streak.and_then(|s| s.paused_until).unwrap_or_default();
                let failures = change.streak.map(|s| s.failures).unwrap_or_default();
                tracing::warn!(paused_until = %crate::model::rfc3339(until), failures, "hook paused");
                metrics.hook_paused();
                self.wake_at(until);
            }
            Some(HookStatus::Active) => tracing::info!("hook active again: its probe succeeded"),
            Some(HookStatus::Disabled) | None => {}
        }
        if change.disable {
            self.disable(connection_id, hook_id, attempted).await;
        }
    }

    /// Wakes the claim queue at `at` (ms), when a pause ends.
    fn wake_at(&self, at: i64) {
        let wait = Duration::from_millis(u64::try_from(at - now_ms()).unwrap_or(0));
        let (queue, shutdown) = (self.dispatcher.queue.clone(), self.shutdown.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(wait) => queue.wake(),
                () = shutdown.cancelled() => {}
            }
        });
    }

    /// Disables a hook whose attempts have all failed for `RELAY_DISABLE_AFTER`: its waiting
    /// deliveries but `attempted` become dead letters. If the store cannot be written, the
    /// hook's next failure tries again.
    async fn disable(&self, connection_id: &str, hook_id: &str, attempted: i64) {
        let dispatcher = &self.dispatcher;
        match dispatcher.store.disable_hook(connection_id, hook_id, now_ms(), attempted).await {
            Ok(Some(dead_lettered)) => {
                dispatcher.registry.set_hook_disabled(connection_id, hook_id, true);
                dispatcher.queue.health().forget(hook_id);
                dispatcher.metrics.hook_disabled();
                tracing::warn!(dead_lettered, "hook disabled: its attempts have all failed for RELAY_DISABLE_AFTER");
            }
            Ok(None) => {}
            Err(e) => tracing::error!(cause = %e, "disabling a failing hook failed; its next failure tries again"),
        }
    }

    /// The keys that sign `d`'s delivery, as the registry has its hook; from the store when this
    /// instance has not heard of the hook yet (another instance attached it a moment ago).
    /// `None`: the hook no longer exists.
    async fn signing_keys(&self, d: &DueDelivery) -> Result<Option<HookKeys>, StoreError> {
        let registry = &self.dispatcher.registry;
        let known = registry.get(&d.connection_id).and_then(|e| e.hook(&d.hook_id).map(|h| h.keys.clone()));
        if known.is_some() {
            return Ok(known);
        }
        let stored = self.dispatcher.store.connection(&d.connection_id).await?;
        Ok(stored.and_then(|(_, hooks)| hooks.into_iter().find(|h| h.id == d.hook_id)).map(|h| h.keys))
    }

    async fn detach(&self, d: &DueDelivery) {
        match self.dispatcher.store.detach_hook(&d.connection_id, &d.hook_id).await {
            Ok(_) => {
                self.dispatcher.registry.remove_hook(&d.connection_id, &d.hook_id);
                self.dispatcher.queue.health().forget(&d.hook_id);
                tracing::info!("target answered 410 Gone; hook detached");
            }
            Err(e) => tracing::error!(cause = %e, "detaching a gone hook failed; it is retried"),
        }
        self.dispatcher.queue.wake();
    }
}
