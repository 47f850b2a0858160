//! The events' ids, for the duplicate check, kept off the ingest commit.
//!
//! A unique index on `events (connection_id, id)` cost every ingest a 4 KiB page of its own:
//! ids are the sender's, so each lands on a leaf of its own, and those pages were half the WAL
//! frames of an ingest commit. The ids now live in `event_ids`, which the writer fills in sorted
//! runs: the ids committed since are held in memory (the *tail*), and a chore of the writer
//! moves the next slice of them, in key order, every [`SWEEP_EVERY`] (see `Chore` in
//! `writer.rs`). A slice covers a range of keys, so a sweep rewrites each leaf of that
//! range once for all the ids that fall on it. An id is a duplicate when it is in the tail or
//! in the table.
//!
//! `event_ids_through` holds a `seq` up to which every event's id is in the table. It moves when
//! a pass of sweeps has gone over the whole key range: every id the tail held when the pass
//! began has been moved by then. At start, and after a rolled-back batch (which may have undone
//! ids the tail holds, or a sweep that took some out of it), the tail is read again from the
//! events after that mark. Event `seq`s are never handed out twice (`AUTOINCREMENT`), so an
//! event after the mark cannot hide under it.

use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rusqlite::{Connection as Db, params};

use super::writer::Chore;
use crate::store::StoreError;

/// How often a slice of the tail is moved into the table.
const SWEEP_EVERY: Duration = Duration::from_millis(100);
/// A pass over the whole tail takes about this many sweeps: the more, the more ids share each
/// leaf a sweep rewrites, and the more ids wait in memory (and are read again at start).
const SWEEPS_PER_PASS: usize = 16;

/// An id as one string that sorts as the table's `(connection_id, id)` key does: the
/// connection's id, a NUL, the event's id. Connection ids never hold a NUL (they are
/// `[A-Za-z0-9_-]`), so the first NUL splits the two again.
type Key = String;

/// An id found in neither the tail nor the table: what [`EventIds::add`] takes once its event
/// is inserted.
pub(super) struct NewId(Key);

/// The duplicate check's state, shared by the writer's ingest jobs and its sweep chore (all on
/// the writer thread).
#[derive(Clone)]
pub(super) struct EventIds(Arc<Mutex<Ids>>);

struct Ids {
    /// Ids committed (or being committed in the open batch) that are not in the table yet.
    tail: BTreeSet<Key>,
    /// The pass under way, if one is.
    pass: Option<Pass>,
    /// A batch rolled back since the tail was read: it is read again before its next use.
    stale: bool,
}

/// A pass of sweeps over the tail's key range.
struct Pass {
    /// The newest `seq` when the pass began: once it is over, every event up to it has its id
    /// in the table.
    from: i64,
    /// Ids moved per sweep: a share of the tail as it was when the pass began, or as it has
    /// grown since (the pass then speeds up, so that it ends).
    slice: usize,
    /// The last key moved.
    cursor: Option<Key>,
}

impl EventIds {
    /// Reads the tail: the ids of the events after the mark.
    pub(super) fn load(db: &Db) -> Result<Self, StoreError> {
        Ok(Self(Arc::new(Mutex::new(Ids::load(db)?))))
    }

    /// `None` if `id` was accepted for the connection before.
    pub(super) fn check(&self, db: &Db, connection_id: &str, id: &str) -> Result<Option<NewId>, StoreError> {
        let ids = self.fresh(db)?;
        let key = key(connection_id, id);
        if ids.tail.contains(&key) {
            return Ok(None);
        }
        let mut stmt = db.prepare_cached("SELECT 1 FROM event_ids WHERE connection_id = ?1 AND id = ?2")?;
        Ok((!stmt.exists(params![connection_id, id])?).then_some(NewId(key)))
    }

    /// Notes the id of an event just inserted in the open batch.
    pub(super) fn add(&self, id: NewId) {
        self.lock().tail.insert(id.0);
    }

    /// A connection is being removed: its ids leave the tail now (so no sweep puts them in the
    /// table after the reaper has emptied it); the table's go in steps (`removals.rs`).
    pub(super) fn forget_connection(&self, connection_id: &str) {
        self.lock().tail.retain(|key| split(key).0 != connection_id);
    }

    /// The chore that moves the tail into the table.
    pub(super) fn sweep(&self) -> Box<dyn Chore> {
        Box::new(Sweep(self.clone()))
    }

    fn lock(&self) -> MutexGuard<'_, Ids> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The state, read again first if a rolled-back batch made it stale.
    fn fresh(&self, db: &Db) -> Result<MutexGuard<'_, Ids>, StoreError> {
        let mut ids = self.lock();
        if ids.stale {
            *ids = Ids::load(db)?;
        }
        Ok(ids)
    }
}

impl Ids {
    fn load(db: &Db) -> Result<Self, StoreError> {
        let mut stmt =
            db.prepare_cached("SELECT connection_id, id FROM events WHERE seq > (SELECT seq FROM event_ids_through)")?;
        let tail = stmt
            .query_map([], |r| Ok(key(r.get_ref(0)?.as_str()?, r.get_ref(1)?.as_str()?)))?
            .collect::<Result<_, _>>()?;
        Ok(Self { tail, pass: None, stale: false })
    }

    /// Moves the next slice of the tail into the table, and the mark once a pass is over.
    fn sweep(&mut self, db: &Db) -> Result<(), StoreError> {
        let mut pass = match self.pass.take() {
            Some(pass) => pass,
            None => Pass {
                from: db.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))?,
                slice: 0,
                cursor: None,
            },
        };
        pass.slice = pass.slice.max(self.tail.len().div_ceil(SWEEPS_PER_PASS));
        let after = pass.cursor.clone().map_or(Bound::Unbounded, Bound::Excluded);
        let slice: Vec<Key> = self.tail.range((after, Bound::Unbounded)).take(pass.slice).cloned().collect();
        let mut insert = db.prepare_cached("INSERT OR IGNORE INTO event_ids (connection_id, id) VALUES (?1, ?2)")?;
        for key in &slice {
            let (connection_id, id) = split(key);
            insert.execute(params![connection_id, id])?;
        }
        let last = slice.last().cloned();
        let more = last
            .as_ref()
            .is_some_and(|last| self.tail.range((Bound::Excluded(last.clone()), Bound::Unbounded)).next().is_some());
        if !more {
            db.prepare_cached("UPDATE event_ids_through SET seq = ?1")?.execute([pass.from])?;
        }
        // The table is written; only now does the tail let go of what it holds.
        for key in &slice {
            self.tail.remove(key);
        }
        self.pass = more.then_some(Pass { cursor: last, ..pass });
        Ok(())
    }
}

/// The key of event `id` of a connection.
fn key(connection_id: &str, id: &str) -> Key {
    format!("{connection_id}\0{id}")
}

/// A key's connection id and event id.
fn split(key: &str) -> (&str, &str) {
    key.split_once('\0').expect("a key joins two ids with a NUL")
}

/// The writer's chore that moves the tail into the table.
struct Sweep(EventIds);

impl Chore for Sweep {
    fn every(&self) -> Duration {
        SWEEP_EVERY
    }

    fn run(&mut self, db: &Db) -> Result<(), StoreError> {
        self.0.fresh(db)?.sweep(db)
    }

    fn rolled_back(&mut self) {
        self.0.lock().stale = true;
    }
}

#[cfg(test)]
mod tests {
    use super::super::schema::test_db as db;
    use super::*;

    /// Stores event `id` for `connection` as an ingest does, unless it is a duplicate; whether
    /// it was new.
    fn ingest(db: &Db, ids: &EventIds, connection: &str, id: &str) -> bool {
        let Some(new) = ids.check(db, connection, id).unwrap() else { return false };
        db.execute(
            "INSERT INTO events (connection_id, id, type, payload, received_at) VALUES (?1, ?2, 'image.created', x'7b7d', 0)",
            [connection, id],
        )
        .unwrap();
        ids.add(new);
        true
    }

    fn tail(ids: &EventIds) -> usize {
        ids.lock().tail.len()
    }

    fn in_table(db: &Db) -> i64 {
        db.query_row("SELECT COUNT(*) FROM event_ids", [], |r| r.get(0)).unwrap()
    }

    fn mark(db: &Db) -> i64 {
        db.query_row("SELECT seq FROM event_ids_through", [], |r| r.get(0)).unwrap()
    }

    /// Sweeps until a pass is over; how many sweeps that took.
    fn sweep_a_pass(db: &Db, ids: &EventIds) -> usize {
        let mut chore = ids.sweep();
        for n in 1..=10 * SWEEPS_PER_PASS {
            chore.run(db).unwrap();
            if ids.lock().pass.is_none() {
                return n;
            }
        }
        panic!("a pass never ended");
    }

    #[test]
    fn an_id_is_a_duplicate_in_the_tail_in_the_table_and_after_a_restart() {
        let db = db();
        let ids = EventIds::load(&db).unwrap();
        assert!(ingest(&db, &ids, "a", "1"));
        assert!(!ingest(&db, &ids, "a", "1"), "in the tail");
        assert!(ingest(&db, &ids, "b", "1"), "ids are per connection");
        sweep_a_pass(&db, &ids);
        assert_eq!((tail(&ids), in_table(&db)), (0, 2));
        assert!(!ingest(&db, &ids, "a", "1"), "in the table");
        assert!(ingest(&db, &ids, "a", "2"));
        let restarted = EventIds::load(&db).unwrap();
        assert_eq!(tail(&restarted), 1, "only the events after the mark are read again");
        assert!(!ingest(&db, &restarted, "a", "2"), "read again from the events");
        assert!(!ingest(&db, &restarted, "b", "1"));
    }

    #[test]
    fn a_pass_moves_the_tail_in_slices_and_then_the_mark() {
        let db = db();
        let ids = EventIds::load(&db).unwrap();
        for n in 0..160 {
            ingest(&db, &ids, if n % 2 == 0 { "a" } else { "b" }, &format!("{n:03}"));
        }
        let mut chore = ids.sweep();
        chore.run(&db).unwrap();
        assert_eq!((tail(&ids), in_table(&db)), (150, 10), "a sixteenth of the tail per sweep");
        assert_eq!(mark(&db), 0, "the pass is not over");
        // Behind the cursor: this pass does not reach it, so the mark must stay below it.
        ingest(&db, &ids, "a", "000x");
        let behind: i64 = db.query_row("SELECT MAX(seq) FROM events", [], |r| r.get(0)).unwrap();
        let sweeps = sweep_a_pass(&db, &ids);
        assert_eq!(sweeps, SWEEPS_PER_PASS - 1, "the slice is a share of the tail the pass began with");
        assert_eq!(mark(&db), behind - 1, "every event before the pass began");
        assert_eq!(tail(&ids), 1, "the id behind the cursor waits for the next pass");
        sweep_a_pass(&db, &ids);
        assert_eq!((tail(&ids), in_table(&db), mark(&db)), (0, 161, behind));
    }

    #[test]
    fn a_pass_keeps_up_with_a_tail_that_grows() {
        let db = db();
        let ids = EventIds::load(&db).unwrap();
        for n in 0..16 {
            ingest(&db, &ids, "a", &format!("{n:04}"));
        }
        let mut chore = ids.sweep();
        chore.run(&db).unwrap();
        for n in 16..1600 {
            ingest(&db, &ids, "b", &format!("{n:04}"));
        }
        let sweeps = sweep_a_pass(&db, &ids);
        assert!(sweeps <= SWEEPS_PER_PASS, "{sweeps} sweeps: a pass moving one id at a time would never end");
        assert_eq!(tail(&ids), 0, "the new ids were ahead of the cursor");
    }

    #[test]
    fn after_a_rollback_the_tail_is_read_again() {
        let db = db();
        let ids = EventIds::load(&db).unwrap();
        ingest(&db, &ids, "a", "kept");
        db.execute_batch("BEGIN").unwrap();
        ingest(&db, &ids, "a", "undone");
        ids.sweep().run(&db).unwrap();
        db.execute_batch("ROLLBACK").unwrap();
        ids.sweep().rolled_back();
        assert!(ingest(&db, &ids, "a", "undone"), "its insert was rolled back: it is new");
        assert!(!ingest(&db, &ids, "a", "kept"), "the sweep that moved it was rolled back too");
    }

    #[test]
    fn a_removed_connections_ids_leave_the_tail_at_once() {
        let db = db();
        let ids = EventIds::load(&db).unwrap();
        ingest(&db, &ids, "b", "swept");
        sweep_a_pass(&db, &ids);
        ingest(&db, &ids, "b", "tail");
        ingest(&db, &ids, "a", "tail");
        ids.forget_connection("b");
        assert_eq!((tail(&ids), in_table(&db)), (1, 1), "the table's ids go in steps (`removals.rs`)");
        sweep_a_pass(&db, &ids);
        assert_eq!(in_table(&db), 2, "the sweep moves only what is left of the tail");
    }
}
