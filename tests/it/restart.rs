//! Durability across restarts: what was committed survives, and what got a 202 is delivered
//! even when the process is killed with deliveries pending.

use std::collections::HashSet;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::process::test_env;
use crate::harness::{Conn, RelayProcess, Sink, SinkReply, TestServer, event, eventually};

#[tokio::test]
async fn connections_hooks_and_rotated_credentials_survive_restart() {
    let relay = TestServer::start().await;
    let sink = Sink::start().await;
    let conn = relay.connection("acme").await;
    let hook = relay.attach(&conn, &sink.url, Some("tpl")).await;
    let key =
        relay.admin(Method::POST, "/connections/acme/api-key", None).await.body["api_key"].as_str().unwrap().to_owned();
    let secret =
        relay.admin(Method::POST, "/connections/acme/signing-secret", Some(json!({ "grace_seconds": 600 }))).await;
    let rotated = Conn { api_key: key, secret: secret.body["signing_secret"].as_str().unwrap().into(), ..conn.clone() };

    let relay = relay.restart().await;
    assert_eq!(relay.api(&conn, Method::GET, "/connection", None).await.status, StatusCode::UNAUTHORIZED);
    let hooks = relay.api(&rotated, Method::GET, "/hooks", None).await;
    assert_eq!(hooks.body["data"][0]["id"], hook.as_str());
    assert_eq!(hooks.body["data"][0]["template_id"], "tpl");
    assert_eq!(relay.ingest(&rotated, &event("new", Some("tpl"))).await.body["deliveries"], 1);
    assert_eq!(relay.ingest(&conn, &event("old-in-grace", Some("tpl"))).await.status, StatusCode::ACCEPTED);
    assert_eq!(
        relay.ingest(&rotated, &event("new", Some("tpl"))).await.status,
        StatusCode::OK,
        "duplicates survive restart"
    );
    sink.recv_n(2).await;
}

#[tokio::test]
async fn kill_9_with_deliveries_pending_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let env = test_env(dir.path()).await;
    let sink = Sink::start_with(SinkReply::Status(503)).await;
    let relay = RelayProcess::spawn(&env);
    let conn = relay.connection("acme").await;
    relay.attach(&conn, &sink.url, None).await;
    let ids: Vec<String> = (0..30).map(|n| format!("evt-{n}")).collect();
    for id in &ids {
        assert_eq!(relay.ingest(&conn, &event(id, None)).await.status, StatusCode::ACCEPTED);
    }
    sink.recv().await; // attempts are under way and failing
    relay.kill();

    sink.answer(SinkReply::Status(200));
    let relay = RelayProcess::spawn(&env);
    let mut delivered = HashSet::new();
    while delivered.len() < ids.len() {
        let got = sink.recv().await;
        delivered.insert(got.header("webhook-id").to_owned());
    }
    assert_eq!(delivered, ids.iter().cloned().collect());
    assert_eq!(relay.ingest(&conn, &event("evt-0", None)).await.status, StatusCode::OK);
}

#[tokio::test]
async fn sigterm_exits_zero_and_pending_work_resumes_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let env = test_env(dir.path()).await;
    let sink = Sink::start_with(SinkReply::Status(500)).await;
    let relay = RelayProcess::spawn(&env);
    let conn = relay.connection("acme").await;
    relay.attach(&conn, &sink.url, None).await;
    relay.ingest(&conn, &event("evt-term", None)).await;
    sink.recv().await;
    assert_eq!(relay.terminate().0.code(), Some(0));

    sink.answer(SinkReply::Status(200));
    let relay = RelayProcess::spawn(&env);
    eventually("the pending delivery after restart", || async {
        let got = sink.recv().await;
        (got.header("webhook-id") == "evt-term" && got.header("x-relay-attempt") != "1").then_some(())
    })
    .await;
    drop(relay);
}

#[tokio::test]
async fn the_database_and_its_directory_are_created_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fresh").join("relay.db");
    let args = stencil_relay::config::ServeArgs {
        database_url: stencil_relay::config::DatabaseUrl::Sqlite(path.clone()),
        listen: "127.0.0.1:0".parse().unwrap(),
        ..stencil_relay::config::ServeArgs::default()
    };
    let config = stencil_relay::config::Config::from_args(&args).unwrap();
    let app = stencil_relay::app::App::build(config).await.unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(path.parent().unwrap()), 0o700);
    assert_eq!(mode(&path), 0o600);
    drop(app);
}
