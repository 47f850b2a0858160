//! Bearer authentication for the hook and admin APIs, with a per-address limit on failures: a
//! valid credential always gets through (Make and Zapier call from shared addresses, so one
//! user's failures must not lock out the others); an invalid one from an address over its
//! failure budget is answered 429 instead of 401.

use std::net::IpAddr;

use hyper::header::HeaderMap;

use super::error::ApiError;
use super::io::bearer;
use crate::ratelimit::AuthFailures;

/// Resolves the bearer token with `lookup`, counting failures against `client` in `failures`
/// (the hook API and the admin API have a budget each).
///
/// # Errors
/// 401 for a missing or unknown token; 429 instead while `client` is slowed.
pub(super) fn authorize<T>(
    failures: &AuthFailures,
    client: IpAddr,
    headers: &HeaderMap,
    lookup: impl FnOnce(&str) -> Option<T>,
) -> Result<T, ApiError> {
    if let Some(found) = bearer(headers).and_then(lookup) {
        return Ok(found);
    }
    if let Some(wait) = failures.blocked_for(client) {
        return Err(ApiError::rate_limited(wait.as_secs_f64().ceil() as u64));
    }
    failures.record_failure(client);
    Err(ApiError::unauthorized())
}
