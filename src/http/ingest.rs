//! `POST /v1/ingest/{connection_id}`: bounded body, signature over the raw bytes before any
//! parsing, the connection's rate limit, then one commit of the event and its deliveries.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::AppState;
use super::error::ApiError;
use super::io::{json, read_body};
use crate::model::{Event, IMAGE_CREATED, now_ms};
use crate::ratelimit::RateStatus;
use crate::registry::Entry;
use crate::signature::SIGNATURE_HEADER;
use crate::store::{FanoutHook, Ingested, StoreError};

/// Longest event id taken from a payload.
pub(super) const MAX_EVENT_ID_LEN: usize = 256;

pub(super) async fn ingest(
    state: &AppState,
    connection_id: &str,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let entry = state.registry.get(connection_id).ok_or_else(ApiError::unauthorized)?;
    let Ok(_permit) = state.ingest_permits.try_acquire() else {
        return Err(ApiError::overloaded());
    };
    let (parts, body) = req.into_parts();
    let body = read_body(&parts.headers, body, state.config.max_body, state.config.body_timeout).await?;
    let now = now_ms();
    let signature = parts.headers.get(SIGNATURE_HEADER).map(HeaderValue::as_bytes);
    if !entry.verifier.verify(signature, &body, now) {
        return Err(ApiError::unauthorized());
    }
    let rate = entry.limiter.check();
    let result = if rate.allowed {
        accept(state, &entry, body, now).await
    } else {
        Err(ApiError::rate_limited(rate.retry_after))
    };
    let mut response = result.unwrap_or_else(ApiError::into_response);
    rate_headers(response.headers_mut(), &rate);
    Ok(response)
}

async fn accept(state: &AppState, entry: &Entry, body: Bytes, now: i64) -> Result<Response<Full<Bytes>>, ApiError> {
    let envelope = Envelope::parse(&body)?;
    let hooks: Vec<FanoutHook> = entry
        .hooks
        .iter()
        .filter(|h| h.matches(&envelope.event_type, envelope.template_id.as_deref()))
        .map(|h| FanoutHook { id: h.id.clone(), url: h.url.clone() })
        .collect();
    let event = Event { id: envelope.id, event_type: envelope.event_type, payload: body, received_at: now };
    let event_id = event.id.clone();
    let (fanout, reserved) = state.queue.plan(hooks, now);
    let (store, queue, connection_id) = (state.store.clone(), state.queue.clone(), entry.connection.id.clone());
    // Its own task, so a client that hangs up mid-commit cannot stop committed deliveries from
    // being handed over (they would otherwise sit leased until the lease ran out).
    let committed = tokio::spawn(async move {
        let mut ingested = store.ingest(&connection_id, event, fanout).await?;
        if let Ingested::Accepted { handed, .. } = &mut ingested {
            queue.accepted(reserved, std::mem::take(handed));
        }
        Ok::<_, StoreError>(ingested)
    });
    match committed.await.map_err(|_| StoreError::Closed)?? {
        Ingested::Accepted { deliveries, .. } => {
            let body = serde_json::json!({ "event_id": event_id, "deliveries": deliveries });
            Ok(json(StatusCode::ACCEPTED, &body))
        }
        Ingested::Duplicate => {
            let body = serde_json::json!({ "event_id": event_id, "duplicate": true, "deliveries": 0 });
            Ok(json(StatusCode::OK, &body))
        }
        Ingested::UnknownConnection => Err(ApiError::unauthorized()),
    }
}

/// What the relay reads from a payload: id, type and template.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Envelope {
    /// The top-level `id` string, else the hex SHA-256 of the body.
    pub(super) id: String,
    /// The top-level `event` or `type` string, else `image.created`.
    pub(super) event_type: String,
    /// The top-level `template_id` string.
    pub(super) template_id: Option<String>,
}

impl Envelope {
    /// Reads the envelope of a signed body.
    ///
    /// # Errors
    /// 400 `invalid_payload` when the body is not a JSON object or its id is too long.
    pub(super) fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let value: Value =
            serde_json::from_slice(body).map_err(|_| ApiError::invalid_payload("the body is not valid JSON"))?;
        let Value::Object(fields) = value else {
            return Err(ApiError::invalid_payload("the body is not a JSON object"));
        };
        let text = |name: &str| fields.get(name).and_then(Value::as_str);
        let id = match text("id") {
            Some(id) if id.len() > MAX_EVENT_ID_LEN => {
                return Err(ApiError::invalid_payload(format!("the id is longer than {MAX_EVENT_ID_LEN} bytes")));
            }
            Some(id) if !id.is_empty() => id.to_owned(),
            _ => hex::encode(Sha256::digest(body)),
        };
        let event_type = text("event").or_else(|| text("type")).unwrap_or(IMAGE_CREATED).to_owned();
        Ok(Self { id, event_type, template_id: text("template_id").map(str::to_owned) })
    }
}

fn rate_headers(headers: &mut HeaderMap, rate: &RateStatus) {
    headers.insert("x-ratelimit-limit", HeaderValue::from(rate.limit));
    headers.insert("x-ratelimit-remaining", HeaderValue::from(rate.remaining));
    headers.insert("x-ratelimit-reset", HeaderValue::from(rate.reset));
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn envelope_reads_id_type_and_template() {
        let e = Envelope::parse(br#"{"id":"evt_1","type":"image.deleted","template_id":"t1"}"#).unwrap();
        assert_eq!(
            e,
            Envelope { id: "evt_1".into(), event_type: "image.deleted".into(), template_id: Some("t1".into()) }
        );
        let e = Envelope::parse(br#"{"event":"a","type":"b"}"#).unwrap();
        assert_eq!(e.event_type, "a");
    }

    #[test]
    fn envelope_defaults() {
        let body = br#"{"id":7,"template_id":3}"#;
        let e = Envelope::parse(body).unwrap();
        assert_eq!(e.id, hex::encode(Sha256::digest(body)));
        assert_eq!((e.event_type.as_str(), e.template_id), (IMAGE_CREATED, None));
    }

    #[test]
    fn envelope_refuses_non_objects_and_long_ids() {
        for body in [&b"[]"[..], b"\"x\"", b"nope", b""] {
            assert_eq!(Envelope::parse(body).unwrap_err().status(), 400);
        }
        let long = format!(r#"{{"id":"{}"}}"#, "x".repeat(MAX_EVENT_ID_LEN + 1));
        assert_eq!(Envelope::parse(long.as_bytes()).unwrap_err().status(), 400);
    }

    proptest! {
        /// Any signed body either yields an envelope or a 400, never a panic.
        #[test]
        fn envelope_never_panics(body in crate::corpus::payload()) {
            if let Err(e) = Envelope::parse(&body) {
                prop_assert_eq!(e.status(), 400);
            }
        }

        #[test]
        fn ids_and_types_are_taken_as_sent(id in "[ -~]{1,256}", kind in "[a-z.]{1,20}", template in "[a-z0-9-]{1,36}") {
            let body = serde_json::to_vec(&serde_json::json!({ "id": id, "type": kind, "template_id": template })).unwrap();
            let e = Envelope::parse(&body).unwrap();
            prop_assert_eq!((e.id, e.event_type, e.template_id), (id, kind, Some(template)));
        }
    }
}
