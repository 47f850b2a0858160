//! What moves from one store to another (`stencil-relay migrate-store`).

use crate::model::{Connection, Event, Hook};

/// What moves from one store to another (`stencil-relay migrate-store`): every connection and
/// hook, and every delivery not yet delivered (pending or dead-lettered) with its event.
#[derive(Debug, Default)]
pub struct Transfer {
    /// All connections.
    pub connections: Vec<Connection>,
    /// All hooks.
    pub hooks: Vec<Hook>,
    /// Events that undelivered deliveries need, keyed by their source sequence number.
    pub events: Vec<(i64, String, Event)>,
    /// Undelivered deliveries, pointing at events by source sequence number.
    pub deliveries: Vec<TransferDelivery>,
}

/// One undelivered delivery as it is stored.
#[derive(Debug, Clone)]
pub struct TransferDelivery {
    /// The event's sequence number in the source store.
    pub event_seq: i64,
    /// Target hook.
    pub hook_id: String,
    /// Owning connection.
    pub connection_id: String,
    /// Target URL.
    pub url: String,
    /// Stored state (pending or dead).
    pub state: i32,
    /// Attempts made.
    pub attempts: u32,
    /// When it is due (ms).
    pub next_attempt_at: i64,
    /// Last status, if any.
    pub last_status: Option<u16>,
    /// Last error, if any.
    pub last_error: Option<String>,
    /// Last change (ms).
    pub updated_at: i64,
}
