//! Caps on what one client, or one target of its requests, may hold at once: open connections
//! per address, ingest requests in progress per address and per connection id, and a
//! connection's idle watchdog. None of them needs credentials to be reached, so none may let one
//! address starve everyone else.

use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// How many of something each key holds, with a cap per key. A key's entry exists only while it
/// holds something, so the map is bounded by what is in progress.
pub(super) struct Counts<K: Eq + Hash> {
    held: DashMap<K, usize>,
    cap: usize,
}

impl<K: Eq + Hash + Clone> Counts<K> {
    pub(super) fn new(cap: usize) -> Self {
        Self { held: DashMap::new(), cap }
    }

    /// Takes one for `key` unless it holds `cap` already.
    fn try_take(&self, key: &K) -> bool {
        let mut held = self.held.entry(key.clone()).or_insert(0);
        if *held >= self.cap {
            return false;
        }
        *held += 1;
        true
    }

    fn give_back(&self, key: &K) {
        let emptied = match self.held.get_mut(key) {
            Some(mut held) => {
                *held = held.saturating_sub(1);
                *held == 0
            }
            None => false,
        };
        if emptied {
            self.held.remove_if(key, |_, held| *held == 0);
        }
    }

    #[cfg(test)]
    fn keys(&self) -> usize {
        self.held.len()
    }
}

/// One held count, given back when dropped.
pub(super) struct Held<K: Eq + Hash + Clone> {
    counts: Arc<Counts<K>>,
    key: K,
}

impl<K: Eq + Hash + Clone> Drop for Held<K> {
    fn drop(&mut self) {
        self.counts.give_back(&self.key);
    }
}

/// Takes one count of `key` from `counts`, if its cap allows.
pub(super) fn hold<K: Eq + Hash + Clone>(counts: &Arc<Counts<K>>, key: K) -> Option<Held<K>> {
    counts.try_take(&key).then(|| Held { counts: Arc::clone(counts), key })
}

/// Ingest requests in progress: at most `global` in all (each holds up to `RELAY_MAX_BODY` in
/// memory), and at most a cap per client address and per connection id. The id is counted as
/// the request names it, whether or not such a connection exists, so that being refused says
/// nothing about which connections exist.
pub(super) struct IngestSlots {
    global: Arc<Semaphore>,
    per_address: Arc<Counts<IpAddr>>,
    per_connection: Arc<Counts<String>>,
}

/// What one ingest request holds until it is answered.
pub(super) struct IngestSlot {
    _global: OwnedSemaphorePermit,
    _address: Held<IpAddr>,
    _connection: Held<String>,
}

impl IngestSlots {
    pub(super) fn new(global: usize, per_address: usize, per_connection: usize) -> Self {
        Self {
            global: Arc::new(Semaphore::new(global)),
            per_address: Arc::new(Counts::new(per_address)),
            per_connection: Arc::new(Counts::new(per_connection)),
        }
    }

    /// A slot for an ingest from `client` to `connection_id`, if every cap allows one.
    pub(super) fn try_take(&self, client: IpAddr, connection_id: &str) -> Option<IngestSlot> {
        let address = hold(&self.per_address, client)?;
        let connection = hold(&self.per_connection, connection_id.to_owned())?;
        let global = Arc::clone(&self.global).try_acquire_owned().ok()?;
        Some(IngestSlot { _global: global, _address: address, _connection: connection })
    }
}

/// What a connection is doing, so that its watchdog can close it when it sits idle: before its
/// first request (a socket that sends nothing, one byte, or only the HTTP/2 preface) and
/// between requests.
#[derive(Debug)]
pub(super) struct Activity {
    in_flight: AtomicUsize,
    served: AtomicBool,
    /// When the last request ended (or the connection was accepted); tokio's clock, so that
    /// tests can pause it.
    quiet_since: std::sync::Mutex<Instant>,
    /// Told when a request starts or ends, so the watchdog re-reads its deadline at once.
    changed: tokio::sync::Notify,
}

/// A request in progress on a connection; the connection counts as idle again once dropped.
pub(super) struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        *self.0.quiet_since.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_one();
    }
}

impl Activity {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self {
            in_flight: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            quiet_since: std::sync::Mutex::new(Instant::now()),
            changed: tokio::sync::Notify::new(),
        })
    }

    /// Marks a request in progress until the returned guard is dropped.
    pub(super) fn busy(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.served.store(true, Ordering::Release);
        self.changed.notify_one();
        Busy(Arc::clone(self))
    }

    /// Resolves once the connection has had no request in progress for `first` before its first
    /// request, or for `idle` after one.
    pub(super) async fn idle(&self, first: Duration, idle: Duration) {
        loop {
            let limit = if self.served.load(Ordering::Acquire) { idle } else { first };
            let quiet_since = *self.quiet_since.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let deadline = quiet_since + limit;
            if self.in_flight.load(Ordering::Acquire) == 0 && Instant::now() >= deadline {
                return;
            }
            if self.in_flight.load(Ordering::Acquire) > 0 {
                self.changed.notified().await;
            } else {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => {}
                    () = self.changed.notified() => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_cap_each_key_and_forget_keys_that_hold_nothing() {
        let counts = Arc::new(Counts::new(2));
        let a1 = hold(&counts, "a").unwrap();
        let _a2 = hold(&counts, "a").unwrap();
        assert!(hold(&counts, "a").is_none(), "a is at its cap");
        let b = hold(&counts, "b").unwrap();
        drop(a1);
        assert!(hold(&counts, "a").is_some(), "one given back, one may be taken");
        drop(b);
        assert_eq!(counts.keys(), 1, "b holds nothing and is forgotten");
    }

    #[test]
    fn an_ingest_slot_needs_room_everywhere() {
        let slots = IngestSlots::new(3, 2, 2);
        let attacker: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let _one = slots.try_take(attacker, "victim").unwrap();
        let _two = slots.try_take(attacker, "nobody").unwrap();
        assert!(slots.try_take(attacker, "third").is_none(), "the address is at its cap");
        let _three = slots.try_take(other, "victim").unwrap();
        assert!(slots.try_take(other, "victim").is_none(), "the whole relay is at its cap");
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_request_the_idle_timeout_counts_from_its_end() {
        let activity = Activity::new();
        let (first, idle) = (Duration::from_secs(10), Duration::from_secs(2));
        let watch = tokio::spawn({
            let activity = Arc::clone(&activity);
            async move { activity.idle(first, idle).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(activity.busy());
        let ended = tokio::time::Instant::now();
        watch.await.unwrap();
        assert_eq!(ended.elapsed(), idle, "not the first-request deadline");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_only_with_nothing_in_progress() {
        let activity = Activity::new();
        let first = Duration::from_secs(10);
        let idle = Duration::from_secs(60);
        let started = tokio::time::Instant::now();
        activity.idle(first, idle).await;
        assert_eq!(started.elapsed(), first, "no request at all: closed after the first-request deadline");

        let activity = Activity::new();
        let busy = activity.busy();
        let watch = tokio::spawn({
            let activity = Arc::clone(&activity);
            async move { activity.idle(first, idle).await }
        });
        tokio::time::sleep(Duration::from_secs(100)).await;
        assert!(!watch.is_finished(), "a request in progress keeps it open");
        drop(busy);
        let ended = tokio::time::Instant::now();
        watch.await.unwrap();
        assert!(ended.elapsed() >= idle, "then it may idle for the idle timeout");
    }
}
