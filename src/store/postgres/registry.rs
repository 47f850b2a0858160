//! The registry's side of the PostgreSQL store: connections and hooks, read whole (a page at a
//! time) or one at a time, written with their change announced to the other instances, and
//! `migrate-store`'s import.

use std::sync::Arc;

use deadpool_postgres::tokio_postgres;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::PostgresStore;
use super::schema::CHANGES_CHANNEL;
use crate::model::{Connection, Hook, Hooks, SigningSecret};
use crate::store::{
    Attached, Created, SnapshotBuilder, StoreError, Transfer, stored_event, stored_hook_keys, stored_ingest_auth,
};

impl PostgresStore {
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

    /// The whole registry, read in one snapshot of the database. Hooks come through a portal a
    /// page at a time: read as one answer, a million of them held every row's buffer at once,
    /// which raised the relay's peak memory at start from 495 to 862 MB.
    pub(in crate::store) async fn each_connection(
        &self,
        each: impl FnMut(Connection, Hooks) + Send,
    ) -> Result<(), StoreError> {
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

    pub(in crate::store) async fn connection(&self, id: String) -> Result<Option<(Connection, Vec<Hook>)>, StoreError> {
        let client = self.pool.get().await?;
        let Some(row) = client.query_opt(&format!("{CONNECTION_COLUMNS} AND id = $1"), &[&id]).await? else {
            return Ok(None);
        };
        let hooks =
            client.query(&format!("{HOOK_COLUMNS} AND connection_id = $1 ORDER BY created_at, id"), &[&id]).await?;
        let shared: Arc<str> = id.as_str().into();
        let hooks = hooks.iter().map(|row| hook_row(row, Arc::clone(&shared))).collect::<Result<_, _>>()?;
        Ok(Some((connection_row(&row)?, hooks)))
    }

    pub(in crate::store) async fn create_connection(&self, c: Connection) -> Result<Created, StoreError> {
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

    /// Marks the connection and its hooks removed, in one statement with the announcement; the
    /// rows go in steps (`removals.rs`).
    pub(in crate::store) async fn delete_connection(&self, id: String) -> Result<bool, StoreError> {
        self.announced(
            &id,
            "WITH conn AS (
                UPDATE connections SET removing = true, api_key_hash = decode(md5(random()::text) || md5(random()::text), 'hex')
                WHERE id = $1 AND NOT removing RETURNING id
             ), hooks_gone AS (
                UPDATE hooks SET removing = true, url = url || '#removing-' || id
                WHERE connection_id IN (SELECT id FROM conn) RETURNING id
             ), queued_hooks AS (
                INSERT INTO removals (kind, id) SELECT 'hook', id FROM hooks_gone ON CONFLICT DO NOTHING
             ), queued AS (
                INSERT INTO removals (kind, id) SELECT 'connection', id FROM conn ON CONFLICT DO NOTHING
             ), changed AS (SELECT id FROM conn)",
            &[&id],
        )
        .await
    }

    pub(in crate::store) async fn set_api_key_hash(&self, id: String, hash: [u8; 32]) -> Result<bool, StoreError> {
        self.change(&id, "UPDATE connections SET api_key_hash = $2 WHERE id = $1", &[&id, &hash.as_slice()]).await
    }

    pub(in crate::store) async fn set_secrets(
        &self,
        id: String,
        secrets: Vec<SigningSecret>,
    ) -> Result<bool, StoreError> {
        let json = secrets_json(&secrets)?;
        self.change(&id, "UPDATE connections SET secrets = $2 WHERE id = $1", &[&id, &json]).await
    }

    pub(in crate::store) async fn set_settings(&self, c: Connection) -> Result<bool, StoreError> {
        let rate = c.ingest_rate.map(|r| i32::try_from(r).unwrap_or(i32::MAX));
        self.change(
            &c.id,
            "UPDATE connections SET name = $2, ingest_rate = $3, ingest_auth = $4 WHERE id = $1",
            &[&c.id, &c.name, &rate, &c.ingest_auth.as_str()],
        )
        .await
    }

    pub(in crate::store) async fn set_hook_secrets(
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
    pub(super) async fn fill_hook_secrets(&self) -> Result<(), StoreError> {
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
    /// waited on four round trips, each behind the ingest load for a core, and attach latency
    /// under load showed it.
    async fn change(&self, connection_id: &str, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<bool, StoreError> {
        self.announced(connection_id, &format!("WITH changed AS ({sql} RETURNING 1)"), params).await
    }

    /// Runs `with`, a `WITH` clause whose last part is `changed` (a row when something changed),
    /// announcing the change to the other instances in the same statement.
    async fn announced(
        &self,
        connection_id: &str,
        with: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<bool, StoreError> {
        let announced =
            format!("{with} SELECT COUNT(pg_notify(${}, ${})) FROM changed", params.len() + 1, params.len() + 2);
        let mut params = params.to_vec();
        params.extend([&CHANGES_CHANNEL as &(dyn ToSql + Sync), &connection_id]);
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(&announced).await?;
        let changed: i64 = client.query_one(&statement, &params).await?.get(0);
        self.metrics.commit_batch(1);
        Ok(changed == 1)
    }

    pub(in crate::store) async fn attach_hook(&self, hook: Hook) -> Result<Attached, StoreError> {
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
                &format!("{HOOK_COLUMNS} AND connection_id = $1 AND url = $2 AND event = $3 AND template_id = $4"),
                &[&&*hook.connection_id, &hook.url, &hook.event, &template],
            )
            .await?;
        Ok(Attached::Existing(hook_row(&row, hook.connection_id)?))
    }

    pub(in crate::store) async fn detach_hook(
        &self,
        connection_id: String,
        hook_id: String,
    ) -> Result<bool, StoreError> {
        // Its URL changes with it, so that attaching the same URL again makes a new hook.
        self.announced(
            &connection_id,
            "WITH gone AS (
                UPDATE hooks SET removing = true, url = url || '#removing-' || id
                WHERE id = $1 AND connection_id = $2 AND NOT removing RETURNING id
             ), queued AS (
                INSERT INTO removals (kind, id) SELECT 'hook', id FROM gone ON CONFLICT DO NOTHING
             ), changed AS (SELECT id FROM gone)",
            &[&hook_id, &connection_id],
        )
        .await
    }
}

pub(super) const CONNECTION_COLUMNS: &str =
    "SELECT id, name, api_key_hash, secrets, ingest_rate, created_at, ingest_auth FROM connections WHERE NOT removing";
/// Hooks read per round trip when the registry is loaded.
pub(super) const SNAPSHOT_PAGE: i32 = 10_000;
pub(super) const HOOK_COLUMNS: &str = "SELECT id, connection_id, url, event, template_id, created_at, secrets, disabled_at IS NOT NULL FROM hooks WHERE NOT removing";

/// Inserts a connection unless its id or API key is taken; how many rows it added (0 or 1).
pub(super) async fn insert_connection(
    tx: &deadpool_postgres::Transaction<'_>,
    c: &Connection,
) -> Result<u64, StoreError> {
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

pub(super) async fn notify(tx: &deadpool_postgres::Transaction<'_>, connection_id: &str) -> Result<(), StoreError> {
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANGES_CHANNEL, &connection_id]).await?;
    Ok(())
}

pub(super) fn secrets_json(secrets: &[SigningSecret]) -> Result<String, StoreError> {
    serde_json::to_string(secrets).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(super) fn connection_row(r: &Row) -> Result<Connection, StoreError> {
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
pub(super) fn hook_row(r: &Row, connection_id: Arc<str>) -> Result<Hook, StoreError> {
    let template: String = r.get(4);
    Ok(Hook {
        id: r.get(0),
        connection_id,
        url: r.get(2),
        event: stored_event(r.get(3))?,
        template_id: (!template.is_empty()).then(|| template.into()),
        keys: stored_hook_keys(r.get(6))?,
        created_at: r.get(5),
        disabled: r.get(7),
    })
}
