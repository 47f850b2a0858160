//! What the store's callers pass in and get back: outcomes of writes, an ingest's fan-out, a
//! claim and what it leased, and the store's error.

use std::sync::Arc;

use crate::model::{ConnectionLoad, DueDelivery, Hook};

/// An error and its sources, `: `-separated; a source whose text is already there (many errors
/// repeat their source's) is not repeated.
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        next = cause.source();
    }
    text
}

/// A failure of the store; ingest answers it with 503 and the admin/hook APIs with 503 too.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed an operation (full disk, IO error, corruption…). Shown
    /// with its causes, so that a log line says what the database said; it is not given as a
    /// `source` too, or reports that walk sources would say it twice.
    #[error("database error: {}", causes(&**.0))]
    Backend(Arc<dyn std::error::Error + Send + Sync>),
    /// The store was shut down.
    #[error("the store is closed")]
    Closed,
    /// Stored data could not be decoded.
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    /// A write failed unexpectedly (a bug, not the database): its transaction was rolled back.
    #[error("the write was abandoned")]
    Abandoned,
    /// The store's settings cannot be used (a PostgreSQL URL's TLS settings).
    #[error("{0}")]
    Settings(String),
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

/// The terms every claim has, whichever scheduling protocol makes it
/// ([`Scheduling`](super::Scheduling)).
#[derive(Debug, Clone, Copy)]
pub struct Claim {
    /// Now (ms): deliveries due at or before it are eligible.
    pub now: i64,
    /// Until when the claimed deliveries are leased to this instance (ms).
    pub lease_until: i64,
    /// At most this many deliveries in all.
    pub limit: usize,
}

/// What an owning claim (SQLite) leased, and what it saw of the named hooks.
#[derive(Debug, Default)]
pub struct OwnedClaim {
    /// The deliveries now leased to this process, oldest first.
    pub due: Vec<DueDelivery>,
    /// For each hook the claim named, in the order named: when its earliest delivery still
    /// waiting is due (ms), or `None` if nothing of it waits.
    pub next_due: Vec<Option<i64>>,
    /// Hand-offs whose lease ran out (their process stopped before recording them), back in
    /// the queue: their hook and when they are due.
    pub taken_back: Vec<(String, i64)>,
}

/// What a leasing claim (PostgreSQL) leased.
#[derive(Debug, Default)]
pub struct LeasedClaim {
    /// The deliveries now leased to this instance, oldest first.
    pub due: Vec<DueDelivery>,
    /// Each hook the claim leased deliveries of, with whether it took every delivery of the
    /// hook then due; the hook is leased to this instance until the claim's `lease_until`. A
    /// drained hook's next deliveries may be handed off at ingest for a while.
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

/// What one pruning step removed, and where the next step of the pass starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Events deleted.
    pub events: u64,
    /// Finished deliveries deleted with them (delivered, dead-lettered).
    pub deliveries: u64,
    /// Attempts deleted with those deliveries.
    pub attempts: u64,
    /// The event `seq` the next step starts after; `None`: the pass has reached the events
    /// inside the window (or the end), and is over.
    pub next: Option<i64>,
}

impl Pruned {
    /// Rows deleted in all.
    pub fn rows(&self) -> u64 {
        self.events + self.deliveries + self.attempts
    }
}

/// What `/metrics` shows of the store, read now and then off the request path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Deliveries neither delivered nor dead-lettered.
    pub pending: u64,
    /// When the event of the oldest such delivery was received (ms), if there is one.
    pub oldest_pending_at: Option<i64>,
    /// Bytes the store takes on disk (SQLite: the file and its WAL; PostgreSQL: the relay's
    /// tables with their indexes and TOAST).
    pub size_bytes: u64,
    /// Hooks paused at the moment.
    pub paused_hooks: u64,
    /// Hooks disabled.
    pub disabled_hooks: u64,
}

/// The overview's per-connection figures as its statements read them, each connection once.
#[derive(Default)]
pub(super) struct Loads(std::collections::BTreeMap<String, ConnectionLoad>);

impl Loads {
    /// The figures of connection `id`, zero until read.
    pub(super) fn of(&mut self, id: String) -> &mut ConnectionLoad {
        match self.0.entry(id) {
            std::collections::btree_map::Entry::Occupied(load) => load.into_mut(),
            std::collections::btree_map::Entry::Vacant(slot) => {
                let id = slot.key().clone();
                slot.insert(ConnectionLoad { id, ..ConnectionLoad::default() })
            }
        }
    }

    /// The connections by id.
    pub(super) fn into_vec(self) -> Vec<ConnectionLoad> {
        self.0.into_values().collect()
    }
}
