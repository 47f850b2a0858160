//! Retention and the figures `/metrics` shows, on PostgreSQL.
//!
//! A pruning step is one statement: it takes the next events in `seq` order (the order they
//! were received in), stops at the first one inside the window, and deletes those whose
//! deliveries are all finished; their deliveries and attempts go with them (`ON DELETE
//! CASCADE`). Instances share the database, so a step runs only under a transaction-scoped
//! advisory lock: while one instance prunes, the others' steps do nothing.
//!
//! Deleted rows become reusable space only once vacuumed. Autovacuum wakes once a minute and
//! waits for a fifth of a table to be dead, which under steady pruning lets the tables grow to
//! several times their live size first; so after a pass that deleted rows the pruner vacuums
//! the three tables itself ([`PostgresStore::vacuum`]), at most every few passes.

use super::{HANDED, PostgresStore};
use crate::store::{PENDING, Pruned, StoreError, StoreStats};

/// Serialises pruning across instances.
const PRUNE_LOCK: i64 = 0x5265_6c61_7950_726e;

/// The relay's tables, for the store's size.
const TABLES: &str = "ARRAY['connections', 'hooks', 'events', 'deliveries', 'attempts', 'hook_leases']";

impl PostgresStore {
    pub(in crate::store) async fn prune(&self, cutoff: i64, after: i64, limit: usize) -> Result<Pruned, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let locked: bool = tx.query_one("SELECT pg_try_advisory_xact_lock($1)", &[&PRUNE_LOCK]).await?.get(0);
        if !locked {
            return Ok(Pruned::default());
        }
        let row = tx
            .query_one(
                "WITH candidates AS (
                     SELECT seq, received_at FROM events WHERE seq > $1 ORDER BY seq LIMIT $2
                 ), stop AS (
                     SELECT MIN(seq) AS seq FROM candidates WHERE received_at >= $3
                 ), considered AS (
                     SELECT c.seq FROM candidates c, stop WHERE stop.seq IS NULL OR c.seq < stop.seq
                 ), doomed AS (
                     SELECT c.seq FROM considered c
                     WHERE NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_seq = c.seq AND d.state IN ($4, $5))
                 ), doomed_deliveries AS (
                     SELECT id, sole_attempt_ms FROM deliveries WHERE event_seq IN (SELECT seq FROM doomed)
                 ), gone AS (
                     DELETE FROM events WHERE seq IN (SELECT seq FROM doomed) RETURNING 1
                 )
                 SELECT (SELECT COUNT(*) FROM gone),
                        (SELECT COUNT(*) FROM doomed_deliveries),
                        (SELECT COUNT(*) FROM attempts WHERE delivery_id IN (SELECT id FROM doomed_deliveries))
                          + (SELECT COUNT(*) FROM doomed_deliveries WHERE sole_attempt_ms IS NOT NULL),
                        (SELECT COUNT(*) FROM candidates),
                        (SELECT MAX(seq) FROM considered),
                        (SELECT seq FROM stop)",
                &[&after, &(limit as i64), &cutoff, &PENDING, &HANDED],
            )
            .await?;
        tx.commit().await?;
        let count = |i: usize| u64::try_from(row.get::<_, i64>(i)).unwrap_or(0);
        let (candidates, last, stop): (u64, Option<i64>, Option<i64>) = (count(3), row.get(4), row.get(5));
        let more = stop.is_none() && candidates == limit as u64;
        Ok(Pruned { events: count(0), deliveries: count(1), attempts: count(2), next: last.filter(|_| more) })
    }

    /// Marks the space of pruned rows reusable now rather than at autovacuum's pace (the module
    /// says why). `VACUUM` takes no lock that stops reads or writes.
    pub(in crate::store) async fn vacuum(&self) -> Result<(), StoreError> {
        // VACUUM may take longer than the pool's statement timeout, and cannot share a
        // multi-statement string: the timeout is lifted for it alone.
        let client = self.pool.get().await?;
        client.batch_execute("SET statement_timeout = 0").await?;
        let vacuumed = client.batch_execute("VACUUM events, deliveries, attempts").await;
        client.batch_execute("RESET statement_timeout").await?;
        vacuumed?;
        Ok(())
    }

    pub(in crate::store) async fn stats(&self) -> Result<StoreStats, StoreError> {
        let row = self
            .pool
            .get()
            .await?
            .query_one(
                &format!(
                    "WITH pending AS (
                        SELECT SUM(n)::BIGINT AS n, MIN(oldest) AS oldest FROM (
                            SELECT COUNT(*) AS n, MIN(event_seq) AS oldest FROM deliveries WHERE state = $1
                            UNION ALL
                            SELECT COUNT(*), MIN(event_seq) FROM deliveries WHERE state = $2
                        ) each_state
                     )
                     SELECT pending.n, (SELECT received_at FROM events WHERE seq = pending.oldest),
                            (SELECT COALESCE(SUM(pg_total_relation_size(to_regclass(t))), 0)::BIGINT FROM unnest({TABLES}) t)
                     FROM pending"
                ),
                &[&PENDING, &HANDED],
            )
            .await?;
        let (paused_hooks, disabled_hooks) = self.unwell_counts().await?;
        Ok(StoreStats {
            pending: u64::try_from(row.get::<_, i64>(0)).unwrap_or(0),
            oldest_pending_at: row.get(1),
            size_bytes: u64::try_from(row.get::<_, i64>(2)).unwrap_or(0),
            paused_hooks,
            disabled_hooks,
        })
    }
}
