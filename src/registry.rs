//! The in-memory index of connections and hooks, so that ingest and the hook API never read the
//! database to look something up.
//!
//! Locking rules: entries are immutable `Arc` snapshots; readers copy the `Arc` out of the
//! `DashMap` and never hold a guard across `.await`. Writers change the store first and the
//! index second, so the index never shows something the store does not have. Imports `model`,
//! `signature`, `ratelimit` and `store`.

use std::sync::Arc;
use std::time::Instant;

use dashmap::DashMap;

use crate::model::{Connection, Hook, SigningSecret, api_key_hash};
use crate::ratelimit::IngestLimiter;
use crate::signature::Verifier;
use crate::store::{Snapshot, Store, StoreError};

/// A connection as the hot paths need it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The stored record (API key as a hash only).
    pub connection: Connection,
    /// HMAC keys prepared from the connection's secrets.
    pub verifier: Verifier,
    /// The connection's ingest limiter; shared across entry updates so its state survives them.
    pub limiter: Arc<IngestLimiter>,
    /// The connection's hooks, oldest first.
    pub hooks: Arc<[Hook]>,
    /// When this entry was written, so that a reload which started earlier cannot undo it.
    pub written_at: Instant,
}

impl Entry {
    /// The connection's hook with this id, if it has one.
    pub fn hook(&self, hook_id: &str) -> Option<&Hook> {
        self.hooks.iter().find(|h| h.id == hook_id)
    }
}

/// Cheap-to-clone handle to the index.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    default_ingest_rate: u32,
    connections: DashMap<String, Arc<Entry>>,
    by_key: DashMap<[u8; 32], String>,
}

impl Registry {
    /// Builds the index from everything in the store.
    ///
    /// # Errors
    /// The store cannot be read.
    pub async fn load(store: &Store, default_ingest_rate: u32) -> Result<Self, StoreError> {
        let snapshot = store.snapshot().await?;
        let registry = Self {
            inner: Arc::new(Inner {
                default_ingest_rate,
                connections: DashMap::with_capacity(snapshot.connections.len()),
                by_key: DashMap::with_capacity(snapshot.connections.len()),
            }),
        };
        registry.resync(snapshot, Instant::now());
        Ok(registry)
    }

    /// Indexes `connection` with `hooks`, replacing what was there; the ingest limiter's state
    /// carries over when the rate is unchanged, and a replaced API key stops resolving.
    fn put(&self, connection: Connection, hooks: Arc<[Hook]>) {
        let rate = connection.ingest_rate.unwrap_or(self.inner.default_ingest_rate);
        let old = self.get(&connection.id);
        let limiter = match &old {
            Some(old) if old.limiter.rate() == rate => Arc::clone(&old.limiter),
            _ => Arc::new(IngestLimiter::new(rate)),
        };
        if let Some(old) = old.filter(|o| o.connection.api_key_hash != connection.api_key_hash) {
            self.inner.by_key.remove_if(&old.connection.api_key_hash, |_, owner| *owner == connection.id);
        }
        let entry = Entry {
            verifier: Verifier::new(&connection.secrets),
            limiter,
            hooks,
            connection,
            written_at: Instant::now(),
        };
        self.inner.by_key.insert(entry.connection.api_key_hash, entry.connection.id.clone());
        self.inner.connections.insert(entry.connection.id.clone(), Arc::new(entry));
    }

    /// Brings one connection in step with the store after another instance changed it
    /// (`None`: it was deleted), as read from the store starting at `read_at`.
    pub fn refresh(&self, id: &str, stored: Option<(Connection, Vec<Hook>)>, read_at: Instant) {
        if self.written_since(id, read_at) {
            return;
        }
        match stored {
            Some((connection, hooks)) => self.put(connection, hooks.into()),
            None => self.remove_connection(id),
        }
    }

    /// Brings the whole index in step with a snapshot of the store taken starting at `read_at`
    /// (the safety net behind change notifications). Entries written since are left alone.
    pub fn resync(&self, Snapshot { connections }: Snapshot, read_at: Instant) {
        let current: std::collections::HashSet<String> = connections.iter().map(|(c, _)| c.id.clone()).collect();
        for (connection, hooks) in connections.into_iter().filter(|(c, _)| !self.written_since(&c.id, read_at)) {
            self.put(connection, hooks);
        }
        let gone: Vec<String> = self
            .inner
            .connections
            .iter()
            .filter(|e| !current.contains(e.key()) && e.written_at <= read_at)
            .map(|e| e.key().clone())
            .collect();
        for id in gone {
            self.remove_connection(&id);
        }
    }

    /// The connection with this id.
    pub fn get(&self, id: &str) -> Option<Arc<Entry>> {
        self.inner.connections.get(id).map(|e| Arc::clone(&e))
    }

    /// The connection whose API key this is.
    pub fn authenticate(&self, api_key: &str) -> Option<Arc<Entry>> {
        let id = self.inner.by_key.get(&api_key_hash(api_key))?.clone();
        self.get(&id)
    }

    /// Every connection, sorted by id.
    pub fn all(&self) -> Vec<Arc<Entry>> {
        let mut all: Vec<_> = self.inner.connections.iter().map(|e| Arc::clone(&e)).collect();
        all.sort_by(|a, b| a.connection.id.cmp(&b.connection.id));
        all
    }

    /// Indexes a connection just stored.
    pub fn insert_connection(&self, connection: Connection) {
        self.put(connection, Arc::from([]));
    }

    /// Drops a connection just deleted from the store.
    pub fn remove_connection(&self, id: &str) {
        if let Some((_, entry)) = self.inner.connections.remove(id) {
            self.inner.by_key.remove_if(&entry.connection.api_key_hash, |_, owner| owner == id);
        }
    }

    /// Swaps a connection's API key hash: the old key stops resolving at once.
    pub fn set_api_key_hash(&self, id: &str, hash: [u8; 32]) {
        let old = self.update(id, |e| e.connection.api_key_hash = hash);
        if let Some(old) = old {
            self.inner.by_key.remove_if(&old.connection.api_key_hash, |_, owner| owner == id);
            self.inner.by_key.insert(hash, id.to_owned());
        }
    }

    /// Replaces a connection's signing secrets.
    pub fn set_secrets(&self, id: &str, secrets: Vec<SigningSecret>) {
        self.update(id, |e| {
            e.verifier = Verifier::new(&secrets);
            e.connection.secrets = secrets;
        });
    }

    /// Adds a hook just stored (no-op if already indexed).
    pub fn add_hook(&self, hook: Hook) {
        let connection_id = Arc::clone(&hook.connection_id);
        self.update(&connection_id, |e| {
            if e.hook(&hook.id).is_none() {
                e.hooks = e.hooks.iter().cloned().chain([hook]).collect();
            }
        });
    }

    /// Removes a hook just deleted from the store.
    pub fn remove_hook(&self, connection_id: &str, hook_id: &str) {
        self.update(connection_id, |e| {
            e.hooks = e.hooks.iter().filter(|h| h.id != hook_id).cloned().collect();
        });
    }

    /// Number of connections.
    pub fn len(&self) -> usize {
        self.inner.connections.len()
    }

    /// Whether there are no connections.
    pub fn is_empty(&self) -> bool {
        self.inner.connections.is_empty()
    }

    fn written_since(&self, id: &str, read_at: Instant) -> bool {
        self.inner.connections.get(id).is_some_and(|e| e.written_at > read_at)
    }

    /// Total hooks across connections.
    pub fn hook_count(&self) -> usize {
        self.inner.connections.iter().map(|e| e.hooks.len()).sum()
    }

    /// Replaces an entry with an edited copy under the map's shard lock; returns the old one.
    fn update(&self, id: &str, edit: impl FnOnce(&mut Entry)) -> Option<Arc<Entry>> {
        let mut slot = self.inner.connections.get_mut(id)?;
        let old = Arc::clone(&slot);
        let mut entry = Entry::clone(&old);
        edit(&mut entry);
        entry.written_at = Instant::now();
        *slot = Arc::new(entry);
        Some(old)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::model::{IMAGE_CREATED, SigningSecret};

    fn empty() -> Registry {
        Registry {
            inner: Arc::new(Inner { default_ingest_rate: 50, connections: DashMap::new(), by_key: DashMap::new() }),
        }
    }

    fn connection(id: &str, key: &str) -> Connection {
        Connection {
            id: id.into(),
            name: id.into(),
            api_key_hash: api_key_hash(key),
            secrets: vec![SigningSecret { secret: "s".into(), expires_at: None }],
            ingest_rate: None,
            created_at: 0,
        }
    }

    fn hook(id: &str, connection_id: &str) -> Hook {
        Hook {
            id: id.into(),
            connection_id: connection_id.into(),
            url: "https://hook.make.com/x".into(),
            event: IMAGE_CREATED,
            template_id: None,
            created_at: 0,
        }
    }

    #[test]
    fn a_rotated_key_stops_resolving_and_the_new_one_resolves() {
        let registry = empty();
        registry.insert_connection(connection("a", "old"));
        registry.set_api_key_hash("a", api_key_hash("new"));
        assert!(registry.authenticate("old").is_none());
        assert_eq!(registry.authenticate("new").unwrap().connection.id, "a");
        registry.refresh("a", Some((connection("a", "newer"), vec![])), Instant::now());
        assert!(registry.authenticate("new").is_none(), "a refresh replaces the key too");
    }

    #[test]
    fn hooks_are_added_once_and_removed() {
        let registry = empty();
        registry.insert_connection(connection("a", "k"));
        registry.add_hook(hook("hk_1", "a"));
        registry.add_hook(hook("hk_1", "a"));
        assert_eq!((registry.hook_count(), registry.len()), (1, 1));
        registry.remove_hook("a", "hk_1");
        assert_eq!(registry.hook_count(), 0);
    }

    #[test]
    fn a_reload_that_started_before_a_write_does_not_undo_it() {
        let registry = empty();
        let read_at = Instant::now();
        std::thread::sleep(Duration::from_millis(2));
        registry.insert_connection(connection("new", "k"));
        registry.resync(Snapshot::default(), read_at);
        assert!(registry.get("new").is_some(), "a snapshot older than the entry must not remove it");
        registry.refresh("new", None, read_at);
        assert!(registry.get("new").is_some(), "nor may an older single reload");
        registry.resync(Snapshot::default(), Instant::now());
        assert!(registry.get("new").is_none(), "a newer snapshot without it removes it");
        assert!(registry.authenticate("k").is_none());
    }

    #[test]
    fn refreshes_keep_the_ingest_limiter_state() {
        let registry = empty();
        registry.insert_connection(connection("a", "k"));
        let before = Arc::clone(&registry.get("a").unwrap().limiter);
        registry.refresh("a", Some((connection("a", "k"), vec![hook("hk_1", "a")])), Instant::now());
        assert!(Arc::ptr_eq(&before, &registry.get("a").unwrap().limiter));
        let faster = Connection { ingest_rate: Some(99), ..connection("a", "k") };
        registry.refresh("a", Some((faster, vec![])), Instant::now());
        assert_eq!(registry.get("a").unwrap().limiter.rate(), 99, "a new rate gets a new limiter");
    }
}
