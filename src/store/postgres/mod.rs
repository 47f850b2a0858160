//! The PostgreSQL backend, for several relay instances sharing one database.
//!
//! Pooled connections (deadpool); every write is one transaction. A claim takes (or renews) the
//! lease of hooks with due work in `hook_leases` and, in the same statement, their due
//! deliveries; which of those are in flight the instance keeps in memory (`in_flight`).
//! So each hook is paced by exactly one instance, and a dead instance's hooks are taken over,
//! with their deliveries, once their leases expire. While this instance holds a hook's lease and
//! its last claim left nothing of it due, ingest hands the hook's new deliveries straight to it
//! (`ingest`), so most deliveries under steady load cost no claim. Registry changes are announced with
//! `NOTIFY` in the same transaction as the write.
//!
//! Claims and attempt records are planned with each call's values (unnamed statements), not
//! cached: a cached generic plan, made while `deliveries` was small, went on scanning the whole
//! table for every batch as it grew, until autovacuum's next `ANALYZE` replaced it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;
use tokio_postgres::types::ToSql;
use tokio_postgres_rustls::MakeRustlsConnect;

/// The database's clock, in ms since the epoch, as SQL: every time a lease or a due time is
/// compared against or set from, so instances whose clocks disagree still agree on them. (`now()`
/// is the statement's start, the same everywhere in one statement.)
macro_rules! db_now {
    () => {
        "(EXTRACT(EPOCH FROM now()) * 1000)::BIGINT"
    };
}

/// [`HANDED`] as SQL text, for statements that must match the partial index over it.
macro_rules! handed {
    () => {
        "3"
    };
}

/// A delivery handed off at ingest whose attempt is not recorded yet. It is stored with the
/// lease it was handed under (`lease_until`) and outside the indexes of waiting deliveries, so
/// that the common path — handed, attempted once, recorded — never enters them. It is waiting
/// (`PENDING`) again when given back unsent, or when its lease has run out unrecorded (the
/// instance died, or could not write the record): every claim puts those back first. Only the
/// instance holding the hook's lease attempts its deliveries, so a put-back delivery is never
/// attempted by two instances at once.
const HANDED: i32 = 3;

mod event_counts;
mod health;
mod in_flight;
mod ingest;
mod registry;
mod removals;
mod retention;
mod schema;
mod tls;

use super::{
    Claim, DEAD, DELIVERED, Fanout, Ingested, LeasedClaim, PENDING, StoreError, Waiting, state_name, stored_state,
};
use crate::metrics::Metrics;
use crate::model::{Attempt, AttemptRecord, DeadLetter, DueDelivery, Event, EventDelivery, Streak, random_token};
use in_flight::InFlight;
use ingest::IngestQueue;
use schema::{CHANGES_CHANNEL, MIGRATION_LOCK, MIGRATIONS};
pub(crate) use tls::Target;

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        StoreError::Backend(Arc::new(e))
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    /// A connection that could not be made says why itself ("error performing TLS handshake:
    /// …"), without the pool's wrapping.
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => StoreError::Backend(Arc::new(e)),
            e => StoreError::Backend(Arc::new(e)),
        }
    }
}

/// Handle to a PostgreSQL store; clones share the pool.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    ingests: IngestQueue,
    config: Arc<tokio_postgres::Config>,
    tls: MakeRustlsConnect,
    /// This instance's name in `hook_leases`.
    owner: Arc<str>,
    /// The deliveries this instance has claimed and not yet settled.
    in_flight: Arc<InFlight>,
    /// Held for the whole of a claim: [`InFlight`] tracks one running claim at a time.
    claiming: Arc<tokio::sync::Mutex<()>>,
    metrics: Metrics,
}

/// Announcements of changed connections, from `LISTEN`.
pub struct ChangeFeed {
    changes: mpsc::UnboundedReceiver<String>,
    task: tokio::task::JoinHandle<()>,
    /// The listening session; dropping it ends the LISTEN.
    _client: tokio_postgres::Client,
}

impl ChangeFeed {
    /// The id of the next connection that changed; `None` when the listening connection broke.
    pub async fn next(&mut self) -> Option<String> {
        self.changes.recv().await
    }
}

impl Drop for ChangeFeed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PostgresStore {
    /// Connects the pool and migrates (once, even when instances start together).
    pub(super) async fn open(url: &str, metrics: Metrics) -> Result<Self, StoreError> {
        let Target { mut config, tls } = Target::parse(url).map_err(StoreError::Settings)?;
        bounded(&mut config);
        let manager = Manager::from_config(
            pooled(&config),
            tls.clone(),
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = Pool::builder(manager)
            .max_size(16)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Settings(e.to_string()))?;
        let in_flight: Arc<InFlight> = Arc::default();
        let ingests = IngestQueue::start(pool.clone(), metrics.clone(), Arc::clone(&in_flight));
        let owner = Arc::from(random_token("instance_", 8));
        let store =
            Self { pool, ingests, config: Arc::new(config), tls, owner, in_flight, claiming: Arc::default(), metrics };
        store.migrate().await?;
        store.fill_hook_secrets().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS relay_schema (version INTEGER NOT NULL)").await?;
        let version: i32 = match tx.query_opt("SELECT version FROM relay_schema", &[]).await? {
            Some(row) => row.get(0),
            None => {
                tx.execute("INSERT INTO relay_schema (version) VALUES (0)", &[]).await?;
                0
            }
        };
        let known = i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX);
        if version > known {
            return Err(StoreError::Corrupt(format!(
                "schema version {version} is newer than this build knows ({known})"
            )));
        }
        for sql in &MIGRATIONS[version as usize..] {
            tx.batch_execute(sql).await?;
        }
        tx.execute("UPDATE relay_schema SET version = $1", &[&known]).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Opens a dedicated connection that `LISTEN`s for registry changes.
    pub(super) async fn listen(&self) -> Result<ChangeFeed, StoreError> {
        let (client, mut connection) = self.config.connect(self.tls.clone()).await?;
        let (tx, changes) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Some(Ok(message)) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                if let AsyncMessage::Notification(n) = message
                    && tx.send(n.payload().to_owned()).is_err()
                {
                    return;
                }
            }
        });
        client.batch_execute(&format!("LISTEN {CHANGES_CHANNEL}")).await?;
        Ok(ChangeFeed { changes, task, _client: client })
    }

    /// Commits a write transaction (each is its own commit here: PostgreSQL groups the flushes).
    async fn commit(&self, tx: deadpool_postgres::Transaction<'_>) -> Result<(), StoreError> {
        tx.commit().await?;
        self.metrics.commit_batch(1);
        Ok(())
    }

    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        self.pool.get().await?.execute("SELECT 1", &[]).await?;
        Ok(())
    }

    /// Batched with concurrent ingests (see `ingest.rs`).
    pub(super) async fn ingest(
        &self,
        connection_id: String,
        event: Event,
        fanout: Fanout,
        on_commit: impl FnOnce(&mut Ingested) + Send + 'static,
    ) -> Result<Ingested, StoreError> {
        self.ingests.ingest(connection_id, event, fanout, on_commit).await
    }

    pub(super) async fn events(&self, connection_id: String, limit: usize) -> Result<Vec<Event>, StoreError> {
        let rows = self
            .pool
            .get()
            .await?
            .query(
                "SELECT id, type, payload, received_at, template_id FROM events
                 WHERE connection_id = $1 ORDER BY seq DESC LIMIT $2",
                &[&connection_id, &(limit as i64)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| Event {
                id: r.get(0),
                event_type: r.get(1),
                payload: Bytes::from(r.get::<_, Vec<u8>>(2)),
                received_at: r.get(3),
                template_id: r.get(4),
            })
            .collect())
    }

    pub(super) async fn attempts(&self, hook_id: String, limit: usize) -> Result<Vec<Attempt>, StoreError> {
        let rows = self
            .pool
            .get()
            .await?
            .query(
                "SELECT event_id, attempt, status_code, error, duration_ms, at FROM (
                    (SELECT event_id, attempt, status_code, error, duration_ms, at FROM attempts
                     WHERE hook_id = $1 ORDER BY id DESC LIMIT $2)
                    UNION ALL
                    (SELECT e.id, 1, d.last_status, NULL, d.sole_attempt_ms, d.updated_at
                     FROM (SELECT event_seq, last_status, sole_attempt_ms, updated_at FROM deliveries
                           WHERE hook_id = $1 AND sole_attempt_ms IS NOT NULL ORDER BY id DESC LIMIT $2) d
                     JOIN events e ON e.seq = d.event_seq)
                 ) a ORDER BY at DESC LIMIT $2",
                &[&hook_id, &(limit as i64)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| Attempt {
                event_id: r.get(0),
                attempt: r.get::<_, i32>(1) as u32,
                status_code: r.get::<_, Option<i32>>(2).map(|s| s as u16),
                error: r.get(3),
                duration_ms: r.get::<_, i64>(4) as u64,
                at: r.get(5),
            })
            .collect())
    }

    /// The leasing claim: a hook's deliveries (at most `per_hook`, none of a hook with an
    /// attempt under way here) are claimed together with the hook's lease, in one statement
    /// that writes only `hook_leases` and compares against the database's lease rows, so two
    /// instances never hold one hook. What is in flight is this instance's to know
    /// (`InFlight`), so no delivery row is rewritten to lease it. Each hook comes back with
    /// whether the claim took all of it that was due, which clears it for hand-offs at ingest
    /// for a while. Claims of one instance run one at a time (`claiming`).
    ///
    /// Hook health is read in the same statement: a hook stored as paused or disabled is not
    /// claimed, nor one in `paused` (this instance paused it and the record saying so is on
    /// its way); a hook probing after a pause gives one delivery. Each delivery comes back with
    /// its hook's stored streak.
    ///
    /// # Errors
    /// The statement failed: nothing was leased.
    pub async fn claim(&self, claim: Claim, per_hook: usize, paused: Vec<String>) -> Result<LeasedClaim, StoreError> {
        let _one_at_a_time = self.claiming.lock().await;
        let (limit, per_hook) = (claim.limit as i64, per_hook as i64);
        let owner: &str = &self.owner;
        let mut excluded = self.in_flight.excluded(claim.now);
        excluded.hooks.extend(paused);
        let client = self.pool.get().await?;
        let rows = client
            .query(
                concat!(
                    // Each hook with waiting deliveries once, with its earliest due time: a
                    // skip scan of the per-hook index, one probe per such hook however long
                    // its backlog.
                    "WITH RECURSIVE waiting AS (
                    (SELECT hook_id, next_attempt_at FROM deliveries WHERE state = $4
                     ORDER BY hook_id, next_attempt_at LIMIT 1)
                    UNION ALL
                    SELECT next.hook_id, next.next_attempt_at FROM waiting w CROSS JOIN LATERAL (
                        SELECT hook_id, next_attempt_at FROM deliveries WHERE state = $4 AND hook_id > w.hook_id
                        ORDER BY hook_id, next_attempt_at LIMIT 1
                    ) next
                 ), lapsed AS (
                    UPDATE deliveries SET state = $4 WHERE state = ",
                    handed!(),
                    " AND lease_until <= ",
                    db_now!(),
                    "
                 ), leased AS (
                    INSERT INTO hook_leases (hook_id, owner, until)
                    SELECT w.hook_id, $1, ",
                    db_now!(),
                    " + $2 FROM waiting w
                     WHERE w.next_attempt_at <= ",
                    db_now!(),
                    " AND w.hook_id <> ALL($6)
                       AND NOT EXISTS (SELECT 1 FROM hooks h WHERE h.id = w.hook_id
                                       AND (h.removing OR h.disabled_at IS NOT NULL OR h.paused_until > $3))
                     ORDER BY w.next_attempt_at LIMIT $5
                    ON CONFLICT (hook_id) DO UPDATE SET owner = EXCLUDED.owner, until = EXCLUDED.until
                     WHERE hook_leases.owner = EXCLUDED.owner OR hook_leases.until <= ",
                    db_now!(),
                    "
                    RETURNING hook_id
                 ), due AS (
                    SELECT d.id, d.connection_id, d.hook_id, d.url, d.attempts, d.event_seq, d.next_attempt_at,
                           ROW_NUMBER() OVER (PARTITION BY d.hook_id ORDER BY d.next_attempt_at, d.id) AS rn,
                           COUNT(*) OVER (PARTITION BY d.hook_id) AS of_hook,
                           h.consecutive_failures, h.failing_since, h.paused_until, h.last_success_at
                    FROM leased l JOIN hooks h ON h.id = l.hook_id CROSS JOIN LATERAL (
                        SELECT * FROM deliveries d
                        WHERE d.hook_id = l.hook_id AND d.state = $4 AND d.next_attempt_at <= ",
                    db_now!(),
                    " AND d.id <> ALL($8)
                        ORDER BY d.next_attempt_at, d.id LIMIT $7::BIGINT + 1
                    ) d
                 )
                 SELECT due.id, due.connection_id, due.hook_id, due.url, due.attempts, e.id, e.payload, e.received_at,
                        due.of_hook, due.consecutive_failures, due.failing_since, due.paused_until, due.last_success_at
                 FROM due JOIN events e ON e.seq = due.event_seq
                 WHERE due.rn <= CASE WHEN due.paused_until IS NULL THEN $7::BIGINT ELSE 1 END
                 ORDER BY due.next_attempt_at, due.id LIMIT $5",
                ),
                &[
                    &owner,
                    &(claim.lease_until - claim.now),
                    &claim.now,
                    &PENDING,
                    &limit,
                    &excluded.hooks,
                    &per_hook,
                    &excluded.deliveries,
                ],
            )
            .await?;
        // Per hook: how many of its due deliveries the claim took, and how many were due (read
        // up to one more than it may take: more than that says the same, not all were taken).
        let mut taken: HashMap<&str, (i64, i64)> = HashMap::new();
        for r in &rows {
            let of_hook = taken.entry(r.get(2)).or_insert((0, r.get(8)));
            of_hook.0 += 1;
        }
        let leased_hooks = taken.into_iter().map(|(hook, (took, due))| (hook.to_owned(), took == due)).collect();
        let mut due: Vec<DueDelivery> = rows
            .iter()
            .map(|r| DueDelivery {
                id: r.get(0),
                connection_id: r.get(1),
                hook_id: r.get(2),
                url: r.get(3),
                attempts: r.get::<_, i32>(4) as u32,
                event_id: r.get(5),
                payload: Bytes::from(r.get::<_, Vec<u8>>(6)),
                received_at: r.get(7),
                lease_until: claim.lease_until,
                streak: Some(Streak {
                    failures: r.get::<_, i32>(9).unsigned_abs(),
                    failing_since: r.get(10),
                    paused_until: r.get(11),
                    last_success_at: r.get(12),
                }),
            })
            .collect();
        self.in_flight.claimed(&mut due, claim.lease_until);
        due.sort_by_key(|d| d.id);
        Ok(LeasedClaim { due, leased_hooks })
    }

    /// Due times are the database's: the wait until the next is read from it and added to
    /// this instance's `now`.
    pub(super) async fn next_due(&self, now: i64) -> Result<Option<i64>, StoreError> {
        let row = self
            .pool
            .get()
            .await?
            .query_one(
                concat!(
                    "SELECT MIN(next_attempt_at) - ",
                    db_now!(),
                    " FROM deliveries WHERE state = $1 AND next_attempt_at > ",
                    db_now!()
                ),
                &[&PENDING],
            )
            .await?;
        Ok(row.get::<_, Option<i64>>(0).map(|wait| now.saturating_add(wait)))
    }

    /// One statement for the whole batch (columns as arrays): the same round trips however many
    /// attempts finished, where a statement per record made a fan-out wait on thousands.
    pub(super) async fn record(&self, records: Arc<[AttemptRecord]>) -> Result<(), StoreError> {
        let mut columns = RecordColumns::default();
        for rec in records.iter() {
            columns.push(rec);
        }
        // The pause an attempt led to is stored no later than the attempt.
        self.store_streaks(&records).await?;
        let c = &columns;
        // A delivery its hook's disabling dead-lettered meanwhile stays a dead letter.
        let params: [&(dyn ToSql + Sync); 12] = [
            &c.id,
            &c.attempt,
            &c.state,
            &c.next_at,
            &c.status,
            &c.error,
            &c.at,
            &c.hook_id,
            &c.event_id,
            &c.duration,
            &DEAD,
            &DELIVERED,
        ];
        self.pool
            .get()
            .await?
            .execute(
                concat!(
                    "WITH r AS (
                    SELECT * FROM unnest($1::bigint[], $2::int[], $3::int[], $4::bigint[], $5::int[], $6::text[],
                                         $7::bigint[], $8::text[], $9::text[], $10::bigint[])
                        AS r(id, attempt, state, next_at, status, error, at, hook_id, event_id, duration)
                 ), updated AS (
                    UPDATE deliveries d SET attempts = r.attempt, state = r.state,
                           next_attempt_at = ",
                    db_now!(),
                    " + (r.next_at - r.at),
                           last_status = r.status, last_error = r.error, updated_at = r.at,
                           sole_attempt_ms = CASE WHEN r.attempt = 1 AND r.state = $12 THEN r.duration END
                    FROM r WHERE d.id = r.id AND d.attempts < r.attempt AND d.state <> $11
                    RETURNING r.*
                 )
                 INSERT INTO attempts (delivery_id, hook_id, event_id, attempt, status_code, error, duration_ms, at)
                 SELECT id, hook_id, event_id, attempt, status, error, duration, at FROM updated
                 WHERE NOT (attempt = 1 AND state = $12)",
                ),
                &params,
            )
            .await?;
        self.in_flight.settled(records.iter().map(|r| r.delivery_id));
        self.metrics.commit_batch(1);
        Ok(())
    }

    pub(super) async fn waiting_by_hook(&self, now: i64) -> Result<HashMap<String, Waiting>, StoreError> {
        let in_flight = self.in_flight.ids(now);
        let rows = self
            .pool
            .get()
            .await?
            .query(
                "SELECT hook_id, COUNT(*), MIN(next_attempt_at) FROM deliveries
                 WHERE state = $1 AND id <> ALL($2) GROUP BY hook_id",
                &[&PENDING, &in_flight],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), Waiting { count: r.get::<_, i64>(1).unsigned_abs(), due_at: r.get(2) }))
            .collect())
    }

    /// The attempt of delivery `id` is over and its record on its way: the hook may be claimed
    /// again before the record is written, so records can wait to share a commit without
    /// holding the hook back; the delivery itself stays leased until recorded.
    pub fn attempted(&self, id: i64) {
        self.in_flight.attempted(id);
    }

    /// Deletes this instance's hook leases but those of hooks with a delivery still in flight
    /// here; returns how many were given back.
    pub(super) async fn give_back_hooks(&self) -> Result<u64, StoreError> {
        let (owner, keep): (&str, Vec<String>) = (&self.owner, self.in_flight.hooks());
        let client = self.pool.get().await?;
        Ok(client.execute("DELETE FROM hook_leases WHERE owner = $1 AND hook_id <> ALL($2)", &[&owner, &keep]).await?)
    }

    /// The leases live in this instance's memory; only deliveries handed off at ingest are
    /// stored in flight and are put back to waiting.
    pub(super) async fn release(&self, ids: Vec<i64>) -> Result<(), StoreError> {
        self.in_flight.settled(ids.iter().copied());
        let client = self.pool.get().await?;
        client
            .execute(
                concat!("UPDATE deliveries SET state = $2 WHERE id = ANY($1) AND state = ", handed!()),
                &[&ids, &PENDING],
            )
            .await?;
        Ok(())
    }

    pub(super) async fn dead_letters(
        &self,
        connection_id: Option<String>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let rows = self
            .pool
            .get()
            .await?
            .query(
                "SELECT d.id, d.connection_id, e.id, d.hook_id, d.attempts, d.last_status, d.last_error, d.updated_at
                 FROM deliveries d JOIN events e ON e.seq = d.event_seq
                 WHERE d.state = $1 AND ($2::TEXT IS NULL OR d.connection_id = $2)
                   AND NOT EXISTS (SELECT 1 FROM hooks h WHERE h.id = d.hook_id AND h.removing)
                 ORDER BY d.id DESC LIMIT $3",
                &[&DEAD, &connection_id, &(limit as i64)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| DeadLetter {
                id: r.get(0),
                connection_id: r.get(1),
                event_id: r.get(2),
                hook_id: r.get(3),
                attempts: r.get::<_, i32>(4) as u32,
                last_status: r.get::<_, Option<i32>>(5).map(|s| s as u16),
                last_error: r.get(6),
                updated_at: r.get(7),
            })
            .collect())
    }

    pub(super) async fn event_deliveries(
        &self,
        connection_id: String,
        event_id: String,
    ) -> Result<Option<Vec<EventDelivery>>, StoreError> {
        let client = self.pool.get().await?;
        let Some(event) = client
            .query_opt("SELECT seq FROM events WHERE connection_id = $1 AND id = $2", &[&connection_id, &event_id])
            .await?
        else {
            return Ok(None);
        };
        let seq: i64 = event.get(0);
        let rows = client
            .query(
                "SELECT id, hook_id, state, attempts, last_status, last_error, updated_at FROM deliveries
                 WHERE event_seq = $1 AND NOT EXISTS (SELECT 1 FROM hooks h WHERE h.id = deliveries.hook_id AND h.removing)
                 ORDER BY id",
                &[&seq],
            )
            .await?;
        Ok(Some(
            rows.iter()
                .map(|r| EventDelivery {
                    id: r.get(0),
                    hook_id: r.get(1),
                    state: state_name(r.get(2)),
                    attempts: r.get::<_, i32>(3).unsigned_abs(),
                    last_status: r.get::<_, Option<i32>>(4).map(|s| s as u16),
                    last_error: r.get(5),
                    updated_at: r.get(6),
                })
                .collect(),
        ))
    }

    pub(super) async fn replay(
        &self,
        id: i64,
        now: i64,
        connection: Option<String>,
        delivered_too: bool,
    ) -> Result<Option<String>, StoreError> {
        let row = self
            .pool
            .get()
            .await?
            .query_opt(
                concat!(
                    // A first attempt kept in the row becomes an attempt row before the row
                    // starts over.
                    "WITH replayed AS (
                        SELECT id, hook_id, event_seq, last_status, sole_attempt_ms, updated_at FROM deliveries
                        WHERE id = $1 AND (state = $4 OR ($6 AND state = $7))
                          AND NOT EXISTS (SELECT 1 FROM hooks h WHERE h.id = deliveries.hook_id AND h.removing)
                          AND ($5::TEXT IS NULL OR connection_id = $5)
                        FOR UPDATE
                     ), kept AS (
                        INSERT INTO attempts (delivery_id, hook_id, event_id, attempt, status_code, error, duration_ms, at)
                        SELECT r.id, r.hook_id, e.id, 1, r.last_status, NULL, r.sole_attempt_ms, r.updated_at
                        FROM replayed r JOIN events e ON e.seq = r.event_seq WHERE r.sole_attempt_ms IS NOT NULL
                     )
                     UPDATE deliveries SET state = $2, attempts = 0, sole_attempt_ms = NULL, next_attempt_at = ",
                    db_now!(),
                    ", updated_at = $3
                     WHERE id IN (SELECT id FROM replayed)
                     RETURNING hook_id"
                ),
                &[&id, &PENDING, &now, &DEAD, &connection, &delivered_too, &DELIVERED],
            )
            .await?;
        Ok(row.map(|r| r.get(0)))
    }
}

/// How long a request waits for a pooled connection before it fails (503): with the database
/// gone, every request fails this fast instead of queueing behind the pool.
const POOL_WAIT: Duration = Duration::from_secs(5);
/// How long opening a connection (TCP, TLS, authentication) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest any statement may run on the server, so that a stuck one (a lock held by a
/// hung session, a runaway plan) frees its connection; the relay's own statements take
/// milliseconds, and `VACUUM` lifts it for itself.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Connections that notice a dead peer: a connect timeout, TCP keep-alives, and a TCP user
/// timeout (unacknowledged data for this long closes the connection, so a statement sent into a
/// network partition fails instead of waiting for ever).
fn bounded(config: &mut tokio_postgres::Config) {
    config
        .connect_timeout(CONNECT_TIMEOUT)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(15))
        .keepalives_interval(Duration::from_secs(5))
        .keepalives_retries(3)
        .tcp_user_timeout(Duration::from_secs(20));
}

/// The pool's sessions plan without bitmap scans. `deliveries` is a queue: every delivered row
/// leaves dead entries in its indexes until vacuum, and a bitmap scan walks them all on every
/// claim, while a plain index scan marks those it finds dead so the next scans skip them (under
/// load a claim's bitmap scans walked hundreds of dead entries per live row). No query of the
/// relay needs a bitmap scan. Options from the URL are kept.
fn pooled(config: &tokio_postgres::Config) -> tokio_postgres::Config {
    let mut pooled = config.clone();
    let options = format!(
        "{} -c enable_bitmapscan=off -c statement_timeout={}",
        config.get_options().unwrap_or_default(),
        STATEMENT_TIMEOUT.as_millis()
    );
    pooled.options(options.trim_start());
    pooled
}

/// Attempt records as the columns `record` sends, one array per column.
#[derive(Default)]
struct RecordColumns<'a> {
    id: Vec<i64>,
    attempt: Vec<i32>,
    state: Vec<i32>,
    next_at: Vec<i64>,
    status: Vec<Option<i32>>,
    error: Vec<Option<&'a str>>,
    at: Vec<i64>,
    hook_id: Vec<&'a str>,
    event_id: Vec<&'a str>,
    duration: Vec<i64>,
}

impl<'a> RecordColumns<'a> {
    fn push(&mut self, rec: &'a AttemptRecord) {
        let a = &rec.attempt;
        let (state, next_at) = stored_state(rec.next, a.at);
        self.id.push(rec.delivery_id);
        self.attempt.push(i32::try_from(a.attempt).unwrap_or(i32::MAX));
        self.state.push(state);
        self.next_at.push(next_at);
        self.status.push(a.status_code.map(i32::from));
        self.error.push(a.error.as_deref());
        self.at.push(a.at);
        self.hook_id.push(&rec.hook_id);
        self.event_id.push(&a.event_id);
        self.duration.push(i64::try_from(a.duration_ms).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooled_sessions_keep_the_urls_options_plan_without_bitmap_scans_and_bound_statements() {
        let url: tokio_postgres::Config = "postgres://u@h/db?options=-csearch_path%3Ds".parse().unwrap();
        let bounded = "-c enable_bitmapscan=off -c statement_timeout=30000";
        assert_eq!(pooled(&url).get_options(), Some(format!("-csearch_path=s {bounded}").as_str()));
        let bare: tokio_postgres::Config = "postgres://u@h/db".parse().unwrap();
        assert_eq!(pooled(&bare).get_options(), Some(bounded));
    }

    #[test]
    fn the_handed_state_is_the_same_number_in_sql_as_in_rust() {
        assert_eq!(handed!(), HANDED.to_string());
        assert!(schema::MIGRATIONS.iter().any(|m| m.contains(concat!("WHERE state = ", handed!()))));
    }
}
