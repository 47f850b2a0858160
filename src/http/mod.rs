//! The HTTP server: accept loop, hyper-util's auto (HTTP/1.1 keep-alive + h2c) connections with
//! a header-read timeout, graceful shutdown, a span and `X-Request-Id` per request, and dispatch
//! of the route table to thin handlers. Imports `registry`, `store`, `signature`, `model`,
//! `ratelimit`, `target`, `config`, `metrics` and the delivery queue handle.

mod admin;
mod auth;
mod error;
mod hooks;
mod ingest;
mod io;
mod limits;
mod response;
mod routes;
mod ui;

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use error::{ApiError, ErrorCode};
pub use routes::{PATTERNS, Route};

use crate::config::Config;
use crate::delivery::DeliveryQueue;
use crate::metrics::{IngestOutcome, Levels, Metrics};
use crate::ratelimit::AuthFailures;
use crate::registry::Registry;
use crate::store::Store;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What every handler may use.
pub struct AppState {
    /// Validated settings.
    pub config: Config,
    /// Durable state.
    pub store: Store,
    /// The look-up index.
    pub registry: Registry,
    /// Wakes the delivery workers after an ingest.
    pub queue: DeliveryQueue,
    /// Per-address failed-authentication limit of the hook API.
    pub auth_failures: AuthFailures,
    /// The same for the admin API, so that neither API's failures can lock the other out.
    pub admin_auth_failures: AuthFailures,
    /// SHA-256 of the admin token; compared in constant time.
    pub admin_token_hash: Option<[u8; 32]>,
    /// Counters and histograms served at `/metrics`.
    pub metrics: Metrics,
    /// The store's figures as last read in the background (`/metrics` shows them without
    /// touching the store).
    pub store_stats: std::sync::Mutex<crate::store::StoreStats>,
    /// Events received per connection and hour since the last flush to the store.
    pub event_counts: Arc<crate::event_counts::EventCounts>,
    /// Ingest requests in progress, in all, per address and per connection id.
    ingest_slots: limits::IngestSlots,
    /// Mints request ids: a random prefix per instance and a counter, so no request pays for
    /// OS randomness.
    request_ids: RequestIds,
}

/// Unique request ids without a syscall per request.
struct RequestIds {
    prefix: String,
    next: std::sync::atomic::AtomicU64,
}

impl RequestIds {
    fn new() -> Self {
        Self { prefix: crate::model::random_token("req_", 6), next: std::sync::atomic::AtomicU64::new(0) }
    }

    fn mint(&self) -> HeaderValue {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        HeaderValue::from_str(&format!("{}_{n:x}", self.prefix)).expect("hex is a valid header")
    }
}

impl AppState {
    /// Builds the handler state.
    pub fn new(config: Config, store: Store, registry: Registry, queue: DeliveryQueue, metrics: Metrics) -> Self {
        let ingest_slots = limits::IngestSlots::new(
            config.max_inflight_ingest,
            config.max_ingest_per_address,
            config.max_ingest_per_connection,
        );
        let admin_token_hash = config.admin_token.as_deref().map(|t| Sha256::digest(t.as_bytes()).into());
        Self {
            config,
            store,
            registry,
            queue,
            auth_failures: AuthFailures::default(),
            admin_auth_failures: AuthFailures::default(),
            admin_token_hash,
            metrics,
            ingest_slots,
            store_stats: std::sync::Mutex::default(),
            event_counts: Arc::default(),
            request_ids: RequestIds::new(),
        }
    }
}

impl AppState {
    /// How request bodies must arrive.
    fn body_pace(&self) -> io::BodyPace {
        io::BodyPace { timeout: self.config.body_timeout, min_rate: self.config.min_body_rate }
    }
}

/// Most HTTP/2 streams one connection may have open at once: enough for a client that
/// multiplexes, too few for one connection to hold a large share of the ingest slots.
const MAX_STREAMS_PER_CONNECTION: u32 = 32;
/// How often an HTTP/2 connection is pinged, and how long its answer may take before the
/// connection is closed as dead.
const H2_KEEP_ALIVE: (Duration, Duration) = (Duration::from_secs(20), Duration::from_secs(10));

/// Which routes a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// The public API (with `/metrics` unless that has a listener of its own).
    Api,
    /// Only `GET /metrics` (`RELAY_METRICS_LISTEN`).
    Metrics,
}

/// Serves `surface` on `listener` until `shutdown`, then lets open requests finish for up to
/// `grace`.
pub async fn serve(
    listener: TcpListener,
    surface: Surface,
    state: Arc<AppState>,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(state.config.header_timeout).keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .keep_alive_interval(H2_KEEP_ALIVE.0)
        .keep_alive_timeout(H2_KEEP_ALIVE.1);
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(state.config.max_connections));
    // Behind a proxy every connection comes from the proxy: clients are told apart per request
    // (RELAY_CLIENT_IP_HEADER), and the proxy limits its own connections.
    let per_address = state
        .config
        .client_ip_header
        .is_none()
        .then(|| Arc::new(limits::Counts::<IpAddr>::new(state.config.max_connections_per_address)));
    let (first_request, idle) = (state.config.header_timeout, state.config.idle_timeout);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(cause = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let address = match &per_address {
            Some(counts) => match limits::hold(counts, peer.ip()) {
                Some(held) => Some(held),
                None => {
                    tokio::spawn(refuse(stream));
                    continue;
                }
            },
            None => None,
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            tokio::spawn(refuse(stream));
            continue;
        };
        let state = Arc::clone(&state);
        let activity = limits::Activity::new();
        let service = service_fn({
            let activity = Arc::clone(&activity);
            move |req| {
                let state = Arc::clone(&state);
                let busy = activity.busy();
                async move {
                    let response = handle(&state, surface, peer.ip(), req).await;
                    drop(busy);
                    Ok::<_, Infallible>(response)
                }
            }
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // A connection with no request in progress is closed after the first-request
            // deadline (protocol detection included) or the idle timeout; a request in
            // progress is bounded by the header and body timeouts instead.
            tokio::select! {
                ended = connection => {
                    if let Err(e) = ended {
                        tracing::debug!(cause = %e, "connection ended with an error");
                    }
                }
                () = activity.idle(first_request, idle) => tracing::debug!("closed an idle connection"),
            }
            drop((permit, address));
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!(grace = ?grace, "open connections outlived the shutdown grace");
    }
}

/// Answers a connection over the cap with 503 and closes it, without reading its request.
async fn refuse(mut stream: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    const BODY: &str = r#"{"error":"unavailable","message":"too many connections; retry later"}"#;
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(answer.as_bytes())).await;
    let _ = stream.shutdown().await;
}

/// The client's address: from the trusted proxy header when one is configured and present.
/// Of a list (`X-Forwarded-For`), the rightmost entry: the one the trusted proxy appended. The
/// entries before it are whatever the client wrote.
fn client_address(state: &AppState, peer: IpAddr, req: &Request<Incoming>) -> IpAddr {
    let Some(header) = &state.config.client_ip_header else {
        return peer;
    };
    req.headers()
        .get_all(header)
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(peer)
}

async fn handle(state: &AppState, surface: Surface, peer: IpAddr, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let client = client_address(state, peer, &req);
    let request_id = req
        .headers()
        .get(&REQUEST_ID)
        .filter(|v| v.len() <= 128 && v.to_str().is_ok_and(|s| !s.is_empty()))
        .cloned()
        .unwrap_or_else(|| state.request_ids.mint());
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let routed = routes::route(&method, &path).and_then(|route| {
        let metrics_elsewhere = state.config.metrics_listen.is_some();
        match (surface, route) {
            (Surface::Metrics, Route::Metrics) => Ok(route),
            (Surface::Api, Route::Metrics) if metrics_elsewhere => Err(ApiError::not_found("route")),
            (Surface::Api, _) => Ok(route),
            (Surface::Metrics, _) => Err(ApiError::not_found("route")),
        }
    });
    let pattern = routed.as_ref().map_or("unmatched", Route::pattern);
    let span = tracing::info_span!("request", %method, route = pattern, request_id = ?request_id);
    let mut response = async {
        let result = match routed {
            Ok(route) => dispatch(state, client, route, req).await,
            Err(e) => Err(e),
        };
        let response = result.unwrap_or_else(ApiError::into_response);
        tracing::info!(status = response.status().as_u16(), ms = started.elapsed().as_millis() as u64, "request");
        response
    }
    .instrument(span)
    .await;
    response.headers_mut().insert(REQUEST_ID, request_id);
    response
}

async fn dispatch(
    state: &AppState,
    client: IpAddr,
    route: Route<'_>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    match route {
        Route::Healthz => Ok(response::json(StatusCode::OK, &serde_json::json!({ "status": "ok" }))),
        Route::Readyz => match state.store.ping().await {
            Ok(()) => Ok(response::json(StatusCode::OK, &serde_json::json!({ "status": "ready" }))),
            Err(e) => Err(e.into()),
        },
        Route::Metrics => {
            let stats = *state.store_stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let waited = stats.oldest_pending_at.map_or(0, |at| crate::model::now_ms().saturating_sub(at));
            let text = state.metrics.render(&Levels {
                pending: stats.pending,
                oldest_pending_age: Duration::from_millis(u64::try_from(waited).unwrap_or(0)),
                store_bytes: stats.size_bytes,
                hooks: state.registry.hook_count(),
                paused_hooks: stats.paused_hooks,
                disabled_hooks: stats.disabled_hooks,
                connections: state.registry.len(),
            });
            let mut response = Response::new(Full::new(Bytes::from(text)));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            );
            Ok(response)
        }
        Route::UiRoot => ui::asset(""),
        Route::Ui(asset) => ui::asset(asset),
        Route::Ingest(connection_id) => {
            let response =
                ingest::ingest(state, client, connection_id, req).await.unwrap_or_else(ApiError::into_response);
            state.metrics.ingest(ingest_outcome(response.status()));
            Ok(response)
        }
        route if route.is_admin() => admin::handle(state, client, route, req).await,
        route => hooks::handle(state, client, route, req).await,
    }
}

fn ingest_outcome(status: StatusCode) -> IngestOutcome {
    match status.as_u16() {
        202 => IngestOutcome::Accepted,
        200 => IngestOutcome::Duplicate,
        401 => IngestOutcome::Unauthorized,
        413 => IngestOutcome::TooLarge,
        429 => IngestOutcome::RateLimited,
        503 => IngestOutcome::Unavailable,
        _ => IngestOutcome::Invalid,
    }
}
