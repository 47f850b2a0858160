//! Durable state behind one interface: connections, hooks, events, deliveries, attempts and
//! dead letters. [`Store`] picks a backend by URL and dispatches to it; every backend has the
//! same method set, so callers never know which one runs. Imports `model`, `config` and
//! `metrics` only.
//!
//! # Layout
//!
//! - `types`: what callers pass in and get back (claims, fan-outs, outcomes, errors).
//! - `rows`: how both backends encode states and values in their rows.
//! - `snapshot`: the registry's view of the store, read connection by connection.
//! - `transfer`: what `migrate-store` copies from SQLite to PostgreSQL.
//! - `sqlite/`, `postgres/`: the backends.

mod postgres;
mod rows;
mod snapshot;
mod sqlite;
#[cfg(test)]
mod test_records;
mod transfer;
mod types;

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::DatabaseUrl;
use crate::metrics::Metrics;
use crate::model::{
    Attempt, AttemptRecord, Connection, DeadLetter, Event, EventDelivery, HOUR_MS, Hook, HookHealth, HookKeys, Hooks,
    HourCount, Overview, SigningSecret, Streak,
};

pub use postgres::{ChangeFeed, PostgresStore};
use rows::{
    DEAD, DELIVERED, PENDING, fresh_hook_keys, state_name, stored_event, stored_hook_keys, stored_ingest_auth,
    stored_state,
};
use snapshot::{Snapshot, SnapshotBuilder};
pub use sqlite::SqliteStore;

/// Writes a consistent copy of the SQLite store at `source` to the new file `target`, while a
/// relay may be serving from it; returns the copy's size in bytes.
///
/// # Errors
/// `source` does not exist, `target` does, or the copy failed.
pub fn backup_sqlite(source: &std::path::Path, target: &std::path::Path) -> Result<u64, StoreError> {
    sqlite::backup(source, target)
}
pub use transfer::{Transfer, TransferDelivery};
use types::Loads;
pub use types::{
    Attached, Claim, Created, Fanout, FanoutHook, Ingested, LeasedClaim, OwnedClaim, Pruned, StoreError, StoreStats,
    Waiting,
};

/// The store handle; clones share the same backend.
#[derive(Clone)]
pub enum Store {
    /// Embedded SQLite.
    Sqlite(SqliteStore),
    /// PostgreSQL shared by several instances.
    Postgres(PostgresStore),
}

/// The two ways deliveries are scheduled, one per backend; the dispatcher speaks the one its
/// store uses (`delivery/mod.rs` says how). Both lease deliveries until a deadline and take
/// back what is not recorded by then; they differ in who may claim which hook:
///
/// - **Owning** (SQLite): one process owns every hook. Its workers know which hooks have
///   deliveries waiting and how many of each are in flight, so a claim names hooks and says how
///   many of each to take, and costs a lookup per named hook however large the backlog is.
/// - **Leasing** (PostgreSQL): instances share the store and lease whole hooks, one owner per
///   hook at a time. A claim finds the due hooks itself, leases each together with at most
///   `per_hook` of its deliveries, and keeps which of them are in flight in memory, so the
///   owner alone decides a hook's pace.
pub enum Scheduling<'a> {
    /// One process owns every hook.
    Owning(&'a SqliteStore),
    /// Instances lease hooks from the shared store.
    Leasing(&'a PostgresStore),
}

macro_rules! dispatch {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {
        match $self {
            Store::Sqlite(s) => s.$method($($arg),*).await,
            Store::Postgres(s) => s.$method($($arg),*).await,
        }
    };
}

/// Checks a PostgreSQL URL's settings (its `sslmode`, the `sslrootcert` it names) before the
/// relay starts.
///
/// # Errors
/// One line saying what is wrong.
pub fn check_postgres_url(url: &str) -> Result<(), String> {
    postgres::Target::parse(url).map(drop)
}

impl Store {
    /// The scheduling protocol of this store.
    pub fn scheduling(&self) -> Scheduling<'_> {
        match self {
            Store::Sqlite(s) => Scheduling::Owning(s),
            Store::Postgres(s) => Scheduling::Leasing(s),
        }
    }

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

    /// What `/metrics` shows of the store: pending deliveries, the oldest one's age, the size.
    ///
    /// # Errors
    /// The read failed.
    pub async fn stats(&self) -> Result<StoreStats, StoreError> {
        dispatch!(self.stats())
    }

    /// One step of a retention pass: deletes up to `limit` events received before `cutoff` (ms)
    /// with `seq` above `after`, whose deliveries are all finished, with those deliveries and
    /// their attempts. Small on purpose: ingest and delivery writes go between two steps.
    ///
    /// # Errors
    /// The write failed; nothing of this step was deleted.
    pub async fn prune(&self, cutoff: i64, after: i64, limit: usize) -> Result<Pruned, StoreError> {
        dispatch!(self.prune(cutoff, after, limit))
    }

    /// One step of removing what deleted connections and detached hooks left behind: `Some(rows
    /// deleted)` while there is more, `None` when nothing is left. A delete or detach answers at
    /// once, having made what it removes invisible, and leaves the rows to these steps, so that
    /// one large backlog is never one long write (`removals.rs` of each backend).
    ///
    /// # Errors
    /// The write failed; the step is tried again later.
    pub async fn reap(&self, limit: usize) -> Result<Option<u64>, StoreError> {
        dispatch!(self.reap(limit))
    }

    /// Makes the space pruned rows took reusable: PostgreSQL vacuums the pruned tables; SQLite
    /// reuses freed pages by itself.
    ///
    /// # Errors
    /// The vacuum failed (autovacuum does the same later).
    pub async fn reclaim(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(_) => Ok(()),
            Store::Postgres(s) => s.vacuum().await,
        }
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

    /// Each of a connection's hooks' stored health, by hook id.
    ///
    /// # Errors
    /// The read failed.
    pub async fn hook_health(&self, connection_id: &str) -> Result<HashMap<String, HookHealth>, StoreError> {
        dispatch!(self.hook_health(connection_id.to_owned()))
    }

    /// The streaks of the hooks that have failures or a pause (and are not disabled), for the
    /// dispatcher to start from.
    ///
    /// # Errors
    /// The read failed.
    pub async fn unwell_hooks(&self) -> Result<Vec<(String, Streak)>, StoreError> {
        dispatch!(self.unwell_hooks())
    }

    /// Disables a connection's hook at `at` (ms) and dead-letters its waiting deliveries but
    /// `except` (the delivery whose failed attempt disabled it, recorded with its own outcome).
    /// `Some(dead-lettered)`, or `None` when there is no such hook or it was disabled already.
    ///
    /// # Errors
    /// The write failed: nothing changed.
    pub async fn disable_hook(
        &self,
        connection_id: &str,
        hook_id: &str,
        at: i64,
        except: i64,
    ) -> Result<Option<u64>, StoreError> {
        dispatch!(self.disable_hook(connection_id.to_owned(), hook_id.to_owned(), at, except))
    }

    /// Makes a connection's hook active with a clean record (no failures, no pause, enabled);
    /// `false` when there is no such hook.
    ///
    /// # Errors
    /// The write failed.
    pub async fn enable_hook(&self, connection_id: &str, hook_id: &str) -> Result<bool, StoreError> {
        dispatch!(self.enable_hook(connection_id.to_owned(), hook_id.to_owned()))
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

    /// Schedules a dead letter — or, with `delivered_too`, any finished delivery — again from
    /// attempt 1; its hook, or `None` if there is no such delivery (of `connection`, when one is
    /// given: a tenant replays only its own).
    ///
    /// # Errors
    /// The write failed.
    pub async fn replay(
        &self,
        id: i64,
        now: i64,
        connection: Option<&str>,
        delivered_too: bool,
    ) -> Result<Option<String>, StoreError> {
        dispatch!(self.replay(id, now, connection.map(str::to_owned), delivered_too))
    }

    /// Per connection its pending deliveries, dead letters and events received in the 24 hours
    /// to `now` (ms), and the `limit` hooks that fail most: read through indexes of unfinished
    /// and dead deliveries and of unwell hooks and from the hourly counts, so it costs the
    /// backlog, not the history.
    ///
    /// # Errors
    /// The read failed.
    pub async fn overview(&self, limit: usize, now: i64) -> Result<Overview, StoreError> {
        let since_hour = now.div_euclid(HOUR_MS) - 23;
        dispatch!(self.overview(limit, since_hour))
    }

    /// Adds to the events received per connection and hour; counts of connections that are
    /// gone are dropped.
    ///
    /// # Errors
    /// The write failed: nothing was added.
    pub async fn count_events(&self, counts: Vec<HourCount>) -> Result<(), StoreError> {
        dispatch!(self.count_events(counts))
    }

    /// Forgets the hourly event counts before `hour`.
    ///
    /// # Errors
    /// The write failed.
    pub async fn forget_event_counts(&self, before_hour: i64) -> Result<u64, StoreError> {
        dispatch!(self.forget_event_counts(before_hour))
    }

    /// The deliveries of a connection's event, or `None` when it has no such event.
    ///
    /// # Errors
    /// The read failed.
    pub async fn event_deliveries(
        &self,
        connection_id: &str,
        event_id: &str,
    ) -> Result<Option<Vec<EventDelivery>>, StoreError> {
        dispatch!(self.event_deliveries(connection_id.to_owned(), event_id.to_owned()))
    }
}
