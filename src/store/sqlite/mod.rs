//! The embedded SQLite backend.
//!
//! Writes go to one writer thread that commits them in batches (see `writer`); reads
//! use a second connection (WAL lets it run beside the writer) on the blocking pool.
//!
//! The hot path's statements are written so that SQLite needs no statement journal for them:
//! such a journal copies every page a statement touches before it changes it. SQLite keeps one
//! for a statement that may change several rows *and* may abort halfway (a constraint that
//! fails with `ABORT`). Inserts are single rows of values, and updates say `OR FAIL`, which
//! stops a failing update where it is instead of undoing it: a bulk job that fails rolls its
//! whole batch back anyway.

use std::collections::HashMap;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rusqlite::{Connection as Db, OptionalExtension, Row, params};

mod checkpoint;
mod event_ids;
mod lists;
mod schema;
mod writer;

use super::{
    Attached, Claim, Claimed, Created, DEAD, DELIVERED, Fanout, Ingested, PENDING, Snapshot, SnapshotBuilder,
    StoreError, Transfer, TransferDelivery, Waiting, stored_event, stored_hook_keys, stored_ingest_auth, stored_state,
};
use crate::metrics::Metrics;
use crate::model::{Attempt, AttemptRecord, Connection, DeadLetter, DueDelivery, Event, Hook, SigningSecret};
use checkpoint::Checkpointer;
use event_ids::EventIds;
use schema::MIGRATIONS;
use writer::{Lane, Writer};

/// Most attempt records written in one writer job (about a millisecond of work).
const RECORDS_PER_JOB: usize = 64;

/// A delivery handed off at ingest whose first attempt has not been recorded yet, leased until
/// `lease_until` (SQLite only). It is a state of its own, not a leased pending row, so that it
/// stays out of the pending indexes: a hand-off that succeeds — the common case — then costs
/// no index entries that are written only to be deleted a few milliseconds later.
const IN_FLIGHT: i32 = 3;

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Backend(Arc::new(e))
    }
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        StoreError::Backend(Arc::new(e))
    }
}

/// Handle to an open SQLite store; clones share the writer thread and reader connection.
#[derive(Clone)]
pub struct SqliteStore {
    writer: Writer,
    /// The duplicate check's ids not yet in `event_ids`, used by writer jobs.
    event_ids: EventIds,
    reader: Arc<Mutex<Db>>,
    /// A connection of its own for `/readyz`, so that long reads on `reader` (large event
    /// listings, counts) never make the relay look unready.
    health: Arc<Mutex<Db>>,
    _checkpointer: Arc<Checkpointer>,
}

impl SqliteStore {
    /// Creates the file (owner-only) and its directory if needed, migrates, starts the writer.
    pub(super) async fn open(path: PathBuf, metrics: Metrics) -> Result<Self, StoreError> {
        tokio::task::spawn_blocking(move || Self::open_blocking(&path, metrics))
            .await
            .map_err(|_| StoreError::Closed)?
    }

    fn open_blocking(path: &Path, metrics: Metrics) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        }
        std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
        let mut db = Db::open(path)?;
        // The writer's page cache stays small (8 MiB) on purpose: once a B-tree rebalance has
        // swapped two pages (it parks one at the lock page's number, 1 GiB in), SQLite scans
        // the whole cache at every commit until the file is over 1 GiB. With 64 MiB that scan
        // was 4–5 % of the relay's CPU; the pages a commit touches stay cached either way, and
        // the rest is one read from the OS cache away.
        db.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;
             PRAGMA busy_timeout = 5000; PRAGMA wal_autocheckpoint = 16384; PRAGMA cache_size = -8192;",
        )?;
        migrate(&mut db)?;
        fill_hook_secrets(&db)?;
        // Single instance: a lease still set was held by a process that is gone.
        db.execute("UPDATE deliveries SET lease_until = NULL WHERE state = ?1 AND lease_until IS NOT NULL", [PENDING])?;
        expire_in_flight(&db, i64::MAX)?;
        let reader = Db::open(path)?;
        reader.execute_batch("PRAGMA busy_timeout = 5000; PRAGMA query_only = ON;")?;
        let health = Db::open(path)?;
        health.execute_batch("PRAGMA busy_timeout = 5000; PRAGMA query_only = ON;")?;
        let event_ids = EventIds::load(&db)?;
        let writer = Writer::spawn(
            db,
            vec![lists::chore(&lists::EVENTS), lists::chore(&lists::ATTEMPTS), event_ids.sweep()],
            metrics,
        )?;
        let checkpointer = Checkpointer::spawn(path)?;
        Ok(Self {
            writer,
            event_ids,
            reader: Arc::new(Mutex::new(reader)),
            health: Arc::new(Mutex::new(health)),
            _checkpointer: checkpointer,
        })
    }

    /// A write someone waits on (the hook and operator APIs): it goes ahead of the bulk.
    async fn write<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Db) -> Result<T, StoreError> + Send + 'static,
    {
        self.writer.write(Lane::Api, op).await
    }

    /// A write of the hot path (ingest, claims, records), batched with its like.
    async fn write_bulk<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Db) -> Result<T, StoreError> + Send + 'static,
    {
        self.writer.write(Lane::Bulk, op).await
    }

    async fn read<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Db) -> Result<T, StoreError> + Send + 'static,
    {
        let reader = Arc::clone(&self.reader);
        tokio::task::spawn_blocking(move || {
            let db = reader.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            op(&db)
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }

    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        let health = Arc::clone(&self.health);
        tokio::task::spawn_blocking(move || {
            let db = health.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            Ok(db.query_row("SELECT 1", [], |_| Ok(()))?)
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }

    pub(super) async fn pending_count(&self) -> Result<u64, StoreError> {
        self.read(|db| {
            let count = "SELECT COUNT(*) FROM deliveries WHERE state = ?1";
            let pending: u64 = db.prepare_cached(count)?.query_row([PENDING], |r| r.get(0))?;
            let in_flight: u64 = db.prepare_cached(count)?.query_row([IN_FLIGHT], |r| r.get(0))?;
            Ok(pending + in_flight)
        })
        .await
    }

    pub(super) async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        self.read(|db| {
            let mut stmt = db.prepare(
                "SELECT id, name, api_key_hash, secrets, ingest_rate, created_at, ingest_auth FROM connections",
            )?;
            let connections = stmt
                .query_map([], connection_row)?
                .map(|row| row.map_err(StoreError::from).and_then(|r| r))
                .collect::<Result<Vec<_>, _>>()?;
            let mut snapshot = Snapshot::default();
            let mut builder = SnapshotBuilder::new(connections, |c, hooks| snapshot.connections.push((c, hooks)));
            let mut stmt = db.prepare(
                "SELECT id, connection_id, url, event, template_id, created_at, secrets FROM hooks
                 ORDER BY connection_id, created_at, id",
            )?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let connection_id: String = row.get(1)?;
                builder.add(&connection_id, |shared| hook_row(row, shared))?;
            }
            builder.finish();
            Ok(snapshot)
        })
        .await
    }

    /// Everything `migrate-store` copies out of this store.
    ///
    /// # Errors
    /// The read failed.
    pub async fn export(&self) -> Result<Transfer, StoreError> {
        let (connections, hooks) = self.snapshot().await?.flatten();
        self.read(move |db| {
            let mut stmt = db.prepare(
                "SELECT event_seq, hook_id, connection_id, url, CASE state WHEN ?2 THEN ?3 ELSE state END, attempts,
                        next_attempt_at, last_status, last_error, updated_at FROM deliveries WHERE state != ?1 ORDER BY id",
            )?;
            let deliveries = stmt
                .query_map([DELIVERED, IN_FLIGHT, PENDING], |r| {
                    Ok(TransferDelivery {
                        event_seq: r.get(0)?,
                        hook_id: r.get(1)?,
                        connection_id: r.get(2)?,
                        url: r.get(3)?,
                        state: r.get(4)?,
                        attempts: r.get(5)?,
                        next_attempt_at: r.get(6)?,
                        last_status: r.get(7)?,
                        last_error: r.get(8)?,
                        updated_at: r.get(9)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let mut stmt = db.prepare(
                "SELECT seq, connection_id, id, type, payload, received_at, template_id FROM events
                 WHERE seq IN (SELECT event_seq FROM deliveries WHERE state != ?1) ORDER BY seq",
            )?;
            let events = stmt
                .query_map([DELIVERED], |r| {
                    let event = Event {
                        id: r.get(2)?,
                        event_type: r.get(3)?,
                        payload: Bytes::from(r.get::<_, Vec<u8>>(4)?),
                        received_at: r.get(5)?,
                        template_id: r.get(6)?,
                    };
                    Ok((r.get(0)?, r.get(1)?, event))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Transfer { connections, hooks, events, deliveries })
        })
        .await
    }

    pub(super) async fn connection(&self, id: String) -> Result<Option<(Connection, Vec<Hook>)>, StoreError> {
        self.read(move |db| {
            let connection = db
                .prepare_cached("SELECT id, name, api_key_hash, secrets, ingest_rate, created_at, ingest_auth FROM connections WHERE id = ?1")?
                .query_row([&id], connection_row)
                .optional()?;
            let Some(connection) = connection else { return Ok(None) };
            let mut stmt = db.prepare_cached(
                "SELECT id, connection_id, url, event, template_id, created_at, secrets FROM hooks WHERE connection_id = ?1 ORDER BY created_at, id",
            )?;
            let shared: Arc<str> = id.as_str().into();
            let mut rows = stmt.query([&id])?;
            let mut hooks = Vec::new();
            while let Some(row) = rows.next()? {
                hooks.push(hook_row(row, Arc::clone(&shared))?);
            }
            Ok(Some((connection?, hooks)))
        })
        .await
    }

    pub(super) async fn create_connection(&self, c: Connection) -> Result<Created, StoreError> {
        self.write(move |db| {
            let exists = |sql: &str, value: &dyn rusqlite::ToSql| -> Result<bool, StoreError> {
                Ok(db.prepare_cached(sql)?.exists([value])?)
            };
            if exists("SELECT 1 FROM connections WHERE id = ?1", &c.id)? {
                return Ok(Created::IdTaken);
            }
            if exists("SELECT 1 FROM connections WHERE api_key_hash = ?1", &c.api_key_hash.as_slice())? {
                return Ok(Created::KeyTaken);
            }
            db.execute(
                "INSERT INTO connections (id, name, api_key_hash, secrets, ingest_rate, created_at, ingest_auth)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    c.id,
                    c.name,
                    c.api_key_hash.as_slice(),
                    secrets_json(&c.secrets)?,
                    c.ingest_rate,
                    c.created_at,
                    c.ingest_auth.as_str()
                ],
            )?;
            Ok(Created::Created)
        })
        .await
    }

    pub(super) async fn delete_connection(&self, id: String) -> Result<bool, StoreError> {
        let event_ids = self.event_ids.clone();
        self.write(move |db| {
            lists::forget_hooks_of(db, &id)?;
            let deleted = db.execute("DELETE FROM connections WHERE id = ?1", [&id])? == 1;
            if deleted {
                event_ids.forget_connection(db, &id)?;
            }
            Ok(deleted)
        })
        .await
    }

    pub(super) async fn set_api_key_hash(&self, id: String, hash: [u8; 32]) -> Result<bool, StoreError> {
        self.write(move |db| {
            let n =
                db.execute("UPDATE connections SET api_key_hash = ?2 WHERE id = ?1", params![id, hash.as_slice()])?;
            Ok(n == 1)
        })
        .await
    }

    pub(super) async fn set_secrets(&self, id: String, secrets: Vec<SigningSecret>) -> Result<bool, StoreError> {
        self.write(move |db| {
            let n =
                db.execute("UPDATE connections SET secrets = ?2 WHERE id = ?1", params![id, secrets_json(&secrets)?])?;
            Ok(n == 1)
        })
        .await
    }

    pub(super) async fn set_settings(&self, c: Connection) -> Result<bool, StoreError> {
        self.write(move |db| {
            let n = db.execute(
                "UPDATE connections SET name = ?2, ingest_rate = ?3, ingest_auth = ?4 WHERE id = ?1",
                params![c.id, c.name, c.ingest_rate, c.ingest_auth.as_str()],
            )?;
            Ok(n == 1)
        })
        .await
    }

    pub(super) async fn set_hook_secrets(
        &self,
        connection_id: String,
        hook_id: String,
        secrets: Vec<SigningSecret>,
    ) -> Result<bool, StoreError> {
        self.write(move |db| {
            let n = db.execute(
                "UPDATE hooks SET secrets = ?3 WHERE id = ?1 AND connection_id = ?2",
                params![hook_id, connection_id, secrets_json(&secrets)?],
            )?;
            Ok(n == 1)
        })
        .await
    }

    pub(super) async fn attach_hook(&self, hook: Hook) -> Result<Attached, StoreError> {
        self.write(move |db| {
            let template = hook.template_id.clone().unwrap_or_default();
            let existing = db
                .prepare_cached(
                    "SELECT id, connection_id, url, event, template_id, created_at, secrets FROM hooks
                     WHERE connection_id = ?1 AND url = ?2 AND event = ?3 AND template_id = ?4",
                )?
                .query_row(params![hook.connection_id, hook.url, hook.event, template], |row| {
                    Ok(hook_row(row, Arc::clone(&hook.connection_id)))
                })
                .optional()?
                .transpose()?;
            if let Some(existing) = existing {
                return Ok(Attached::Existing(existing));
            }
            db.prepare_cached(
                "INSERT INTO hooks (id, connection_id, url, event, template_id, created_at, secrets)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                hook.id,
                hook.connection_id,
                hook.url,
                hook.event,
                template,
                hook.created_at,
                secrets_json(&hook.keys.to_stored())?
            ])?;
            Ok(Attached::Created(hook))
        })
        .await
    }

    pub(super) async fn detach_hook(&self, connection_id: String, hook_id: String) -> Result<bool, StoreError> {
        self.write(move |db| {
            let n = db.execute("DELETE FROM hooks WHERE id = ?1 AND connection_id = ?2", [&hook_id, &connection_id])?;
            if n == 1 {
                delete_deliveries_of(db, &hook_id)?;
            }
            Ok(n == 1)
        })
        .await
    }

    pub(super) async fn ingest(
        &self,
        connection_id: String,
        event: Event,
        fanout: Fanout,
        on_commit: impl FnOnce(&mut Ingested) + Send + 'static,
    ) -> Result<Ingested, StoreError> {
        let event_ids = self.event_ids.clone();
        let commit = move |db: &Db| {
            let Some(new_id) = event_ids.check(db, &connection_id, &event.id)? else {
                return Ok(Ingested::Duplicate);
            };
            let inserted = db
                .prepare_cached(
                    "INSERT INTO events (connection_id, id, type, payload, received_at, template_id)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?
                .execute(params![
                    connection_id,
                    event.id,
                    event.event_type,
                    event.payload.as_ref(),
                    event.received_at,
                    event.template_id
                ]);
            match inserted {
                Ok(_) => event_ids.add(new_id),
                Err(e) if is_foreign_key_violation(&e) => return Ok(Ingested::UnknownConnection),
                Err(e) => return Err(e.into()),
            }
            let seq = db.last_insert_rowid();
            // One lookup per delivery: a hook detached since the plan gets none. The insert is
            // a single row of values, not `INSERT … SELECT`, so that SQLite needs no statement
            // journal for it (see the module doc).
            let mut exists = db.prepare_cached("SELECT 1 FROM hooks WHERE id = ?1")?;
            let mut insert = db.prepare_cached(
                "INSERT INTO deliveries
                    (event_seq, hook_id, connection_id, url, state, attempts, next_attempt_at, lease_until, updated_at)
                 VALUES (?1, ?4, ?5, ?7, ?2, 0, ?3, ?6, ?3)",
            )?;
            let mut deliveries = 0;
            let mut handed = Vec::with_capacity(fanout.handed.len());
            let queued = fanout.queued.into_iter().map(|hook| (hook, None));
            for (hook, lease) in queued.chain(fanout.handed.into_iter().map(|hook| (hook, Some(fanout.lease_until)))) {
                if !exists.exists([&hook.id])? {
                    continue;
                }
                let state = if lease.is_some() { IN_FLIGHT } else { PENDING };
                insert.execute(params![seq, state, event.received_at, hook.id, connection_id, lease, hook.url])?;
                deliveries += 1;
                if lease.is_some() {
                    handed.push(DueDelivery {
                        id: db.last_insert_rowid(),
                        connection_id: connection_id.clone(),
                        hook_id: hook.id,
                        url: hook.url,
                        event_id: event.id.clone(),
                        payload: event.payload.clone(),
                        attempts: 0,
                        received_at: event.received_at,
                    });
                }
            }
            Ok(Ingested::Accepted { deliveries, handed })
        };
        self.writer.write_then(Lane::Bulk, commit, on_commit).await
    }

    pub(super) async fn waiting_by_hook(&self, now: i64) -> Result<HashMap<String, Waiting>, StoreError> {
        self.write_bulk(move |db| {
            // Claims name hooks and look only at unleased deliveries, so a lease that ran out
            // (its outcome was never recorded) is taken back here.
            db.prepare_cached(
                "UPDATE OR FAIL deliveries SET lease_until = NULL WHERE state = ?1 AND lease_until <= ?2",
            )?
            .execute(params![PENDING, now])?;
            let mut stmt = db.prepare_cached(
                "SELECT hook_id, COUNT(*), MIN(next_attempt_at) FROM deliveries
                 WHERE state = ?1 AND lease_until IS NULL GROUP BY hook_id",
            )?;
            let rows =
                stmt.query_map([PENDING], |r| Ok((r.get(0)?, Waiting { count: r.get(1)?, due_at: r.get(2)? })))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    pub(super) async fn events(&self, connection_id: String, limit: usize) -> Result<Vec<Event>, StoreError> {
        self.read(move |db| lists::events(db, &connection_id, limit)).await
    }

    pub(super) async fn attempts(&self, hook_id: String, limit: usize) -> Result<Vec<Attempt>, StoreError> {
        self.read(move |db| lists::attempts(db, &hook_id, limit)).await
    }

    pub(super) async fn claim(&self, claim: Claim) -> Result<Claimed, StoreError> {
        self.write_bulk(move |db| {
            let taken_back = expire_in_flight(db, claim.now)?;
            let mut leased = Vec::new();
            let next_due = match &claim.hooks {
                Some(hooks) => claim_hooks(db, &claim, hooks, &mut leased)?,
                None => {
                    leased = claim_any(db, &claim)?;
                    Vec::new()
                }
            };
            let mut event = db.prepare_cached("SELECT id, payload, received_at FROM events WHERE seq = ?1")?;
            let mut due = Vec::with_capacity(leased.len());
            for Leased { id, connection_id, hook_id, url, attempts, event_seq } in leased {
                let (event_id, payload, received_at) =
                    event.query_row([event_seq], |r| Ok((r.get(0)?, r.get::<_, Vec<u8>>(1)?, r.get(2)?)))?;
                due.push(DueDelivery {
                    id,
                    connection_id,
                    hook_id,
                    url,
                    event_id,
                    payload: Bytes::from(payload),
                    attempts,
                    received_at,
                });
            }
            due.sort_by_key(|d| d.id);
            Ok(Claimed { due, next_due, taken_back, ..Claimed::default() })
        })
        .await
    }

    pub(super) async fn next_due(&self, now: i64) -> Result<Option<i64>, StoreError> {
        self.read(move |db| {
            Ok(db.query_row(
                "SELECT MIN(next_attempt_at) FROM deliveries WHERE state = ?1 AND next_attempt_at > ?2",
                params![PENDING, now],
                |r| r.get(0),
            )?)
        })
        .await
    }

    /// Records in jobs of at most [`RECORDS_PER_JOB`], so that an API write waiting behind one
    /// waits for a short job; a record already applied (its attempt number is not above the
    /// stored one) is skipped, so retrying a batch that partly committed adds nothing twice.
    pub(super) async fn record(&self, records: Arc<[AttemptRecord]>) -> Result<(), StoreError> {
        let mut replies = Vec::new();
        for start in (0..records.len()).step_by(RECORDS_PER_JOB) {
            let records = Arc::clone(&records);
            let end = (start + RECORDS_PER_JOB).min(records.len());
            replies.push(self.writer.enqueue(Lane::Bulk, move |db| record(db, &records[start..end])).await?);
        }
        for reply in replies {
            reply.await.map_err(|_| StoreError::Closed)??;
        }
        Ok(())
    }

    pub(super) async fn release(&self, ids: Vec<i64>) -> Result<(), StoreError> {
        self.write_bulk(move |db| {
            let mut stmt = db.prepare_cached(
                "UPDATE OR FAIL deliveries SET state = ?2, lease_until = NULL WHERE id = ?1 AND state IN (?2, ?3)",
            )?;
            for id in ids {
                stmt.execute(params![id, PENDING, IN_FLIGHT])?;
            }
            Ok(())
        })
        .await
    }

    pub(super) async fn dead_letters(
        &self,
        connection_id: Option<String>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        self.read(move |db| {
            let mut stmt = db.prepare_cached(
                "SELECT d.id, d.connection_id, e.id, d.hook_id, d.attempts, d.last_status, d.last_error, d.updated_at
                 FROM deliveries d JOIN events e ON e.seq = d.event_seq
                 WHERE d.state = ?1 AND (?2 IS NULL OR d.connection_id = ?2) ORDER BY d.id DESC LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![DEAD, connection_id, limit as i64], |r| {
                Ok(DeadLetter {
                    id: r.get(0)?,
                    connection_id: r.get(1)?,
                    event_id: r.get(2)?,
                    hook_id: r.get(3)?,
                    attempts: r.get(4)?,
                    last_status: r.get(5)?,
                    last_error: r.get(6)?,
                    updated_at: r.get(7)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    pub(super) async fn retry_dead_letter(&self, id: i64, now: i64) -> Result<Option<String>, StoreError> {
        self.write(move |db| {
            let hook = db
                .query_row(
                    "UPDATE deliveries SET state = ?2, attempts = 0, next_attempt_at = ?3, lease_until = NULL,
                            updated_at = ?3
                     WHERE id = ?1 AND state = ?4 RETURNING hook_id",
                    params![id, PENDING, now, DEAD],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(hook)
        })
        .await
    }
}

/// A delivery a claim just leased, before its event is read.
struct Leased {
    id: i64,
    connection_id: String,
    hook_id: String,
    url: String,
    attempts: u32,
    event_seq: i64,
}

impl Leased {
    const COLUMNS: &str = "id, connection_id, hook_id, url, attempts, event_seq";

    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: r.get(0)?,
            connection_id: r.get(1)?,
            hook_id: r.get(2)?,
            url: r.get(3)?,
            attempts: r.get(4)?,
            event_seq: r.get(5)?,
        })
    }
}

/// Leases due deliveries of any hook: at most `per_hook` of each, oldest first, none of a hook
/// with leased deliveries. It passes over every due delivery; the workers name hooks instead
/// ([`claim_hooks`]), and this stays for callers that cannot.
fn claim_any(db: &Db, claim: &Claim) -> Result<Vec<Leased>, StoreError> {
    let mut stmt = db.prepare_cached(&format!(
        "UPDATE OR FAIL deliveries SET lease_until = ?1 WHERE id IN (
            SELECT id FROM (
                SELECT d.id, d.next_attempt_at,
                       ROW_NUMBER() OVER (PARTITION BY d.hook_id ORDER BY d.next_attempt_at, d.id) AS rn
                FROM deliveries d
                WHERE d.state = ?5 AND d.next_attempt_at <= ?2
                  AND (d.lease_until IS NULL OR d.lease_until <= ?2)
                  AND NOT EXISTS (SELECT 1 FROM deliveries x
                                  WHERE x.hook_id = d.hook_id AND x.state = ?5 AND x.lease_until > ?2)
            ) WHERE rn <= ?3 ORDER BY next_attempt_at, id LIMIT ?4)
         RETURNING {}",
        Leased::COLUMNS
    ))?;
    let params = params![claim.lease_until, claim.now, claim.per_hook as i64, claim.limit as i64, PENDING];
    Ok(stmt.query_map(params, Leased::from_row)?.collect::<Result<_, _>>()?)
}

/// Leases (into `leased`) the due, unleased deliveries of the named hooks, oldest first and at
/// most the number given for each, with one index range per hook; and reports when each hook's
/// next waiting delivery is due.
fn claim_hooks(
    db: &Db,
    claim: &Claim,
    hooks: &[(String, usize)],
    leased: &mut Vec<Leased>,
) -> Result<Vec<Option<i64>>, StoreError> {
    let mut lease = db.prepare_cached(&format!(
        "UPDATE OR FAIL deliveries SET lease_until = ?1 WHERE id IN (
            SELECT id FROM deliveries
            WHERE hook_id = ?2 AND state = ?3 AND lease_until IS NULL AND next_attempt_at <= ?4
            ORDER BY next_attempt_at, id LIMIT ?5)
         RETURNING {}",
        Leased::COLUMNS
    ))?;
    let mut next = db.prepare_cached(
        "SELECT MIN(next_attempt_at) FROM deliveries WHERE hook_id = ?1 AND state = ?2 AND lease_until IS NULL",
    )?;
    let mut next_due = Vec::with_capacity(hooks.len());
    for (hook, limit) in hooks {
        let room = claim.limit.saturating_sub(leased.len()).min(*limit);
        if room > 0 {
            let params = params![claim.lease_until, hook, PENDING, claim.now, room as i64];
            for row in lease.query_map(params, Leased::from_row)? {
                leased.push(row?);
            }
        }
        next_due.push(next.query_row(params![hook, PENDING], |r| r.get(0))?);
    }
    Ok(next_due)
}

fn record(db: &Db, records: &[AttemptRecord]) -> Result<(), StoreError> {
    let mut update = db.prepare_cached(
        "UPDATE OR FAIL deliveries SET attempts = ?2, state = ?3, next_attempt_at = ?4, lease_until = NULL,
                last_status = ?5, last_error = ?6, updated_at = ?7 WHERE id = ?1 AND attempts < ?2",
    )?;
    let mut insert = db.prepare_cached(
        "INSERT INTO attempts (delivery_id, hook_id, event_id, attempt, status_code, error, duration_ms, at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    for rec in records {
        let a = &rec.attempt;
        let (state, next_at) = stored_state(rec.next, a.at);
        let updated =
            update.execute(params![rec.delivery_id, a.attempt, state, next_at, a.status_code, a.error, a.at])?;
        if updated == 1 {
            insert.execute(params![
                rec.delivery_id,
                rec.hook_id,
                a.event_id,
                a.attempt,
                a.status_code,
                a.error,
                a.duration_ms as i64,
                a.at
            ])?;
        }
    }
    Ok(())
}

/// Deletes every delivery of a detached hook, and with them their attempts. Deliveries carry no
/// index on their hook alone (it would cost every ingest a page), so they are found by state:
/// those attempted through the hook's attempts, those waiting through the pending index, and
/// those in flight through theirs (a few hundred at most).
fn delete_deliveries_of(db: &Db, hook_id: &str) -> Result<(), StoreError> {
    lists::delete_attempted(db, hook_id)?;
    db.execute("DELETE FROM deliveries WHERE hook_id = ?1 AND state = ?2", params![hook_id, PENDING])?;
    // A literal state, so that the partial index is known to apply when the plan is made.
    db.execute(
        &format!("DELETE FROM deliveries INDEXED BY deliveries_in_flight WHERE state = {IN_FLIGHT} AND hook_id = ?1"),
        [hook_id],
    )?;
    Ok(())
}

/// Hands back to the claim queue every hand-off whose lease ran out before its attempt was
/// recorded (the record kept failing, or the process that made it is gone); returns their
/// hooks and due times.
fn expire_in_flight(db: &Db, now: i64) -> Result<Vec<(String, i64)>, StoreError> {
    let mut stmt = db.prepare_cached(
        "UPDATE OR FAIL deliveries SET state = ?1, lease_until = NULL WHERE state = ?2 AND lease_until <= ?3
         RETURNING hook_id, next_attempt_at",
    )?;
    let rows = stmt.query_map(params![PENDING, IN_FLIGHT, now], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn migrate(db: &mut Db) -> Result<(), StoreError> {
    let version: usize = db.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > MIGRATIONS.len() {
        return Err(StoreError::Corrupt(format!(
            "schema version {version} is newer than this build knows ({})",
            MIGRATIONS.len()
        )));
    }
    if version == MIGRATIONS.len() {
        return Ok(());
    }
    db.execute_batch("PRAGMA foreign_keys = OFF")?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = db.transaction()?;
        tx.execute_batch(sql)?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))?;
        tx.commit()?;
    }
    // Reads every reference in the file: once, after migrating, never at an ordinary start.
    let broken: Option<String> = db.query_row("PRAGMA foreign_key_check", [], |r| r.get(0)).optional()?;
    if let Some(table) = broken {
        return Err(StoreError::Corrupt(format!("a row of {table} refers to one that does not exist")));
    }
    db.execute_batch("PRAGMA foreign_keys = ON")?;
    Ok(())
}

/// Gives every hook without a signing key (one attached before hooks had keys) a key of its own.
fn fill_hook_secrets(db: &Db) -> Result<(), StoreError> {
    let keyless: Vec<String> = db
        .prepare("SELECT id FROM hooks WHERE secrets = '[]'")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut fill = db.prepare("UPDATE hooks SET secrets = ?2 WHERE id = ?1")?;
    for id in keyless {
        fill.execute(params![id, secrets_json(&super::fresh_hook_keys())?])?;
    }
    Ok(())
}

fn is_foreign_key_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY)
}

fn secrets_json(secrets: &[SigningSecret]) -> Result<String, StoreError> {
    serde_json::to_string(secrets).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn connection_row(r: &Row<'_>) -> rusqlite::Result<Result<Connection, StoreError>> {
    let id: String = r.get(0)?;
    let hash: Vec<u8> = r.get(2)?;
    let secrets: String = r.get(3)?;
    let ingest_auth: String = r.get(6)?;
    let decoded = (|| {
        let api_key_hash = hash
            .try_into()
            .map_err(|_| StoreError::Corrupt(format!("connection {id}: API key hash is not 32 bytes")))?;
        let secrets = serde_json::from_str(&secrets)
            .map_err(|e| StoreError::Corrupt(format!("connection {id}: secrets: {e}")))?;
        Ok((api_key_hash, secrets, stored_ingest_auth(&ingest_auth)?))
    })();
    Ok(match decoded {
        Ok((api_key_hash, secrets, ingest_auth)) => Ok(Connection {
            name: r.get(1)?,
            api_key_hash,
            secrets,
            ingest_rate: r.get(4)?,
            ingest_auth,
            created_at: r.get(5)?,
            id,
        }),
        Err(e) => Err(e),
    })
}

/// A hook row, owned by the connection whose shared id is `connection_id`.
fn hook_row(r: &Row<'_>, connection_id: Arc<str>) -> Result<Hook, StoreError> {
    let event: String = r.get(3)?;
    let template: String = r.get(4)?;
    let secrets: String = r.get(6)?;
    Ok(Hook {
        id: r.get(0)?,
        connection_id,
        url: r.get(2)?,
        event: stored_event(&event)?,
        template_id: (!template.is_empty()).then(|| template.into()),
        keys: stored_hook_keys(&secrets)?,
        created_at: r.get(5)?,
    })
}

#[cfg(test)]
mod tests;
