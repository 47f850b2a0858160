//! Checkpoints the WAL from a thread of its own, so that copying committed pages back into the
//! database file does not stall the writer — and with it every ingest and API write waiting on
//! a commit. The writer's own auto-checkpoint stays on as a safety net for when this thread
//! falls behind (a checkpoint only completes while no commit lands in between).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rusqlite::Connection as Db;

use crate::store::StoreError;

/// How often the WAL is checked; a checkpoint with nothing to copy costs almost nothing.
const INTERVAL: Duration = Duration::from_millis(100);

/// Keeps the checkpoint thread running; it stops once the last handle is dropped.
pub(super) struct Checkpointer {
    stop: Arc<AtomicBool>,
}

impl Checkpointer {
    /// Starts checkpointing the database at `path` (already open in WAL mode).
    pub(super) fn spawn(path: &Path) -> Result<Arc<Self>, StoreError> {
        let db = Db::open(path)?;
        db.execute_batch("PRAGMA busy_timeout = 1000;")?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        std::thread::Builder::new().name("sqlite-checkpoint".into()).spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                std::thread::sleep(INTERVAL);
                if let Err(e) = db.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::warn!(cause = %e, "WAL checkpoint failed; the writer's own checkpoints take over");
                }
            }
        })?;
        Ok(Arc::new(Self { stop }))
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
