//! Deleting a connection or detaching a hook with a large backlog, in steps.
//!
//! The request's own write is small: a detach deletes the hook row, a connection delete marks
//! the connection `removing` (and gives it a key no one holds) and deletes its hooks. From that
//! commit on nothing reads what is left: the registry and every lookup skip removing
//! connections, claims skip deliveries of hooks that are gone, and dead-letter lists and
//! replays only show deliveries whose hook exists. Each removal is queued in `removals`, and
//! [`reap`] deletes what is left — deliveries, their attempts, list rows, events, duplicate-check
//! ids — a few hundred rows per step, as a bulk write between ingests; once nothing is left of a
//! connection its row goes too, and with it its id is free again.

use rusqlite::{Connection as Db, OptionalExtension, params};

use super::IN_FLIGHT;
use crate::store::{PENDING, StoreError};

/// What one reaping step did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(in crate::store) struct Reaped {
    /// Rows deleted.
    pub(in crate::store) rows: u64,
    /// Whether every removal is complete.
    pub(in crate::store) done: bool,
}

/// The request's part of a detach: the hook row goes, the rest is queued. `false`: the
/// connection has no such hook.
pub(super) fn detach(db: &Db, connection_id: &str, hook_id: &str) -> Result<bool, StoreError> {
    let n = db.execute("DELETE FROM hooks WHERE id = ?1 AND connection_id = ?2", [hook_id, connection_id])?;
    if n == 1 {
        db.execute("INSERT OR IGNORE INTO removals (kind, id) VALUES ('hook', ?1)", [hook_id])?;
    }
    Ok(n == 1)
}

/// The request's part of a connection delete: the connection is marked and its hooks go (each
/// queued for its deliveries). `false`: no such connection (or one already being removed).
pub(super) fn remove_connection(db: &Db, id: &str) -> Result<bool, StoreError> {
    let marked = db.execute(
        "UPDATE connections SET removing = 1, api_key_hash = randomblob(32) WHERE id = ?1 AND removing = 0",
        [id],
    )?;
    if marked == 0 {
        return Ok(false);
    }
    db.execute(
        "INSERT OR IGNORE INTO removals (kind, id) SELECT 'hook', id FROM hooks WHERE connection_id = ?1",
        [id],
    )?;
    db.execute("DELETE FROM hooks WHERE connection_id = ?1", [id])?;
    db.execute("INSERT OR IGNORE INTO removals (kind, id) VALUES ('connection', ?1)", [id])?;
    Ok(true)
}

/// Whether any removal is queued (at start: one left by a previous process).
pub(super) fn queued(db: &Db) -> Result<bool, StoreError> {
    Ok(db.prepare("SELECT 1 FROM removals")?.exists([])?)
}

/// Deletes up to about `limit` rows of the oldest queued removal.
pub(super) fn reap(db: &Db, limit: usize) -> Result<Reaped, StoreError> {
    let next: Option<(String, String)> = db
        .query_row("SELECT kind, id FROM removals ORDER BY kind DESC, id LIMIT 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((kind, id)) = next else { return Ok(Reaped { rows: 0, done: true }) };
    let rows = if kind == "hook" { reap_hook(db, &id, limit)? } else { reap_connection(db, &id, limit)? };
    if rows == 0 {
        if kind == "connection" {
            db.execute("DELETE FROM connections WHERE id = ?1 AND removing = 1", [&id])?;
            db.execute("DELETE FROM event_counts WHERE connection_id = ?1", [&id])?;
        }
        db.execute("DELETE FROM removals WHERE kind = ?1 AND id = ?2", [&kind, &id])?;
    }
    Ok(Reaped { rows, done: false })
}

/// A step of a detached hook: its attempted deliveries (through its attempt list, then the
/// attempts not yet listed), its list rows, then its waiting and in-flight deliveries.
fn reap_hook(db: &Db, hook_id: &str, limit: usize) -> Result<u64, StoreError> {
    let listed: Vec<(i64, Option<i64>)> = db
        .prepare(
            "SELECT h.attempt_id, a.delivery_id FROM hook_attempts h LEFT JOIN attempts a ON a.id = h.attempt_id
             WHERE h.hook_id = ?1 LIMIT ?2",
        )?
        .query_map(params![hook_id, limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut rows = 0;
    for (attempt_id, delivery_id) in &listed {
        if let Some(delivery) = delivery_id {
            rows += db.execute("DELETE FROM deliveries WHERE id = ?1", [delivery])? as u64;
        }
        rows += db
            .execute("DELETE FROM hook_attempts WHERE hook_id = ?1 AND attempt_id = ?2", params![hook_id, attempt_id])?
            as u64;
    }
    if rows > 0 {
        return Ok(rows);
    }
    rows += db.execute(
        "DELETE FROM deliveries WHERE id IN (
             SELECT delivery_id FROM attempts WHERE id > (SELECT id FROM hook_attempts_through) AND hook_id = ?1 LIMIT ?2)",
        params![hook_id, limit as i64],
    )? as u64;
    rows += db.execute(
        &format!(
            "DELETE FROM deliveries WHERE id IN (
                 SELECT id FROM deliveries WHERE hook_id = ?1 AND state = {PENDING} LIMIT ?2)"
        ),
        params![hook_id, limit as i64],
    )? as u64;
    // A literal state, so that the partial index is known to apply when the plan is made.
    rows += db.execute(
        &format!("DELETE FROM deliveries INDEXED BY deliveries_in_flight WHERE state = {IN_FLIGHT} AND hook_id = ?1"),
        [hook_id],
    )? as u64;
    Ok(rows)
}

/// A step of a removed connection: its events (listed, then those after the list's mark) with
/// their deliveries and attempts, then its duplicate-check ids.
fn reap_connection(db: &Db, id: &str, limit: usize) -> Result<u64, StoreError> {
    let seqs: Vec<i64> = db
        .prepare(
            "SELECT seq FROM (SELECT seq FROM connection_events WHERE connection_id = ?1 LIMIT ?2)
             UNION ALL
             SELECT seq FROM events WHERE seq > (SELECT seq FROM connection_events_through) AND connection_id = ?1",
        )?
        .query_map(params![id, limit as i64], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut rows = 0;
    for seq in seqs.iter().take(limit) {
        rows += db.execute("DELETE FROM deliveries WHERE event_seq = ?1", [seq])? as u64;
        rows += db.execute("DELETE FROM events WHERE seq = ?1", [seq])? as u64;
        rows +=
            db.execute("DELETE FROM connection_events WHERE connection_id = ?1 AND seq = ?2", params![id, seq])? as u64;
    }
    if rows > 0 {
        return Ok(rows);
    }
    Ok(db.execute(
        "DELETE FROM event_ids WHERE connection_id = ?1 AND id IN (SELECT id FROM event_ids WHERE connection_id = ?1 LIMIT ?2)",
        params![id, limit as i64],
    )? as u64)
}

#[cfg(test)]
mod tests {
    use super::super::schema::test_db;
    use super::*;

    fn count(db: &Db, sql: &str) -> i64 {
        db.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    /// An event of `connection` with one delivery to `hook` in `state`, attempted once when
    /// `attempted`; returns the delivery's id.
    fn delivery(db: &Db, connection: &str, hook: &str, event: &str, state: i32, attempted: bool) -> i64 {
        db.execute(
            "INSERT INTO events (connection_id, id, type, payload, received_at) VALUES (?1, ?2, 'image.created', x'7b7d', 0)",
            [connection, event],
        )
        .unwrap();
        let seq = db.last_insert_rowid();
        db.execute(
            "INSERT INTO deliveries (event_seq, hook_id, connection_id, url, state, next_attempt_at, updated_at)
             VALUES (?1, ?2, ?3, 'https://x', ?4, 0, 0)",
            params![seq, hook, connection, state],
        )
        .unwrap();
        let id = db.last_insert_rowid();
        if attempted {
            db.execute(
                "INSERT INTO attempts (delivery_id, hook_id, event_id, attempt, duration_ms, at) VALUES (?1, ?2, ?3, 1, 1, 0)",
                params![id, hook, event],
            )
            .unwrap();
        }
        id
    }

    fn reap_all(db: &Db) -> u64 {
        let mut rows = 0;
        loop {
            let step = reap(db, 2).unwrap();
            if step.done {
                return rows;
            }
            rows += step.rows;
        }
    }

    fn with_hooks(db: &Db) {
        db.execute_batch(
            "INSERT INTO hooks (id, connection_id, url, event, template_id, created_at) VALUES
                 ('ha', 'a', 'https://x/a', 'image.created', '', 0), ('hb', 'a', 'https://x/b', 'image.created', '', 0),
                 ('hc', 'b', 'https://x/c', 'image.created', '', 0);",
        )
        .unwrap();
    }

    #[test]
    fn a_detach_answers_at_once_and_its_deliveries_go_in_steps_on_both_sides_of_the_list_mark() {
        let db = test_db();
        with_hooks(&db);
        let listed = delivery(&db, "a", "ha", "1", 1, true);
        super::super::lists::chore(&super::super::lists::ATTEMPTS).run(&db).unwrap();
        let tail = delivery(&db, "a", "ha", "2", 2, true);
        let waiting = delivery(&db, "a", "ha", "3", PENDING, false);
        let in_flight = delivery(&db, "a", "ha", "4", IN_FLIGHT, false);
        let other = delivery(&db, "a", "hb", "5", PENDING, true);
        assert!(detach(&db, "a", "ha").unwrap());
        assert!(!detach(&db, "b", "hb").unwrap(), "another connection's hook is left alone");
        assert_eq!(count(&db, "SELECT COUNT(*) FROM hooks WHERE id = 'ha'"), 0, "gone at once");
        assert!(reap_all(&db) >= 4);
        let left = |id: i64| count(&db, &format!("SELECT COUNT(*) FROM deliveries WHERE id = {id}"));
        assert_eq!([listed, tail, waiting, in_flight, other].map(left), [0, 0, 0, 0, 1]);
        assert_eq!(count(&db, "SELECT COUNT(*) FROM hook_attempts WHERE hook_id = 'ha'"), 0);
        assert_eq!(count(&db, "SELECT COUNT(*) FROM attempts WHERE hook_id = 'ha'"), 0);
        assert_eq!(count(&db, "SELECT COUNT(*) FROM removals"), 0, "nothing left queued");
    }

    #[test]
    fn a_removed_connection_is_invisible_at_once_and_gone_with_everything_of_it_after_the_steps() {
        let db = test_db();
        with_hooks(&db);
        for n in 0..5 {
            delivery(&db, "a", "ha", &format!("e{n}"), PENDING, n % 2 == 0);
        }
        delivery(&db, "b", "hc", "kept", PENDING, true);
        db.execute("INSERT INTO event_ids (connection_id, id) VALUES ('a', 'e0'), ('b', 'kept')", []).unwrap();
        super::super::lists::chore(&super::super::lists::EVENTS).run(&db).unwrap();
        assert!(remove_connection(&db, "a").unwrap());
        assert!(!remove_connection(&db, "a").unwrap(), "a second delete finds nothing");
        assert_eq!(count(&db, "SELECT COUNT(*) FROM hooks WHERE connection_id = 'a'"), 0);
        assert_eq!(count(&db, "SELECT removing FROM connections WHERE id = 'a'"), 1);
        assert!(reap_all(&db) >= 15);
        assert_eq!(count(&db, "SELECT COUNT(*) FROM connections WHERE id = 'a'"), 0, "its id is free again");
        for table in ["events", "deliveries", "connection_events", "event_ids"] {
            assert_eq!(count(&db, &format!("SELECT COUNT(*) FROM {table} WHERE connection_id = 'a'")), 0, "{table}");
            assert_eq!(count(&db, &format!("SELECT COUNT(*) FROM {table} WHERE connection_id = 'b'")), 1, "{table}");
        }
        assert_eq!(count(&db, "SELECT COUNT(*) FROM attempts WHERE hook_id = 'ha'"), 0);
        assert_eq!(count(&db, "SELECT COUNT(*) FROM attempts WHERE hook_id = 'hc'"), 1);
    }
}
