//! The hourly event counts on SQLite (see `event_counts.rs` at the crate's top for why they are
//! counted in memory and added every few seconds).

use rusqlite::params;

use super::SqliteStore;
use crate::model::HourCount;
use crate::store::StoreError;

impl SqliteStore {
    pub(in crate::store) async fn count_events(&self, counts: Vec<HourCount>) -> Result<(), StoreError> {
        self.write_bulk(move |db| {
            let mut add = db.prepare_cached(
                "INSERT INTO event_counts (connection_id, hour, events)
                 SELECT id, ?2, ?3 FROM connections WHERE id = ?1 AND removing = 0
                 ON CONFLICT (connection_id, hour) DO UPDATE SET events = events + excluded.events",
            )?;
            for count in &counts {
                add.execute(params![count.connection_id, count.hour, count.events])?;
            }
            Ok(())
        })
        .await
    }

    pub(in crate::store) async fn forget_event_counts(&self, before_hour: i64) -> Result<u64, StoreError> {
        self.write_bulk(move |db| Ok(db.execute("DELETE FROM event_counts WHERE hour < ?1", [before_hour])? as u64))
            .await
    }
}
