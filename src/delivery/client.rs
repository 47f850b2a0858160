//! The outbound HTTP client: one pooled `reqwest` client, no redirects, a per-attempt timeout,
//! answers read only up to a cap, and every address a target host resolves to checked against
//! the target policy before connecting (so a name that later resolves inward is refused too).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use url::{Host, Url};

use super::retry::{Outcome, parse_retry_after};
use crate::model::DueDelivery;
use crate::target::TargetPolicy;

/// Most bytes of a target's answer that are read (then the connection is dropped).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// `User-Agent` of every delivery.
pub const USER_AGENT: &str = concat!("stencil-relay/", env!("CARGO_PKG_VERSION"));
const MAX_ERROR_LEN: usize = 300;

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

/// Sends deliveries; clones share the connection pool.
#[derive(Clone)]
pub struct DeliveryClient {
    http: reqwest::Client,
    policy: Arc<TargetPolicy>,
    timeout: Duration,
}

impl DeliveryClient {
    /// Builds the client.
    ///
    /// # Errors
    /// The TLS backend cannot be initialised.
    pub fn new(policy: TargetPolicy, timeout: Duration) -> Result<Self, reqwest::Error> {
        let policy = Arc::new(policy);
        let http = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .no_proxy()
            .dns_resolver(GuardedResolver { policy: Arc::clone(&policy) })
            .build()?;
        Ok(Self { http, policy, timeout })
    }

    /// Makes attempt number `attempt` of `delivery`.
    pub async fn send(&self, delivery: &DueDelivery, attempt: u32) -> Sent {
        let started = Instant::now();
        let failed = |error: String| Sent {
            outcome: Outcome::Failed,
            retry_after: None,
            error: Some(error),
            duration: started.elapsed(),
        };
        // Parsed once: the same `Url` is checked and sent.
        let url = match self.checked_url(&delivery.url) {
            Ok(url) => url,
            Err(why) => return failed(why),
        };
        let request = self.http.post(url).headers(headers(delivery, attempt)).body(delivery.payload.clone());
        let mut response = match request.send().await {
            Ok(r) => r,
            Err(e) => return failed(self.describe(&e)),
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let mut read = 0;
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) if read + chunk.len() <= MAX_RESPONSE_BYTES => read += chunk.len(),
                Ok(_) => break,
                Err(e) if e.is_timeout() => return failed(self.describe(&e)),
                Err(_) => break,
            }
        }
        let error = (!(200..300).contains(&status)).then(|| format!("the target answered {status}"));
        Sent { outcome: Outcome::Status(status), retry_after, error, duration: started.elapsed() }
    }

    /// The hook URL, if it parses and does not name a forbidden address literally (names are
    /// checked when they resolve).
    fn checked_url(&self, url: &str) -> Result<Url, String> {
        let url = Url::parse(url).map_err(|_| "the hook URL is not valid".to_owned())?;
        let ip = match url.host() {
            Some(Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(Host::Ipv6(ip)) => IpAddr::V6(ip),
            _ => return Ok(url),
        };
        if self.policy.allows_address(ip) { Ok(url) } else { Err(format!("refused: {ip} is a forbidden address")) }
    }

    fn describe(&self, e: &reqwest::Error) -> String {
        if e.is_timeout() {
            return format!("timed out after {}", humantime::format_duration(self.timeout));
        }
        let mut text = String::from(if e.is_connect() { "connection failed" } else { "request failed" });
        let mut cause = std::error::Error::source(e);
        while let Some(c) = cause {
            text.push_str(": ");
            text.push_str(&c.to_string());
            cause = c.source();
        }
        text.truncate(MAX_ERROR_LEN);
        text
    }
}

fn headers(d: &DueDelivery, attempt: u32) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(7);
    let value = |s: &str| HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""));
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert("x-relay-event-id", value(&d.event_id));
    h.insert("x-relay-hook-id", value(&d.hook_id));
    h.insert("x-relay-attempt", HeaderValue::from(attempt));
    h.insert("webhook-id", value(&d.event_id));
    h.insert("webhook-timestamp", HeaderValue::from(now));
    h
}

/// Resolves with the system resolver, then drops every address the policy forbids.
struct GuardedResolver {
    policy: Arc<TargetPolicy>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = Arc::clone(&self.policy);
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = resolved.into_iter().filter(|a| policy.allows_address(a.ip())).collect();
            if allowed.is_empty() {
                return Err(format!("{host} resolves only to forbidden addresses").into());
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}
