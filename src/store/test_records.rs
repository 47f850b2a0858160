//! Records for the store's unit tests: a connection, and a hook built from its connection's
//! shared id (as the snapshot builder and the backends' row readers build them).

use std::sync::Arc;

use super::StoreError;
use crate::model::{Connection, Hook, HookKeys, IMAGE_CREATED};

/// Connection `id`, with no secrets and the defaults.
pub(super) fn connection(id: &str) -> Connection {
    Connection {
        id: id.into(),
        name: id.into(),
        api_key_hash: [0; 32],
        secrets: Vec::new(),
        ingest_rate: None,
        ingest_auth: Default::default(),
        created_at: 0,
    }
}

/// Hook `id` for `image.created`, given its connection's shared id.
pub(super) fn hook(id: &str) -> impl FnOnce(Arc<str>) -> Result<Hook, StoreError> {
    let id = id.to_owned();
    move |connection_id| {
        Ok(Hook {
            id,
            connection_id,
            url: "https://x".into(),
            event: IMAGE_CREATED,
            template_id: None,
            keys: HookKeys::generate(),
            created_at: 0,
            disabled: false,
        })
    }
}
