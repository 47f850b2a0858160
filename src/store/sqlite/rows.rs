//! SQLite rows to records and back: connections, hooks, secrets, and which errors mean what.

use std::sync::Arc;

use rusqlite::Row;

use crate::model::{Connection, Hook, SigningSecret};
use crate::store::{StoreError, stored_event, stored_hook_keys, stored_ingest_auth};

pub(super) fn is_foreign_key_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY)
}

pub(super) fn secrets_json(secrets: &[SigningSecret]) -> Result<String, StoreError> {
    serde_json::to_string(secrets).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(super) fn connection_row(r: &Row<'_>) -> rusqlite::Result<Result<Connection, StoreError>> {
    let id: String = r.get(0)?;
    let hash: Vec<u8> = r.get(2)?;
    let secrets: String = r.get(3)?;
    let ingest_auth: String = r.get(6)?;
    let decoded = (|| {
        let api_key_hash = hash
            .try_into()
            .map_err(|_| StoreError::Corrupt(format!("connection {id}: API key hash is not 32 bytes")))?;
        let secrets = serde_json::from_str(&secrets)
            .map_err(|e| StoreError::Corrupt(format!("connection {id}: secrets: {e}")))?;
        Ok((api_key_hash, secrets, stored_ingest_auth(&ingest_auth)?))
    })();
    Ok(match decoded {
        Ok((api_key_hash, secrets, ingest_auth)) => Ok(Connection {
            name: r.get(1)?,
            api_key_hash,
            secrets,
            ingest_rate: r.get(4)?,
            ingest_auth,
            created_at: r.get(5)?,
            id,
        }),
        Err(e) => Err(e),
    })
}

/// A hook row, owned by the connection whose shared id is `connection_id`.
pub(super) fn hook_row(r: &Row<'_>, connection_id: Arc<str>) -> Result<Hook, StoreError> {
    let event: String = r.get(3)?;
    let template: String = r.get(4)?;
    let secrets: String = r.get(6)?;
    Ok(Hook {
        id: r.get(0)?,
        connection_id,
        url: r.get(2)?,
        event: stored_event(&event)?,
        template_id: (!template.is_empty()).then(|| template.into()),
        keys: stored_hook_keys(&secrets)?,
        created_at: r.get(5)?,
        disabled: r.get(7)?,
    })
}
