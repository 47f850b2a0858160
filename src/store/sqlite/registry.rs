//! The registry's side of the SQLite store: connections and hooks, read whole for the registry
//! (and `migrate-store`) or one at a time, and written through the API lane.

use std::sync::Arc;

use bytes::Bytes;
use rusqlite::{OptionalExtension, params};

use super::rows::{connection_row, hook_row, secrets_json};
use super::writer::Lane;
use super::{IN_FLIGHT, SqliteStore, removals};
use crate::model::{Connection, Event, Hook, SigningSecret};
use crate::store::{
    Attached, Created, DELIVERED, PENDING, Snapshot, SnapshotBuilder, StoreError, Transfer, TransferDelivery,
};
use std::sync::atomic::Ordering::Relaxed;

impl SqliteStore {
    pub(in crate::store) async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        self.read(|db| {
            let mut stmt = db.prepare(
                "SELECT id, name, api_key_hash, secrets, ingest_rate, created_at, ingest_auth FROM connections
                 WHERE removing = 0",
            )?;
            let connections = stmt
                .query_map([], connection_row)?
                .map(|row| row.map_err(StoreError::from).and_then(|r| r))
                .collect::<Result<Vec<_>, _>>()?;
            let mut snapshot = Snapshot::default();
            let mut builder = SnapshotBuilder::new(connections, |c, hooks| snapshot.connections.push((c, hooks)));
            let mut stmt = db.prepare(
                "SELECT id, connection_id, url, event, template_id, created_at, secrets, disabled_at IS NOT NULL FROM hooks
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
                        next_attempt_at, last_status, last_error, updated_at FROM deliveries
                 WHERE state != ?1 AND EXISTS (SELECT 1 FROM hooks h WHERE h.id = deliveries.hook_id) ORDER BY id",
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
                 WHERE seq IN (SELECT event_seq FROM deliveries d
                               WHERE state != ?1 AND EXISTS (SELECT 1 FROM hooks h WHERE h.id = d.hook_id))
                 ORDER BY seq",
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

    pub(in crate::store) async fn connection(&self, id: String) -> Result<Option<(Connection, Vec<Hook>)>, StoreError> {
        self.read(move |db| {
            let connection = db
                .prepare_cached("SELECT id, name, api_key_hash, secrets, ingest_rate, created_at, ingest_auth FROM connections WHERE id = ?1 AND removing = 0")?
                .query_row([&id], connection_row)
                .optional()?;
            let Some(connection) = connection else { return Ok(None) };
            let mut stmt = db.prepare_cached(
                "SELECT id, connection_id, url, event, template_id, created_at, secrets, disabled_at IS NOT NULL FROM hooks WHERE connection_id = ?1 ORDER BY created_at, id",
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

    pub(in crate::store) async fn create_connection(&self, c: Connection) -> Result<Created, StoreError> {
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

    /// Answers once the connection is invisible; the rest goes in steps (`removals.rs`).
    pub(in crate::store) async fn delete_connection(&self, id: String) -> Result<bool, StoreError> {
        let event_ids = self.event_ids.clone();
        let queued = Arc::clone(&self.removals_queued);
        let remove = move |db: &rusqlite::Connection| {
            let removed = removals::remove_connection(db, &id)?;
            if removed {
                event_ids.forget_connection(&id);
            }
            Ok(removed)
        };
        self.writer
            .write_then(Lane::Api, remove, move |removed: &mut bool| {
                queued.fetch_or(*removed, Relaxed);
            })
            .await
    }

    pub(in crate::store) async fn set_api_key_hash(&self, id: String, hash: [u8; 32]) -> Result<bool, StoreError> {
        self.write(move |db| {
            let n =
                db.execute("UPDATE connections SET api_key_hash = ?2 WHERE id = ?1", params![id, hash.as_slice()])?;
            Ok(n == 1)
        })
        .await
    }

    pub(in crate::store) async fn set_secrets(
        &self,
        id: String,
        secrets: Vec<SigningSecret>,
    ) -> Result<bool, StoreError> {
        self.write(move |db| {
            let n =
                db.execute("UPDATE connections SET secrets = ?2 WHERE id = ?1", params![id, secrets_json(&secrets)?])?;
            Ok(n == 1)
        })
        .await
    }

    pub(in crate::store) async fn set_settings(&self, c: Connection) -> Result<bool, StoreError> {
        self.write(move |db| {
            let n = db.execute(
                "UPDATE connections SET name = ?2, ingest_rate = ?3, ingest_auth = ?4 WHERE id = ?1",
                params![c.id, c.name, c.ingest_rate, c.ingest_auth.as_str()],
            )?;
            Ok(n == 1)
        })
        .await
    }

    pub(in crate::store) async fn set_hook_secrets(
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

    pub(in crate::store) async fn attach_hook(&self, hook: Hook) -> Result<Attached, StoreError> {
        self.write(move |db| {
            let template = hook.template_id.clone().unwrap_or_default();
            let existing = db
                .prepare_cached(
                    "SELECT id, connection_id, url, event, template_id, created_at, secrets, disabled_at IS NOT NULL FROM hooks
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

    pub(in crate::store) async fn detach_hook(
        &self,
        connection_id: String,
        hook_id: String,
    ) -> Result<bool, StoreError> {
        let queued = Arc::clone(&self.removals_queued);
        let detach = move |db: &rusqlite::Connection| removals::detach(db, &connection_id, &hook_id);
        self.writer
            .write_then(Lane::Api, detach, move |detached: &mut bool| {
                queued.fetch_or(*detached, Relaxed);
            })
            .await
    }
}
