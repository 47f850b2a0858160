//! `stencil-relay demo`: the whole flow in one command, on a temporary SQLite file — start the
//! relay, start a stand-in for a Make hook, create a connection, attach the hook, sign and send
//! a fixture `image.created` event, and show the delivery as it lands.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

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
    let config = Config::from_args(&ServeArgs {
        listen: Some("127.0.0.1:0".into()),
        database_url: Some(format!("sqlite://{}", dir.join("relay.db").display())),
        admin_token: Some(admin_token.clone()),
        target_hosts: Some("*".into()),
        allow_private_targets: Some("true".into()),
        ..ServeArgs::default()
    })?;
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

    let http = reqwest::Client::new();
    let hook: Value = http
        .post(format!("{base}/v1/hooks"))
        .bearer_auth(&api_key)
        .json(&json!({ "url": hook_url, "event": "image.created" }))
        .send()
        .await?
        .json()
        .await?;
    step(format!("attached hook {} (what Make does when a scenario is switched on)", text(&hook["id"])?));

    let signature = crate::signature::sign(&secret, FIXTURE);
    step(format!("signed the fixture event: X-UseStencil-Signature: {}…", &signature[..16]));
    let sent_at = Instant::now();
    let answer = http
        .post(format!("{base}/v1/ingest/demo"))
        .header("x-usestencil-signature", &signature)
        .body(FIXTURE)
        .send()
        .await?;
    let status = answer.status();
    step(format!("Stencil's webhook answered {status}: {}", answer.text().await?));
    if status != reqwest::StatusCode::ACCEPTED {
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
