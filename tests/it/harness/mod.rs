//! Test support: the server under test, HTTP sinks, waiting helpers.

pub(crate) mod client;
pub(crate) mod pg_server;
pub(crate) mod process;
pub(crate) mod server;
pub(crate) mod sink;

pub(crate) use client::Conn;
pub(crate) use process::RelayProcess;
pub(crate) use server::TestServer;
pub(crate) use sink::{Sink, SinkReply};

use std::future::Future;
use std::time::Duration;

/// How long any wait-until may take before the test fails.
pub(crate) const PATIENCE: Duration = Duration::from_secs(15);

/// Polls `check` until it returns `Some`, failing the test after [`PATIENCE`].
pub(crate) async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A store for one test: a fresh schema in `RELAY_TEST_POSTGRES_URL`'s database when that is
/// set (so the whole suite runs on PostgreSQL), else an SQLite file in `dir`.
pub(crate) async fn database_url(dir: &std::path::Path) -> String {
    match postgres_url() {
        Some(base) => fresh_schema(&base).await,
        None => format!("sqlite://{}", dir.join("relay.db").display()),
    }
}

/// Whether the suite runs on PostgreSQL, for the few facts that differ between the backends.
pub(crate) fn is_postgres() -> bool {
    postgres_url().is_some()
}

pub(crate) fn postgres_url() -> Option<String> {
    std::env::var("RELAY_TEST_POSTGRES_URL").ok().filter(|base| !base.is_empty())
}

/// A new schema in `base`'s database, and the URL that uses it.
pub(crate) async fn fresh_schema(base: &str) -> String {
    let (client, connection) =
        tokio_postgres::connect(base, tokio_postgres::NoTls).await.expect("RELAY_TEST_POSTGRES_URL is reachable");
    tokio::spawn(connection);
    let schema = stencil_relay::model::random_token("test_", 8);
    client.batch_execute(&format!("CREATE SCHEMA {schema}")).await.expect("a schema can be created");
    let separator = if base.contains('?') { '&' } else { '?' };
    format!("{base}{separator}options=-csearch_path%3D{schema}")
}

/// `GET {base}/metrics`: its status and text.
pub(crate) async fn scrape(base: &str) -> (reqwest::StatusCode, String) {
    let response = reqwest::get(format!("{base}/metrics")).await.unwrap();
    (response.status(), response.text().await.unwrap())
}

/// The value of `series` in a `/metrics` text (the test fails when it is not there).
pub(crate) fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or_else(|| panic!("{series} not in\n{text}"))
}

/// A fixture file's bytes.
pub(crate) fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).expect("fixture exists")
}

/// What Stencil sends for `image.created`, as its documentation shows it (no `id`, no
/// `template_id`), made unique by `tag` the way Stencil's are: by the image's URLs.
pub(crate) fn stencil_event(tag: &str) -> Vec<u8> {
    let documented = String::from_utf8(fixture("payloads/stencil-image-created.json")).unwrap();
    documented.replace("19da5632-feef-4abd-a28a-e3dfa6077429", tag).into_bytes()
}

/// The event id the relay gives a payload without an `id` (all of Stencil's): its SHA-256.
pub(crate) fn event_id(body: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(body))
}

/// A payload of the older shape with a top-level id (and an optional template), for tests
/// about event ids.
pub(crate) fn event(id: &str, template_id: Option<&str>) -> Vec<u8> {
    let mut value: serde_json::Value =
        serde_json::from_slice(&fixture("payloads/legacy-image-created-with-id.json")).unwrap();
    value["id"] = id.into();
    value["template_id"] = template_id.map_or(serde_json::Value::Null, Into::into);
    serde_json::to_vec(&value).unwrap()
}
