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
use std::str::FromStr;
use std::sync::Arc;

use bytes::Bytes;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::mpsc;
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, NoTls, Row};

mod in_flight;
mod ingest;
mod schema;

use super::{
    Attached, Claim, Claimed, Created, DEAD, Fanout, Ingested, PENDING, SnapshotBuilder, StoreError, Transfer, Waiting,
    stored_event, stored_hook_keys, stored_ingest_auth, stored_state,
};
use crate::metrics::Metrics;
use crate::model::{
    Attempt, AttemptRecord, Connection, DeadLetter, DueDelivery, Event, Hook, Hooks, SigningSecret, random_token,
};
use in_flight::InFlight;
use ingest::IngestQueue;
use schema::{CHANGES_CHANNEL, MIGRATION_LOCK, MIGRATIONS};

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        StoreError::Backend(Arc::new(e))
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        StoreError::Backend(Arc::new(e))
    }
}

/// Handle to a PostgreSQL store; clones share the pool.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    ingests: IngestQueue,
    config: Arc<tokio_postgres::Config>,
    /// This instance's name in `hook_leases`.
    owner: Arc<str>,
    /// The deliveries this instance has claimed and not yet settled.
    in_flight: Arc<InFlight>,
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
        let config = tokio_postgres::Config::from_str(url)?;
        let manager =
            Manager::from_config(pooled(&config), NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager).max_size(16).build().map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let in_flight: Arc<InFlight> = Arc::default();
        let ingests = IngestQueue::start(pool.clone(), metrics.clone(), Arc::clone(&in_flight));
        let owner = Arc::from(random_token("instance_", 8));
        let store = Self { pool, ingests, config: Arc::new(config), owner, in_flight, metrics };
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
        let (client, mut connection) = self.config.connect(NoTls).await?;
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

    /// Copies `transfer` in, in one transaction; rows already present (same ids) are kept, so
    /// running it twice is harmless. Returns how many deliveries were added.
    ///
    /// # Errors
    /// The write failed; nothing was copied.
    pub async fn import(&self, transfer: Transfer) -> Result<u64, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        for c in &transfer.connections {
            insert_connection(&tx, c).await?;
        }
        for h in &transfer.hooks {
            let template = h.template_id.clone().unwrap_or_default();
            tx.execute(
                "INSERT INTO hooks (id, connection_id, url, event, template_id, created_at, secrets)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
                &[
                    &h.id,
                    &&*h.connection_id,
                    &h.url,
                    &h.event,
                    &template,
                    &h.created_at,
                    &secrets_json(&h.keys.to_stored())?,
                ],
            )
            .await?;
        }
        let mut seqs = std::collections::HashMap::new();
        for (source_seq, connection_id, e) in &transfer.events {
            let row = tx
                .query_one(
                    "INSERT INTO events (connection_id, id, type, payload, received_at, template_id)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (connection_id, id) DO UPDATE SET id = EXCLUDED.id RETURNING seq, xmax = 0",
                    &[connection_id, &e.id, &e.event_type, &e.payload.as_ref(), &e.received_at, &e.template_id],
                )
                .await?;
            let (seq, new): (i64, bool) = (row.get(0), row.get(1));
            seqs.insert(*source_seq, (seq, new));
        }
        let mut added = 0;
        for d in &transfer.deliveries {
            let Some(&(seq, true)) = seqs.get(&d.event_seq) else { continue };
            let attempts = i32::try_from(d.attempts).unwrap_or(i32::MAX);
            let status = d.last_status.map(i32::from);
            added += tx
                .execute(
                    "INSERT INTO deliveries (event_seq, hook_id, connection_id, url, state, attempts, next_attempt_at,
                                             last_status, last_error, updated_at)
                     SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 WHERE EXISTS (SELECT 1 FROM hooks WHERE id = $2)",
                    &[
                        &seq,
                        &d.hook_id,
                        &d.connection_id,
                        &d.url,
                        &d.state,
                        &attempts,
                        &d.next_attempt_at,
                        &status,
                        &d.last_error,
                        &d.updated_at,
                    ],
                )
                .await?;
        }
        for c in &transfer.connections {
            notify(&tx, &c.id).await?;
        }
        self.commit(tx).await?;
        Ok(added)
    }

    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        self.pool.get().await?.execute("SELECT 1", &[]).await?;
        Ok(())
    }

    pub(super) async fn pending_count(&self) -> Result<u64, StoreError> {
        let row =
            self.pool.get().await?.query_one("SELECT COUNT(*) FROM deliveries WHERE state = $1", &[&PENDING]).await?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    /// The whole registry, read in one snapshot of the database. Hooks come through a portal a
    /// page at a time: read as one answer, a million of them held every row's buffer at once,
    /// which raised the relay's peak memory at start from 495 to 862 MB.
    pub(super) async fn each_connection(&self, each: impl FnMut(Connection, Hooks) + Send) -> Result<(), StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let rows = tx.query(CONNECTION_COLUMNS, &[]).await?;
        let connections = rows.iter().map(connection_row).collect::<Result<Vec<_>, _>>()?;
        drop(rows);
        let mut builder = SnapshotBuilder::new(connections, each);
        let hooks = tx.bind(&format!("{HOOK_COLUMNS} ORDER BY connection_id, created_at, id"), &[]).await?;
        loop {
            let page = tx.query_portal(&hooks, SNAPSHOT_PAGE).await?;
            for row in &page {
                builder.add(row.get(1), |shared| hook_row(row, shared))?;
            }
            if page.len() < usize::try_from(SNAPSHOT_PAGE).unwrap_or(usize::MAX) {
                break;
            }
        }
        builder.finish();
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn connection(&self, id: String) -> Result<Option<(Connection, Vec<Hook>)>, StoreError> {
        let client = self.pool.get().await?;
        let Some(row) = client.query_opt(&format!("{CONNECTION_COLUMNS} WHERE id = $1"), &[&id]).await? else {
            return Ok(None);
        };
        let hooks =
            client.query(&format!("{HOOK_COLUMNS} WHERE connection_id = $1 ORDER BY created_at, id"), &[&id]).await?;
        let shared: Arc<str> = id.as_str().into();
        let hooks = hooks.iter().map(|row| hook_row(row, Arc::clone(&shared))).collect::<Result<_, _>>()?;
        Ok(Some((connection_row(&row)?, hooks)))
    }

    pub(super) async fn create_connection(&self, c: Connection) -> Result<Created, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let inserted = insert_connection(&tx, &c).await?;
        if inserted == 0 {
            let id_taken = tx.query_opt("SELECT 1 FROM connections WHERE id = $1", &[&c.id]).await?.is_some();
            return Ok(if id_taken { Created::IdTaken } else { Created::KeyTaken });
        }
        notify(&tx, &c.id).await?;
        self.commit(tx).await?;
        Ok(Created::Created)
    }

    pub(super) async fn delete_connection(&self, id: String) -> Result<bool, StoreError> {
        self.change(&id, "DELETE FROM connections WHERE id = $1", &[&id]).await
    }

    pub(super) async fn set_api_key_hash(&self, id: String, hash: [u8; 32]) -> Result<bool, StoreError> {
        self.change(&id, "UPDATE connections SET api_key_hash = $2 WHERE id = $1", &[&id, &hash.as_slice()]).await
    }

    pub(super) async fn set_secrets(&self, id: String, secrets: Vec<SigningSecret>) -> Result<bool, StoreError> {
        let json = secrets_json(&secrets)?;
        self.change(&id, "UPDATE connections SET secrets = $2 WHERE id = $1", &[&id, &json]).await
    }

    pub(super) async fn set_settings(&self, c: Connection) -> Result<bool, StoreError> {
        let rate = c.ingest_rate.map(|r| i32::try_from(r).unwrap_or(i32::MAX));
        self.change(
            &c.id,
            "UPDATE connections SET name = $2, ingest_rate = $3, ingest_auth = $4 WHERE id = $1",
            &[&c.id, &c.name, &rate, &c.ingest_auth.as_str()],
        )
        .await
    }

    pub(super) async fn set_hook_secrets(
        &self,
        connection_id: String,
        hook_id: String,
        secrets: Vec<SigningSecret>,
    ) -> Result<bool, StoreError> {
        let json = secrets_json(&secrets)?;
        self.change(
            &connection_id,
            "UPDATE hooks SET secrets = $3 WHERE id = $1 AND connection_id = $2",
            &[&hook_id, &connection_id, &json],
        )
        .await
    }

    /// Gives every hook without a signing key (one attached before hooks had keys) a key of its
    /// own, in one statement (32 random bytes from two random UUIDs, PostgreSQL 13's built-in
    /// source), and announces each changed connection.
    async fn fill_hook_secrets(&self) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        let filled = client
            .query(
                r#"WITH filled AS (
                    UPDATE hooks SET secrets = '[{"secret":"whsec_' || encode(decode(
                        replace(gen_random_uuid()::text, '-', '') || replace(gen_random_uuid()::text, '-', ''), 'hex'),
                        'base64') || '","expires_at":null}]'
                    WHERE secrets = '[]' RETURNING connection_id
                 )
                 SELECT DISTINCT connection_id FROM filled"#,
                &[],
            )
            .await?;
        for row in filled {
            let connection_id: String = row.get(0);
            client.execute("SELECT pg_notify($1, $2)", &[&CHANGES_CHANNEL, &connection_id]).await?;
        }
        Ok(())
    }

    /// Runs one statement that changes a connection's registry entry and, in the same statement,
    /// announces the change when it changed a row: one round trip and one commit. As a
    /// transaction of four statements (begin, the change, the announcement, commit) a write
    /// waited on four round trips, each behind the ingest load for a core: with a million hooks
    /// under 300 events/s, attach p99 was 9–18 ms, and about 6 ms in most runs this way.
    async fn change(&self, connection_id: &str, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<bool, StoreError> {
        let announced = format!(
            "WITH changed AS ({sql} RETURNING 1) SELECT COUNT(pg_notify(${}, ${})) FROM changed",
            params.len() + 1,
            params.len() + 2
        );
        let mut params = params.to_vec();
        params.extend([&CHANGES_CHANNEL as &(dyn ToSql + Sync), &connection_id]);
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(&announced).await?;
        let changed: i64 = client.query_one(&statement, &params).await?.get(0);
        self.metrics.commit_batch(1);
        Ok(changed == 1)
    }

    pub(super) async fn attach_hook(&self, hook: Hook) -> Result<Attached, StoreError> {
        let template = hook.template_id.clone().unwrap_or_default();
        let inserted = self
            .change(
                &hook.connection_id,
                "INSERT INTO hooks (id, connection_id, url, event, template_id, created_at, secrets)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (connection_id, url, event, template_id) DO NOTHING",
                &[
                    &hook.id,
                    &&*hook.connection_id,
                    &hook.url,
                    &hook.event,
                    &template,
                    &hook.created_at,
                    &secrets_json(&hook.keys.to_stored())?,
                ],
            )
            .await?;
        if inserted {
            return Ok(Attached::Created(hook));
        }
        let row = self
            .pool
            .get()
            .await?
            .query_one(
                &format!("{HOOK_COLUMNS} WHERE connection_id = $1 AND url = $2 AND event = $3 AND template_id = $4"),
                &[&&*hook.connection_id, &hook.url, &hook.event, &template],
            )
            .await?;
        Ok(Attached::Existing(hook_row(&row, hook.connection_id)?))
    }

    pub(super) async fn detach_hook(&self, connection_id: String, hook_id: String) -> Result<bool, StoreError> {
        self.change(
            &connection_id,
            "DELETE FROM hooks WHERE id = $1 AND connection_id = $2",
            &[&hook_id, &connection_id],
        )
        .await
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
                "SELECT event_id, attempt, status_code, error, duration_ms, at FROM attempts
                 WHERE hook_id = $1 ORDER BY id DESC LIMIT $2",
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

    /// Claims ignore named hooks: here a hook's deliveries are claimed together with the hook's
    /// lease, in one statement that writes only `hook_leases`; what is in flight is this
    /// instance's to know (`InFlight`), so no delivery row is rewritten to lease it. Each hook
    /// comes back with whether the claim took all of it that was due, which clears it for
    /// hand-offs at ingest for a while.
    pub(super) async fn claim(&self, claim: Claim) -> Result<Claimed, StoreError> {
        let (limit, per_hook) = (claim.limit as i64, claim.per_hook as i64);
        let owner: &str = &self.owner;
        let excluded = self.in_flight.excluded(claim.now);
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "WITH leased AS (
                    INSERT INTO hook_leases (hook_id, owner, until)
                    SELECT hook_id, $1, $2 FROM deliveries
                     WHERE state = $4 AND next_attempt_at <= $3 AND hook_id <> ALL($6) AND id <> ALL($8)
                     GROUP BY hook_id ORDER BY MIN(next_attempt_at) LIMIT $5
                    ON CONFLICT (hook_id) DO UPDATE SET owner = EXCLUDED.owner, until = EXCLUDED.until
                     WHERE hook_leases.owner = EXCLUDED.owner OR hook_leases.until <= $3
                    RETURNING hook_id
                 ), due AS (
                    SELECT d.id, d.connection_id, d.hook_id, d.url, d.attempts, d.event_seq, d.next_attempt_at,
                           ROW_NUMBER() OVER (PARTITION BY d.hook_id ORDER BY d.next_attempt_at, d.id) AS rn,
                           COUNT(*) OVER (PARTITION BY d.hook_id) AS of_hook
                    FROM deliveries d JOIN leased l ON l.hook_id = d.hook_id
                    WHERE d.state = $4 AND d.next_attempt_at <= $3 AND d.id <> ALL($8)
                 )
                 SELECT due.id, due.connection_id, due.hook_id, due.url, due.attempts, e.id, e.payload, e.received_at,
                        due.of_hook
                 FROM due JOIN events e ON e.seq = due.event_seq
                 WHERE due.rn <= $7 ORDER BY due.next_attempt_at, due.id LIMIT $5",
                &[
                    &owner,
                    &claim.lease_until,
                    &claim.now,
                    &PENDING,
                    &limit,
                    &excluded.hooks,
                    &per_hook,
                    &excluded.deliveries,
                ],
            )
            .await?;
        // Per hook: how many of its due deliveries the claim took, and how many were due.
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
            })
            .collect();
        self.in_flight.claimed(&mut due, claim.lease_until);
        due.sort_by_key(|d| d.id);
        Ok(Claimed { due, leased_hooks, ..Claimed::default() })
    }

    pub(super) async fn next_due(&self, now: i64) -> Result<Option<i64>, StoreError> {
        let row = self
            .pool
            .get()
            .await?
            .query_one(
                "SELECT MIN(next_attempt_at) FROM deliveries WHERE state = $1 AND next_attempt_at > $2",
                &[&PENDING, &now],
            )
            .await?;
        Ok(row.get(0))
    }

    /// One statement for the whole batch (columns as arrays): the same round trips however many
    /// attempts finished, where a statement per record made a fan-out wait on thousands.
    pub(super) async fn record(&self, records: Arc<[AttemptRecord]>) -> Result<(), StoreError> {
        let mut columns = RecordColumns::default();
        for rec in records.iter() {
            columns.push(rec);
        }
        let c = &columns;
        let params: [&(dyn ToSql + Sync); 10] =
            [&c.id, &c.attempt, &c.state, &c.next_at, &c.status, &c.error, &c.at, &c.hook_id, &c.event_id, &c.duration];
        self.pool
            .get()
            .await?
            .execute(
                "WITH r AS (
                    SELECT * FROM unnest($1::bigint[], $2::int[], $3::int[], $4::bigint[], $5::int[], $6::text[],
                                         $7::bigint[], $8::text[], $9::text[], $10::bigint[])
                        AS r(id, attempt, state, next_at, status, error, at, hook_id, event_id, duration)
                 ), updated AS (
                    UPDATE deliveries d SET attempts = r.attempt, state = r.state, next_attempt_at = r.next_at,
                           last_status = r.status, last_error = r.error, updated_at = r.at
                    FROM r WHERE d.id = r.id AND d.attempts < r.attempt
                    RETURNING r.*
                 )
                 INSERT INTO attempts (delivery_id, hook_id, event_id, attempt, status_code, error, duration_ms, at)
                 SELECT id, hook_id, event_id, attempt, status, error, duration, at FROM updated",
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
    /// again before the record is written.
    pub(super) fn attempted(&self, id: i64) {
        self.in_flight.attempted(id);
    }

    /// Deletes this instance's hook leases but those of hooks with a delivery still in flight
    /// here; returns how many were given back.
    pub(super) async fn give_back_hooks(&self) -> Result<u64, StoreError> {
        let (owner, keep): (&str, Vec<String>) = (&self.owner, self.in_flight.hooks());
        let client = self.pool.get().await?;
        Ok(client.execute("DELETE FROM hook_leases WHERE owner = $1 AND hook_id <> ALL($2)", &[&owner, &keep]).await?)
    }

    /// Nothing to write: the leases live in this instance's memory.
    pub(super) async fn release(&self, ids: Vec<i64>) -> Result<(), StoreError> {
        self.in_flight.settled(ids);
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
                 WHERE d.state = $1 AND ($2::TEXT IS NULL OR d.connection_id = $2) ORDER BY d.id DESC LIMIT $3",
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

    pub(super) async fn retry_dead_letter(&self, id: i64, now: i64) -> Result<Option<String>, StoreError> {
        let row = self
            .pool
            .get()
            .await?
            .query_opt(
                "UPDATE deliveries SET state = $2, attempts = 0, next_attempt_at = $3, updated_at = $3
                 WHERE id = $1 AND state = $4 RETURNING hook_id",
                &[&id, &PENDING, &now, &DEAD],
            )
            .await?;
        Ok(row.map(|r| r.get(0)))
    }
}

/// The pool's sessions plan without bitmap scans. `deliveries` is a queue: every delivered row
/// leaves dead entries in its indexes until vacuum, and a bitmap scan walks them all on every
/// claim, while a plain index scan marks those it finds dead so the next scans skip them (at
/// 3,000 events/s a claim's bitmap scans walked 17,000 entries for 65 live rows; without them,
/// end-to-end latency fell by about 40 % at 4 % less PostgreSQL CPU). No query of the relay
/// needs a bitmap scan. Options from the URL are kept.
fn pooled(config: &tokio_postgres::Config) -> tokio_postgres::Config {
    let mut pooled = config.clone();
    let options = format!("{} -c enable_bitmapscan=off", config.get_options().unwrap_or_default());
    pooled.options(options.trim_start());
    pooled
}

const CONNECTION_COLUMNS: &str =
    "SELECT id, name, api_key_hash, secrets, ingest_rate, created_at, ingest_auth FROM connections";
/// Hooks read per round trip when the registry is loaded.
const SNAPSHOT_PAGE: i32 = 10_000;
const HOOK_COLUMNS: &str = "SELECT id, connection_id, url, event, template_id, created_at, secrets FROM hooks";

/// Inserts a connection unless its id or API key is taken; how many rows it added (0 or 1).
async fn insert_connection(tx: &deadpool_postgres::Transaction<'_>, c: &Connection) -> Result<u64, StoreError> {
    let rate = c.ingest_rate.map(|r| i32::try_from(r).unwrap_or(i32::MAX));
    let inserted = tx
        .execute(
            "INSERT INTO connections (id, name, api_key_hash, secrets, ingest_rate, created_at, ingest_auth)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            &[
                &c.id,
                &c.name,
                &c.api_key_hash.as_slice(),
                &secrets_json(&c.secrets)?,
                &rate,
                &c.created_at,
                &c.ingest_auth.as_str(),
            ],
        )
        .await?;
    Ok(inserted)
}

async fn notify(tx: &deadpool_postgres::Transaction<'_>, connection_id: &str) -> Result<(), StoreError> {
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANGES_CHANNEL, &connection_id]).await?;
    Ok(())
}

fn secrets_json(secrets: &[SigningSecret]) -> Result<String, StoreError> {
    serde_json::to_string(secrets).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn connection_row(r: &Row) -> Result<Connection, StoreError> {
    let id: String = r.get(0);
    let hash: Vec<u8> = r.get(2);
    let api_key_hash =
        hash.try_into().map_err(|_| StoreError::Corrupt(format!("connection {id}: API key hash is not 32 bytes")))?;
    let secrets =
        serde_json::from_str(r.get(3)).map_err(|e| StoreError::Corrupt(format!("connection {id}: secrets: {e}")))?;
    Ok(Connection {
        name: r.get(1),
        api_key_hash,
        secrets,
        ingest_rate: r.get::<_, Option<i32>>(4).map(|n| n.max(1) as u32),
        ingest_auth: stored_ingest_auth(r.get(6))?,
        created_at: r.get(5),
        id,
    })
}

/// A hook row, owned by the connection whose shared id is `connection_id`.
fn hook_row(r: &Row, connection_id: Arc<str>) -> Result<Hook, StoreError> {
    let template: String = r.get(4);
    Ok(Hook {
        id: r.get(0),
        connection_id,
        url: r.get(2),
        event: stored_event(r.get(3))?,
        template_id: (!template.is_empty()).then(|| template.into()),
        keys: stored_hook_keys(r.get(6))?,
        created_at: r.get(5),
    })
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
    fn pooled_sessions_keep_the_urls_options_and_plan_without_bitmap_scans() {
        let url = tokio_postgres::Config::from_str("postgres://u@h/db?options=-csearch_path%3Ds").unwrap();
        assert_eq!(pooled(&url).get_options(), Some("-csearch_path=s -c enable_bitmapscan=off"));
        let bare = tokio_postgres::Config::from_str("postgres://u@h/db").unwrap();
        assert_eq!(pooled(&bare).get_options(), Some("-c enable_bitmapscan=off"));
    }
}
