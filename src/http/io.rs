//! Request plumbing shared by the handlers: bounded body reads, JSON in, bearer tokens and query
//! parameters. Answers are built by `response`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, HeaderMap};
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Largest JSON body the hook and admin APIs read.
pub(super) const MAX_API_BODY: usize = 64 * 1024;

/// How much of a refused body is read and dropped, at most, so that a client still sending it
/// gets to read the 413 (most write their whole body before they read): closing a connection
/// with unread data resets it, and the client sees a broken pipe instead of the answer.
const DISCARD_AT_MOST: usize = 8 * 1024 * 1024;

/// How a request body must arrive: whole within `timeout`, and — after its first second — at
/// no less than `min_rate` bytes per second, so that a client trickling a body holds nothing
/// (an ingest slot, a connection) for long.
#[derive(Debug, Clone, Copy)]
pub(super) struct BodyPace {
    /// Bound on the whole body (`RELAY_BODY_TIMEOUT`).
    pub(super) timeout: Duration,
    /// Slowest accepted average rate, bytes per second (`RELAY_MIN_BODY_RATE`).
    pub(super) min_rate: u64,
}

/// The first second of a body is not held to the minimum rate (a connection's first bytes may
/// wait on a slow start).
const RATE_GRACE: Duration = Duration::from_secs(1);

impl BodyPace {
    /// When the body must have gone past `received` bytes, counted from `started`.
    fn due(&self, started: Instant, received: usize) -> Instant {
        let earned = Duration::from_secs_f64(received as f64 / self.min_rate.max(1) as f64);
        (started + RATE_GRACE + earned).min(started + self.timeout)
    }
}

/// Reads the whole body, refusing with 413 as soon as it passes `limit` (never buffered whole)
/// and with 408 when it arrives slower than `pace` allows.
///
/// # Errors
/// 413 when too large; 408 when too slow; 400 when the client breaks off.
pub(super) async fn read_body(
    headers: &HeaderMap,
    mut body: Incoming,
    limit: usize,
    pace: BodyPace,
) -> Result<Bytes, ApiError> {
    let declared = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        discard(body, pace.timeout);
        return Err(ApiError::payload_too_large(limit));
    }
    let started = Instant::now();
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut received = 0;
    loop {
        let due = pace.due(started, received);
        let frame = match tokio::time::timeout_at(due.into(), body.frame()).await {
            Err(_) if due >= started + pace.timeout => return Err(ApiError::request_timeout(pace.timeout)),
            Err(_) => return Err(ApiError::too_slow(pace.min_rate)),
            Ok(None) => break,
            Ok(Some(Err(_))) => return Err(ApiError::invalid_request("the request body could not be read")),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else { continue };
        received += data.len();
        if received > limit {
            discard(body, pace.timeout);
            return Err(ApiError::payload_too_large(limit));
        }
        chunks.push(data);
    }
    Ok(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().expect("one chunk"),
        _ => chunks.concat().into(),
    })
}

/// Reads the rest of a refused body in the background and drops it, for at most `timeout` and
/// [`DISCARD_AT_MOST`] bytes; past either, the connection is closed.
pub(super) fn discard(mut body: Incoming, timeout: Duration) {
    tokio::spawn(tokio::time::timeout(timeout, async move {
        let mut read = 0;
        while read <= DISCARD_AT_MOST {
            match body.frame().await {
                Some(Ok(frame)) => read += frame.data_ref().map_or(0, Bytes::len),
                Some(Err(_)) | None => return,
            }
        }
    }));
}

/// Reads and parses a JSON body of at most [`MAX_API_BODY`]; an empty body parses as `{}`.
///
/// # Errors
/// 400 `invalid_request` for malformed JSON or wrong field types; 413 when too large; 408 when
/// too slow.
pub(super) async fn read_json<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Incoming,
    pace: BodyPace,
) -> Result<T, ApiError> {
    let bytes = read_body(headers, body, MAX_API_BODY, pace).await?;
    let bytes: &[u8] = if bytes.trim_ascii().is_empty() { b"{}" } else { &bytes };
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::invalid_request(format!("the body is not valid JSON for this request: {e}")))
}

/// The token of an `Authorization: Bearer …` header.
pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The value of a query parameter.
pub(super) fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<std::borrow::Cow<'a, str>> {
    url::form_urlencoded::parse(query?.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v)
}

/// The `limit` query parameter: `default` when absent, 1..=`max`.
///
/// # Errors
/// 400 when it is not a whole number in range.
pub(super) fn limit(query: Option<&str>, default: usize, max: usize) -> Result<usize, ApiError> {
    match query_param(query, "limit") {
        None => Ok(default),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::invalid_request(format!("limit must be a whole number from 1 to {max}"))),
        },
    }
}

#[cfg(test)]
mod tests {
    use hyper::header::HeaderValue;

    use super::*;

    #[test]
    fn bearer_tokens() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(AUTHORIZATION, HeaderValue::from_static("bearer   abc "));
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn limits() {
        assert_eq!(limit(None, 10, 100).unwrap(), 10);
        assert_eq!(limit(Some("limit=5&x=1"), 10, 100).unwrap(), 5);
        for bad in ["limit=0", "limit=101", "limit=x", "limit=-1"] {
            assert!(limit(Some(bad), 10, 100).is_err(), "{bad}");
        }
    }
}
