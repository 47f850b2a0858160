//! Hook health on PostgreSQL: the stored streak, pause and auto-disable of each hook. Claims
//! read them (a paused or disabled hook is not claimed, a probing one only one delivery at a
//! time), so every instance respects what the hook's sender decided.

use std::collections::HashMap;

use tokio_postgres::Row;

use super::{HANDED, PostgresStore};
use crate::model::{AttemptRecord, HookHealth, Overview, Streak, now_ms};
use crate::store::{DEAD, Loads, PENDING, StoreError};

/// The columns [`health_row`] reads, in its order.
const HEALTH_COLUMNS: &str = "id, consecutive_failures, failing_since, paused_until, last_success_at, disabled_at";

fn health_row(r: &Row) -> (String, HookHealth) {
    let streak = Streak {
        failures: r.get::<_, i32>(1).unsigned_abs(),
        failing_since: r.get(2),
        paused_until: r.get(3),
        last_success_at: r.get(4),
    };
    (r.get(0), HookHealth { streak, disabled_at: r.get(5) })
}

impl PostgresStore {
    /// Stores the streaks a batch of records carries, the last one per hook (a disabled hook's
    /// stays as it was).
    pub(super) async fn store_streaks(&self, records: &[AttemptRecord]) -> Result<(), StoreError> {
        let mut latest: HashMap<&str, &Streak> = HashMap::new();
        for rec in records {
            if let Some(streak) = &rec.streak {
                latest.insert(&rec.hook_id, streak);
            }
        }
        if latest.is_empty() {
            return Ok(());
        }
        let (mut ids, mut failures, mut since, mut paused, mut success) = (vec![], vec![], vec![], vec![], vec![]);
        for (id, s) in latest {
            ids.push(id);
            failures.push(i32::try_from(s.failures).unwrap_or(i32::MAX));
            since.push(s.failing_since);
            paused.push(s.paused_until);
            success.push(s.last_success_at);
        }
        self.pool
            .get()
            .await?
            .execute(
                "UPDATE hooks h SET consecutive_failures = s.failures, failing_since = s.since,
                        paused_until = s.paused, last_success_at = s.success
                 FROM unnest($1::text[], $2::int[], $3::bigint[], $4::bigint[], $5::bigint[])
                      AS s(id, failures, since, paused, success)
                 WHERE h.id = s.id AND h.disabled_at IS NULL",
                &[&ids, &failures, &since, &paused, &success],
            )
            .await?;
        Ok(())
    }

    pub(in crate::store) async fn hook_health(
        &self,
        connection_id: String,
    ) -> Result<HashMap<String, HookHealth>, StoreError> {
        let rows = self
            .pool
            .get()
            .await?
            .query(&format!("SELECT {HEALTH_COLUMNS} FROM hooks WHERE connection_id = $1"), &[&connection_id])
            .await?;
        Ok(rows.iter().map(health_row).collect())
    }

    /// The first condition is the `hooks_unwell` index's own, so the index serves the read.
    pub(in crate::store) async fn unwell_hooks(&self) -> Result<Vec<(String, Streak)>, StoreError> {
        let rows = self
            .pool
            .get()
            .await?
            .query(
                &format!(
                    "SELECT {HEALTH_COLUMNS} FROM hooks
                     WHERE (consecutive_failures > 0 OR paused_until IS NOT NULL OR disabled_at IS NOT NULL)
                       AND disabled_at IS NULL AND NOT removing"
                ),
                &[],
            )
            .await?;
        Ok(rows.iter().map(health_row).map(|(id, h)| (id, h.streak)).collect())
    }

    /// `(paused, disabled)` hooks at the moment.
    pub(super) async fn unwell_counts(&self) -> Result<(u64, u64), StoreError> {
        let row = self
            .pool
            .get()
            .await?
            .query_one(
                "SELECT COUNT(*) FILTER (WHERE disabled_at IS NULL AND paused_until > $1),
                        COUNT(*) FILTER (WHERE disabled_at IS NOT NULL)
                 FROM hooks WHERE consecutive_failures > 0 OR paused_until IS NOT NULL OR disabled_at IS NOT NULL",
                &[&now_ms()],
            )
            .await?;
        Ok((row.get::<_, i64>(0).unsigned_abs(), row.get::<_, i64>(1).unsigned_abs()))
    }

    pub(in crate::store) async fn overview(&self, limit: usize, since_hour: i64) -> Result<Overview, StoreError> {
        let client = self.pool.get().await?;
        // One state per statement, so that each reads its state's partial index only.
        let by_connection = "SELECT connection_id, COUNT(*) FROM deliveries WHERE state = $1 GROUP BY connection_id";
        let mut loads = Loads::default();
        for (state, dead) in [(PENDING, false), (HANDED, false), (DEAD, true)] {
            for r in client.query(by_connection, &[&state]).await? {
                let load = loads.of(r.get(0));
                let n = r.get::<_, i64>(1).unsigned_abs();
                if dead { load.dead_letters += n } else { load.pending += n }
            }
        }
        let received =
            "SELECT connection_id, SUM(events)::BIGINT FROM event_counts WHERE hour >= $1 GROUP BY connection_id";
        for r in client.query(received, &[&since_hour]).await? {
            loads.of(r.get(0)).events_24h = r.get::<_, i64>(1).unsigned_abs();
        }
        let failing = client
            .query(
                &format!(
                    "SELECT {HEALTH_COLUMNS}, connection_id, url FROM hooks
                     WHERE (consecutive_failures > 0 OR paused_until IS NOT NULL OR disabled_at IS NOT NULL) AND NOT removing
                     ORDER BY disabled_at IS NULL, consecutive_failures DESC LIMIT $1"
                ),
                &[&(limit as i64)],
            )
            .await?;
        Ok(Overview {
            connections: loads.into_vec(),
            failing_hooks: failing
                .iter()
                .map(|r| {
                    let (id, health) = health_row(r);
                    (id, r.get(6), r.get(7), health)
                })
                .collect(),
        })
    }

    pub(in crate::store) async fn disable_hook(
        &self,
        connection_id: String,
        hook_id: String,
        at: i64,
        except: i64,
    ) -> Result<Option<u64>, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let disabled = tx
            .execute(
                "UPDATE hooks SET disabled_at = $3, paused_until = NULL
                 WHERE id = $1 AND connection_id = $2 AND disabled_at IS NULL AND NOT removing",
                &[&hook_id, &connection_id, &at],
            )
            .await?;
        if disabled == 0 {
            return Ok(None);
        }
        let buried = tx
            .execute(
                "UPDATE deliveries SET state = $2, last_error = 'hook disabled', updated_at = $4
                 WHERE hook_id = $1 AND (state = $3 OR state = $6) AND id <> $5",
                &[&hook_id, &DEAD, &PENDING, &at, &except, &HANDED],
            )
            .await?;
        super::registry::notify(&tx, &connection_id).await?;
        tx.commit().await?;
        Ok(Some(buried))
    }

    pub(in crate::store) async fn enable_hook(
        &self,
        connection_id: String,
        hook_id: String,
    ) -> Result<bool, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let found = tx
            .execute(
                "UPDATE hooks SET disabled_at = NULL, paused_until = NULL, consecutive_failures = 0, failing_since = NULL
                 WHERE id = $1 AND connection_id = $2 AND NOT removing",
                &[&hook_id, &connection_id],
            )
            .await?;
        super::registry::notify(&tx, &connection_id).await?;
        tx.commit().await?;
        Ok(found == 1)
    }
}
