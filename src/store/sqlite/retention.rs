//! Retention on SQLite: one pruning step deletes the oldest events past the window whose
//! deliveries are all finished, with those deliveries, their attempts and the events' rows in
//! the lists and the duplicate check (`lists.rs`, `event_ids.rs`).
//!
//! Only events under both lists' marks are considered: their ids and list rows are in the
//! tables by then, so nothing filled in later can refer to a deleted event. Events are taken in
//! `seq` order, which is the order they were received in, so a step stops at the first event
//! inside the window without reading the rest. An event with a delivery still pending or in
//! flight is passed over and looked at again by the next pass.
//!
//! The freed pages go to SQLite's freelist and are reused by the next inserts, so under steady
//! traffic the file stops growing; it is not shrunk (no incremental vacuum): the space is needed
//! again within one retention period, and shrinking after every step cost more latency than
//! the little space it returned was worth (BENCHMARKS.md, retention).

use rusqlite::{Connection as Db, params};

use super::IN_FLIGHT;
use crate::store::{PENDING, Pruned, StoreError};

/// Deletes up to `limit` events received before `cutoff` (ms) after `seq` `after`, as the module
/// says. Its statements stay in the writer's statement cache, which is sized for them and the hot
/// path's together (`WRITER_STATEMENTS` in `sqlite/mod.rs`).
pub(super) fn prune(db: &Db, cutoff: i64, after: i64, limit: usize) -> Result<Pruned, StoreError> {
    let through: i64 =
        db.query_row("SELECT MIN(i.seq, c.seq) FROM event_ids_through i, connection_events_through c", [], |r| {
            r.get(0)
        })?;
    let mut candidates = db.prepare_cached(
        "SELECT seq, connection_id, id, received_at FROM events WHERE seq > ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3",
    )?;
    let rows: Vec<(i64, String, String, i64)> = candidates
        .query_map(params![after, through, limit as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<Result<_, _>>()?;
    let mut unfinished = db.prepare_cached(&format!(
        "SELECT 1 FROM deliveries WHERE event_seq = ?1 AND state IN ({PENDING}, {IN_FLIGHT})"
    ))?;
    let mut unlist_attempts = db.prepare_cached(
        "DELETE FROM hook_attempts WHERE (hook_id, attempt_id) IN (
             SELECT a.hook_id, a.id FROM deliveries d JOIN attempts a ON a.delivery_id = d.id WHERE d.event_seq = ?1)",
    )?;
    let mut attempts = db
        .prepare_cached("DELETE FROM attempts WHERE delivery_id IN (SELECT id FROM deliveries WHERE event_seq = ?1)")?;
    let mut deliveries = db.prepare_cached("DELETE FROM deliveries WHERE event_seq = ?1")?;
    let mut unlist_event = db.prepare_cached("DELETE FROM connection_events WHERE connection_id = ?1 AND seq = ?2")?;
    let mut id = db.prepare_cached("DELETE FROM event_ids WHERE connection_id = ?1 AND id = ?2")?;
    let mut event = db.prepare_cached("DELETE FROM events WHERE seq = ?1")?;
    let mut pruned = Pruned { next: (rows.len() == limit).then_some(after), ..Pruned::default() };
    for (seq, connection_id, event_id, received_at) in rows {
        if received_at >= cutoff {
            pruned.next = None;
            break;
        }
        pruned.next = pruned.next.map(|_| seq);
        if unfinished.exists([seq])? {
            continue;
        }
        unlist_attempts.execute([seq])?;
        pruned.attempts += attempts.execute([seq])? as u64;
        pruned.deliveries += deliveries.execute([seq])? as u64;
        unlist_event.execute(params![connection_id, seq])?;
        id.execute(params![connection_id, event_id])?;
        pruned.events += event.execute([seq])? as u64;
    }
    Ok(pruned)
}
