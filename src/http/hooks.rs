//! The hook API Make's app (or a Zapier REST Hook) calls with a connection's API key: connection
//! check, attach, list, show, detach, signing keys, attempts, sample events. Every look-up goes
//! through the authenticated connection's own entry, so another connection's hook is simply not
//! found (and a detach of it changes nothing).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::AppState;
use super::admin::{dead_letter_json, replay};
use super::auth::authorize;
use super::error::ApiError;
use super::io::{limit, read_json};
use super::response::{empty, json};
use super::routes::Route;
use crate::model::{
    Attempt, DELIVERY_ID_PREFIX, Event, EventDelivery, HOOK_ID_PREFIX, Hook, HookHealth, HookKeys, HookStatus,
    IMAGE_CREATED, check_template_id, event_type, now_ms, random_token, rfc3339,
};
use crate::registry::Entry;
use crate::rejections::Summary;
use crate::store::Attached;
use crate::target::TargetPolicy;

type Reply = Result<Response<Full<Bytes>>, ApiError>;

pub(super) async fn handle(state: &AppState, client: IpAddr, route: Route<'_>, req: Request<Incoming>) -> Reply {
    let entry = authorize(&state.auth_failures, client, req.headers(), |key| state.registry.authenticate(key))?;
    let query = req.uri().query().map(str::to_owned);
    let query = query.as_deref();
    match route {
        Route::Connection => Ok(json(StatusCode::OK, &connection_check_json(state, req.headers(), &entry))),
        Route::ListHooks => Ok(json(StatusCode::OK, &json!({ "data": hooks_json(state, &entry).await? }))),
        Route::AttachHook => attach(state, &entry, req).await,
        Route::GetHook(id) => {
            let hook = own_hook(&entry, id)?;
            let health = state.store.hook_health(&entry.connection.id).await?;
            Ok(json(StatusCode::OK, &hook_json(hook, &live_health(state, hook, &health))))
        }
        Route::EnableHook(id) => {
            let hook = own_hook(&entry, id)?;
            if !state.store.enable_hook(&entry.connection.id, id).await? {
                return Err(ApiError::not_found("hook"));
            }
            enabled(state, hook);
            Ok(json(StatusCode::OK, &hook_json(&Hook { disabled: false, ..hook.clone() }, &HookHealth::default())))
        }
        Route::DetachHook(id) => {
            // Make and Zapier repeat detaches and show a 404 as a failure: a hook this
            // connection does not have is already detached. The store deletes only by
            // (hook, connection), so another connection's hook is never touched.
            state.store.detach_hook(&entry.connection.id, id).await?;
            state.registry.remove_hook(&entry.connection.id, id);
            Ok(empty(StatusCode::NO_CONTENT))
        }
        Route::HookSecret(id) => {
            let hook = own_hook(&entry, id)?;
            Ok(json(StatusCode::OK, &json!({ "secret": hook.keys.current_secret() })))
        }
        Route::RotateHookSecret(id) => rotate_secret(state, &entry, id).await,
        Route::HookDeliveries(id) => {
            own_hook(&entry, id)?;
            let attempts = state.store.attempts(id, limit(query, 50, 500)?).await?;
            let data: Vec<Value> = attempts.iter().map(attempt_json).collect();
            Ok(json(StatusCode::OK, &json!({ "data": data })))
        }
        Route::OwnDeadLetters => {
            let letters = state.store.dead_letters(Some(&entry.connection.id), limit(query, 50, 500)?).await?;
            let data: Vec<Value> = letters.iter().map(dead_letter_json).collect();
            Ok(json(StatusCode::OK, &json!({ "data": data })))
        }
        Route::RetryOwnDeadLetter(id) => replay(state, id, Some(&entry.connection.id), false).await,
        Route::TestEvent => test_event(state, &entry, req).await,
        Route::Stats => Ok(json(StatusCode::OK, &stats_json(state, &entry.connection.id))),
        Route::EventDeliveries(id) => {
            let deliveries = state
                .store
                .event_deliveries(&entry.connection.id, id)
                .await?
                .ok_or_else(|| ApiError::not_found("event"))?;
            let data: Vec<Value> = deliveries.iter().map(event_delivery_json).collect();
            Ok(json(StatusCode::OK, &json!({ "data": data })))
        }
        Route::ReplayDelivery(id) => replay(state, id, Some(&entry.connection.id), true).await,
        Route::Events => {
            let events = state.store.events(&entry.connection.id, limit(query, 10, 100)?).await?;
            Ok(json(StatusCode::OK, &EventList { data: listed(&events) }))
        }
        _ => Err(ApiError::not_found("route")),
    }
}

/// Most payload bytes one answer of `GET /v1/events` carries; the list ends early (but always
/// holds the newest event) rather than grow past it.
pub(super) const MAX_EVENTS_ANSWER: usize = 8 * 1024 * 1024;

/// `GET /v1/events`'s answer.
#[derive(Serialize)]
struct EventList<'a> {
    data: Vec<EventOut<'a>>,
}

/// An event as the API lists it; its payload is the stored bytes as they are (checked as JSON
/// at ingest), so listing builds no tree of them.
#[derive(Serialize)]
struct EventOut<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    template_id: Option<&'a str>,
    received_at: String,
    payload: Option<&'a RawValue>,
}

/// Events newest first, within [`MAX_EVENTS_ANSWER`] bytes of payload.
fn listed(events: &[Event]) -> Vec<EventOut<'_>> {
    let mut bytes = 0;
    let mut data = Vec::with_capacity(events.len());
    for e in events {
        bytes += e.payload.len();
        if bytes > MAX_EVENTS_ANSWER && !data.is_empty() {
            break;
        }
        data.push(EventOut {
            id: &e.id,
            event_type: &e.event_type,
            template_id: e.template_id.as_deref(),
            received_at: rfc3339(e.received_at),
            payload: std::str::from_utf8(&e.payload).ok().and_then(|text| serde_json::from_str(text).ok()),
        });
    }
    data
}

/// `POST /v1/hooks`: Make sends `url`, Zapier's REST Hooks send `target_url`.
#[derive(Debug, Clone, Deserialize)]
struct HookIn {
    url: Option<String>,
    target_url: Option<String>,
    event: Option<String>,
    template_id: Option<String>,
}

impl HookIn {
    /// The normalised URL, event type and template filter, or the rule that was broken.
    fn validate(self, targets: &TargetPolicy) -> Result<(String, &'static str, Option<String>), ApiError> {
        let raw_url = self
            .url
            .or(self.target_url)
            .filter(|u| !u.trim().is_empty())
            .ok_or_else(|| ApiError::invalid_url("url (or target_url) is required"))?;
        let event = match self.event.as_deref() {
            None | Some("") => IMAGE_CREATED,
            Some(name) => event_type(name).ok_or_else(|| ApiError::invalid_event(name))?,
        };
        let url = targets.check(raw_url.trim()).map_err(ApiError::invalid_url)?;
        let template_id = self.template_id.filter(|t| !t.is_empty());
        template_id.as_deref().map(check_template_id).transpose().map_err(ApiError::validation)?;
        Ok((url.into(), event, template_id))
    }
}

async fn attach(state: &AppState, entry: &Arc<Entry>, req: Request<Incoming>) -> Reply {
    let (parts, body) = req.into_parts();
    let input: HookIn = read_json(&parts.headers, body, state.body_pace()).await?;
    let (url, event, template_id) = input.validate(&state.config.targets)?;
    // Every hook costs each of the connection's events a delivery row: a connection may have a
    // bounded number. Attaching one it already has is not a new one.
    let cap = state.config.max_hooks_per_connection;
    let known = entry
        .hooks
        .iter()
        .any(|h| h.url == url && h.event == event && h.template_id.as_deref() == template_id.as_deref());
    if !known && entry.hooks.len() >= cap {
        return Err(ApiError::validation(format!(
            "this connection has {cap} hooks, the most allowed; detach one first"
        )));
    }
    let hook = Hook {
        id: random_token(HOOK_ID_PREFIX, 16),
        connection_id: entry.connection.id.as_str().into(),
        url,
        event,
        template_id: template_id.map(Into::into),
        keys: HookKeys::generate(),
        created_at: now_ms(),
        disabled: false,
    };
    let (status, mut hook) = match state.store.attach_hook(hook).await? {
        Attached::Created(hook) => (StatusCode::CREATED, hook),
        Attached::Existing(hook) => (StatusCode::OK, hook),
    };
    // Attaching a disabled hook's URL again is how Make and Zapier would bring it back.
    let mut health = HookHealth::default();
    if hook.disabled {
        state.store.enable_hook(&hook.connection_id, &hook.id).await?;
        enabled(state, &hook);
        hook.disabled = false;
    } else if status == StatusCode::OK {
        health = state.store.hook_health(&hook.connection_id).await?.remove(&hook.id).unwrap_or_default();
    }
    state.registry.add_hook(hook.clone());
    let mut body = hook_json(&hook, &health);
    body["secret"] = hook.keys.current_secret().into();
    Ok(json(status, &body))
}

/// `POST /v1/test-events`: a sample `image.created` — Stencil's documented payload with an id of
/// its own and the body's `template_id`, if any — goes through the real pipeline to the
/// connection's hooks, so a scenario's "Run once" has something to catch without rendering an
/// image. It counts against the connection's ingest rate like Stencil's own.
async fn test_event(state: &AppState, entry: &Arc<Entry>, req: Request<Incoming>) -> Reply {
    let (parts, body) = req.into_parts();
    let empty = parts.headers.get(hyper::header::CONTENT_LENGTH).is_none_or(|n| n.as_bytes() == b"0");
    let input: TestEventIn =
        if empty { TestEventIn::default() } else { read_json(&parts.headers, body, state.body_pace()).await? };
    input.template_id.as_deref().map(check_template_id).transpose().map_err(ApiError::validation)?;
    let rate = entry.limiter.check();
    if !rate.allowed {
        return Err(ApiError::rate_limited(rate.retry_after));
    }
    let mut sample: Value = serde_json::from_str(SAMPLE_EVENT).expect("the sample is JSON");
    sample["id"] = random_token("evt_test_", 12).into();
    sample["test"] = true.into();
    let body = Bytes::from(serde_json::to_vec(&sample).expect("JSON serialises"));
    super::ingest::accept(state, entry, body, now_ms(), input.template_id).await
}

/// `GET /v1/stats`: the connection's last hour, minute by minute, as this instance saw it.
fn stats_json(state: &AppState, connection_id: &str) -> Value {
    let minutes: Vec<Value> = state
        .queue
        .stats()
        .last_hour(connection_id, now_ms())
        .iter()
        .map(|m| {
            json!({
                "at": rfc3339(m.at),
                "delivered": m.delivered,
                "retried": m.retried,
                "dead_lettered": m.dead_lettered,
                "detached": m.detached,
                "latency_p50_ms": m.latency_ms(0.5),
                "latency_p95_ms": m.latency_ms(0.95),
            })
        })
        .collect();
    json!({ "minutes": minutes })
}

/// `POST /v1/test-events`'s optional body.
#[derive(Debug, Default, Deserialize)]
struct TestEventIn {
    template_id: Option<String>,
}

/// Stencil's documented `image.created` payload, the sample a test event sends.
const SAMPLE_EVENT: &str = include_str!("../../fixtures/payloads/stencil-image-created.json");

/// How long a rotated-out hook key keeps signing beside the new one, so that a receiver can
/// switch to the new key at its own pace.
const HOOK_KEY_OVERLAP_MS: i64 = 24 * 3600 * 1000;

/// `POST /v1/hooks/{id}/secret/rotate`: a new key signs from now on; the current one signs too
/// for [`HOOK_KEY_OVERLAP_MS`]. Keys that have already retired are dropped.
async fn rotate_secret(state: &AppState, entry: &Entry, id: &str) -> Reply {
    let hook = own_hook(entry, id)?;
    let now = now_ms();
    let retire_at = now + HOOK_KEY_OVERLAP_MS;
    let keys = hook.keys.rotated(now, retire_at);
    if !state.store.set_hook_keys(&entry.connection.id, id, &keys).await? {
        return Err(ApiError::not_found("hook"));
    }
    let secret = keys.current_secret();
    state.registry.set_hook_keys(&entry.connection.id, id, keys);
    Ok(json(StatusCode::OK, &json!({ "secret": secret, "previous_expires_at": rfc3339(retire_at) })))
}

/// `GET /v1/connection`: Make's and Zapier's "is this key valid" check, and what the
/// connection's owner needs to set Stencil up and to see why webhooks were refused.
fn connection_check_json(state: &AppState, headers: &hyper::HeaderMap, entry: &Entry) -> Value {
    json!({
        "id": entry.connection.id,
        "name": entry.connection.name,
        "ingest_url": ingest_url(state, headers, &entry.connection.id),
        "ingest_auth": entry.connection.ingest_auth.as_str(),
        "rejected_ingests": rejections_json(&entry.rejections.summary()),
    })
}

/// A connection's rejected ingests: counts by reason and the latest few, never what they carried.
pub(super) fn rejections_json(summary: &Summary) -> Value {
    let by_reason: serde_json::Map<String, Value> =
        summary.by_reason.iter().map(|(reason, n)| (reason.as_str().to_owned(), (*n).into())).collect();
    let recent: Vec<Value> = summary
        .recent
        .iter()
        .map(|(at, reason)| json!({ "at": rfc3339(*at), "reason": reason.as_str(), "advice": reason.advice() }))
        .collect();
    json!({ "total": summary.total(), "by_reason": by_reason, "recent": recent })
}

fn own_hook<'a>(entry: &'a Entry, id: &str) -> Result<&'a Hook, ApiError> {
    entry.hook(id).ok_or_else(|| ApiError::not_found("hook"))
}

/// A hook just enabled in the store: the registry and the dispatcher learn it.
fn enabled(state: &AppState, hook: &Hook) {
    state.registry.set_hook_disabled(&hook.connection_id, &hook.id, false);
    state.queue.hook_enabled(&hook.id);
    tracing::info!(connection = %hook.connection_id, hook = %hook.id, "hook enabled");
}

/// A connection's hooks as the API shows them, with their health.
pub(super) async fn hooks_json(state: &AppState, entry: &Entry) -> Result<Vec<Value>, ApiError> {
    let health = state.store.hook_health(&entry.connection.id).await?;
    Ok(entry.hooks.iter().map(|h| hook_json(h, &live_health(state, h, &health))).collect())
}

/// A hook's health: as stored, with this instance's fresher knowledge of its streak (the
/// store's copy of the last success is refreshed only now and then).
fn live_health(state: &AppState, hook: &Hook, stored: &HashMap<String, HookHealth>) -> HookHealth {
    let mut health = stored.get(&hook.id).copied().unwrap_or_default();
    if let Some(streak) = state.queue.known_streak(&hook.id).filter(|_| health.disabled_at.is_none()) {
        health.streak = streak;
    }
    health
}

pub(super) fn hook_json(h: &Hook, health: &HookHealth) -> Value {
    let now = now_ms();
    let status = health.status(now);
    json!({
        "id": h.id,
        "url": h.url,
        "event": h.event,
        "template_id": h.template_id,
        "created_at": rfc3339(h.created_at),
        "status": status.as_str(),
        "paused_until": health.streak.paused_until.filter(|_| status == HookStatus::Paused).map(rfc3339),
        "last_success_at": health.streak.last_success_at.map(rfc3339),
        "consecutive_failures": health.streak.failures,
    })
}

fn event_delivery_json(d: &EventDelivery) -> Value {
    json!({
        "id": format!("{DELIVERY_ID_PREFIX}{}", d.id),
        "hook_id": d.hook_id,
        "state": d.state,
        "attempts": d.attempts,
        "last_status": d.last_status,
        "last_error": d.last_error,
        "updated_at": rfc3339(d.updated_at),
    })
}

fn attempt_json(a: &Attempt) -> Value {
    json!({
        "event_id": a.event_id,
        "attempt": a.attempt,
        "status_code": a.status_code,
        "error": a.error,
        "duration_ms": a.duration_ms,
        "at": rfc3339(a.at),
    })
}

/// The URL Stencil posts a connection's webhooks to: `RELAY_PUBLIC_URL`, else the request's own
/// scheme and host.
pub(super) fn ingest_url(state: &AppState, headers: &hyper::HeaderMap, id: &str) -> String {
    let base = match &state.config.public_url {
        Some(url) => url.as_str().trim_end_matches('/').to_owned(),
        None => {
            let host = headers.get(hyper::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
            let scheme = headers.get("x-forwarded-proto").and_then(|h| h.to_str().ok()).unwrap_or("http");
            let scheme = if scheme == "https" { "https" } else { "http" };
            format!("{scheme}://{host}")
        }
    };
    format!("{base}/v1/ingest/{id}")
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::model::EVENT_TYPES;
    use crate::target::{DEFAULT_HOSTS, is_forbidden};

    fn strict() -> TargetPolicy {
        TargetPolicy { hosts: TargetPolicy::parse_hosts("*").unwrap(), ports: vec![443], allow_private: false }
    }

    proptest! {
        /// Any bytes a client posts either parse and validate, or are refused with a 4xx.
        #[test]
        fn registration_bodies_never_panic_and_valid_ones_are_safe(body in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..300),
            ("(https?|ftp)://[a-z0-9.:\\[\\]-]{0,40}/[a-z]{0,5}", proptest::option::of("[a-z.]{0,15}"))
                .prop_map(|(url, event)| serde_json::to_vec(&json!({ "url": url, "event": event })).unwrap()),
        ]) {
            let Ok(input) = serde_json::from_slice::<HookIn>(&body) else { return Ok(()) };
            for policy in [strict(), TargetPolicy { hosts: TargetPolicy::parse_hosts(DEFAULT_HOSTS).unwrap(), ports: vec![443], allow_private: false }] {
                match input.clone().validate(&policy) {
                    Ok((url, event, _)) => {
                        prop_assert!(EVENT_TYPES.contains(&event));
                        let url = url::Url::parse(&url).unwrap();
                        prop_assert_eq!(url.scheme(), "https");
                        match url.host() {
                            Some(url::Host::Ipv4(ip)) => prop_assert!(!is_forbidden(ip.into())),
                            Some(url::Host::Ipv6(ip)) => prop_assert!(!is_forbidden(ip.into())),
                            _ => {}
                        }
                    }
                    Err(e) => prop_assert!(e.status().is_client_error()),
                }
            }
        }
    }
}
