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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rusqlite::{Connection as Db, OptionalExtension, params};

mod backup;
mod checkpoint;
mod claims;
mod event_counts;
mod event_ids;
mod health;
mod lists;
mod registry;
mod removals;
mod retention;
mod rows;
mod schema;
mod writer;

use super::{
    Claim, DEAD, DELIVERED, Fanout, Ingested, OwnedClaim, PENDING, Pruned, StoreError, StoreStats, Waiting, state_name,
};
use crate::metrics::Metrics;
use crate::model::{Attempt, AttemptRecord, DeadLetter, DueDelivery, Event, EventDelivery};
pub(super) use backup::backup;
use checkpoint::Checkpointer;
use claims::{Leased, claim_hooks, expire_in_flight, record};
use event_ids::EventIds;
use rows::is_foreign_key_violation;
use schema::{fill_hook_secrets, migrate};
use writer::{Lane, Writer};

/// Most attempt records written in one writer job (about a millisecond of work).
const RECORDS_PER_JOB: usize = 64;

/// A delivery handed off at ingest whose first attempt has not been recorded yet, leased until
/// `lease_until` (SQLite only). It is a state of its own, not a leased pending row, so that it
/// stays out of the pending indexes: a hand-off that succeeds — the common case — then costs
/// no index entries that are written only to be deleted a few milliseconds later.
const IN_FLIGHT: i32 = 3;

/// Statements the writer keeps prepared: the hot path's (ingest, claims, records, commits), the
/// chores' and the retention steps', with room to spare, so that none of them is parsed again.
const WRITER_STATEMENTS: usize = 64;

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
    /// The database file (its size is a metric; `-wal` next to it).
    path: Arc<Path>,
    /// Whether a removal may be queued (`removals.rs`): set by deletes, cleared by the reaper.
    removals_queued: Arc<AtomicBool>,
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
        // the whole cache at every commit until the file is over 1 GiB, which with a large cache
        // shows in the relay's CPU; the pages a commit touches stay cached either way, and the
        // rest is one read from the OS cache away.
        db.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;
             PRAGMA busy_timeout = 5000; PRAGMA wal_autocheckpoint = 16384; PRAGMA cache_size = -8192;",
        )?;
        db.set_prepared_statement_cache_capacity(WRITER_STATEMENTS);
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
        let removals_queued = Arc::new(AtomicBool::new(removals::queued(&db)?));
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
            path: Arc::from(path),
            removals_queued,
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

    /// Ready when the file reads and a commit can happen: the writer runs, and its last commit
    /// succeeded — or, after one failed (a full disk, an I/O error), a small write commits now.
    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        if self.writer.stopped() {
            return Err(StoreError::Closed);
        }
        let health = Arc::clone(&self.health);
        tokio::task::spawn_blocking(move || {
            let db = health.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            Ok::<_, StoreError>(db.query_row("SELECT 1", [], |_| Ok(()))?)
        })
        .await
        .map_err(|_| StoreError::Closed)??;
        if self.writer.failing() {
            // It commits only if the disk takes a page (`write_probe` in `schema.rs`).
            let now = crate::model::now_ms();
            self.write(move |db| Ok(db.execute("UPDATE write_probe SET at = ?1", [now]).map(drop)?)).await?;
        }
        Ok(())
    }

    pub(super) async fn stats(&self) -> Result<StoreStats, StoreError> {
        let path = Arc::clone(&self.path);
        self.read(move |db| {
            let count = "SELECT COUNT(*), MIN(event_seq) FROM deliveries WHERE state = ?1";
            let mut pending = 0;
            let mut oldest_seq: Option<i64> = None;
            for state in [PENDING, IN_FLIGHT] {
                let (n, seq): (u64, Option<i64>) =
                    db.prepare_cached(count)?.query_row([state], |r| Ok((r.get(0)?, r.get(1)?)))?;
                pending += n;
                oldest_seq = oldest_seq.into_iter().chain(seq).min();
            }
            let oldest_pending_at = match oldest_seq {
                Some(seq) => {
                    db.query_row("SELECT received_at FROM events WHERE seq = ?1", [seq], |r| r.get(0)).optional()?
                }
                None => None,
            };
            let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
            let mut wal = path.as_os_str().to_owned();
            wal.push("-wal");
            let size_bytes = size(&path) + size(Path::new(&wal));
            let (paused_hooks, disabled_hooks) = Self::unwell_counts(db)?;
            Ok(StoreStats { pending, oldest_pending_at, size_bytes, paused_hooks, disabled_hooks })
        })
        .await
    }

    /// One step of the queued removals, batched with the hot path's writes; `None` when none is
    /// queued (then no write is made).
    pub(super) async fn reap(&self, limit: usize) -> Result<Option<u64>, StoreError> {
        if !self.removals_queued.load(Ordering::Relaxed) {
            return Ok(None);
        }
        // Cleared on the writer thread right after the commit, in commit order with the deletes
        // that set it: a delete committed after this step's read sets it again afterwards.
        let queued = Arc::clone(&self.removals_queued);
        let cleared = move |step: &mut removals::Reaped| {
            if step.done {
                queued.store(false, Ordering::Relaxed);
            }
        };
        let step = self.writer.write_then(Lane::Bulk, move |db| removals::reap(db, limit), cleared).await?;
        Ok((!step.done).then_some(step.rows))
    }

    /// One pruning step (see `retention.rs`), batched with the hot path's writes.
    pub(super) async fn prune(&self, cutoff: i64, after: i64, limit: usize) -> Result<Pruned, StoreError> {
        self.write_bulk(move |db| retention::prune(db, cutoff, after, limit)).await
    }

    /// Queues a write that panics on the writer thread: the tests of what follows use it. Not in
    /// release builds.
    #[cfg(debug_assertions)]
    #[doc(hidden)]
    pub async fn write_that_panics(&self) -> Result<(), StoreError> {
        self.write_bulk(|_| -> Result<(), StoreError> { panic!("a writer job panicked (test)") }).await
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
                        lease_until: fanout.lease_until,
                        streak: None,
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

    /// The owning claim: this process owns every hook, so its workers name the hooks they know
    /// to have deliveries due, each with how many of it to take; the claim leases those (one
    /// index range per hook, however large the backlog), reports when each named hook's next
    /// waiting delivery is due, and first takes back hand-offs whose lease ran out (a process
    /// that stopped before recording them).
    ///
    /// # Errors
    /// The write failed: nothing was leased.
    pub async fn claim(&self, claim: Claim, hooks: Vec<(String, usize)>) -> Result<OwnedClaim, StoreError> {
        self.write_bulk(move |db| {
            let taken_back = expire_in_flight(db, claim.now)?;
            let mut leased = Vec::new();
            let next_due = claim_hooks(db, &claim, &hooks, &mut leased)?;
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
                    lease_until: claim.lease_until,
                    streak: None,
                });
            }
            due.sort_by_key(|d| d.id);
            Ok(OwnedClaim { due, next_due, taken_back })
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
                 WHERE d.state = ?1 AND (?2 IS NULL OR d.connection_id = ?2)
                   AND EXISTS (SELECT 1 FROM hooks h WHERE h.id = d.hook_id)
                 ORDER BY d.id DESC LIMIT ?3",
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

    pub(super) async fn event_deliveries(
        &self,
        connection_id: String,
        event_id: String,
    ) -> Result<Option<Vec<EventDelivery>>, StoreError> {
        self.read(move |db| {
            let Some(seq) = db
                .prepare_cached("SELECT seq FROM events WHERE connection_id = ?1 AND id = ?2")?
                .query_row(params![connection_id, event_id], |r| r.get::<_, i64>(0))
                .optional()?
            else {
                return Ok(None);
            };
            let mut stmt = db.prepare_cached(
                "SELECT id, hook_id, state, attempts, last_status, last_error, updated_at FROM deliveries
                 WHERE event_seq = ?1 AND EXISTS (SELECT 1 FROM hooks h WHERE h.id = deliveries.hook_id) ORDER BY id",
            )?;
            let rows = stmt.query_map([seq], |r| {
                Ok(EventDelivery {
                    id: r.get(0)?,
                    hook_id: r.get(1)?,
                    state: state_name(r.get(2)?),
                    attempts: r.get(3)?,
                    last_status: r.get(4)?,
                    last_error: r.get(5)?,
                    updated_at: r.get(6)?,
                })
            })?;
            Ok(Some(rows.collect::<Result<_, _>>()?))
        })
        .await
    }

    pub(super) async fn replay(
        &self,
        id: i64,
        now: i64,
        connection: Option<String>,
        delivered_too: bool,
    ) -> Result<Option<String>, StoreError> {
        self.write(move |db| {
            let hook = db
                .query_row(
                    "UPDATE deliveries SET state = ?2, attempts = 0, next_attempt_at = ?3, lease_until = NULL,
                            updated_at = ?3
                     WHERE id = ?1 AND (state = ?4 OR (?6 AND state = ?7))
                       AND EXISTS (SELECT 1 FROM hooks h WHERE h.id = deliveries.hook_id)
                       AND (?5 IS NULL OR connection_id = ?5)
                     RETURNING hook_id",
                    params![id, PENDING, now, DEAD, connection, delivered_too, DELIVERED],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(hook)
        })
        .await
    }
}

#[cfg(test)]
mod tests;
