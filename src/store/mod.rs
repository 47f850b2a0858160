//! Durable state behind one interface: connections, hooks, events, deliveries, attempts and
//! dead letters. [`Store`] picks a backend by URL and dispatches to it; every backend has the
//! same method set, so callers never know which one runs. Imports `model`, `config` and
//! `metrics` only.

mod postgres;
mod sqlite;

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::DatabaseUrl;
use crate::metrics::Metrics;
use crate::model::{
    Attempt, AttemptRecord, Connection, DeadLetter, DueDelivery, Event, Hook, HookKeys, Hooks, IngestAuth, NextStep,
    SigningSecret, event_type,
};

pub use postgres::{ChangeFeed, PostgresStore};
pub use sqlite::SqliteStore;

/// Delivery states as both backends store them.
const PENDING: i32 = 0;
const DELIVERED: i32 = 1;
const DEAD: i32 = 2;

/// The state and next-attempt time a delivery is stored with after an attempt at `at`.
fn stored_state(next: NextStep, at: i64) -> (i32, i64) {
    match next {
        NextStep::Delivered => (DELIVERED, at),
        NextStep::RetryAt(due) => (PENDING, due),
        NextStep::DeadLetter => (DEAD, at),
    }
}

/// A failure of the store; ingest answers it with 503 and the admin/hook APIs with 503 too.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed an operation (full disk, IO error, corruption…).
    #[error("database error")]
    Backend(#[source] Arc<dyn std::error::Error + Send + Sync>),
    /// The store was shut down.
    #[error("the store is closed")]
    Closed,
    /// Stored data could not be decoded.
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
}

/// The outcome of creating a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// Stored.
    Created,
    /// Another connection already has this id.
    IdTaken,
    /// Another connection already has this API key.
    KeyTaken,
}

/// The outcome of attaching a hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attached {
    /// A new hook was stored.
    Created(Hook),
    /// The same url + event + template was already attached; here it is.
    Existing(Hook),
}

/// Where an ingested event's deliveries go: one per hook, each either queued for a claim or
/// handed straight to this instance's workers.
#[derive(Debug, Clone, Default)]
pub struct Fanout {
    /// Hooks whose deliveries wait in the store until claimed.
    pub queued: Vec<FanoutHook>,
    /// Hooks whose deliveries are leased to this instance in the commit, until `lease_until`
    /// (a claim takes them back after that), and come back in [`Ingested::Accepted`], to be
    /// attempted at once.
    pub handed: Vec<FanoutHook>,
    /// When the lease of handed deliveries ends (ms).
    pub lease_until: i64,
}

/// One hook an event goes to, as the registry knows it: the store need not look it up again
/// (a hook detached meanwhile gets no delivery).
#[derive(Debug, Clone)]
pub struct FanoutHook {
    /// The hook.
    pub id: String,
    /// Where its delivery goes (a hook's URL never changes).
    pub url: String,
}

/// The outcome of committing an ingested event.
#[derive(Debug)]
pub enum Ingested {
    /// Committed with this many deliveries.
    Accepted {
        /// Deliveries created, one per matching hook that still exists.
        deliveries: usize,
        /// The handed deliveries, leased to this instance.
        handed: Vec<DueDelivery>,
    },
    /// This event id was already accepted for the connection.
    Duplicate,
    /// The connection was deleted before the commit.
    UnknownConnection,
}

/// Every connection with its hooks (oldest first), as SQLite reads them for the registry and for
/// `migrate-store`'s export.
#[derive(Debug, Default)]
struct Snapshot {
    connections: Vec<(Connection, Hooks)>,
}

impl Snapshot {
    /// Connections and hooks as two flat lists.
    fn flatten(self) -> (Vec<Connection>, Vec<Hook>) {
        let (connections, hooks): (Vec<_>, Vec<_>) = self.connections.into_iter().unzip();
        (connections, hooks.iter().flat_map(|h| h.iter().map(|hook| Hook::clone(hook))).collect())
    }
}

/// Turns hook rows that arrive grouped by connection (ordered by connection id) into each
/// connection with its hooks, handed to `emit` as soon as its group ends, then the connections
/// without hooks. Each group is moved into its final, exactly sized slice, and each hook shares
/// its connection's id instead of owning a copy; a reader that keeps what it is handed (the
/// start) holds the registry once, and one that compares it (a resync) holds only a page.
struct SnapshotBuilder<F> {
    connections: Vec<Option<Connection>>,
    index: HashMap<Arc<str>, usize>,
    group: Option<usize>,
    buffer: Vec<Arc<Hook>>,
    emit: F,
}

impl<F: FnMut(Connection, Hooks)> SnapshotBuilder<F> {
    fn new(connections: Vec<Connection>, emit: F) -> Self {
        let index = connections.iter().enumerate().map(|(i, c)| (Arc::from(c.id.as_str()), i)).collect();
        Self { connections: connections.into_iter().map(Some).collect(), index, group: None, buffer: Vec::new(), emit }
    }

    /// Adds the hook that `hook` builds from its connection's shared id (skipped when the
    /// connection is unknown: it was deleted between the two reads).
    fn add(
        &mut self,
        connection_id: &str,
        hook: impl FnOnce(Arc<str>) -> Result<Hook, StoreError>,
    ) -> Result<(), StoreError> {
        let Some((shared, &i)) = self.index.get_key_value(connection_id) else { return Ok(()) };
        let hook = hook(Arc::clone(shared))?;
        if self.group != Some(i) {
            self.end_group();
            if self.connections[i].is_none() {
                return Err(StoreError::Corrupt(format!("the hooks of {connection_id} were not read in one run")));
            }
            self.group = Some(i);
        }
        self.buffer.push(Arc::new(hook));
        Ok(())
    }

    fn end_group(&mut self) {
        if let Some(connection) = self.group.take().and_then(|i| self.connections[i].take()) {
            (self.emit)(connection, self.buffer.drain(..).collect());
        }
    }

    /// Hands over the last group, then every connection that had no hooks.
    fn finish(mut self) {
        self.end_group();
        for connection in self.connections.into_iter().flatten() {
            (self.emit)(connection, Arc::from([]));
        }
    }
}

/// The static name of a stored hook's event type.
fn stored_event(name: &str) -> Result<&'static str, StoreError> {
    event_type(name).ok_or_else(|| StoreError::Corrupt(format!("a hook subscribes to the unknown event type {name:?}")))
}

/// A stored connection's `ingest_auth`.
fn stored_ingest_auth(name: &str) -> Result<IngestAuth, StoreError> {
    IngestAuth::parse(name)
        .ok_or_else(|| StoreError::Corrupt(format!("a connection has the unknown ingest_auth {name:?}")))
}

/// A stored hook's signing keys.
fn stored_hook_keys(json: &str) -> Result<HookKeys, StoreError> {
    let stored: Vec<SigningSecret> =
        serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("a hook's signing keys: {e}")))?;
    HookKeys::from_stored(&stored).map_err(|e| StoreError::Corrupt(format!("a hook's signing keys: {e}")))
}

/// The signing keys of a hook that has none yet, as stored: one fresh key.
fn fresh_hook_keys() -> Vec<SigningSecret> {
    HookKeys::generate().to_stored()
}

/// What moves from one store to another (`stencil-relay migrate-store`): every connection and
/// hook, and every delivery not yet delivered (pending or dead-lettered) with its event.
#[derive(Debug, Default)]
pub struct Transfer {
    /// All connections.
    pub connections: Vec<Connection>,
    /// All hooks.
    pub hooks: Vec<Hook>,
    /// Events that undelivered deliveries need, keyed by their source sequence number.
    pub events: Vec<(i64, String, Event)>,
    /// Undelivered deliveries, pointing at events by source sequence number.
    pub deliveries: Vec<TransferDelivery>,
}

/// One undelivered delivery as it is stored.
#[derive(Debug, Clone)]
pub struct TransferDelivery {
    /// The event's sequence number in the source store.
    pub event_seq: i64,
    /// Target hook.
    pub hook_id: String,
    /// Owning connection.
    pub connection_id: String,
    /// Target URL.
    pub url: String,
    /// Stored state (pending or dead).
    pub state: i32,
    /// Attempts made.
    pub attempts: u32,
    /// When it is due (ms).
    pub next_attempt_at: i64,
    /// Last status, if any.
    pub last_status: Option<u16>,
    /// Last error, if any.
    pub last_error: Option<String>,
    /// Last change (ms).
    pub updated_at: i64,
}

/// What a claim asks for.
#[derive(Debug, Clone)]
pub struct Claim {
    /// Now (ms): deliveries due at or before it are eligible.
    pub now: i64,
    /// Until when the claimed deliveries are leased to this instance (ms).
    pub lease_until: i64,
    /// At most this many deliveries in all.
    pub limit: usize,
    /// At most this many per hook, and none for a hook with leased deliveries not yet recorded
    /// (on PostgreSQL: not yet attempted, [`Store::attempted`]).
    pub per_hook: usize,
    /// Only these hooks, each with at most its own number of deliveries (instead of `per_hook`
    /// and the leased check). Where one instance owns every hook, its workers know which hooks
    /// have deliveries waiting and how many of each are in flight; naming them makes a claim
    /// cost a lookup per hook instead of a pass over every due delivery, so a backlog does not
    /// slow the claims that drain it. `None`: any due hook.
    pub hooks: Option<Vec<(String, usize)>>,
}

/// What a claim leased, and what it saw of the deliveries still waiting.
#[derive(Debug, Default)]
pub struct Claimed {
    /// The deliveries now leased to this instance, oldest first.
    pub due: Vec<DueDelivery>,
    /// For each hook the claim named, in the order named: when its earliest delivery still
    /// waiting is due (ms), or `None` if nothing of it waits.
    pub next_due: Vec<Option<i64>>,
    /// Hand-offs whose lease ran out, back in the queue: their hook and when they are due.
    pub taken_back: Vec<(String, i64)>,
    /// PostgreSQL: each hook the claim leased deliveries of, with whether it took every
    /// delivery of the hook then due; the hook is leased to this instance until the claim's
    /// `lease_until`. A drained hook's next deliveries may be handed off at ingest for a while.
    pub leased_hooks: Vec<(String, bool)>,
}

/// Deliveries of one hook waiting in the store (pending and not leased).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiting {
    /// How many.
    pub count: u64,
    /// When the earliest is due (ms).
    pub due_at: i64,
}

/// The store handle; clones share the same backend.
#[derive(Clone)]
pub enum Store {
    /// Embedded SQLite.
    Sqlite(SqliteStore),
    /// PostgreSQL shared by several instances.
    Postgres(PostgresStore),
}

macro_rules! dispatch {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {
        match $self {
            Store::Sqlite(s) => s.$method($($arg),*).await,
            Store::Postgres(s) => s.$method($($arg),*).await,
        }
    };
}

impl Store {
    /// Opens (creating and migrating if needed) the store named by `url`.
    ///
    /// # Errors
    /// The database cannot be created, opened or migrated.
    pub async fn open(url: &DatabaseUrl, metrics: Metrics) -> Result<Self, StoreError> {
        match url {
            DatabaseUrl::Sqlite(path) => Ok(Self::Sqlite(SqliteStore::open(path.clone(), metrics).await?)),
            DatabaseUrl::Postgres(url) => Ok(Self::Postgres(PostgresStore::open(url, metrics).await?)),
        }
    }

    /// Whether the store answers (`/readyz`).
    ///
    /// # Errors
    /// It does not.
    pub async fn ping(&self) -> Result<(), StoreError> {
        dispatch!(self.ping())
    }

    /// Deliveries neither delivered nor dead-lettered yet.
    ///
    /// # Errors
    /// The read failed.
    pub async fn pending_count(&self) -> Result<u64, StoreError> {
        dispatch!(self.pending_count())
    }

    /// Reads every connection with its hooks, handing each to `each` as it is read, to build or
    /// resync the registry: a resync that compares what it is handed never holds a second copy
    /// of a large registry (PostgreSQL reads it a page at a time).
    ///
    /// # Errors
    /// The read failed or stored data is invalid.
    pub async fn each_connection(&self, mut each: impl FnMut(Connection, Hooks) + Send) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => {
                for (connection, hooks) in s.snapshot().await?.connections {
                    each(connection, hooks);
                }
                Ok(())
            }
            Store::Postgres(s) => s.each_connection(each).await,
        }
    }

    /// One connection and its hooks, to refresh the registry after a change elsewhere.
    ///
    /// # Errors
    /// The read failed or stored data is invalid.
    pub async fn connection(&self, id: &str) -> Result<Option<(Connection, Vec<Hook>)>, StoreError> {
        dispatch!(self.connection(id.to_owned()))
    }

    /// Announcements of connections changed by any instance; `None` for a store only one
    /// instance uses (SQLite), where the registry is always current.
    ///
    /// # Errors
    /// The listening connection cannot be opened.
    pub async fn listen(&self) -> Result<Option<ChangeFeed>, StoreError> {
        match self {
            Store::Sqlite(_) => Ok(None),
            Store::Postgres(s) => Ok(Some(s.listen().await?)),
        }
    }

    /// Stores a new connection.
    ///
    /// # Errors
    /// The write failed.
    pub async fn create_connection(&self, connection: Connection) -> Result<Created, StoreError> {
        dispatch!(self.create_connection(connection))
    }

    /// Deletes a connection with its hooks, events and deliveries; `false` if it did not exist.
    ///
    /// # Errors
    /// The write failed.
    pub async fn delete_connection(&self, id: &str) -> Result<bool, StoreError> {
        dispatch!(self.delete_connection(id.to_owned()))
    }

    /// Replaces a connection's API key hash; `false` if the connection does not exist.
    ///
    /// # Errors
    /// The write failed.
    pub async fn set_api_key_hash(&self, id: &str, hash: [u8; 32]) -> Result<bool, StoreError> {
        dispatch!(self.set_api_key_hash(id.to_owned(), hash))
    }

    /// Replaces a connection's signing secrets; `false` if the connection does not exist.
    ///
    /// # Errors
    /// The write failed.
    pub async fn set_secrets(&self, id: &str, secrets: Vec<SigningSecret>) -> Result<bool, StoreError> {
        dispatch!(self.set_secrets(id.to_owned(), secrets))
    }

    /// Replaces a connection's name, ingest rate and `ingest_auth` with `connection`'s; `false`
    /// if the connection does not exist.
    ///
    /// # Errors
    /// The write failed.
    pub async fn set_settings(&self, connection: Connection) -> Result<bool, StoreError> {
        dispatch!(self.set_settings(connection))
    }

    /// Replaces the signing keys of a connection's hook; `false` if it has no such hook.
    ///
    /// # Errors
    /// The write failed.
    pub async fn set_hook_keys(&self, connection_id: &str, hook_id: &str, keys: &HookKeys) -> Result<bool, StoreError> {
        dispatch!(self.set_hook_secrets(connection_id.to_owned(), hook_id.to_owned(), keys.to_stored()))
    }

    /// Attaches a hook, or returns the identical one already attached.
    ///
    /// # Errors
    /// The write failed.
    pub async fn attach_hook(&self, hook: Hook) -> Result<Attached, StoreError> {
        dispatch!(self.attach_hook(hook))
    }

    /// Removes a connection's hook and its deliveries; `false` if there was no such hook.
    ///
    /// # Errors
    /// The write failed.
    pub async fn detach_hook(&self, connection_id: &str, hook_id: &str) -> Result<bool, StoreError> {
        dispatch!(self.detach_hook(connection_id.to_owned(), hook_id.to_owned()))
    }

    /// Whether this instance owns every hook (SQLite), so that everything waiting in the store
    /// is known to it. Shared stores lease each hook to one instance at a time instead: a
    /// delivery is handed off at ingest ([`Fanout::handed`]) only while this instance holds its
    /// hook's lease, and claims find the due hooks themselves.
    pub fn owns_every_hook(&self) -> bool {
        matches!(self, Store::Sqlite(_))
    }

    /// Commits an event and one delivery for each hook of `fanout` that still exists.
    /// `on_commit` runs with the outcome once it is committed, even if the caller has stopped
    /// waiting by then (a client hung up mid-commit): committed deliveries are handed over
    /// there, and skipping that would leave them leased until the lease ran out.
    ///
    /// # Errors
    /// The write failed: nothing was committed.
    pub async fn ingest(
        &self,
        connection_id: &str,
        event: Event,
        fanout: Fanout,
        on_commit: impl FnOnce(&mut Ingested) + Send + 'static,
    ) -> Result<Ingested, StoreError> {
        dispatch!(self.ingest(connection_id.to_owned(), event, fanout, on_commit))
    }

    /// A connection's newest events.
    ///
    /// # Errors
    /// The read failed.
    pub async fn events(&self, connection_id: &str, limit: usize) -> Result<Vec<Event>, StoreError> {
        dispatch!(self.events(connection_id.to_owned(), limit))
    }

    /// A hook's newest attempts.
    ///
    /// # Errors
    /// The read failed.
    pub async fn attempts(&self, hook_id: &str, limit: usize) -> Result<Vec<Attempt>, StoreError> {
        dispatch!(self.attempts(hook_id.to_owned(), limit))
    }

    /// Leases due deliveries to this instance.
    ///
    /// # Errors
    /// The write failed.
    pub async fn claim(&self, claim: Claim) -> Result<Claimed, StoreError> {
        dispatch!(self.claim(claim))
    }

    /// The earliest future time (ms) at which an unleased delivery becomes due.
    ///
    /// # Errors
    /// The read failed.
    pub async fn next_due(&self, now: i64) -> Result<Option<i64>, StoreError> {
        dispatch!(self.next_due(now))
    }

    /// Records finished attempts and moves their deliveries on (releasing their leases). A
    /// record whose attempt number is not above the delivery's stored count is already applied
    /// (or stale) and is skipped, so a batch can be written again after a failure.
    ///
    /// # Errors
    /// The write failed: some records may not be written; write the batch again.
    pub async fn record(&self, records: Arc<[AttemptRecord]>) -> Result<(), StoreError> {
        dispatch!(self.record(records))
    }

    /// The deliveries waiting in the store (pending, not leased), per hook, after taking back
    /// leases that ran out by `now` (their outcome was never recorded).
    ///
    /// # Errors
    /// The store failed.
    pub async fn waiting_by_hook(&self, now: i64) -> Result<HashMap<String, Waiting>, StoreError> {
        dispatch!(self.waiting_by_hook(now))
    }

    /// The attempt of leased delivery `id` is over and its record is on its way to
    /// [`Store::record`]. PostgreSQL claims a hook's deliveries one batch at a time: from now on
    /// the hook's next ones may be claimed, so records can wait to share a commit without
    /// holding the hook back; the delivery itself stays leased until recorded. SQLite's claims
    /// are bounded per hook by the dispatcher's own counts instead, so there it changes nothing.
    pub fn attempted(&self, id: i64) {
        match self {
            Store::Sqlite(_) => {}
            Store::Postgres(s) => s.attempted(id),
        }
    }

    /// At shutdown, once attempts are over: gives back the hooks this instance leased
    /// (PostgreSQL) and has nothing in flight for, so that other instances take them over at
    /// once rather than when their leases run out — a rolling deploy does not pause their
    /// deliveries. SQLite has no leases of hooks. Returns how many were given back.
    ///
    /// # Errors
    /// The write failed; the leases run out as usual.
    pub async fn give_back_hooks(&self) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(_) => Ok(0),
            Store::Postgres(s) => s.give_back_hooks().await,
        }
    }

    /// Gives leased deliveries back without an attempt (shutdown).
    ///
    /// # Errors
    /// The write failed.
    pub async fn release(&self, ids: Vec<i64>) -> Result<(), StoreError> {
        dispatch!(self.release(ids))
    }

    /// Dead letters, newest first, optionally of one connection.
    ///
    /// # Errors
    /// The read failed.
    pub async fn dead_letters(&self, connection_id: Option<&str>, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        dispatch!(self.dead_letters(connection_id.map(str::to_owned), limit))
    }

    /// Schedules a dead letter again from attempt 1; its hook, or `None` if there is no such dead
    /// letter.
    ///
    /// # Errors
    /// The write failed.
    pub async fn retry_dead_letter(&self, id: i64, now: i64) -> Result<Option<String>, StoreError> {
        dispatch!(self.retry_dead_letter(id, now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{HookKeys, IMAGE_CREATED};

    /// An ingest's `on_commit` for tests that look only at what `ingest` returns.
    fn ignore(_: &mut Ingested) {}

    fn connection(id: &str) -> Connection {
        Connection {
            id: id.into(),
            name: id.into(),
            api_key_hash: [0; 32],
            secrets: Vec::new(),
            ingest_rate: None,
            ingest_auth: Default::default(),
            created_at: 0,
        }
    }

    fn hook(id: &str) -> impl FnOnce(Arc<str>) -> Result<Hook, StoreError> {
        let id = id.to_owned();
        move |connection_id| {
            Ok(Hook {
                id,
                connection_id,
                url: "https://x".into(),
                event: IMAGE_CREATED,
                template_id: None,
                keys: HookKeys::generate(),
                created_at: 0,
            })
        }
    }

    #[test]
    fn snapshots_hand_over_each_group_as_it_ends_sharing_the_connection_id() {
        let mut emitted: Vec<(String, Vec<String>, Hooks)> = Vec::new();
        let mut builder = SnapshotBuilder::new(vec![connection("a"), connection("b"), connection("c")], |c, h| {
            emitted.push((c.id, h.iter().map(|h| h.id.clone()).collect(), h));
        });
        for (connection, id) in [("a", "h1"), ("gone", "h2"), ("b", "h3"), ("b", "h4")] {
            builder.add(connection, hook(id)).unwrap();
        }
        assert!(builder.add("a", hook("h5")).is_err(), "a group in two runs is refused, not split");
        builder.finish();
        let groups: Vec<(&str, Vec<&str>)> =
            emitted.iter().map(|(c, ids, _)| (c.as_str(), ids.iter().map(String::as_str).collect())).collect();
        assert_eq!(groups, [("a", vec!["h1"]), ("b", vec!["h3", "h4"]), ("c", vec![])]);
        let b = &emitted[1].2;
        assert!(Arc::ptr_eq(&b[0].connection_id, &b[1].connection_id), "one id per connection");
        assert_eq!(&*b[0].connection_id, "b");
    }

    async fn sqlite(dir: &tempfile::TempDir) -> Store {
        let store = Store::open(&DatabaseUrl::Sqlite(dir.path().join("relay.db")), Metrics::default()).await.unwrap();
        store.create_connection(connection("a")).await.unwrap();
        store
    }

    fn event(id: &str) -> Event {
        Event {
            id: id.into(),
            event_type: IMAGE_CREATED.into(),
            template_id: None,
            payload: "{}".into(),
            received_at: 0,
        }
    }

    #[tokio::test]
    async fn a_record_written_twice_is_applied_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite(&dir).await;
        let h = hook("hk_1")(Arc::from("a")).unwrap();
        store.attach_hook(h.clone()).await.unwrap();
        let handed = vec![FanoutHook { id: h.id.clone(), url: h.url.clone() }];
        let Ingested::Accepted { handed, .. } =
            store.ingest("a", event("e1"), Fanout { queued: vec![], handed, lease_until: 1 }, ignore).await.unwrap()
        else {
            panic!("not accepted")
        };
        let attempt = |status| Attempt {
            event_id: "e1".into(),
            attempt: 1,
            status_code: Some(status),
            error: None,
            duration_ms: 1,
            at: 1,
        };
        let record = |status, next| AttemptRecord {
            delivery_id: handed[0].id,
            hook_id: h.id.clone(),
            attempt: attempt(status),
            next,
        };
        store.record(Arc::from([record(500, NextStep::RetryAt(10))])).await.unwrap();
        store.record(Arc::from([record(500, NextStep::RetryAt(10)), record(200, NextStep::Delivered)])).await.unwrap();
        let attempts = store.attempts(&h.id, 10).await.unwrap();
        assert_eq!(
            attempts.iter().map(|a| a.status_code).collect::<Vec<_>>(),
            [Some(500)],
            "attempt 1 is recorded once"
        );
        assert_eq!(store.pending_count().await.unwrap(), 1, "and its retry stays scheduled");
    }

    #[tokio::test]
    async fn a_hook_detached_after_the_plan_gets_no_delivery() {
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite(&dir).await;
        let kept = hook("hk_kept")(Arc::from("a")).unwrap();
        let gone = hook("hk_gone")(Arc::from("a")).unwrap();
        for h in [&kept, &gone] {
            store.attach_hook(h.clone()).await.unwrap();
        }
        store.detach_hook("a", "hk_gone").await.unwrap();
        let fanout_hook = |h: &Hook| FanoutHook { id: h.id.clone(), url: h.url.clone() };
        let fanout = Fanout { queued: vec![fanout_hook(&gone)], handed: vec![fanout_hook(&kept)], lease_until: 1 };
        match store.ingest("a", event("e1"), fanout, ignore).await.unwrap() {
            Ingested::Accepted { deliveries, handed } => {
                assert_eq!(deliveries, 1);
                assert_eq!(handed.iter().map(|d| d.hook_id.as_str()).collect::<Vec<_>>(), ["hk_kept"]);
            }
            other => panic!("not accepted: {other:?}"),
        }
        assert_eq!(store.pending_count().await.unwrap(), 1);
    }

    #[tokio::test]
    async fn hand_offs_go_back_to_the_claim_queue_when_released_expired_or_orphaned() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = sqlite(&dir).await;
        let mut ids = Vec::new();
        for (n, lease_until) in [(1, 100), (2, 100), (3, 10_000)] {
            let h = Hook { url: format!("https://x/{n}"), ..hook(&format!("hk_{n}"))(Arc::from("a")).unwrap() };
            store.attach_hook(h.clone()).await.unwrap();
            let handed = vec![FanoutHook { id: h.id, url: h.url }];
            let fanout = Fanout { queued: vec![], handed, lease_until };
            let Ingested::Accepted { handed, .. } =
                store.ingest("a", event(&format!("e{n}")), fanout, ignore).await.unwrap()
            else {
                panic!("not accepted")
            };
            ids.push(handed[0].id);
        }
        assert_eq!(store.pending_count().await.unwrap(), 3, "hand-offs in flight are pending");
        let claim = |now| Claim { now, lease_until: 1_000_000, limit: 10, per_hook: 10, hooks: None };
        let claimed = |claimed: Claimed| claimed.due.into_iter().map(|d| d.id).collect::<Vec<_>>();
        assert_eq!(claimed(store.claim(claim(50)).await.unwrap()), [0_i64; 0], "leased hand-offs are not claimed");
        store.release(vec![ids[0]]).await.unwrap();
        assert_eq!(claimed(store.claim(claim(50)).await.unwrap()), [ids[0]], "a released hand-off is");
        assert_eq!(claimed(store.claim(claim(150)).await.unwrap()), [ids[1]], "and one whose lease ran out");
        drop(store);
        store = Store::open(&DatabaseUrl::Sqlite(dir.path().join("relay.db")), Metrics::default()).await.unwrap();
        let after_restart = claimed(store.claim(claim(150)).await.unwrap());
        assert!(after_restart.contains(&ids[2]), "a hand-off of a process that is gone is claimed at once");
    }

    #[tokio::test]
    async fn claims_naming_hooks_take_each_ones_oldest_and_say_what_waits() {
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite(&dir).await;
        let mut hooks = Vec::new();
        for n in ["busy", "retrying", "idle"] {
            let h = Hook { url: format!("https://x/{n}"), ..hook(n)(Arc::from("a")).unwrap() };
            store.attach_hook(h.clone()).await.unwrap();
            hooks.push(FanoutHook { id: h.id, url: h.url });
        }
        for (i, at) in [5, 1, 4, 2, 3].into_iter().enumerate() {
            let event = Event { received_at: at, ..event(&format!("busy{i}")) };
            let fanout = Fanout { queued: vec![hooks[0].clone()], handed: vec![], lease_until: 0 };
            store.ingest("a", event, fanout, ignore).await.unwrap();
        }
        let fanout = Fanout { queued: vec![hooks[1].clone()], handed: vec![], lease_until: 0 };
        store.ingest("a", Event { received_at: 500, ..event("later") }, fanout, ignore).await.unwrap();
        let named = |limit| vec![("busy".to_owned(), limit), ("retrying".to_owned(), 5), ("idle".to_owned(), 5)];
        let claim = |limit| Claim { now: 100, lease_until: 1_000, limit: 10, per_hook: 1, hooks: Some(named(limit)) };
        let claimed = store.claim(claim(3)).await.unwrap();
        let received = claimed.due.iter().map(|d| (d.hook_id.as_str(), d.received_at)).collect::<Vec<_>>();
        assert_eq!(received.len(), 3, "three of the busy hook, none due of the others: {received:?}");
        assert!(received.iter().all(|(h, at)| *h == "busy" && *at <= 3), "its oldest first: {received:?}");
        let order = named(3);
        let next = |hook: &str| claimed.next_due[order.iter().position(|(h, _)| h == hook).unwrap()];
        assert_eq!((next("busy"), next("retrying"), next("idle")), (Some(4), Some(500), None));
        let again = store.claim(claim(3)).await.unwrap();
        assert_eq!(again.due.len(), 2, "leased deliveries are not claimed twice");
    }

    #[test]
    fn unknown_stored_event_types_are_corrupt_data() {
        assert_eq!(stored_event(IMAGE_CREATED).unwrap(), IMAGE_CREATED);
        assert!(matches!(stored_event("image.deleted"), Err(StoreError::Corrupt(_))));
    }
}
