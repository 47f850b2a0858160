//! The hourly event counts on PostgreSQL (see `event_counts.rs` at the crate's top for why they
//! are counted in memory and added every few seconds: in the ingest's own statement, concurrent
//! batches of one connection would queue on its row's lock).

use super::PostgresStore;
use crate::model::HourCount;
use crate::store::StoreError;

impl PostgresStore {
    pub(in crate::store) async fn count_events(&self, counts: Vec<HourCount>) -> Result<(), StoreError> {
        let (mut ids, mut hours, mut events) = (Vec::new(), Vec::new(), Vec::new());
        for count in &counts {
            ids.push(count.connection_id.as_str());
            hours.push(count.hour);
            events.push(i64::try_from(count.events).unwrap_or(i64::MAX));
        }
        self.pool
            .get()
            .await?
            .execute(
                "INSERT INTO event_counts (connection_id, hour, events)
                 SELECT c.id, n.hour, n.events FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS n(id, hour, events)
                 JOIN connections c ON c.id = n.id AND NOT c.removing
                 ON CONFLICT (connection_id, hour) DO UPDATE SET events = event_counts.events + EXCLUDED.events",
                &[&ids, &hours, &events],
            )
            .await?;
        Ok(())
    }

    pub(in crate::store) async fn forget_event_counts(&self, before_hour: i64) -> Result<u64, StoreError> {
        let client = self.pool.get().await?;
        Ok(client.execute("DELETE FROM event_counts WHERE hour < $1", &[&before_hour]).await?)
    }
}
