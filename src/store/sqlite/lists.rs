//! Lists kept off the hot commit: each connection's events (`GET /v1/events`, newest first) and
//! each hook's attempts (its attempt log, and what a detach deletes).
//!
//! An index on `events (connection_id, seq)` or `attempts (hook_id, id)` cost every commit a
//! page per connection or hook it touched: each one's newest entries sit on a leaf of their own,
//! and a commit rewrites every leaf it touched. The attempts' index alone was over two fifths of
//! the WAL frames a commit wrote under load. Each list is now a table that the writer fills in
//! bulk every [`CATCH_UP_EVERY`] inside a batch it commits anyway (see `Chore` in
//! `writer.rs`), a connection's or hook's rows arriving together on one leaf. A one-row
//! table holds the mark up to which the list is complete; the rows after it, a fraction of a
//! second's worth, are found by scanning them by their key range. Both source tables hand no
//! key out twice (`AUTOINCREMENT`), so no row can arrive under a mark.

use std::time::Duration;

use bytes::Bytes;
use rusqlite::{Connection as Db, Row, params};

use super::writer::Chore;
use crate::model::{Attempt, Event};
use crate::store::StoreError;

/// How often the lists catch up: the longest tail a listing scans, and the pause it adds to one
/// commit grows with it.
const CATCH_UP_EVERY: Duration = Duration::from_millis(100);

/// One list: how it catches up, and how its newest rows for an owner are read.
pub(super) struct List {
    /// Lists the rows after the mark, ordered for the list's leaves.
    catch_up: &'static str,
    /// Moves the mark to the newest row.
    advance: &'static str,
    /// Reads the mark.
    mark: &'static str,
    /// An owner's rows after the mark, newest first (`?1` mark, `?2` owner, `?3` limit).
    tail: &'static str,
    /// An owner's listed rows up to the mark, newest first (`?1` owner, `?2` mark, `?3` limit).
    listed: &'static str,
}

/// Each connection's events.
pub(super) const EVENTS: List = List {
    catch_up: "INSERT OR IGNORE INTO connection_events (connection_id, seq)
         SELECT connection_id, seq FROM events
         WHERE seq > (SELECT seq FROM connection_events_through) ORDER BY connection_id, seq",
    advance: "UPDATE connection_events_through SET seq = COALESCE((SELECT MAX(seq) FROM events), seq)",
    mark: "SELECT seq FROM connection_events_through",
    tail: "SELECT id, type, payload, received_at, template_id FROM events
         WHERE seq > ?1 AND connection_id = ?2 ORDER BY seq DESC LIMIT ?3",
    listed: "SELECT e.id, e.type, e.payload, e.received_at, e.template_id FROM connection_events c JOIN events e ON e.seq = c.seq
         WHERE c.connection_id = ?1 AND c.seq <= ?2 ORDER BY c.seq DESC LIMIT ?3",
};

/// Each hook's attempts.
pub(super) const ATTEMPTS: List = List {
    catch_up: "INSERT OR IGNORE INTO hook_attempts (hook_id, attempt_id)
         SELECT hook_id, id FROM attempts
         WHERE id > (SELECT id FROM hook_attempts_through) ORDER BY hook_id, id",
    advance: "UPDATE hook_attempts_through SET id = COALESCE((SELECT MAX(id) FROM attempts), id)",
    mark: "SELECT id FROM hook_attempts_through",
    tail: "SELECT event_id, attempt, status_code, error, duration_ms, at FROM attempts
         WHERE id > ?1 AND hook_id = ?2 ORDER BY id DESC LIMIT ?3",
    listed: "SELECT a.event_id, a.attempt, a.status_code, a.error, a.duration_ms, a.at
         FROM hook_attempts h JOIN attempts a ON a.id = h.attempt_id
         WHERE h.hook_id = ?1 AND h.attempt_id <= ?2 ORDER BY h.attempt_id DESC LIMIT ?3",
};

/// The writer's chore that keeps `list` caught up.
pub(super) fn chore(list: &'static List) -> Box<dyn Chore> {
    Box::new(CatchUp(list))
}

struct CatchUp(&'static List);

impl Chore for CatchUp {
    fn every(&self) -> Duration {
        CATCH_UP_EVERY
    }

    fn run(&mut self, db: &Db) -> Result<(), StoreError> {
        catch_up(db, self.0)
    }
}

/// Adds every row after the mark to `list` and moves the mark to the newest one.
fn catch_up(db: &Db, list: &List) -> Result<(), StoreError> {
    db.prepare_cached(list.catch_up)?.execute([])?;
    db.prepare_cached(list.advance)?.execute([])?;
    Ok(())
}

/// A connection's newest `limit` events, newest first.
pub(super) fn events(db: &Db, connection_id: &str, limit: usize) -> Result<Vec<Event>, StoreError> {
    newest(db, &EVENTS, connection_id, limit, |r| {
        Ok(Event {
            id: r.get(0)?,
            event_type: r.get(1)?,
            payload: Bytes::from(r.get::<_, Vec<u8>>(2)?),
            received_at: r.get(3)?,
            template_id: r.get(4)?,
        })
    })
}

/// A hook's newest `limit` attempts, newest first.
pub(super) fn attempts(db: &Db, hook_id: &str, limit: usize) -> Result<Vec<Attempt>, StoreError> {
    newest(db, &ATTEMPTS, hook_id, limit, |r| {
        Ok(Attempt {
            event_id: r.get(0)?,
            attempt: r.get(1)?,
            status_code: r.get(2)?,
            error: r.get(3)?,
            duration_ms: r.get(4)?,
            at: r.get(5)?,
        })
    })
}

/// An owner's newest `limit` rows of `list`: those past the mark by a scan, the rest from the
/// list, both in one read transaction so that the mark cannot move in between.
fn newest<T>(
    db: &Db,
    list: &List,
    owner: &str,
    limit: usize,
    row: impl Fn(&Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>, StoreError> {
    let tx = db.unchecked_transaction()?;
    let mark: i64 = tx.prepare_cached(list.mark)?.query_row([], |r| r.get(0))?;
    let mut rows = tx
        .prepare_cached(list.tail)?
        .query_map(params![mark, owner, limit as i64], &row)?
        .collect::<Result<Vec<_>, _>>()?;
    let listed = tx
        .prepare_cached(list.listed)?
        .query_map(params![owner, mark, (limit - rows.len()) as i64], &row)?
        .collect::<Result<Vec<_>, _>>()?;
    rows.extend(listed);
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::super::schema::test_db as db;
    use super::*;

    /// Stores event `id` for `connection`; returns its `seq`.
    fn ingest(db: &Db, connection: &str, id: &str) -> i64 {
        db.execute(
            "INSERT INTO events (connection_id, id, type, payload, received_at) VALUES (?1, ?2, 'image.created', x'7b7d', 0)",
            [connection, id],
        )
        .unwrap();
        db.last_insert_rowid()
    }

    /// Stores a delivery of a new event `event_id` of connection `a` to `hook`, and attempt 1 of
    /// it; returns the delivery's id.
    fn attempted(db: &Db, hook: &str, event_id: &str) -> i64 {
        let seq = ingest(db, "a", event_id);
        db.execute(
            "INSERT INTO deliveries (event_seq, hook_id, connection_id, url, state, attempts, next_attempt_at, updated_at)
             VALUES (?1, ?2, 'a', 'https://example.com', 1, 1, 0, 0)",
            params![seq, hook],
        )
        .unwrap();
        let delivery = db.last_insert_rowid();
        db.execute(
            "INSERT INTO attempts (delivery_id, hook_id, event_id, attempt, status_code, duration_ms, at)
             VALUES (?1, ?2, ?3, 1, 200, 1, 0)",
            params![delivery, hook, event_id],
        )
        .unwrap();
        delivery
    }

    fn listed_events(db: &Db, connection: &str, limit: usize) -> Vec<String> {
        events(db, connection, limit).unwrap().into_iter().map(|e| e.id).collect()
    }

    fn listed_attempts(db: &Db, hook: &str, limit: usize) -> Vec<String> {
        attempts(db, hook, limit).unwrap().into_iter().map(|a| a.event_id).collect()
    }

    fn count(db: &Db, sql: &str) -> i64 {
        db.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    fn plan(db: &Db, sql: &str) -> String {
        let mut stmt = db.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let unbound = vec![rusqlite::types::Null; stmt.parameter_count()];
        let rows = stmt.query_map(rusqlite::params_from_iter(unbound), |r| r.get(3)).unwrap();
        rows.map(Result::unwrap).collect::<Vec<String>>().join("; ")
    }

    #[test]
    fn tails_are_read_by_their_key_range_and_lists_by_their_key() {
        let db = db();
        for (list, source) in [(&EVENTS, "events"), (&ATTEMPTS, "attempts")] {
            for sql in [list.catch_up, list.tail] {
                let plan = plan(&db, sql);
                assert!(
                    plan.contains(&format!("SEARCH {source} USING INTEGER PRIMARY KEY (rowid>?)")),
                    "{sql}: {plan}"
                );
            }
            let plan = plan(&db, list.listed);
            assert!(plan.contains("USING PRIMARY KEY (") && !plan.contains("SCAN"), "{}: {plan}", list.listed);
        }
    }

    /// Adds a row for `owner` to one list's source table.
    type Add = fn(&Db, &str, &str);
    /// An owner's newest rows of one list, by their event ids.
    type Listed = fn(&Db, &str, usize) -> Vec<String>;

    #[test]
    fn each_list_spans_the_caught_up_rows_and_the_tail() {
        let add_event: Add = |db, connection, id| {
            ingest(db, connection, id);
        };
        let add_attempt: Add = |db, hook, event| {
            attempted(db, hook, event);
        };
        let lists: [(&List, &str, Add, Listed, [&str; 2]); 2] = [
            (&EVENTS, "connection_events", add_event, listed_events, ["a", "b"]),
            (&ATTEMPTS, "hook_attempts", add_attempt, listed_attempts, ["h1", "h2"]),
        ];
        for (list, table, add, listed, [x, y]) in lists {
            let db = db();
            catch_up(&db, list).expect("nothing to catch up with");
            assert!(listed(&db, x, 10).is_empty());
            for (owner, id) in [(x, "1"), (y, "2"), (x, "3")] {
                add(&db, owner, id);
            }
            catch_up(&db, list).unwrap();
            for (owner, id) in [(x, "4"), (y, "5"), (x, "6")] {
                add(&db, owner, id);
            }
            assert_eq!(listed(&db, x, 10), ["6", "4", "3", "1"]);
            assert_eq!(listed(&db, x, 3), ["6", "4", "3"], "the limit holds across the mark");
            assert_eq!(listed(&db, x, 1), ["6"]);
            assert_eq!(listed(&db, y, 10), ["5", "2"]);
            catch_up(&db, list).unwrap();
            assert_eq!(listed(&db, x, 10), ["6", "4", "3", "1"], "caught up, the list is the same");
            assert_eq!(count(&db, &format!("SELECT COUNT(*) FROM {table}")), 6);
        }
    }

    #[test]
    fn an_event_after_the_newest_deleted_one_is_listed() {
        let db = db();
        ingest(&db, "a", "1");
        let deleted = ingest(&db, "b", "2");
        catch_up(&db, &EVENTS).unwrap();
        db.execute("DELETE FROM connections WHERE id = 'b'", []).unwrap();
        assert!(ingest(&db, "a", "3") > deleted, "a deleted event's seq is not handed out again");
        assert_eq!(listed_events(&db, "a", 10), ["3", "1"]);
        catch_up(&db, &EVENTS).unwrap();
        assert_eq!(listed_events(&db, "a", 10), ["3", "1"]);
    }
}
