//! Talking to a relay over HTTP: one `send` through which every test request goes, and the
//! handful of calls tests make all the time.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The admin token every test server uses.
pub(crate) const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// A connection created through the admin API, with its credentials.
#[derive(Debug, Clone)]
pub(crate) struct Conn {
    /// Its id.
    pub(crate) id: String,
    /// Its API key (bearer token of the hook API).
    pub(crate) api_key: String,
    /// Its signing secret.
    pub(crate) secret: String,
}

/// An answer: status, headers and JSON body (`Null` when empty).
#[derive(Debug)]
pub(crate) struct Reply {
    /// Status.
    pub(crate) status: StatusCode,
    /// Headers.
    pub(crate) headers: reqwest::header::HeaderMap,
    /// Body as JSON.
    pub(crate) body: Value,
}

impl Reply {
    /// A header as text.
    pub(crate) fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
    }

    /// The `error` code of an error answer.
    pub(crate) fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or_default()
    }
}

/// An HTTP client bound to one relay's base URL.
pub(crate) struct RelayClient {
    /// `http://127.0.0.1:PORT`.
    pub(crate) base: String,
    http: reqwest::Client,
}

impl RelayClient {
    /// A client for the relay at `base`.
    pub(crate) fn new(base: String) -> Self {
        Self { base, http: reqwest::Client::builder().no_proxy().build().unwrap() }
    }

    /// Sends a request; `body` `None` sends none, bytes are sent as they are.
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body);
        }
        let response = req.send().await.expect("the relay answers");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.unwrap();
        let body =
            if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).expect("answers are JSON") };
        Reply { status, headers, body }
    }

    /// Waits until the list at `path` (read with `token`) has at least `n` entries; returns them.
    pub(crate) async fn await_list(&self, token: &str, path: &str, n: usize) -> Vec<Value> {
        super::eventually(&format!("{n} entries at {path}"), || async {
            let reply = self.send(Method::GET, path, Some(token), None, &[]).await;
            reply.body["data"].as_array().filter(|d| d.len() >= n).cloned()
        })
        .await
    }

    /// Waits until `hook` has `n` recorded attempts; returns them, newest first.
    pub(crate) async fn await_attempts(&self, conn: &Conn, hook: &str, n: usize) -> Vec<Value> {
        self.await_list(&conn.api_key, &format!("/v1/hooks/{hook}/deliveries"), n).await
    }

    /// Waits until there are `n` dead letters (`query` such as `?connection=a`); returns them.
    pub(crate) async fn await_dead_letters(&self, query: &str, n: usize) -> Vec<Value> {
        self.await_list(ADMIN_TOKEN, &format!("/admin/v1/dead-letters{query}"), n).await
    }

    /// An admin API call.
    pub(crate) async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        let body = body.map(|b| serde_json::to_vec(&b).unwrap());
        self.send(method, &format!("/admin/v1{path}"), Some(ADMIN_TOKEN), body, &[]).await
    }

    /// A hook API call as `conn`.
    pub(crate) async fn api(&self, conn: &Conn, method: Method, path: &str, body: Option<Value>) -> Reply {
        let body = body.map(|b| serde_json::to_vec(&b).unwrap());
        self.send(method, &format!("/v1{path}"), Some(&conn.api_key), body, &[]).await
    }

    /// Creates a connection with generated credentials.
    pub(crate) async fn connection(&self, id: &str) -> Conn {
        self.connection_with(json!({ "name": format!("Project {id}"), "id": id })).await
    }

    /// Creates a connection from an admin API body.
    pub(crate) async fn connection_with(&self, body: Value) -> Conn {
        let reply = self.admin(Method::POST, "/connections", Some(body)).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
        Conn {
            id: reply.body["id"].as_str().unwrap().into(),
            api_key: reply.body["api_key"].as_str().unwrap().into(),
            secret: reply.body["signing_secret"].as_str().unwrap().into(),
        }
    }

    /// Attaches a hook to `url` and returns its id.
    pub(crate) async fn attach(&self, conn: &Conn, url: &str, template_id: Option<&str>) -> String {
        let reply =
            self.api(conn, Method::POST, "/hooks", Some(json!({ "url": url, "template_id": template_id }))).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
        reply.body["id"].as_str().unwrap().into()
    }

    /// Posts `body` to `conn`'s ingest URL, signed with its secret.
    pub(crate) async fn ingest(&self, conn: &Conn, body: &[u8]) -> Reply {
        let signature = stencil_relay::signature::sign(&conn.secret, body);
        self.ingest_signed(&conn.id, body, &signature).await
    }

    /// Posts `body` to `conn`'s ingest URL for Stencil template `template` (`?template_id=`),
    /// signed with its secret: how Stencil's per-template webhooks arrive.
    pub(crate) async fn ingest_for(&self, conn: &Conn, template: &str, body: &[u8]) -> Reply {
        let signature = stencil_relay::signature::sign(&conn.secret, body);
        let headers = [("x-usestencil-signature", signature.as_str())];
        let path = format!("/v1/ingest/{}?template_id={template}", conn.id);
        self.send(Method::POST, &path, None, Some(body.to_vec()), &headers).await
    }

    /// Posts `body` with an explicit signature header value.
    pub(crate) async fn ingest_signed(&self, connection_id: &str, body: &[u8], signature: &str) -> Reply {
        let headers = [("x-usestencil-signature", signature)];
        self.send(Method::POST, &format!("/v1/ingest/{connection_id}"), None, Some(body.to_vec()), &headers).await
    }
}
