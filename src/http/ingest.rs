//! `POST /v1/ingest/{connection_id}[?template_id=T]`: bounded body, the connection's
//! credentials (signature over the raw bytes, or bearer token) checked before any parsing, the
//! connection's rate limit, then one commit of the event and its deliveries.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde::de::{Deserializer as _, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::AppState;
use super::error::ApiError;
use super::io::{discard, query_param, read_body};
use super::response::json;
use crate::model::{Event, IMAGE_CREATED, check_template_id, now_ms};
use crate::ratelimit::RateStatus;
use crate::registry::Entry;
use crate::signature::SIGNATURE_HEADER;
use crate::store::{FanoutHook, Ingested};

/// Longest event id taken from a payload.
pub(super) const MAX_EVENT_ID_LEN: usize = 256;

pub(super) async fn ingest(
    state: &AppState,
    client: IpAddr,
    connection_id: &str,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let (parts, body) = req.into_parts();
    // The same steps whether or not the connection exists, so that no answer (413, 408, 503)
    // tells a prober which ids are real: the caps count the id as named, and the body is read
    // under the same limits before the connection is even looked up. Refused before its body
    // is read, a request's body is still read and dropped: a client that writes it all before
    // reading the answer would otherwise meet a reset connection.
    let Some(_slot) = state.ingest_slots.try_take(client, connection_id) else {
        discard(body, state.config.body_timeout);
        return Err(ApiError::overloaded());
    };
    let body = read_body(&parts.headers, body, state.config.max_body, state.body_pace()).await?;
    let Some(entry) = state.registry.get(connection_id) else {
        return Err(ApiError::unauthorized());
    };
    let now = now_ms();
    let signature = parts.headers.get(SIGNATURE_HEADER).map(HeaderValue::as_bytes);
    let authorization = parts.headers.get(AUTHORIZATION).map(HeaderValue::as_bytes);
    if let Err(why) = entry.verifier.check(entry.connection.ingest_auth, signature, authorization, &body, now) {
        entry.rejections.record(why, now);
        tracing::info!(connection = %entry.connection.id, reason = why.as_str(), "ingest refused: {}", why.advice());
        return Err(ApiError::unauthorized());
    }
    let url_template = url_template(parts.uri.query())?;
    let rate = entry.limiter.check();
    let result = if rate.allowed {
        accept(state, &entry, body, now, url_template).await
    } else {
        Err(ApiError::rate_limited(rate.retry_after))
    };
    let mut response = result.unwrap_or_else(ApiError::into_response);
    rate_headers(response.headers_mut(), &rate);
    Ok(response)
}

/// The ingest URL's `template_id`, checked: Stencil's webhooks are set up per template and their
/// payloads name none, so the URL given to Stencil for a template carries it.
fn url_template(query: Option<&str>) -> Result<Option<String>, ApiError> {
    let Some(template) = query_param(query, "template_id") else { return Ok(None) };
    check_template_id(&template).map_err(ApiError::invalid_request)?;
    Ok(Some(template.into_owned()))
}

/// Commits an authenticated event of `entry` and answers as ingest does (202 or 200 duplicate).
pub(super) async fn accept(
    state: &AppState,
    entry: &Entry,
    body: Bytes,
    now: i64,
    url_template: Option<String>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let envelope = Envelope::parse(&body)?;
    let template_id = envelope.template_id.or(url_template);
    // A disabled hook gets no new deliveries until it is enabled (its old ones are dead letters).
    let hooks: Vec<FanoutHook> = entry
        .hooks
        .iter()
        .filter(|h| !h.disabled && h.matches(&envelope.event_type, template_id.as_deref()))
        .map(|h| FanoutHook { id: h.id.clone(), url: h.url.clone() })
        .collect();
    let event =
        Event { id: envelope.id, event_type: envelope.event_type, template_id, payload: body, received_at: now };
    let event_id = event.id.clone();
    let (fanout, reserved) = state.queue.plan(hooks, now);
    let (queue, counts, connection_id) =
        (state.queue.clone(), Arc::clone(&state.event_counts), entry.connection.id.clone());
    // Handed over and counted once committed, even if the client hangs up before that.
    let hand_over = move |ingested: &mut Ingested| {
        if let Ingested::Accepted { handed, .. } = ingested {
            queue.accepted(reserved, std::mem::take(handed));
            counts.add(&connection_id, now);
        }
    };
    match state.store.ingest(&entry.connection.id, event, fanout, hand_over).await? {
        Ingested::Accepted { deliveries, .. } => {
            Ok(json(StatusCode::ACCEPTED, &Receipt { event_id: &event_id, duplicate: None, deliveries }))
        }
        Ingested::Duplicate => {
            Ok(json(StatusCode::OK, &Receipt { event_id: &event_id, duplicate: Some(true), deliveries: 0 }))
        }
        Ingested::UnknownConnection => Err(ApiError::unauthorized()),
    }
}

/// The answer to an accepted or repeated event.
#[derive(Serialize)]
struct Receipt<'a> {
    event_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    duplicate: Option<bool>,
    deliveries: usize,
}

/// What the relay reads from a payload: id, type and template.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Envelope {
    /// The top-level `id` string when it is printable ASCII, else the hex SHA-256 of the body.
    pub(super) id: String,
    /// The top-level `event` or `type` string, else `image.created`.
    pub(super) event_type: String,
    /// The top-level `template_id` string (Stencil's own payloads have none).
    pub(super) template_id: Option<String>,
}

impl Envelope {
    /// Reads the envelope of a signed body. Only the four top-level fields it needs are
    /// materialised; the rest (image URLs, modifications, metadata) is checked as JSON and
    /// skipped, so no tree of the payload is built per event.
    ///
    /// # Errors
    /// 400 `invalid_payload` when the body is not a JSON object, its id is too long or its
    /// template id is not one the relay takes.
    pub(super) fn parse(body: &[u8]) -> Result<Self, ApiError> {
        // Skipped strings are not checked for UTF-8 as they are read, so the whole body is.
        let json = std::str::from_utf8(body).map_err(|_| ApiError::invalid_payload("the body is not valid JSON"))?;
        let mut reader = serde_json::Deserializer::from_str(json);
        let fields =
            reader.deserialize_map(TopLevel).and_then(|fields| reader.end().map(|()| fields)).map_err(|e| {
                ApiError::invalid_payload(if e.is_data() {
                    "the body is not a JSON object"
                } else {
                    "the body is not valid JSON"
                })
            })?;
        let text = |value: &Option<Value>| value.as_ref().and_then(Value::as_str).map(str::to_owned);
        let id = match text(&fields.id) {
            Some(id) if id.len() > MAX_EVENT_ID_LEN => {
                return Err(ApiError::invalid_payload(format!("the id is longer than {MAX_EVENT_ID_LEN} bytes")));
            }
            Some(id) if is_header_safe(&id) => id,
            _ => hex::encode(Sha256::digest(body)),
        };
        let event_type = text(&fields.event).or_else(|| text(&fields.kind)).unwrap_or_else(|| IMAGE_CREATED.to_owned());
        let template_id = text(&fields.template_id);
        template_id.as_deref().map(check_template_id).transpose().map_err(ApiError::invalid_payload)?;
        Ok(Self { id, event_type, template_id })
    }
}

/// Whether a payload's id can be sent as it is in `webhook-id` (printable ASCII); any other id is
/// replaced by the body's hash, so that receivers always get an id to drop duplicates by.
fn is_header_safe(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// The top-level fields an envelope is read from, as sent (the last of a repeated key wins, as
/// with any JSON object reader).
#[derive(Default)]
struct Fields {
    id: Option<Value>,
    event: Option<Value>,
    kind: Option<Value>,
    template_id: Option<Value>,
}

/// A top-level key: one of the envelope's, or any other (whose value is skipped).
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum Key {
    Id,
    Event,
    Type,
    TemplateId,
    #[serde(other)]
    Other,
}

/// A value the envelope does not need, read to the end and checked as every reader of the
/// event will read it (the events list, Make, Zapier): numbers that fit a double, strings
/// without lone surrogates, nesting within serde_json's limit of 128. `IgnoredAny` skips such
/// values unchecked, and the relay then stored events it could not list. No tree is built.
struct Listable;

impl<'de> Deserialize<'de> for Listable {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ListableVisitor)
    }
}

struct ListableVisitor;

impl<'de> Visitor<'de> for ListableVisitor {
    type Value = Listable;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Listable, E> {
        Ok(Listable)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Listable, E> {
        Ok(Listable)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Listable, E> {
        Ok(Listable)
    }

    fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<Listable, E> {
        if n.is_finite() { Ok(Listable) } else { Err(E::custom("a number does not fit a double")) }
    }

    fn visit_str<E>(self, _: &str) -> Result<Listable, E> {
        Ok(Listable)
    }

    fn visit_unit<E>(self) -> Result<Listable, E> {
        Ok(Listable)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Listable, A::Error> {
        while seq.next_element::<Listable>()?.is_some() {}
        Ok(Listable)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Listable, A::Error> {
        while map.next_entry::<Listable, Listable>()?.is_some() {}
        Ok(Listable)
    }
}

/// Reads a JSON object into [`Fields`].
struct TopLevel;

impl<'de> Visitor<'de> for TopLevel {
    type Value = Fields;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
        let mut fields = Fields::default();
        while let Some(key) = map.next_key::<Key>()? {
            let slot = match key {
                Key::Id => &mut fields.id,
                Key::Event => &mut fields.event,
                Key::Type => &mut fields.kind,
                Key::TemplateId => &mut fields.template_id,
                Key::Other => {
                    map.next_value::<Listable>()?;
                    continue;
                }
            };
            *slot = Some(map.next_value()?);
        }
        Ok(fields)
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
    use crate::model::is_valid_template_id;

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
    fn stencils_documented_payload_has_no_id_and_no_template() {
        let body = include_bytes!("../../fixtures/payloads/stencil-image-created.json");
        let e = Envelope::parse(body).unwrap();
        assert_eq!(
            e,
            Envelope { id: hex::encode(Sha256::digest(body)), event_type: IMAGE_CREATED.into(), template_id: None }
        );
    }

    #[test]
    fn template_ids_come_from_the_payload_or_the_url_and_are_checked() {
        assert_eq!(url_template(None).unwrap(), None);
        assert_eq!(url_template(Some("a=1&template_id=tpl-1.x")).unwrap().as_deref(), Some("tpl-1.x"));
        for bad in
            ["template_id=", "template_id=a%20b", "template_id=%1b%5B1A", &format!("template_id={}", "x".repeat(129))]
        {
            assert_eq!(url_template(Some(bad)).unwrap_err().status(), 400, "{bad}");
        }
        assert_eq!(Envelope::parse(br#"{"template_id":"a b"}"#).unwrap_err().status(), 400);
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

    #[test]
    fn payloads_no_reader_could_list_are_refused() {
        let deep = format!(r#"{{"a":{}1{}}}"#, "[".repeat(200), "]".repeat(200));
        for body in [deep.as_str(), r#"{"a":1e400}"#, r#"{"a":"\ud800"}"#, r#"{"a":{"b":"\udfff x"}}"#] {
            assert_eq!(Envelope::parse(body.as_bytes()).unwrap_err().status(), 400, "{body}");
            assert!(serde_json::from_str::<Value>(body).is_err(), "and a tree reading refuses it too");
        }
        let fine = format!(
            r#"{{"a":{}1{},"n":123456789012345678901234567890,"s":"\ud83d\ude00"}}"#,
            "[".repeat(100),
            "]".repeat(100)
        );
        assert!(Envelope::parse(fine.as_bytes()).is_ok());
        assert!(serde_json::from_str::<Value>(&fine).is_ok());
    }

    #[test]
    fn envelope_reads_keys_as_json_does() {
        // An escaped key is the same key; a repeated key's last value wins; what the envelope
        // skips must still be JSON, and nothing may follow the object.
        let e = Envelope::parse(br#"{"\u0069d":"evt_1","type":"a","meta":{"x":[1,{"y":null}]},"type":"b"}"#).unwrap();
        assert_eq!((e.id.as_str(), e.event_type.as_str()), ("evt_1", "b"));
        for body in [&br#"{"id":"e","meta":{"x":}}"#[..], br#"{"id":"e"} {}"#, br#"{"id":"e""#] {
            assert_eq!(Envelope::parse(body).unwrap_err().status(), 400, "{}", String::from_utf8_lossy(body));
        }
    }

    /// The envelope as read from a whole `serde_json::Value` tree: the reference.
    fn read_as_tree(body: &[u8]) -> Option<Envelope> {
        let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) else { return None };
        let text = |name: &str| fields.get(name).and_then(Value::as_str);
        let id = match text("id") {
            Some(id) if id.len() > MAX_EVENT_ID_LEN => return None,
            Some(id) if is_header_safe(id) => id.to_owned(),
            _ => hex::encode(Sha256::digest(body)),
        };
        let event_type = text("event").or_else(|| text("type")).unwrap_or(IMAGE_CREATED).to_owned();
        let template_id = text("template_id").map(str::to_owned);
        if template_id.as_deref().is_some_and(|t| !is_valid_template_id(t)) {
            return None;
        }
        Some(Envelope { id, event_type, template_id })
    }

    proptest! {
        /// Any signed body yields the envelope that reading the whole JSON tree would, or a 400
        /// where that finds no object (or too long an id); never a panic.
        #[test]
        fn envelope_matches_a_whole_tree_reading(body in crate::corpus::payload()) {
            match (Envelope::parse(&body), read_as_tree(&body)) {
                (Ok(e), Some(expected)) => prop_assert_eq!(e, expected),
                (Err(e), None) => prop_assert_eq!(e.status(), 400),
                (got, expected) => prop_assert!(false, "parsed {:?}, a tree reading gives {:?}", got.ok(), expected),
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
