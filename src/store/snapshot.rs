//! The registry's view of the store: every connection with its hooks, built from hook rows that
//! arrive grouped by connection.

use std::collections::HashMap;
use std::sync::Arc;

use super::StoreError;
use crate::model::{Connection, Hook, Hooks};

/// Every connection with its hooks (oldest first), as SQLite reads them for the registry and for
/// `migrate-store`'s export.
#[derive(Debug, Default)]
pub(super) struct Snapshot {
    pub(super) connections: Vec<(Connection, Hooks)>,
}

impl Snapshot {
    /// Connections and hooks as two flat lists.
    pub(super) fn flatten(self) -> (Vec<Connection>, Vec<Hook>) {
        let (connections, hooks): (Vec<_>, Vec<_>) = self.connections.into_iter().unzip();
        (connections, hooks.iter().flat_map(|h| h.iter().map(|hook| Hook::clone(hook))).collect())
    }
}

/// Turns hook rows that arrive grouped by connection (ordered by connection id) into each
/// connection with its hooks, handed to `emit` as soon as its group ends, then the connections
/// without hooks. Each group is moved into its final, exactly sized slice, and each hook shares
/// its connection's id instead of owning a copy; a reader that keeps what it is handed (the
/// start) holds the registry once, and one that compares it (a resync) holds only a page.
pub(super) struct SnapshotBuilder<F> {
    connections: Vec<Option<Connection>>,
    index: HashMap<Arc<str>, usize>,
    group: Option<usize>,
    buffer: Vec<Arc<Hook>>,
    emit: F,
}

impl<F: FnMut(Connection, Hooks)> SnapshotBuilder<F> {
    pub(super) fn new(connections: Vec<Connection>, emit: F) -> Self {
        let index = connections.iter().enumerate().map(|(i, c)| (Arc::from(c.id.as_str()), i)).collect();
        Self { connections: connections.into_iter().map(Some).collect(), index, group: None, buffer: Vec::new(), emit }
    }

    /// Adds the hook that `hook` builds from its connection's shared id (skipped when the
    /// connection is unknown: it was deleted between the two reads).
    pub(super) fn add(
        &mut self,
        connection_id: &str,
        hook: impl FnOnce(Arc<str>) -> Result<Hook, StoreError>,
    ) -> Result<(), StoreError> {
        let Some((shared, &i)) = self.index.get_key_value(connection_id) else { return Ok(()) };
        let hook = hook(Arc::clone(shared))?;
        if self.group != Some(i) {
            self.end_group();
            if self.connections[i].is_none() {
                return Err(StoreError::Corrupt(format!("the hooks of {connection_id} were not read in one run")));
            }
            self.group = Some(i);
        }
        self.buffer.push(Arc::new(hook));
        Ok(())
    }

    fn end_group(&mut self) {
        if let Some(connection) = self.group.take().and_then(|i| self.connections[i].take()) {
            (self.emit)(connection, self.buffer.drain(..).collect());
        }
    }

    /// Hands over the last group, then every connection that had no hooks.
    pub(super) fn finish(mut self) {
        self.end_group();
        for connection in self.connections.into_iter().flatten() {
            (self.emit)(connection, Arc::from([]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_records::{connection, hook};

    #[test]
    fn snapshots_hand_over_each_group_as_it_ends_sharing_the_connection_id() {
        let mut emitted: Vec<(String, Vec<String>, Hooks)> = Vec::new();
        let mut builder = SnapshotBuilder::new(vec![connection("a"), connection("b"), connection("c")], |c, h| {
            emitted.push((c.id, h.iter().map(|h| h.id.clone()).collect(), h));
        });
        for (connection, id) in [("a", "h1"), ("gone", "h2"), ("b", "h3"), ("b", "h4")] {
            builder.add(connection, hook(id)).unwrap();
        }
        assert!(builder.add("a", hook("h5")).is_err(), "a group in two runs is refused, not split");
        builder.finish();
        let groups: Vec<(&str, Vec<&str>)> =
            emitted.iter().map(|(c, ids, _)| (c.as_str(), ids.iter().map(String::as_str).collect())).collect();
        assert_eq!(groups, [("a", vec!["h1"]), ("b", vec!["h3", "h4"]), ("c", vec![])]);
        let b = &emitted[1].2;
        assert!(Arc::ptr_eq(&b[0].connection_id, &b[1].connection_id), "one id per connection");
        assert_eq!(&*b[0].connection_id, "b");
    }
}
