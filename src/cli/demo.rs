//! `stencil-relay demo`: the whole flow in one command, on a temporary SQLite file — start the
//! relay, start a stand-in for a Make hook, create a connection, attach the hook, sign and send
//! a fixture `image.created` event, and show the delivery as it lands.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Method, StatusCode};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::http::{DEFAULT_TIMEOUT, JsonClient};
use super::operator::{AdminClient, Remote};
use crate::app::App;
use crate::config::{Config, ServeArgs};
use crate::model::random_token;

/// The event the demo sends: the repository's fixture.
const FIXTURE: &[u8] = include_bytes!("../../fixtures/payloads/stencil-image-created.json");

/// One request the stand-in hook received.
struct Arrival {
    headers: hyper::HeaderMap,
    body: Bytes,
}

/// Runs the demo, printing each step.
///
/// # Errors
/// Any step failing (the message says which).
pub(super) async fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    let step = |what: String| println!("[{:>6.1} ms] {what}", started.elapsed().as_secs_f64() * 1000.0);
    let dir = std::env::temp_dir().join(format!("stencil-relay-demo-{}", random_token("", 6)));
    let result = flow(&dir, &step).await;
    let _ = std::fs::remove_dir_all(&dir);
    result?;
    step("done: the relay stopped and its temporary database is removed".into());
    Ok(())
}

async fn flow(dir: &std::path::Path, step: &impl Fn(String)) -> anyhow::Result<()> {
    let (hook_url, mut arrivals) = start_stand_in().await?;
    step(format!("stand-in for a Make hook listening at {hook_url}"));

    let admin_token = random_token("demo_", 16);
    let database_url = format!("--database-url=sqlite://{}", dir.join("relay.db").display());
    let admin_token_flag = format!("--admin-token={admin_token}");
    let flags =
        ["--listen=127.0.0.1:0", &database_url, &admin_token_flag, "--target-hosts=*", "--allow-private-targets=true"];
    let config = Config::from_args(&ServeArgs::from_flags(flags)?)?;
    let app = App::build(config).await.context("starting the relay")?;
    let base = format!("http://{}", app.local_addr()?);
    let stop = CancellationToken::new();
    let relay = tokio::spawn(app.run(stop.clone().cancelled_owned()));
    step(format!("relay serving at {base} on a temporary SQLite file in {}", dir.display()));

    let admin = AdminClient::new(&Remote { server: base.clone(), admin_token: Some(admin_token), json: false })?;
    let created =
        admin.call(Method::POST, "/connections", Some(json!({ "name": "Demo project", "id": "demo" }))).await?;
    let (api_key, secret) = (text(&created["api_key"])?, text(&created["signing_secret"])?);
    step(format!("created connection \"demo\"; Stencil posts to {}", text(&created["ingest_url"])?));

    let http = JsonClient::new(DEFAULT_TIMEOUT)?;
    let attach = json!({ "url": hook_url, "event": "image.created" });
    let hook = http.call(Method::POST, &format!("{base}/v1/hooks"), Some(&api_key), Some(&attach)).await?.body;
    step(format!("attached hook {} (what Make does when a scenario is switched on)", text(&hook["id"])?));

    let signature = crate::signature::sign(&secret, FIXTURE);
    step(format!("signed the fixture event: X-UseStencil-Signature: {}…", &signature[..16]));
    let sent_at = Instant::now();
    let headers = [("x-usestencil-signature", signature.as_str())];
    let url = format!("{base}/v1/ingest/demo");
    let answer = http.send(Method::POST, &url, None, &headers, Some(Bytes::from_static(FIXTURE))).await?;
    step(format!("Stencil's webhook answered {}: {}", answer.status, answer.body));
    if answer.status != StatusCode::ACCEPTED {
        bail!("the relay did not accept the event");
    }

    let arrival = tokio::time::timeout(Duration::from_secs(10), arrivals.recv())
        .await
        .context("no delivery within 10 s")?
        .context("the stand-in stopped")?;
    step(format!(
        "delivered to the hook {:.1} ms after sending: webhook-id {}, attempt {}, {} bytes, identical to what Stencil sent: {}",
        sent_at.elapsed().as_secs_f64() * 1000.0,
        header(&arrival, "webhook-id"),
        header(&arrival, "x-relay-attempt"),
        arrival.body.len(),
        arrival.body.as_ref() == FIXTURE,
    ));

    stop.cancel();
    relay.await?;
    Ok(())
}

fn text(v: &Value) -> anyhow::Result<String> {
    v.as_str().map(str::to_owned).context("the relay's answer lacks a field")
}

fn header<'a>(arrival: &'a Arrival, name: &str) -> &'a str {
    arrival.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("-")
}

/// A minimal local hook that answers 200 and reports each request.
async fn start_stand_in() -> anyhow::Result<(String, mpsc::UnboundedReceiver<Arrival>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/make-hook", listener.local_addr()?);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let tx = tx.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    let _ = tx.send(Arrival { headers: parts.headers, body });
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"Accepted"))))
                }
            });
            tokio::spawn(
                auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).into_owned(),
            );
        }
    });
    Ok((url, rx))
}
