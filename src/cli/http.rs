//! The command line's HTTP client (operator commands, `doctor`, `demo`, the benchmark): JSON
//! calls to a relay over the stack deliveries use — `hyper-util`'s pooled client with the same
//! rustls setup — so the binary carries one HTTP client, and each call has a deadline.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::delivery::tls_config;

/// How long one call may take unless the client says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A relay's answer: its status and its body, as sent and as JSON (`Null` when empty or not
/// JSON).
#[derive(Debug, Clone)]
pub struct Answer {
    /// The HTTP status.
    pub status: StatusCode,
    /// The body, parsed.
    pub body: Value,
    /// The body's bytes.
    pub raw: Bytes,
}

/// Why a call got no answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The URL or a header could not be put into a request.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// No connection, a reset, or a broken answer.
    #[error("{0}")]
    Transport(String),
    /// No answer within the client's deadline.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Calls a relay's JSON API; clones share the connection pool.
#[derive(Clone)]
pub struct JsonClient {
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

impl JsonClient {
    /// A client whose calls each end after `timeout`.
    ///
    /// # Errors
    /// The TLS backend cannot be initialised.
    pub fn new(timeout: Duration) -> Result<Self, rustls::Error> {
        let connector =
            HttpsConnectorBuilder::new().with_tls_config(tls_config()?).https_or_http().enable_http1().build();
        Ok(Self { http: Client::builder(TokioExecutor::new()).build(connector), timeout })
    }

    /// `method url`, with `Authorization: Bearer {bearer}` and `json` as the body when given.
    ///
    /// # Errors
    /// No answer (see [`CallError`]); any status is an answer.
    pub async fn call(
        &self,
        method: Method,
        url: &str,
        bearer: Option<&str>,
        json: Option<&Value>,
    ) -> Result<Answer, CallError> {
        let body = json.map(|v| Bytes::from(v.to_string()));
        self.send(method, url, bearer, &[], body).await
    }

    /// `method url` with these headers and raw body bytes (sent as JSON).
    ///
    /// # Errors
    /// No answer (see [`CallError`]).
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        bearer: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
    ) -> Result<Answer, CallError> {
        let invalid = |e: &dyn std::fmt::Display| CallError::Invalid(e.to_string());
        let mut request = Request::builder().method(method).uri(url);
        if let Some(token) = bearer {
            let value = HeaderValue::try_from(format!("Bearer {token}")).map_err(|e| invalid(&e))?;
            request = request.header(AUTHORIZATION, value);
        }
        if body.is_some() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(body.unwrap_or_default())).map_err(|e| invalid(&e))?;
        let exchange = async {
            let response = self.http.request(request).await.map_err(|e| CallError::Transport(describe(&e)))?;
            let status = response.status();
            let raw = response.into_body().collect().await.map_err(|e| CallError::Transport(describe(&e)))?.to_bytes();
            Ok(Answer { status, body: serde_json::from_slice(&raw).unwrap_or(Value::Null), raw })
        };
        tokio::time::timeout(self.timeout, exchange).await.map_err(|_| CallError::Timeout(self.timeout))?
    }
}

/// The innermost cause, which says what went wrong ("Connection refused") where the outer
/// errors only say where.
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause.to_string()
}
