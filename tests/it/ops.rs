//! Operating the relay: metrics, graceful shutdown under load, and logs that never carry
//! credentials.

use std::collections::HashSet;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::process::{ingest_until_stopped, test_env};
use crate::harness::{RelayProcess, Sink, SinkReply, TestServer, event, eventually, sample, scrape, stencil_event};

#[tokio::test]
async fn metrics_count_ingest_outcomes_deliveries_and_levels() {
    let relay = TestServer::start().await;
    let sink = Sink::start().await;
    sink.script([SinkReply::Status(500)]);
    let conn = relay.connection("acme").await;
    relay.attach(&conn, &sink.url, None).await;
    relay.ingest(&conn, &event("evt-1", None)).await;
    relay.ingest(&conn, &event("evt-1", None)).await;
    relay.ingest_signed(&conn.id, b"{}", "bad").await;
    sink.recv_n(2).await;
    let text = eventually("the delivery to be counted", || async {
        let (_, text) = scrape(&relay.base).await;
        let settled = text.contains("relay_deliveries_total{outcome=\"delivered\"} 1")
            && text.contains("relay_pending_deliveries 0\n");
        settled.then_some(text)
    })
    .await;
    assert_eq!(sample(&text, "relay_ingest_requests_total{outcome=\"accepted\"}"), 1.0);
    assert_eq!(sample(&text, "relay_ingest_requests_total{outcome=\"duplicate\"}"), 1.0);
    assert_eq!(sample(&text, "relay_ingest_requests_total{outcome=\"unauthorized\"}"), 1.0);
    assert_eq!(sample(&text, "relay_deliveries_total{outcome=\"retried\"}"), 1.0);
    assert_eq!(sample(&text, "relay_delivery_attempt_seconds_count"), 2.0);
    assert_eq!(sample(&text, "relay_ingest_to_delivered_seconds_count"), 1.0);
    assert!(sample(&text, "relay_store_commit_batch_size_count") >= 3.0);
    assert_eq!(sample(&text, "relay_pending_deliveries"), 0.0);
    assert_eq!((sample(&text, "relay_hooks{status=\"active\"}"), sample(&text, "relay_connections")), (1.0, 1.0));
    assert_eq!(sample(&text, "relay_hooks{status=\"disabled\"}"), 0.0);
    assert_eq!(sample(&text, "relay_oldest_pending_delivery_age_seconds"), 0.0, "nothing pending");
    assert!(sample(&text, "relay_store_size_bytes") > 0.0);
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(line.starts_with("relay_"), "{line}");
        assert!(
            !line.contains("acme") && !line.contains("hk_") && !line.contains("127.0.0.1"),
            "unbounded label: {line}"
        );
    }
}

#[tokio::test]
async fn metrics_can_live_on_their_own_address() {
    let mut args = TestServer::args();
    args.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let relay = TestServer::start_with(args).await;
    let metrics = relay.metrics_base.clone().expect("a metrics listener");
    let (status, text) = scrape(&metrics).await;
    assert_eq!(status, StatusCode::OK);
    assert!(text.contains("relay_connections 0"));
    assert_eq!(scrape(&relay.base).await.0, StatusCode::NOT_FOUND, "not public on the API address");
    let api_on_metrics = reqwest::get(format!("{metrics}/healthz")).await.unwrap();
    assert_eq!(api_on_metrics.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn sigterm_mid_load_exits_zero_and_loses_nothing_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let env = test_env(dir.path()).await;
    let sink = Sink::start_with(SinkReply::Slow(std::time::Duration::from_millis(20))).await;
    let relay = RelayProcess::spawn(&env);
    let conn = relay.connection("acme").await;
    relay.attach(&conn, &sink.url, None).await;

    let (accepted, load) = ingest_until_stopped(&relay.base, &conn, "evt", 4);
    eventually("some load", || async { (accepted.lock().unwrap().len() >= 40).then_some(()) }).await;
    let (status, _) = tokio::task::spawn_blocking(move || relay.terminate()).await.unwrap();
    assert_eq!(status.code(), Some(0));
    for task in load {
        task.await.unwrap();
    }

    let accepted: HashSet<String> = accepted.lock().unwrap().iter().cloned().collect();
    let _restarted = RelayProcess::spawn(&env);
    let mut delivered = HashSet::new();
    while !accepted.is_subset(&delivered) {
        delivered.insert(sink.recv().await.header("webhook-id").to_owned());
    }
}

#[tokio::test]
async fn credentials_never_reach_the_logs_even_at_trace() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = test_env(dir.path()).await;
    env.push(("RELAY_LOG".into(), "trace".into()));
    let sink = Sink::start().await;
    let relay = RelayProcess::spawn(&env);
    let (key, secret) = ("sk_logtest_key_4f2a9c_0123456789abcdef", "whsec_logtest_secret_8b1d_0123456789ab");
    let conn =
        relay.connection_with(json!({ "name": "Logs", "id": "logs", "api_key": key, "signing_secret": secret })).await;
    relay.attach(&conn, &sink.url, None).await;
    relay.ingest(&conn, &stencil_event("evt-log")).await;
    sink.recv().await;
    let new_key =
        relay.admin(Method::POST, "/connections/logs/api-key", None).await.body["api_key"].as_str().unwrap().to_owned();
    let rotated =
        relay.admin(Method::POST, "/connections/logs/signing-secret", Some(json!({ "grace_seconds": 60 }))).await;
    let new_secret = rotated.body["signing_secret"].as_str().unwrap().to_owned();
    relay.send(Method::GET, "/v1/connection", Some(&new_key), None, &[]).await;
    relay.send(Method::GET, "/v1/connection", Some("sk_wrong_guess_77"), None, &[]).await;
    let (_, log) = tokio::task::spawn_blocking(move || relay.terminate()).await.unwrap();
    assert!(log.len() > 20, "trace logging is on: {} lines", log.len());
    for needle in [key, secret, &new_key, &new_secret, crate::harness::client::ADMIN_TOKEN, "sk_wrong_guess_77"] {
        let leaked: Vec<&String> = log.iter().filter(|l| l.contains(needle)).collect();
        assert!(leaked.is_empty(), "{needle} leaked into the log: {leaked:?}");
    }
}
