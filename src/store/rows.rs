//! How both backends encode delivery states and stored values in their rows, and decode them
//! back (a value that does not decode is corrupt data, never a panic).

use super::StoreError;
use crate::model::{HookKeys, IngestAuth, NextStep, SigningSecret, event_type};

/// Delivery states as both backends store them.
pub(super) const PENDING: i32 = 0;
pub(super) const DELIVERED: i32 = 1;
pub(super) const DEAD: i32 = 2;

/// The state and next-attempt time a delivery is stored with after an attempt at `at`.
pub(super) fn stored_state(next: NextStep, at: i64) -> (i32, i64) {
    match next {
        NextStep::Delivered => (DELIVERED, at),
        NextStep::RetryAt(due) => (PENDING, due),
        NextStep::DeadLetter => (DEAD, at),
    }
}

/// A stored delivery state as the API names it (in flight is still pending).
pub(super) fn state_name(state: i32) -> &'static str {
    match state {
        DELIVERED => "delivered",
        DEAD => "dead",
        _ => "pending",
    }
}

/// The static name of a stored hook's event type.
pub(super) fn stored_event(name: &str) -> Result<&'static str, StoreError> {
    event_type(name).ok_or_else(|| StoreError::Corrupt(format!("a hook subscribes to the unknown event type {name:?}")))
}

/// A stored connection's `ingest_auth`.
pub(super) fn stored_ingest_auth(name: &str) -> Result<IngestAuth, StoreError> {
    IngestAuth::parse(name)
        .ok_or_else(|| StoreError::Corrupt(format!("a connection has the unknown ingest_auth {name:?}")))
}

/// A stored hook's signing keys.
pub(super) fn stored_hook_keys(json: &str) -> Result<HookKeys, StoreError> {
    let stored: Vec<SigningSecret> =
        serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("a hook's signing keys: {e}")))?;
    HookKeys::from_stored(&stored).map_err(|e| StoreError::Corrupt(format!("a hook's signing keys: {e}")))
}

/// The signing keys of a hook that has none yet, as stored: one fresh key.
pub(super) fn fresh_hook_keys() -> Vec<SigningSecret> {
    HookKeys::generate().to_stored()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::IMAGE_CREATED;

    #[test]
    fn unknown_stored_event_types_are_corrupt_data() {
        assert_eq!(stored_event(IMAGE_CREATED).unwrap(), IMAGE_CREATED);
        assert!(matches!(stored_event("image.deleted"), Err(StoreError::Corrupt(_))));
    }
}
