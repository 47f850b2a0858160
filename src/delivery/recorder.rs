//! Records finished attempts in batches: one store write for every attempt that finished while
//! the previous write ran, instead of one write (and one savepoint) each.
//!
//! An attempt's [`Ticket`] travels with its record and is dropped only once the record is
//! committed, so its hook's room stays taken until the delivery is settled.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::DeliveryQueue;
use super::slots::Ticket;
use crate::model::{AttemptRecord, NextStep};
use crate::store::Store;

/// Most records written in one store call.
const MAX_BATCH: usize = 512;
/// How long recording is retried before the leases are left to expire.
const RECORD_PATIENCE: Duration = Duration::from_secs(30);
/// How long a batch waits for more attempts to finish before it is written. Nobody waits on a
/// record but the hook's room (on PostgreSQL not even that: the hook is claimed again once the
/// attempt is over, see `PostgresStore::attempted`), and every record a batch holds shares its
/// commit and the index pages it touches, so a longer wait writes fewer bytes per event under
/// load. It stays well under a paced hook's spacing (1/5 s for Make), so a hook draining a
/// backlog rarely waits on it.
const LINGER: Duration = Duration::from_millis(20);

/// Where attempt tasks send what they saw.
pub(super) type Records = mpsc::UnboundedSender<(AttemptRecord, Ticket)>;

/// Writes records until every sender is gone, then returns.
pub(super) async fn run(
    store: Store,
    queue: DeliveryQueue,
    mut records: mpsc::UnboundedReceiver<(AttemptRecord, Ticket)>,
    shutdown: CancellationToken,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while records.recv_many(&mut batch, MAX_BATCH).await > 0 {
        if batch.len() < MAX_BATCH && !shutdown.is_cancelled() {
            tokio::time::sleep(LINGER).await;
            while batch.len() < MAX_BATCH {
                let Ok(record) = records.try_recv() else { break };
                batch.push(record);
            }
        }
        let (done, tickets): (Vec<AttemptRecord>, Vec<Ticket>) = batch.drain(..).unzip();
        let done: Arc<[AttemptRecord]> = done.into();
        let mut wake = false;
        if write(&store, &done, &shutdown).await {
            for record in done.iter() {
                if let NextStep::RetryAt(due_at) = record.next {
                    queue.slots().waiting(&record.hook_id, due_at);
                    wake = true;
                }
            }
        }
        // Deliveries waiting in the store are claimed once room frees up.
        wake |= queue.slots().may_have_waiting();
        drop(tickets);
        if wake {
            queue.wake();
        }
    }
}

/// Writes a batch, retrying while the store refuses (a full disk, a failover) so the
/// deliveries do not sit leased — blocking their hooks — until the leases expire. If the store
/// stays down, the leases run out and the deliveries are attempted again: at least once.
async fn write(store: &Store, done: &Arc<[AttemptRecord]>, shutdown: &CancellationToken) -> bool {
    let mut wait = Duration::from_millis(100);
    loop {
        match store.record(Arc::clone(done)).await {
            Ok(()) => return true,
            Err(e) if wait > RECORD_PATIENCE || shutdown.is_cancelled() => {
                tracing::error!(cause = %e, attempts = done.len(), "recording attempts failed; they are made again when their leases expire");
                return false;
            }
            Err(e) => tracing::warn!(cause = %e, retry_in = ?wait, "recording attempts failed"),
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => {}
        }
        wait *= 2;
    }
}
