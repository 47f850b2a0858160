//! The outbound HTTP client: one pooled `hyper-util` client over rustls, no redirects, a
//! per-attempt timeout, answers read only up to a cap, and every address a target host resolves
//! to checked against the target policy before connecting (so a name that later resolves inward
//! is refused too).
//!
//! It drives `hyper-util`'s pooled client directly rather than through `reqwest`: the wrapper's
//! request building, redirect layer and response types cost a measurable share of the relay's
//! CPU per delivered event, for features a webhook sender does not use.

use std::error::Error as StdError;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER, USER_AGENT as USER_AGENT_HEADER};
use hyper::{Request, Uri};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_platform_verifier::BuilderVerifierExt;

use super::retry::{Outcome, parse_retry_after};
use super::signing::signature_header;
use crate::model::{DueDelivery, HookKeys, now_ms};
use crate::target::TargetPolicy;

/// Most bytes of a target's answer that are read (then the connection is dropped).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// `User-Agent` of every delivery.
pub const USER_AGENT: &str = concat!("stencil-relay/", env!("CARGO_PKG_VERSION"));
const MAX_ERROR_LEN: usize = 300;
const INVALID_URL: &str = "the hook URL is not valid";
/// How long an idle pooled connection to a target is kept.
const POOL_IDLE: Duration = Duration::from_secs(60);

/// What one attempt saw.
#[derive(Debug, Clone)]
pub struct Sent {
    /// Status or failure.
    pub outcome: Outcome,
    /// The target's `Retry-After`, if any.
    pub retry_after: Option<Duration>,
    /// Why it failed, when it did (never contains the target URL).
    pub error: Option<String>,
    /// Time from sending to the end of the answer.
    pub duration: Duration,
}

/// Why the TLS setup for deliveries failed.
pub type ClientError = rustls::Error;

type Connector = HttpsConnector<HttpConnector<GuardedResolver>>;

/// TLS as every client of the relay speaks it: rustls with aws-lc-rs, the safe default
/// protocol versions, and certificates verified against the operating system's roots.
///
/// # Errors
/// The TLS backend cannot be initialised.
pub fn tls_config() -> Result<rustls::ClientConfig, ClientError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_platform_verifier()?
        .with_no_client_auth())
}

/// Sends deliveries; clones share the connection pool.
#[derive(Clone)]
pub struct DeliveryClient {
    http: Client<Connector, Full<Bytes>>,
    policy: Arc<TargetPolicy>,
    timeout: Duration,
}

impl DeliveryClient {
    /// The longest an attempt's request may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Builds the client: TLS verified against the operating system's roots, HTTP/1.1.
    ///
    /// # Errors
    /// The TLS backend cannot be initialised.
    pub fn new(policy: TargetPolicy, timeout: Duration) -> Result<Self, ClientError> {
        let policy = Arc::new(policy);
        let tls = tls_config()?;
        let mut tcp = HttpConnector::new_with_resolver(GuardedResolver { policy: Arc::clone(&policy) });
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(timeout));
        let connector =
            HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().wrap_connector(tcp);
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_timer(TokioTimer::new())
            .build(connector);
        Ok(Self { http, policy, timeout })
    }

    /// Makes attempt number `attempt` of `delivery`, signed by `keys` (the hook's; `None` when
    /// they could not be read: the attempt fails and is retried, rather than go out unsigned).
    pub async fn send(&self, delivery: &DueDelivery, attempt: u32, keys: Option<&HookKeys>) -> Sent {
        let started = Instant::now();
        let failed = |error: String| Sent {
            outcome: Outcome::Failed,
            retry_after: None,
            error: Some(error),
            duration: started.elapsed(),
        };
        let uri = match self.checked_uri(&delivery.url) {
            Ok(uri) => uri,
            Err(why) => {
                return Sent {
                    outcome: Outcome::Refused,
                    retry_after: None,
                    error: Some(format!("not sent: {why}")),
                    duration: started.elapsed(),
                };
            }
        };
        let Some(keys) = keys else {
            return failed("the hook's signing keys could not be read".to_owned());
        };
        let request = match request(uri, delivery, attempt, keys) {
            Ok(request) => request,
            Err(_) => return failed(INVALID_URL.to_owned()),
        };
        match tokio::time::timeout(self.timeout, self.exchange(request)).await {
            Ok(Ok((status, retry_after))) => {
                let error = (!(200..300).contains(&status)).then(|| format!("the target answered {status}"));
                Sent { outcome: Outcome::Status(status), retry_after, error, duration: started.elapsed() }
            }
            Ok(Err(e)) => failed(describe(&e)),
            Err(_) => failed(format!("timed out after {}", humantime::format_duration(self.timeout))),
        }
    }

    /// Sends the request and reads the answer up to the cap: its status and `Retry-After`.
    async fn exchange(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<(u16, Option<Duration>), hyper_util::client::legacy::Error> {
        let response = self.http.request(request).await?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let mut body = response.into_body();
        let mut read = 0;
        // A broken or oversized answer still counts by its status; the connection is dropped.
        while let Some(Ok(frame)) = body.frame().await {
            read += frame.data_ref().map_or(0, Bytes::len);
            if read > MAX_RESPONSE_BYTES {
                break;
            }
        }
        Ok((status, retry_after))
    }

    /// The hook URL as a request target (a fragment is never sent), if it still keeps the target
    /// rules in force — scheme, allowed host, port, host-name syntax, no forbidden address
    /// literal (names are checked again when they resolve).
    fn checked_uri(&self, url: &str) -> Result<Uri, String> {
        let mut url = self.policy.check(url).map_err(|why| format!("the hook's URL is no longer allowed: {why}"))?;
        url.set_fragment(None);
        url.as_str().parse().map_err(|_| INVALID_URL.to_owned())
    }
}

/// The attempt's request: the exact payload, the relay's headers and the Standard Webhooks ones.
fn request(
    uri: Uri,
    d: &DueDelivery,
    attempt: u32,
    keys: &HookKeys,
) -> Result<Request<Full<Bytes>>, hyper::http::Error> {
    let value = |s: &str| HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""));
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
    let live: Vec<&[u8]> = keys.live(now_ms()).into_iter().map(|key| key.as_slice()).collect();
    let signature = signature_header(&live, &d.event_id, now, &d.payload);
    Request::post(uri)
        .header(USER_AGENT_HEADER, HeaderValue::from_static(USER_AGENT))
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .header("x-relay-event-id", value(&d.event_id))
        .header("x-relay-hook-id", value(&d.hook_id))
        .header("x-relay-attempt", HeaderValue::from(attempt))
        .header("webhook-id", value(&d.event_id))
        .header("webhook-timestamp", HeaderValue::from(now))
        .header("webhook-signature", value(&signature))
        .body(Full::new(d.payload.clone()))
}

/// "connection failed" or "request failed", then the causes (never the URL).
fn describe(e: &hyper_util::client::legacy::Error) -> String {
    let mut text = String::from(if e.is_connect() { "connection failed" } else { "request failed" });
    let mut cause = StdError::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text.truncate(MAX_ERROR_LEN);
    text
}

/// Resolves with the system resolver, then drops every address the policy forbids.
#[derive(Clone)]
struct GuardedResolver {
    policy: Arc<TargetPolicy>,
}

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = Box<dyn StdError + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = Arc::clone(&self.policy);
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = resolved.into_iter().filter(|a| policy.allows_address(a.ip())).collect();
            if allowed.is_empty() {
                return Err(format!("{host} resolves only to forbidden addresses").into());
            }
            Ok(allowed.into_iter())
        })
    }
}
