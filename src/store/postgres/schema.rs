//! The PostgreSQL schema as an ordered list of migrations; `relay_schema.version` counts those
//! applied. Applied under a transaction-scoped advisory lock, so instances starting together
//! migrate once.

/// Advisory lock key that serialises migrations across instances.
pub(super) const MIGRATION_LOCK: i64 = 0x5265_6c61_7953_6368;

/// Migration `i` brings the schema from version `i` to `i + 1`.
pub(super) const MIGRATIONS: &[&str] = &[
    r"
CREATE TABLE connections (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    api_key_hash BYTEA NOT NULL UNIQUE,
    secrets      TEXT NOT NULL,
    ingest_rate  INTEGER,
    created_at   BIGINT NOT NULL
);
CREATE TABLE hooks (
    id            TEXT PRIMARY KEY,
    connection_id TEXT NOT NULL REFERENCES connections(id) ON DELETE CASCADE,
    url           TEXT NOT NULL,
    event         TEXT NOT NULL,
    template_id   TEXT NOT NULL DEFAULT '',
    created_at    BIGINT NOT NULL,
    UNIQUE (connection_id, url, event, template_id)
);
CREATE TABLE events (
    seq           BIGSERIAL PRIMARY KEY,
    connection_id TEXT NOT NULL REFERENCES connections(id) ON DELETE CASCADE,
    id            TEXT NOT NULL,
    type          TEXT NOT NULL,
    payload       BYTEA NOT NULL,
    received_at   BIGINT NOT NULL,
    UNIQUE (connection_id, id)
);
CREATE INDEX events_by_connection ON events (connection_id, seq);
CREATE TABLE deliveries (
    id              BIGSERIAL PRIMARY KEY,
    event_seq       BIGINT NOT NULL REFERENCES events(seq) ON DELETE CASCADE,
    hook_id         TEXT NOT NULL REFERENCES hooks(id) ON DELETE CASCADE,
    connection_id   TEXT NOT NULL,
    url             TEXT NOT NULL,
    state           INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    lease_until     BIGINT,
    last_status     INTEGER,
    last_error      TEXT,
    updated_at      BIGINT NOT NULL
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE state = 0;
CREATE INDEX deliveries_pending_by_hook ON deliveries (hook_id, lease_until) WHERE state = 0;
CREATE INDEX deliveries_by_hook ON deliveries (hook_id);
CREATE INDEX deliveries_by_event ON deliveries (event_seq);
CREATE INDEX deliveries_dead ON deliveries (connection_id, id) WHERE state = 2;
CREATE TABLE attempts (
    id          BIGSERIAL PRIMARY KEY,
    delivery_id BIGINT NOT NULL REFERENCES deliveries(id) ON DELETE CASCADE,
    hook_id     TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    status_code INTEGER,
    error       TEXT,
    duration_ms BIGINT NOT NULL,
    at          BIGINT NOT NULL
);
CREATE INDEX attempts_by_hook ON attempts (hook_id, id);
CREATE INDEX attempts_by_delivery ON attempts (delivery_id);
CREATE TABLE hook_leases (
    hook_id TEXT PRIMARY KEY REFERENCES hooks(id) ON DELETE CASCADE,
    owner   TEXT NOT NULL,
    until   BIGINT NOT NULL
);
",
    // Leases of deliveries live in the claiming instance's memory since this version, so
    // `lease_until` is no longer written (the column stays for instances of the previous version
    // during a rolling upgrade, which still read it); a claim looks up a leased hook's due
    // deliveries by time.
    r"
DROP INDEX deliveries_pending_by_hook;
CREATE INDEX deliveries_due_by_hook ON deliveries (hook_id, next_attempt_at) WHERE state = 0;
",
    // The event's template (from the ingest URL when Stencil's payload names none), how each
    // connection's ingest is authenticated, and the keys that sign each hook's deliveries (hooks
    // made before this version get theirs at the next start, see `fill_hook_secrets`).
    r"
ALTER TABLE events ADD COLUMN template_id TEXT;
ALTER TABLE connections ADD COLUMN ingest_auth TEXT NOT NULL DEFAULT 'signature';
ALTER TABLE hooks ADD COLUMN secrets TEXT NOT NULL DEFAULT '[]';
",
    // A deleted connection or detached hook is marked and hidden at once, and its rows are
    // deleted in steps (`removals.rs`), so that one large backlog is not one long statement.
    r"
ALTER TABLE connections ADD COLUMN removing BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE hooks ADD COLUMN removing BOOLEAN NOT NULL DEFAULT false;
CREATE TABLE removals (
    kind TEXT NOT NULL,
    id   TEXT NOT NULL,
    PRIMARY KEY (kind, id)
);
",
    // Hook health: a hook's failure streak, pause and auto-disable are stored with it, so every
    // instance's claims respect them and they hold across restarts. Few hooks are unwell at a
    // time; the partial index lists them.
    r"
ALTER TABLE hooks ADD COLUMN consecutive_failures INTEGER NOT NULL DEFAULT 0;
ALTER TABLE hooks ADD COLUMN failing_since BIGINT;
ALTER TABLE hooks ADD COLUMN paused_until BIGINT;
ALTER TABLE hooks ADD COLUMN last_success_at BIGINT;
ALTER TABLE hooks ADD COLUMN disabled_at BIGINT;
CREATE INDEX hooks_unwell ON hooks (id) WHERE consecutive_failures > 0 OR paused_until IS NOT NULL OR disabled_at IS NOT NULL;
",
    // Events received per connection and hour (ms since the epoch / 3,600,000), for the
    // operator view; each instance adds to it from memory every few seconds (`event_counts.rs`).
    r"
CREATE TABLE event_counts (
    connection_id TEXT NOT NULL,
    hour          BIGINT NOT NULL,
    events        BIGINT NOT NULL,
    PRIMARY KEY (connection_id, hour)
);
",
    // Most deliveries succeed at their first attempt: that attempt is kept in the delivery's
    // row (`sole_attempt_ms`, its duration; status and time are the row's) instead of as an
    // attempt row, which saved a row, three index entries and a foreign-key check per event.
    // A hook's attempts are listed from both, newest first, hence deliveries by hook and id.
    r"
ALTER TABLE deliveries ADD COLUMN sole_attempt_ms BIGINT;
CREATE INDEX deliveries_by_hook_newest ON deliveries (hook_id, id);
DROP INDEX deliveries_by_hook;
",
    // A delivery handed off at ingest is stored in flight (state 3, `HANDED`) with the lease it
    // was handed under, outside the two indexes of waiting deliveries that only claims read;
    // claims put one back to waiting once its lease has run out unrecorded, found here.
    r"
CREATE INDEX deliveries_handed ON deliveries (lease_until) WHERE state = 3;
",
];

/// The channel on which registry changes are announced (payload: the connection id).
pub(super) const CHANGES_CHANNEL: &str = "relay_changes";
