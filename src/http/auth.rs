//! Bearer authentication for the hook and admin APIs, behind the per-address limit on failures:
//! an address over its failure budget gets 429 before its credentials are even looked at.

use std::net::IpAddr;

use hyper::header::HeaderMap;

use super::AppState;
use super::error::ApiError;
use super::io::bearer;

/// Resolves the bearer token with `lookup`, counting failures against `client`.
///
/// # Errors
/// 429 while `client` is slowed; 401 for a missing or unknown token.
pub(super) fn authorize<T>(
    state: &AppState,
    client: IpAddr,
    headers: &HeaderMap,
    lookup: impl FnOnce(&str) -> Option<T>,
) -> Result<T, ApiError> {
    if let Some(wait) = state.auth_failures.blocked_for(client) {
        return Err(ApiError::rate_limited(wait.as_secs_f64().ceil() as u64));
    }
    match bearer(headers).and_then(lookup) {
        Some(found) => Ok(found),
        None => {
            state.auth_failures.record_failure(client);
            Err(ApiError::unauthorized())
        }
    }
}
