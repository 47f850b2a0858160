//! `stencil-relay backup`: a consistent copy of a live SQLite store.
//!
//! SQLite's online backup copies every page in one step, inside one read transaction on the
//! source: in WAL mode that transaction sees exactly what was committed when it began and does
//! not stop the relay's writer, so the copy holds every event, hook and delivery committed
//! before the backup began, whatever is written meanwhile.

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rusqlite::{Connection as Db, OpenFlags};

use crate::store::StoreError;

/// Copies the store at `source` to a new file `target` (owner-only, like the store); returns
/// its size in bytes. `target` must not exist: a backup never overwrites.
pub(in crate::store) fn backup(source: &Path, target: &Path) -> Result<u64, StoreError> {
    if !source.exists() {
        return Err(StoreError::Corrupt(format!("{} does not exist", source.display())));
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(target)
        .map_err(|e| StoreError::Backend(std::sync::Arc::new(e)))?;
    let from = Db::open_with_flags(source, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    from.execute_batch("PRAGMA busy_timeout = 5000;")?;
    let mut to = Db::open(target)?;
    rusqlite::backup::Backup::new(&from, &mut to)?.step(-1)?;
    let ok: String = to.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    if ok != "ok" {
        return Err(StoreError::Corrupt(format!("the copy does not check out: {ok}")));
    }
    drop(to);
    Ok(std::fs::metadata(target).map_or(0, |m| m.len()))
}
