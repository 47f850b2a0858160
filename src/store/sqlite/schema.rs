//! The SQLite schema as an ordered list of migrations; `PRAGMA user_version` counts those applied.
//!
//! Delivery states: 0 pending, 1 delivered, 2 dead, and 3 in flight — handed off at ingest and
//! leased until its first attempt is recorded (see `IN_FLIGHT` in `sqlite/mod.rs`).
//!
//! Migrations run with foreign keys off (a rebuilt table's old copy must drop without
//! cascading), and the references are checked once they have all run.

use rusqlite::{Connection as Db, OptionalExtension, params};

use super::rows::secrets_json;
use crate::store::{StoreError, fresh_hook_keys};

/// Migration `i` brings the schema from version `i` to `i + 1`.
pub(super) const MIGRATIONS: &[&str] = &[
    r"
CREATE TABLE connections (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    api_key_hash BLOB NOT NULL UNIQUE,
    secrets      TEXT NOT NULL,
    ingest_rate  INTEGER,
    created_at   INTEGER NOT NULL
);
CREATE TABLE hooks (
    id            TEXT PRIMARY KEY,
    connection_id TEXT NOT NULL REFERENCES connections(id) ON DELETE CASCADE,
    url           TEXT NOT NULL,
    event         TEXT NOT NULL,
    template_id   TEXT NOT NULL DEFAULT '',
    created_at    INTEGER NOT NULL,
    UNIQUE (connection_id, url, event, template_id)
);
CREATE TABLE events (
    seq           INTEGER PRIMARY KEY,
    connection_id TEXT NOT NULL REFERENCES connections(id) ON DELETE CASCADE,
    id            TEXT NOT NULL,
    type          TEXT NOT NULL,
    payload       BLOB NOT NULL,
    received_at   INTEGER NOT NULL,
    UNIQUE (connection_id, id)
);
CREATE INDEX events_by_connection ON events (connection_id, seq);
CREATE TABLE deliveries (
    id              INTEGER PRIMARY KEY,
    event_seq       INTEGER NOT NULL REFERENCES events(seq) ON DELETE CASCADE,
    hook_id         TEXT NOT NULL REFERENCES hooks(id) ON DELETE CASCADE,
    connection_id   TEXT NOT NULL,
    url             TEXT NOT NULL,
    state           INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    lease_until     INTEGER,
    last_status     INTEGER,
    last_error      TEXT,
    updated_at      INTEGER NOT NULL
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE state = 0;
CREATE INDEX deliveries_pending_by_hook ON deliveries (hook_id, lease_until) WHERE state = 0;
CREATE INDEX deliveries_by_hook ON deliveries (hook_id);
CREATE INDEX deliveries_by_event ON deliveries (event_seq);
CREATE INDEX deliveries_dead ON deliveries (connection_id, id) WHERE state = 2;
CREATE TABLE attempts (
    id          INTEGER PRIMARY KEY,
    delivery_id INTEGER NOT NULL REFERENCES deliveries(id) ON DELETE CASCADE,
    hook_id     TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    status_code INTEGER,
    error       TEXT,
    duration_ms INTEGER NOT NULL,
    at          INTEGER NOT NULL
);
CREATE INDEX attempts_by_hook ON attempts (hook_id, id);
CREATE INDEX attempts_by_delivery ON attempts (delivery_id);
",
    r"
CREATE INDEX deliveries_in_flight ON deliveries (lease_until) WHERE state = 3;
DROP INDEX deliveries_pending_by_hook;
CREATE INDEX deliveries_pending_by_hook ON deliveries (hook_id, lease_until, next_attempt_at) WHERE state = 0;
",
    // Deliveries no longer reference their hook: an index on `hook_id` over every delivery was
    // the one the foreign key needed, and it cost a page at a random place in each ingest
    // commit per delivery. A detach now deletes the hook's deliveries by the narrower indexes
    // (see `detach_hook` in `sqlite/mod.rs`); a connection's go with its events.
    r"
CREATE TABLE deliveries_new (
    id              INTEGER PRIMARY KEY,
    event_seq       INTEGER NOT NULL REFERENCES events(seq) ON DELETE CASCADE,
    hook_id         TEXT NOT NULL,
    connection_id   TEXT NOT NULL,
    url             TEXT NOT NULL,
    state           INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    lease_until     INTEGER,
    last_status     INTEGER,
    last_error      TEXT,
    updated_at      INTEGER NOT NULL
);
INSERT INTO deliveries_new SELECT * FROM deliveries;
DROP TABLE deliveries;
ALTER TABLE deliveries_new RENAME TO deliveries;
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE state = 0;
CREATE INDEX deliveries_pending_by_hook ON deliveries (hook_id, lease_until, next_attempt_at) WHERE state = 0;
CREATE INDEX deliveries_by_event ON deliveries (event_seq);
CREATE INDEX deliveries_dead ON deliveries (connection_id, id) WHERE state = 2;
CREATE INDEX deliveries_in_flight ON deliveries (lease_until) WHERE state = 3;
",
    // A connection's event list is filled in bulk off the ingest commit, instead of by an index
    // every ingest paid a page for (see `lists.rs`). Its rows go with their
    // connection; `connection_events_through` holds the one `seq` up to which it is complete.
    r"
CREATE TABLE connection_events (
    connection_id TEXT NOT NULL REFERENCES connections(id) ON DELETE CASCADE,
    seq           INTEGER NOT NULL,
    PRIMARY KEY (connection_id, seq)
) WITHOUT ROWID;
CREATE TABLE connection_events_through (seq INTEGER NOT NULL);
INSERT INTO connection_events SELECT connection_id, seq FROM events;
INSERT INTO connection_events_through SELECT COALESCE(MAX(seq), 0) FROM events;
DROP INDEX events_by_connection;
",
    // The duplicate check no longer has a unique index on `events`: each ingest paid a page at
    // a random place for it. The ids go to `event_ids` in sorted runs instead (see
    // `event_ids.rs`), complete up to `event_ids_through`. The rebuilt `events` hands no
    // `seq` out twice, so that nothing new arrives under either list's mark.
    r"
CREATE TABLE events_new (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    connection_id TEXT NOT NULL REFERENCES connections(id) ON DELETE CASCADE,
    id            TEXT NOT NULL,
    type          TEXT NOT NULL,
    payload       BLOB NOT NULL,
    received_at   INTEGER NOT NULL
);
INSERT INTO events_new SELECT * FROM events;
DROP TABLE events;
ALTER TABLE events_new RENAME TO events;
CREATE TABLE event_ids (
    connection_id TEXT NOT NULL,
    id            TEXT NOT NULL,
    PRIMARY KEY (connection_id, id)
) WITHOUT ROWID;
CREATE TABLE event_ids_through (seq INTEGER NOT NULL);
INSERT INTO event_ids SELECT connection_id, id FROM events;
INSERT INTO event_ids_through SELECT COALESCE(MAX(seq), 0) FROM events;
",
    // A hook's attempts are listed in bulk off the commit, instead of by an index every commit
    // paid a page per hook for (see `lists.rs`), complete up to `hook_attempts_through`.
    // The rebuilt `attempts` hands no id out twice, so that nothing new arrives under the mark.
    r"
CREATE TABLE attempts_new (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id INTEGER NOT NULL REFERENCES deliveries(id) ON DELETE CASCADE,
    hook_id     TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    status_code INTEGER,
    error       TEXT,
    duration_ms INTEGER NOT NULL,
    at          INTEGER NOT NULL
);
INSERT INTO attempts_new SELECT * FROM attempts;
DROP TABLE attempts;
ALTER TABLE attempts_new RENAME TO attempts;
CREATE INDEX attempts_by_delivery ON attempts (delivery_id);
CREATE TABLE hook_attempts (
    hook_id    TEXT NOT NULL,
    attempt_id INTEGER NOT NULL,
    PRIMARY KEY (hook_id, attempt_id)
) WITHOUT ROWID;
CREATE TABLE hook_attempts_through (id INTEGER NOT NULL);
INSERT INTO hook_attempts SELECT hook_id, id FROM attempts;
INSERT INTO hook_attempts_through SELECT COALESCE(MAX(id), 0) FROM attempts;
",
    // Stencil's own payloads name no template: the ingest URL's `template_id` does, and it is
    // kept with the event. Connections choose how Stencil authenticates; hooks get the keys
    // that sign their deliveries (hooks made before this version get theirs at the next
    // start, see `fill_hook_secrets`).
    r"
ALTER TABLE events ADD COLUMN template_id TEXT;
ALTER TABLE connections ADD COLUMN ingest_auth TEXT NOT NULL DEFAULT 'signature';
ALTER TABLE hooks ADD COLUMN secrets TEXT NOT NULL DEFAULT '[]';
",
    // `/readyz` proves a commit can happen after one failed (a full disk) by writing here: a
    // write that changes no byte is skipped by SQLite, so it could not tell.
    r"
CREATE TABLE write_probe (at INTEGER NOT NULL);
INSERT INTO write_probe VALUES (0);
",
    // Deleting a connection or detaching a hook queues what is left of it here and deletes it
    // in steps (`removals.rs`); a connection being removed keeps its row, marked, until then.
    r"
ALTER TABLE connections ADD COLUMN removing INTEGER NOT NULL DEFAULT 0;
CREATE TABLE removals (
    kind TEXT NOT NULL,
    id   TEXT NOT NULL,
    PRIMARY KEY (kind, id)
) WITHOUT ROWID;
",
    // Hook health: a hook's failure streak, pause and auto-disable are stored with it, so they
    // hold across restarts. Few hooks are unwell at a time; the partial index lists them.
    r"
ALTER TABLE hooks ADD COLUMN consecutive_failures INTEGER NOT NULL DEFAULT 0;
ALTER TABLE hooks ADD COLUMN failing_since INTEGER;
ALTER TABLE hooks ADD COLUMN paused_until INTEGER;
ALTER TABLE hooks ADD COLUMN last_success_at INTEGER;
ALTER TABLE hooks ADD COLUMN disabled_at INTEGER;
CREATE INDEX hooks_unwell ON hooks (id) WHERE consecutive_failures > 0 OR paused_until IS NOT NULL OR disabled_at IS NOT NULL;
",
    // Events received per connection and hour (ms since the epoch / 3,600,000), for the
    // operator view; added to from memory every few seconds (`event_counts.rs`).
    r"
CREATE TABLE event_counts (
    connection_id TEXT NOT NULL,
    hour          INTEGER NOT NULL,
    events        INTEGER NOT NULL,
    PRIMARY KEY (connection_id, hour)
) WITHOUT ROWID;
",
];

pub(super) fn migrate(db: &mut Db) -> Result<(), StoreError> {
    let version: usize = db.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > MIGRATIONS.len() {
        return Err(StoreError::Corrupt(format!(
            "schema version {version} is newer than this build knows ({})",
            MIGRATIONS.len()
        )));
    }
    if version == MIGRATIONS.len() {
        return Ok(());
    }
    db.execute_batch("PRAGMA foreign_keys = OFF")?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = db.transaction()?;
        tx.execute_batch(sql)?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))?;
        tx.commit()?;
    }
    // Reads every reference in the file: once, after migrating, never at an ordinary start.
    let broken: Option<String> = db.query_row("PRAGMA foreign_key_check", [], |r| r.get(0)).optional()?;
    if let Some(table) = broken {
        return Err(StoreError::Corrupt(format!("a row of {table} refers to one that does not exist")));
    }
    db.execute_batch("PRAGMA foreign_keys = ON")?;
    Ok(())
}

/// Gives every hook without a signing key (one attached before hooks had keys) a key of its own.
pub(super) fn fill_hook_secrets(db: &Db) -> Result<(), StoreError> {
    let keyless: Vec<String> = db
        .prepare("SELECT id FROM hooks WHERE secrets = '[]'")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut fill = db.prepare("UPDATE hooks SET secrets = ?2 WHERE id = ?1")?;
    for id in keyless {
        fill.execute(params![id, secrets_json(&fresh_hook_keys())?])?;
    }
    Ok(())
}

/// A database at the current schema with connections `a` and `b`, for unit tests of what is
/// built on the schema.
#[cfg(test)]
pub(super) fn test_db() -> rusqlite::Connection {
    let db = rusqlite::Connection::open_in_memory().unwrap();
    for sql in MIGRATIONS {
        db.execute_batch(sql).unwrap();
    }
    db.execute_batch(
        "PRAGMA foreign_keys = ON;
         INSERT INTO connections VALUES ('a', 'a', x'01', '[]', NULL, 0, 'signature', 0), ('b', 'b', x'02', '[]', NULL, 0, 'signature', 0);",
    )
    .unwrap();
    db
}
