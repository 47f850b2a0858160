//! The operator API (`/admin/v1/…`), on only when `RELAY_ADMIN_TOKEN` is set: connections,
//! API-key and signing-secret rotation, dead letters. Keys and secrets appear only in the answer
//! that creates them.

use std::net::IpAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::{Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AppState;
use super::auth::authorize;
use super::error::ApiError;
use super::hooks::{hooks_json, ingest_url, rejections_json};
use super::io::{limit, query_param, read_json};
use super::response::{empty, json};
use super::routes::Route;
use crate::model::{
    Connection, DELIVERY_ID_PREFIX, DeadLetter, IngestAuth, SigningSecret, api_key_hash, now_ms, random_token, rfc3339,
};
use crate::registry::Entry;
use crate::store::Created;

type Reply = Result<Response<Full<Bytes>>, ApiError>;

/// Signing secrets kept at once (the current one plus those in their grace period).
pub(super) const MAX_SECRETS: usize = 5;
/// Longest grace period of a rotated-out signing secret.
pub(super) const MAX_GRACE_SECONDS: u64 = 30 * 24 * 3600;

pub(super) async fn handle(state: &AppState, client: IpAddr, route: Route<'_>, req: Request<Incoming>) -> Reply {
    let Some(expected) = state.admin_token_hash else {
        return Err(ApiError::not_found("route"));
    };
    authorize(&state.admin_auth_failures, client, req.headers(), |token| {
        let given: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        bool::from(given.ct_eq(&expected)).then_some(())
    })?;
    let query = req.uri().query().map(str::to_owned);
    let query = query.as_deref();
    match route {
        Route::CreateConnection => create(state, req).await,
        Route::ListConnections => {
            let data: Vec<Value> =
                state.registry.all().iter().map(|e| connection_json(state, req.headers(), e)).collect();
            Ok(json(StatusCode::OK, &json!({ "data": data })))
        }
        Route::GetConnection(id) => {
            let entry = state.registry.get(id).ok_or_else(|| ApiError::not_found("connection"))?;
            Ok(json(StatusCode::OK, &connection_json(state, req.headers(), &entry)))
        }
        Route::PatchConnection(id) => patch(state, id, req).await,
        Route::DeleteConnection(id) => {
            let removed = state.store.delete_connection(id).await?;
            state.registry.remove_connection(id);
            state.queue.stats().forget(id);
            if removed { Ok(empty(StatusCode::NO_CONTENT)) } else { Err(ApiError::not_found("connection")) }
        }
        Route::ConnectionHooks(id) => {
            let entry = state.registry.get(id).ok_or_else(|| ApiError::not_found("connection"))?;
            Ok(json(StatusCode::OK, &json!({ "data": hooks_json(state, &entry).await? })))
        }
        Route::RotateApiKey(id) => {
            state.registry.get(id).ok_or_else(|| ApiError::not_found("connection"))?;
            let api_key = random_token("sk_", 32);
            if !state.store.set_api_key_hash(id, api_key_hash(&api_key)).await? {
                return Err(ApiError::not_found("connection"));
            }
            state.registry.set_api_key_hash(id, api_key_hash(&api_key));
            Ok(json(StatusCode::OK, &json!({ "api_key": api_key })))
        }
        Route::RotateSigningSecret(id) => rotate_secret(state, id, req).await,
        Route::DeadLetters => {
            let connection = query_param(query, "connection");
            let letters = state.store.dead_letters(connection.as_deref(), limit(query, 50, 500)?).await?;
            let data: Vec<Value> = letters.iter().map(dead_letter_json).collect();
            Ok(json(StatusCode::OK, &json!({ "data": data })))
        }
        Route::RetryDeadLetter(id) => replay(state, id, None, false).await,
        Route::Overview => overview(state).await,
        _ => Err(ApiError::not_found("route")),
    }
}

#[derive(Debug, Deserialize)]
struct ConnectionIn {
    name: Option<String>,
    id: Option<String>,
    api_key: Option<String>,
    signing_secret: Option<String>,
    ingest_rate: Option<u32>,
    ingest_auth: Option<String>,
}

/// The `ingest_auth` a request names, or 422 saying which are valid.
fn ingest_auth_field(given: Option<&str>) -> Result<Option<IngestAuth>, ApiError> {
    given
        .map(|name| {
            IngestAuth::parse(name)
                .ok_or_else(|| ApiError::validation("ingest_auth must be one of signature, token or either"))
        })
        .transpose()
}

/// Checks a connection name; a trimmed copy.
fn name_field(given: Option<String>) -> Result<Option<String>, ApiError> {
    let Some(name) = given else { return Ok(None) };
    let name = name.trim().to_owned();
    if name.is_empty() {
        return Err(ApiError::validation("name is required"));
    }
    if name.len() > 200 {
        return Err(ApiError::validation("name is longer than 200 bytes"));
    }
    Ok(Some(name))
}

fn ingest_rate_field(given: Option<u32>) -> Result<Option<u32>, ApiError> {
    if given == Some(0) {
        return Err(ApiError::validation("ingest_rate must be at least 1 event per second"));
    }
    Ok(given)
}

async fn create(state: &AppState, req: Request<Incoming>) -> Reply {
    let (parts, body) = req.into_parts();
    let input: ConnectionIn = read_json(&parts.headers, body, state.body_pace()).await?;
    let name = name_field(input.name)?.ok_or_else(|| ApiError::validation("name is required"))?;
    let ingest_auth = ingest_auth_field(input.ingest_auth.as_deref())?.unwrap_or_default();
    let ingest_rate = ingest_rate_field(input.ingest_rate)?;
    let id = input.id.unwrap_or_else(|| random_token("con_", 12));
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(ApiError::validation("id must be 1 to 64 characters of A-Z, a-z, 0-9, _ and -"));
    }
    let api_key = secret_field(input.api_key, "api_key", "sk_")?;
    let signing_secret = secret_field(input.signing_secret, "signing_secret", "whsec_")?;
    let connection = Connection {
        id: id.clone(),
        name: name.clone(),
        api_key_hash: api_key_hash(&api_key),
        secrets: vec![SigningSecret { secret: signing_secret.clone(), expires_at: None }],
        ingest_rate,
        ingest_auth,
        created_at: now_ms(),
    };
    match state.store.create_connection(connection.clone()).await? {
        Created::Created => {}
        Created::IdTaken => {
            let taken = format!("a connection with id {id:?} already exists (or is still being removed)");
            return Err(ApiError::conflict(taken));
        }
        Created::KeyTaken => {
            return Err(ApiError::conflict("that api_key belongs to another connection"));
        }
    }
    state.registry.insert_connection(connection);
    let body = json!({
        "id": id,
        "name": name,
        "api_key": api_key,
        "signing_secret": signing_secret,
        "ingest_url": ingest_url(state, &parts.headers, &id),
        "ingest_rate": ingest_rate.unwrap_or(state.config.ingest_rate),
        "ingest_auth": ingest_auth.as_str(),
    });
    Ok(json(StatusCode::CREATED, &body))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectionPatch {
    name: Option<String>,
    ingest_rate: Option<u32>,
    ingest_auth: Option<String>,
}

/// `PATCH /admin/v1/connections/{id}`: name, ingest rate and `ingest_auth`; what is left out
/// stays as it is. Keys and secrets have their own rotation endpoints.
async fn patch(state: &AppState, id: &str, req: Request<Incoming>) -> Reply {
    let entry = state.registry.get(id).ok_or_else(|| ApiError::not_found("connection"))?;
    let (parts, body) = req.into_parts();
    let input: ConnectionPatch = read_json(&parts.headers, body, state.body_pace()).await?;
    let mut connection = entry.connection.clone();
    if let Some(name) = name_field(input.name)? {
        connection.name = name;
    }
    if let Some(rate) = ingest_rate_field(input.ingest_rate)? {
        connection.ingest_rate = Some(rate);
    }
    if let Some(mode) = ingest_auth_field(input.ingest_auth.as_deref())? {
        connection.ingest_auth = mode;
    }
    if !state.store.set_settings(connection.clone()).await? {
        return Err(ApiError::not_found("connection"));
    }
    state.registry.replace_connection(connection);
    let entry = state.registry.get(id).ok_or_else(|| ApiError::not_found("connection"))?;
    Ok(json(StatusCode::OK, &connection_json(state, &parts.headers, &entry)))
}

/// Shortest API key or signing secret an operator may choose: as hard to guess as 32 random
/// characters (generated ones carry 256 bits).
pub(super) const MIN_CHOSEN_SECRET_LEN: usize = 32;

/// An operator-chosen key or secret, checked, or a generated one. Printable ASCII only: a key
/// travels in an `Authorization` header and a secret in Stencil's custom-header field, where
/// anything else could never match.
fn secret_field(given: Option<String>, field: &str, prefix: &str) -> Result<String, ApiError> {
    match given {
        None => Ok(random_token(prefix, 32)),
        Some(s) if s.len() < MIN_CHOSEN_SECRET_LEN || s.len() > 256 || !s.bytes().all(|b| b.is_ascii_graphic()) => {
            Err(ApiError::validation(format!(
                "{field} must be {MIN_CHOSEN_SECRET_LEN} to 256 printable ASCII characters without spaces"
            )))
        }
        Some(s) => Ok(s),
    }
}

#[derive(Debug, Default, Deserialize)]
struct RotateIn {
    grace_seconds: Option<u64>,
}

async fn rotate_secret(state: &AppState, id: &str, req: Request<Incoming>) -> Reply {
    let entry = state.registry.get(id).ok_or_else(|| ApiError::not_found("connection"))?;
    let (parts, body) = req.into_parts();
    let input: RotateIn = read_json(&parts.headers, body, state.body_pace()).await?;
    let grace = input.grace_seconds.unwrap_or(0);
    if grace > MAX_GRACE_SECONDS {
        return Err(ApiError::validation(format!("grace_seconds must be at most {MAX_GRACE_SECONDS}")));
    }
    let now = now_ms();
    let retire_at = now + i64::try_from(grace * 1000).unwrap_or(i64::MAX);
    let secret = random_token("whsec_", 32);
    let mut secrets = vec![SigningSecret { secret: secret.clone(), expires_at: None }];
    secrets.extend(entry.connection.secrets.iter().filter(|s| s.is_live(now)).map(|s| SigningSecret {
        secret: s.secret.clone(),
        expires_at: Some(s.expires_at.map_or(retire_at, |at| at.min(retire_at))),
    }));
    secrets.retain(|s| s.is_live(now));
    secrets.truncate(MAX_SECRETS);
    if !state.store.set_secrets(id, secrets.clone()).await? {
        return Err(ApiError::not_found("connection"));
    }
    state.registry.set_secrets(id, secrets);
    let previous_expires_at = (grace > 0).then(|| rfc3339(retire_at));
    Ok(json(StatusCode::OK, &json!({ "signing_secret": secret, "previous_expires_at": previous_expires_at })))
}

fn connection_json(state: &AppState, headers: &HeaderMap, e: &Entry) -> Value {
    let c = &e.connection;
    json!({
        "id": c.id,
        "name": c.name,
        "ingest_rate": e.limiter.rate(),
        "hook_count": e.hooks.len(),
        "signing_secrets": c.secrets.len(),
        "ingest_url": ingest_url(state, headers, &c.id),
        "ingest_auth": c.ingest_auth.as_str(),
        "rejected_ingests": rejections_json(&e.rejections.summary()),
        "created_at": rfc3339(c.created_at),
    })
}

/// Schedules delivery `id` again from attempt 1: a dead letter (`POST …/dead-letters/{id}/retry`),
/// or with `delivered_too` any finished delivery (the dashboard's "replay to this hook"); only
/// `connection`'s when given (the hook API replays a tenant's own).
pub(super) async fn replay(state: &AppState, id: &str, connection: Option<&str>, delivered_too: bool) -> Reply {
    let number = id.strip_prefix(DELIVERY_ID_PREFIX).unwrap_or(id).parse::<i64>().ok();
    let now = now_ms();
    let hook = match number {
        Some(n) => state.store.replay(n, now, connection, delivered_too).await?,
        None => None,
    };
    let Some(hook) = hook else {
        return Err(ApiError::not_found(if delivered_too { "finished delivery" } else { "dead letter" }));
    };
    state.queue.rescheduled(&hook, now);
    Ok(json(StatusCode::ACCEPTED, &json!({ "id": id, "status": "scheduled" })))
}

/// How many of the hooks that fail most the overview lists.
const FAILING_HOOKS: usize = 10;

/// `GET /admin/v1/overview`: the backlog's size and age, the store's size, hooks by status,
/// per connection its pending deliveries, dead letters and events in the last 24 hours, and the
/// hooks that fail most.
async fn overview(state: &AppState) -> Reply {
    let now = now_ms();
    let overview = state.store.overview(FAILING_HOOKS, now).await?;
    let stats = *state.store_stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let connections: Vec<Value> = overview
        .connections
        .iter()
        .map(
            |c| json!({ "id": c.id, "pending": c.pending, "dead_letters": c.dead_letters, "events_24h": c.events_24h }),
        )
        .collect();
    let failing: Vec<Value> = overview
        .failing_hooks
        .iter()
        .map(|(id, connection, url, health)| {
            json!({
                "id": id,
                "connection_id": connection,
                "url": url,
                "status": health.status(now).as_str(),
                "consecutive_failures": health.streak.failures,
                "last_success_at": health.streak.last_success_at.map(rfc3339),
            })
        })
        .collect();
    let hooks = state.registry.hook_count() as u64;
    Ok(json(
        StatusCode::OK,
        &json!({
            "pending": stats.pending,
            "oldest_pending_age_seconds": stats.oldest_pending_at.map_or(0, |at| (now - at).max(0) / 1000),
            "store_size_bytes": stats.size_bytes,
            "hooks": {
                "active": hooks.saturating_sub(stats.paused_hooks + stats.disabled_hooks),
                "paused": stats.paused_hooks,
                "disabled": stats.disabled_hooks,
            },
            "connections": connections,
            "failing_hooks": failing,
        }),
    ))
}

pub(super) fn dead_letter_json(d: &DeadLetter) -> Value {
    json!({
        "id": format!("{DELIVERY_ID_PREFIX}{}", d.id),
        "connection_id": d.connection_id,
        "event_id": d.event_id,
        "hook_id": d.hook_id,
        "attempts": d.attempts,
        "last_status": d.last_status,
        "last_error": d.last_error,
        "dead_at": rfc3339(d.updated_at),
    })
}
