//! Hook health on SQLite: the stored streak, pause and auto-disable of each hook (the
//! dispatcher decides them, see `delivery::health`; this is only where they are kept).

use std::collections::HashMap;

use rusqlite::{Connection as Db, OptionalExtension, params};

use super::{IN_FLIGHT, SqliteStore};
use crate::model::{HookHealth, Overview, Streak, now_ms};
use crate::store::{DEAD, Loads, PENDING, StoreError};

/// The columns [`health_row`] reads, in its order.
const HEALTH_COLUMNS: &str = "id, consecutive_failures, failing_since, paused_until, last_success_at, disabled_at";

fn health_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, HookHealth)> {
    let streak =
        Streak { failures: r.get(1)?, failing_since: r.get(2)?, paused_until: r.get(3)?, last_success_at: r.get(4)? };
    Ok((r.get(0)?, HookHealth { streak, disabled_at: r.get(5)? }))
}

/// Stores a hook's streak as an attempt left it (a disabled hook's stays as it was).
pub(super) fn store_streak(db: &Db, hook_id: &str, s: &Streak) -> Result<(), StoreError> {
    db.prepare_cached(
        "UPDATE hooks SET consecutive_failures = ?2, failing_since = ?3, paused_until = ?4, last_success_at = ?5
         WHERE id = ?1 AND disabled_at IS NULL",
    )?
    .execute(params![hook_id, s.failures, s.failing_since, s.paused_until, s.last_success_at])?;
    Ok(())
}

impl SqliteStore {
    pub(in crate::store) async fn hook_health(
        &self,
        connection_id: String,
    ) -> Result<HashMap<String, HookHealth>, StoreError> {
        self.read(move |db| {
            let mut stmt =
                db.prepare_cached(&format!("SELECT {HEALTH_COLUMNS} FROM hooks WHERE connection_id = ?1"))?;
            let rows = stmt.query_map([connection_id], health_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// The first condition is the `hooks_unwell` index's own, so the index serves the read.
    pub(in crate::store) async fn unwell_hooks(&self) -> Result<Vec<(String, Streak)>, StoreError> {
        self.read(|db| {
            let mut stmt = db.prepare(&format!(
                "SELECT {HEALTH_COLUMNS} FROM hooks
                 WHERE (consecutive_failures > 0 OR paused_until IS NOT NULL OR disabled_at IS NOT NULL)
                   AND disabled_at IS NULL"
            ))?;
            let rows = stmt.query_map([], |r| health_row(r).map(|(id, h)| (id, h.streak)))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// `(paused, disabled)` hooks at the moment.
    pub(super) fn unwell_counts(db: &Db) -> Result<(u64, u64), StoreError> {
        Ok(db
            .prepare_cached(
                "SELECT COALESCE(SUM(disabled_at IS NULL AND paused_until > ?1), 0), COALESCE(SUM(disabled_at IS NOT NULL), 0)
                 FROM hooks WHERE consecutive_failures > 0 OR paused_until IS NOT NULL OR disabled_at IS NOT NULL",
            )?
            .query_row([now_ms()], |r| Ok((r.get(0)?, r.get(1)?)))?)
    }

    pub(in crate::store) async fn overview(&self, limit: usize, since_hour: i64) -> Result<Overview, StoreError> {
        self.read(move |db| {
            let mut loads = Loads::default();
            // One state per statement, so that each reads its state's partial index only.
            let by_connection =
                "SELECT connection_id, COUNT(*) FROM deliveries WHERE state = ?1 GROUP BY connection_id";
            let mut by_connection = db.prepare_cached(by_connection)?;
            for (state, dead) in [(PENDING, false), (IN_FLIGHT, false), (DEAD, true)] {
                for row in by_connection.query_map([state], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)))? {
                    let (id, n) = row?;
                    let load = loads.of(id);
                    if dead { load.dead_letters += n } else { load.pending += n }
                }
            }
            let mut received = db.prepare_cached(
                "SELECT connection_id, SUM(events) FROM event_counts WHERE hour >= ?1 GROUP BY connection_id",
            )?;
            for row in received.query_map([since_hour], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)))? {
                let (id, n) = row?;
                loads.of(id).events_24h = n;
            }
            let mut failing = db.prepare_cached(&format!(
                "SELECT {HEALTH_COLUMNS}, connection_id, url FROM hooks
                 WHERE consecutive_failures > 0 OR paused_until IS NOT NULL OR disabled_at IS NOT NULL
                 ORDER BY disabled_at IS NULL, consecutive_failures DESC LIMIT ?1"
            ))?;
            let failing_hooks = failing
                .query_map([limit as i64], |r| {
                    let (id, health) = health_row(r)?;
                    Ok((id, r.get(6)?, r.get(7)?, health))
                })?
                .collect::<Result<_, _>>()?;
            Ok(Overview { connections: loads.into_vec(), failing_hooks })
        })
        .await
    }

    pub(in crate::store) async fn disable_hook(
        &self,
        connection_id: String,
        hook_id: String,
        at: i64,
        except: i64,
    ) -> Result<Option<u64>, StoreError> {
        self.write(move |db| {
            let disabled = db.execute(
                "UPDATE hooks SET disabled_at = ?3, paused_until = NULL
                 WHERE id = ?1 AND connection_id = ?2 AND disabled_at IS NULL",
                params![hook_id, connection_id, at],
            )?;
            if disabled == 0 {
                return Ok(None);
            }
            let buried = db.execute(
                "UPDATE deliveries SET state = ?2, lease_until = NULL, last_error = 'hook disabled', updated_at = ?5
                 WHERE hook_id = ?1 AND state IN (?3, ?4) AND id <> ?6",
                params![hook_id, DEAD, PENDING, IN_FLIGHT, at, except],
            )?;
            Ok(Some(buried as u64))
        })
        .await
    }

    pub(in crate::store) async fn enable_hook(
        &self,
        connection_id: String,
        hook_id: String,
    ) -> Result<bool, StoreError> {
        self.write(move |db| {
            let found = db
                .query_row(
                    "UPDATE hooks SET disabled_at = NULL, paused_until = NULL, consecutive_failures = 0,
                            failing_since = NULL
                     WHERE id = ?1 AND connection_id = ?2 RETURNING 1",
                    params![hook_id, connection_id],
                    |_| Ok(()),
                )
                .optional()?;
            Ok(found.is_some())
        })
        .await
    }
}
