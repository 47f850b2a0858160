//! Keeps this instance's registry in step with changes other instances make to a shared store:
//! each change notice reloads that one connection, and a full resync runs periodically and
//! after every reconnect, as the safety net for notices missed while not listening.
//! Imports `registry` and `store`. With SQLite (one instance) there is nothing to follow.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::registry::Registry;
use crate::store::{ChangeFeed, Store};

/// How often the whole registry is compared with the store even without notices.
pub const RESYNC_EVERY: Duration = Duration::from_secs(30);
/// Pause before listening again after the listening connection broke.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// Follows the store's change feed until `shutdown`. `first` is the feed that was already
/// listening when the registry was loaded: nothing it could have missed needs a resync, so the
/// first full one waits for [`RESYNC_EVERY`] (reading a million hooks twice at start took the
/// relay's peak memory from 290 to 495 MB). Every later feed starts with a resync.
pub async fn follow(store: Store, registry: Registry, first: Option<ChangeFeed>, shutdown: CancellationToken) {
    let mut next = first.map(|feed| (feed, Instant::now() + RESYNC_EVERY));
    loop {
        let (mut feed, first_resync) = match next.take() {
            Some(listening) => listening,
            None => match store.listen().await {
                Ok(Some(feed)) => (feed, Instant::now()),
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(cause = %e, "cannot listen for registry changes; retrying");
                    if pause(&shutdown, RECONNECT_AFTER).await {
                        return;
                    }
                    continue;
                }
            },
        };
        let mut resync = tokio::time::interval_at(first_resync.into(), RESYNC_EVERY);
        loop {
            tokio::select! {
                change = feed.next() => match change {
                    Some(id) => match (Instant::now(), store.connection(&id).await) {
                        (read_at, Ok(stored)) => registry.refresh(&id, stored, read_at),
                        (_, Err(e)) => tracing::warn!(cause = %e, "cannot reload a changed connection; the resync will"),
                    },
                    None => break,
                },
                _ = resync.tick() => if let Err(e) = registry.resync(&store).await {
                    tracing::warn!(cause = %e, "registry resync failed");
                },
                () = shutdown.cancelled() => return,
            }
        }
        tracing::warn!("the registry change feed ended; listening again");
        if pause(&shutdown, RECONNECT_AFTER).await {
            return;
        }
    }
}

/// Sleeps `wait`; `true` if shutdown came first.
async fn pause(shutdown: &CancellationToken, wait: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(wait) => false,
        () = shutdown.cancelled() => true,
    }
}
