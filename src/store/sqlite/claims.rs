//! What the SQLite store does to deliveries in the writer thread: claims (by name or any due),
//! recording attempts, taking back hand-offs whose lease ran out, and deleting a detached hook's.

use rusqlite::{Connection as Db, Row, params};

use super::IN_FLIGHT;
use super::health::store_streak;
use crate::model::AttemptRecord;
use crate::store::{Claim, DEAD, PENDING, StoreError, stored_state};

/// A delivery a claim just leased, before its event is read.
pub(super) struct Leased {
    pub(super) id: i64,
    pub(super) connection_id: String,
    pub(super) hook_id: String,
    pub(super) url: String,
    pub(super) attempts: u32,
    pub(super) event_seq: i64,
}

impl Leased {
    const COLUMNS: &str = "id, connection_id, hook_id, url, attempts, event_seq";

    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: r.get(0)?,
            connection_id: r.get(1)?,
            hook_id: r.get(2)?,
            url: r.get(3)?,
            attempts: r.get(4)?,
            event_seq: r.get(5)?,
        })
    }
}

/// Leases (into `leased`) the due, unleased deliveries of the named hooks, oldest first and at
/// most the number given for each, with one index range per hook; and reports when each hook's
/// next waiting delivery is due.
pub(super) fn claim_hooks(
    db: &Db,
    claim: &Claim,
    hooks: &[(String, usize)],
    leased: &mut Vec<Leased>,
) -> Result<Vec<Option<i64>>, StoreError> {
    let mut lease = db.prepare_cached(&format!(
        "UPDATE OR FAIL deliveries SET lease_until = ?1 WHERE id IN (
            SELECT id FROM deliveries
            WHERE hook_id = ?2 AND state = ?3 AND lease_until IS NULL AND next_attempt_at <= ?4
            ORDER BY next_attempt_at, id LIMIT ?5)
         RETURNING {}",
        Leased::COLUMNS
    ))?;
    let mut next = db.prepare_cached(
        "SELECT MIN(next_attempt_at) FROM deliveries WHERE hook_id = ?1 AND state = ?2 AND lease_until IS NULL",
    )?;
    // A hook detached a moment ago may still be named: what is left of it is being removed. A
    // disabled hook's replayed dead letters wait until it is enabled.
    let mut exists = db.prepare_cached("SELECT 1 FROM hooks WHERE id = ?1 AND disabled_at IS NULL")?;
    let mut next_due = Vec::with_capacity(hooks.len());
    for (hook, limit) in hooks {
        if !exists.exists([hook])? {
            next_due.push(None);
            continue;
        }
        let room = claim.limit.saturating_sub(leased.len()).min(*limit);
        if room > 0 {
            let params = params![claim.lease_until, hook, PENDING, claim.now, room as i64];
            for row in lease.query_map(params, Leased::from_row)? {
                leased.push(row?);
            }
        }
        next_due.push(next.query_row(params![hook, PENDING], |r| r.get(0))?);
    }
    Ok(next_due)
}

pub(super) fn record(db: &Db, records: &[AttemptRecord]) -> Result<(), StoreError> {
    let mut update = db.prepare_cached(
        "UPDATE OR FAIL deliveries SET attempts = ?2, state = ?3, next_attempt_at = ?4, lease_until = NULL,
                last_status = ?5, last_error = ?6, updated_at = ?7 WHERE id = ?1 AND attempts < ?2 AND state <> ?8",
    )?;
    let mut insert = db.prepare_cached(
        "INSERT INTO attempts (delivery_id, hook_id, event_id, attempt, status_code, error, duration_ms, at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    for rec in records {
        let a = &rec.attempt;
        let (state, next_at) = stored_state(rec.next, a.at);
        // A delivery its hook's disabling dead-lettered meanwhile stays a dead letter.
        let updated =
            update.execute(params![rec.delivery_id, a.attempt, state, next_at, a.status_code, a.error, a.at, DEAD])?;
        if updated == 1 {
            insert.execute(params![
                rec.delivery_id,
                rec.hook_id,
                a.event_id,
                a.attempt,
                a.status_code,
                a.error,
                a.duration_ms as i64,
                a.at
            ])?;
        }
        if let Some(streak) = &rec.streak {
            store_streak(db, &rec.hook_id, streak)?;
        }
    }
    Ok(())
}

/// Hands back to the claim queue every hand-off whose lease ran out before its attempt was
/// recorded (the record kept failing, or the process that made it is gone); returns their
/// hooks and due times.
pub(super) fn expire_in_flight(db: &Db, now: i64) -> Result<Vec<(String, i64)>, StoreError> {
    let mut stmt = db.prepare_cached(
        "UPDATE OR FAIL deliveries SET state = ?1, lease_until = NULL WHERE state = ?2 AND lease_until <= ?3
         RETURNING hook_id, next_attempt_at",
    )?;
    let rows = stmt.query_map(params![PENDING, IN_FLIGHT, now], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}
