//! Each connection's list of events (`GET /v1/events`, newest first), kept off the ingest commit.
//!
//! An index on `events (connection_id, seq)` cost every ingest a page of its own: each
//! connection's newest entries sit on a different leaf, and a commit rewrites every leaf it
//! touched. That was a quarter of the WAL frames an ingest commit wrote. The list is now a table,
//! `connection_events`, that the writer fills in bulk every [`CATCH_UP_EVERY`] inside a batch it
//! commits anyway (see `Chore` in `sqlite_writer.rs`), a connection's rows arriving together on
//! one leaf. `connection_events_through` says up to which `seq` the table is complete; the events
//! after it, a fraction of a second's worth, are found by scanning them by their `seq` range.
//! Event `seq`s are never handed out twice (`AUTOINCREMENT`), so no event can arrive under the
//! mark.

use std::time::Duration;

use bytes::Bytes;
use rusqlite::{Connection as Db, params};

use super::StoreError;
use super::sqlite_writer::Chore;
use crate::model::Event;

/// How often the list catches up with the events: the longest tail a listing scans, and the
/// pause it adds to one commit (about 2 ms at 10,000 events/s).
const CATCH_UP_EVERY: Duration = Duration::from_millis(100);

/// Lists the events after the mark, ordered for the list's leaves.
const CATCH_UP: &str = "INSERT OR IGNORE INTO connection_events (connection_id, seq)
     SELECT connection_id, seq FROM events
     WHERE seq > (SELECT seq FROM connection_events_through) ORDER BY connection_id, seq";
/// A connection's events after the mark, newest first.
const CONNECTION_TAIL: &str = "SELECT id, type, payload, received_at FROM events
     WHERE seq > ?1 AND connection_id = ?2 ORDER BY seq DESC LIMIT ?3";

/// The writer's chore that keeps the list caught up.
pub(super) fn chore() -> Box<dyn Chore> {
    Box::new(CatchUp)
}

struct CatchUp;

impl Chore for CatchUp {
    fn every(&self) -> Duration {
        CATCH_UP_EVERY
    }

    fn run(&mut self, db: &Db) -> Result<(), StoreError> {
        catch_up(db)
    }
}

/// Adds every event after the mark to `connection_events` and moves the mark to the newest one.
fn catch_up(db: &Db) -> Result<(), StoreError> {
    db.prepare_cached(CATCH_UP)?.execute([])?;
    db.prepare_cached("UPDATE connection_events_through SET seq = COALESCE((SELECT MAX(seq) FROM events), seq)")?
        .execute([])?;
    Ok(())
}

/// A connection's newest `limit` events, newest first: those past the mark by a scan, the rest
/// from the list, both in one read transaction so that the mark cannot move in between.
pub(super) fn newest(db: &Db, connection_id: &str, limit: usize) -> Result<Vec<Event>, StoreError> {
    let tx = db.unchecked_transaction()?;
    let through: i64 = tx.prepare_cached("SELECT seq FROM connection_events_through")?.query_row([], |r| r.get(0))?;
    let mut events = tx
        .prepare_cached(CONNECTION_TAIL)?
        .query_map(params![through, connection_id, limit as i64], event)?
        .collect::<Result<Vec<_>, _>>()?;
    let listed = tx
        .prepare_cached(
            "SELECT e.id, e.type, e.payload, e.received_at FROM connection_events c JOIN events e ON e.seq = c.seq
             WHERE c.connection_id = ?1 AND c.seq <= ?2 ORDER BY c.seq DESC LIMIT ?3",
        )?
        .query_map(params![connection_id, through, (limit - events.len()) as i64], event)?
        .collect::<Result<Vec<_>, _>>()?;
    events.extend(listed);
    Ok(events)
}

fn event(r: &rusqlite::Row<'_>) -> rusqlite::Result<Event> {
    Ok(Event {
        id: r.get(0)?,
        event_type: r.get(1)?,
        payload: Bytes::from(r.get::<_, Vec<u8>>(2)?),
        received_at: r.get(3)?,
    })
}

#[cfg(test)]
mod tests {
    use super::super::sqlite_schema::test_db as db;
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

    fn listed(db: &Db, connection: &str, limit: usize) -> Vec<String> {
        newest(db, connection, limit).unwrap().into_iter().map(|e| e.id).collect()
    }

    #[test]
    fn the_tail_is_read_by_its_seq_range() {
        let db = db();
        for sql in [CATCH_UP, CONNECTION_TAIL] {
            let mut stmt = db.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let unbound = vec![rusqlite::types::Null; stmt.parameter_count()];
            let rows = stmt.query_map(rusqlite::params_from_iter(unbound), |r| r.get(3)).unwrap();
            let plan: Vec<String> = rows.map(Result::unwrap).collect();
            let plan = plan.join("; ");
            assert!(plan.contains("SEARCH events USING INTEGER PRIMARY KEY (rowid>?)"), "{sql}: {plan}");
        }
    }

    #[test]
    fn a_list_spans_the_caught_up_events_and_the_tail() {
        let db = db();
        catch_up(&db).expect("nothing to catch up with");
        assert!(listed(&db, "a", 10).is_empty());
        for (connection, id) in [("a", "1"), ("b", "2"), ("a", "3")] {
            ingest(&db, connection, id);
        }
        catch_up(&db).unwrap();
        for (connection, id) in [("a", "4"), ("b", "5"), ("a", "6")] {
            ingest(&db, connection, id);
        }
        assert_eq!(listed(&db, "a", 10), ["6", "4", "3", "1"]);
        assert_eq!(listed(&db, "a", 3), ["6", "4", "3"], "the limit holds across the mark");
        assert_eq!(listed(&db, "a", 1), ["6"]);
        assert_eq!(listed(&db, "b", 10), ["5", "2"]);
        catch_up(&db).unwrap();
        assert_eq!(listed(&db, "a", 10), ["6", "4", "3", "1"], "caught up, the list is the same");
    }

    #[test]
    fn an_event_after_the_newest_deleted_one_is_listed() {
        let db = db();
        ingest(&db, "a", "1");
        let deleted = ingest(&db, "b", "2");
        catch_up(&db).unwrap();
        db.execute("DELETE FROM connections WHERE id = 'b'", []).unwrap();
        assert!(ingest(&db, "a", "3") > deleted, "a deleted event's seq is not handed out again");
        assert_eq!(listed(&db, "a", 10), ["3", "1"]);
        catch_up(&db).unwrap();
        assert_eq!(listed(&db, "a", 10), ["3", "1"]);
    }
}
