//! Deleting a connection or detaching a hook with a large backlog, in steps, on PostgreSQL.
//!
//! The request's statement marks the connection (with a key no one holds) and its hooks, or
//! the one hook, `removing` — a hook's URL changes with it, so the same URL can be attached
//! again at once — and queues them in `removals`. From that commit on nothing reads them: the
//! registry and every lookup skip removing rows, claims skip their hooks, dead-letter lists and
//! replays skip their deliveries. [`PostgresStore::reap`] then deletes a hook's deliveries a few
//! hundred at a time and the hook last (whose cascade catches a delivery an ingest made in the
//! meantime), and a connection's events the same way and the connection last. Steps run under
//! an advisory lock: one instance reaps at a time.

use super::PostgresStore;
use crate::store::StoreError;

/// Serialises reaping across instances.
const REAP_LOCK: i64 = 0x5265_6c61_7952_6d76;

impl PostgresStore {
    /// One step of the oldest queued removal: `Some(rows)` while there is more (or another
    /// instance is reaping), `None` once nothing is queued.
    pub(in crate::store) async fn reap(&self, limit: usize) -> Result<Option<u64>, StoreError> {
        let mut client = self.pool.get().await?;
        // Asked several times a second by every instance: nothing queued costs one read.
        if client.query_opt("SELECT 1 FROM removals LIMIT 1", &[]).await?.is_none() {
            return Ok(None);
        }
        let tx = client.transaction().await?;
        let Some(next) = tx.query_opt("SELECT kind, id FROM removals ORDER BY kind DESC, id LIMIT 1", &[]).await?
        else {
            return Ok(None);
        };
        let locked: bool = tx.query_one("SELECT pg_try_advisory_xact_lock($1)", &[&REAP_LOCK]).await?.get(0);
        if !locked {
            return Ok(Some(0));
        }
        let (kind, id): (String, String) = (next.get(0), next.get(1));
        let limit = limit as i64;
        let deleted = if kind == "hook" {
            tx.execute(
                "DELETE FROM deliveries WHERE id IN (SELECT id FROM deliveries WHERE hook_id = $1 LIMIT $2)",
                &[&id, &limit],
            )
            .await?
        } else {
            tx.execute(
                "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE connection_id = $1 LIMIT $2)",
                &[&id, &limit],
            )
            .await?
        };
        if deleted == 0 {
            if kind == "hook" {
                tx.execute("DELETE FROM hooks WHERE id = $1 AND removing", &[&id]).await?;
            } else {
                tx.execute("DELETE FROM connections WHERE id = $1 AND removing", &[&id]).await?;
                tx.execute("DELETE FROM event_counts WHERE connection_id = $1", &[&id]).await?;
            }
            tx.execute("DELETE FROM removals WHERE kind = $1 AND id = $2", &[&kind, &id]).await?;
        }
        tx.commit().await?;
        Ok(Some(deleted))
    }
}
