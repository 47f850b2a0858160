//! The in-memory index of connections and hooks, so that ingest and the hook API never read the
//! database to look something up.
//!
//! Locking rules: entries are immutable `Arc` snapshots; readers copy the `Arc` out of the
//! `DashMap` and never hold a guard across `.await`. Writers change the store first and the
//! index second, so the index never shows something the store does not have. Imports `model`,
//! `signature`, `ratelimit` and `store`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use dashmap::DashMap;

use crate::model::{Connection, Hook, HookKeys, Hooks, SigningSecret, api_key_hash};
use crate::ratelimit::IngestLimiter;
use crate::rejections::Rejections;
use crate::signature::Verifier;
use crate::store::{Store, StoreError};

/// A connection as the hot paths need it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The stored record (API key as a hash only).
    pub connection: Connection,
    /// HMAC keys prepared from the connection's secrets.
    pub verifier: Verifier,
    /// The connection's ingest limiter; shared across entry updates so its state survives them.
    pub limiter: Arc<IngestLimiter>,
    /// The connection's rejected ingests; shared across entry updates like the limiter.
    pub rejections: Arc<Rejections>,
    /// The connection's hooks, oldest first.
    pub hooks: Hooks,
    /// When this entry was written, so that a reload which started earlier cannot undo it.
    pub written_at: Instant,
}

impl Entry {
    /// The connection's hook with this id, if it has one.
    pub fn hook(&self, hook_id: &str) -> Option<&Hook> {
        self.hooks.iter().find(|h| h.id == hook_id).map(|h| &**h)
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
        let registry = Self {
            inner: Arc::new(Inner { default_ingest_rate, connections: DashMap::new(), by_key: DashMap::new() }),
        };
        registry.resync(store).await?;
        Ok(registry)
    }

    /// Brings the whole index in step with the store, read connection by connection. Only an
    /// entry that differs from the store's is replaced: rebuilding a million unchanged hooks
    /// every 30 s fragmented the heap, and the relay grew with every resync.
    /// What was written after the read began is left alone, so a reload that started earlier
    /// cannot undo it.
    ///
    /// # Errors
    /// The store cannot be read; what was read so far is applied, nothing is removed.
    pub async fn resync(&self, store: &Store) -> Result<(), StoreError> {
        let mut resync = self.resync_from(Instant::now());
        store.each_connection(|connection, hooks| resync.connection(connection, hooks)).await?;
        resync.finish();
        Ok(())
    }

    /// A resync of a read that began at `read_at`.
    fn resync_from(&self, read_at: Instant) -> Resync<'_> {
        Resync { registry: self, read_at, read: HashSet::new() }
    }

    /// Indexes `connection` with `hooks`, replacing what was there; the ingest limiter's state
    /// carries over when the rate is unchanged, and a replaced API key stops resolving.
    fn put(&self, connection: Connection, hooks: Hooks) {
        let rate = connection.ingest_rate.unwrap_or(self.inner.default_ingest_rate);
        let old = self.get(&connection.id);
        let limiter = match &old {
            Some(old) if old.limiter.rate() == rate => Arc::clone(&old.limiter),
            _ => Arc::new(IngestLimiter::new(rate)),
        };
        let rejections = old.as_ref().map_or_else(Arc::default, |old| Arc::clone(&old.rejections));
        if let Some(old) = old.filter(|o| o.connection.api_key_hash != connection.api_key_hash) {
            self.inner.by_key.remove_if(&old.connection.api_key_hash, |_, owner| *owner == connection.id);
        }
        let entry = Entry {
            verifier: Verifier::new(&connection.secrets),
            limiter,
            rejections,
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
            Some((connection, hooks)) => self.put(connection, hooks.into_iter().map(Arc::new).collect()),
            None => self.remove_connection(id),
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

    /// Replaces a connection's settings (name, rate, `ingest_auth`) just stored, keeping its
    /// hooks; a changed rate gets a fresh limiter.
    pub fn replace_connection(&self, connection: Connection) {
        let hooks = self.get(&connection.id).map_or_else(|| Arc::from([]), |e| Arc::clone(&e.hooks));
        self.put(connection, hooks);
    }

    /// Replaces the signing keys of a hook just stored.
    pub fn set_hook_keys(&self, connection_id: &str, hook_id: &str, keys: HookKeys) {
        self.change_hook(connection_id, hook_id, |h| h.keys = keys.clone());
    }

    /// Marks a hook just disabled or enabled in the store.
    pub fn set_hook_disabled(&self, connection_id: &str, hook_id: &str, disabled: bool) {
        self.change_hook(connection_id, hook_id, |h| h.disabled = disabled);
    }

    /// Replaces one hook of a connection by a changed copy; the new list shares every other
    /// hook with the old one.
    fn change_hook(&self, connection_id: &str, hook_id: &str, change: impl Fn(&mut Hook)) {
        self.update(connection_id, |e| {
            e.hooks = e
                .hooks
                .iter()
                .map(|h| {
                    if h.id == hook_id {
                        let mut changed = Hook::clone(h);
                        change(&mut changed);
                        Arc::new(changed)
                    } else {
                        Arc::clone(h)
                    }
                })
                .collect();
        });
    }

    /// Adds a hook just stored (no-op if already indexed). The new list shares every other hook
    /// with the old one.
    pub fn add_hook(&self, hook: Hook) {
        let connection_id = Arc::clone(&hook.connection_id);
        self.update(&connection_id, |e| {
            if e.hook(&hook.id).is_none() {
                e.hooks = e.hooks.iter().cloned().chain([Arc::new(hook)]).collect();
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

/// A resync under way: the connections read so far, for [`Resync::finish`] to remove those the
/// store no longer has.
struct Resync<'a> {
    registry: &'a Registry,
    read_at: Instant,
    read: HashSet<String>,
}

impl Resync<'_> {
    /// One connection as the store has it.
    fn connection(&mut self, connection: Connection, hooks: Hooks) {
        let registry = self.registry;
        self.read.insert(connection.id.clone());
        let current = registry.get(&connection.id);
        let unchanged = current.as_ref().is_some_and(|e| e.connection == connection && e.hooks == hooks);
        if !unchanged && !registry.written_since(&connection.id, self.read_at) {
            registry.put(connection, hooks);
        }
    }

    /// Removes the connections the store no longer has (unless written since the read began).
    fn finish(self) {
        let gone: Vec<String> = self
            .registry
            .inner
            .connections
            .iter()
            .filter(|e| !self.read.contains(e.key()) && e.written_at <= self.read_at)
            .map(|e| e.key().clone())
            .collect();
        for id in gone {
            self.registry.remove_connection(&id);
        }
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
            ingest_auth: Default::default(),
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
            keys: HookKeys::One([7; 32]),
            created_at: 0,
            disabled: false,
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
    fn an_attach_shares_the_other_hooks_instead_of_copying_them() {
        let registry = empty();
        registry.insert_connection(connection("a", "k"));
        registry.add_hook(hook("hk_1", "a"));
        let before = Arc::clone(&registry.get("a").unwrap().hooks[0]);
        registry.add_hook(hook("hk_2", "a"));
        registry.set_hook_keys("a", "hk_2", HookKeys::generate());
        let after = registry.get("a").unwrap();
        assert!(Arc::ptr_eq(&before, &after.hooks[0]), "the first hook is the same allocation");
        assert_eq!(after.hooks.len(), 2);
    }

    #[test]
    fn a_reload_that_started_before_a_write_does_not_undo_it() {
        let registry = empty();
        let read_at = Instant::now();
        std::thread::sleep(Duration::from_millis(2));
        registry.insert_connection(connection("new", "k"));
        registry.resync_from(read_at).finish();
        assert!(registry.get("new").is_some(), "a snapshot older than the entry must not remove it");
        registry.refresh("new", None, read_at);
        assert!(registry.get("new").is_some(), "nor may an older single reload");
        registry.resync_from(Instant::now()).finish();
        assert!(registry.get("new").is_none(), "a newer snapshot without it removes it");
        assert!(registry.authenticate("k").is_none());
    }

    #[test]
    fn a_resync_replaces_only_the_entries_the_store_has_changed() {
        let registry = empty();
        let mut resync = registry.resync_from(Instant::now());
        resync.connection(connection("a", "k"), Arc::from([Arc::new(hook("hk_1", "a"))]));
        resync.connection(connection("b", "k2"), Arc::from([]));
        resync.finish();
        let (a, b) = (registry.get("a").unwrap(), registry.get("b").unwrap());
        let mut resync = registry.resync_from(Instant::now());
        resync.connection(connection("a", "k"), Arc::from([Arc::new(hook("hk_1", "a"))]));
        resync.connection(connection("b", "k2"), Arc::from([Arc::new(hook("hk_2", "b"))]));
        resync.finish();
        assert!(Arc::ptr_eq(&a, &registry.get("a").unwrap()), "an unchanged entry is kept as it is");
        assert_eq!(registry.get("b").unwrap().hooks.len(), 1, "a changed one is replaced");
        assert!(!Arc::ptr_eq(&b, &registry.get("b").unwrap()));
        let mut resync = registry.resync_from(Instant::now());
        resync.connection(connection("a", "rotated"), Arc::from([Arc::new(hook("hk_1", "a"))]));
        resync.finish();
        assert!(registry.authenticate("rotated").is_some() && registry.authenticate("k").is_none());
        assert!(registry.get("b").is_none(), "a connection the store no longer has is removed");
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
