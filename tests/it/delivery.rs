//! Delivery: what Make receives, fan-out, retries, detach, dead letters, pacing.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::{Sink, SinkReply, TestServer, event, event_id, eventually, stencil_event};

#[tokio::test]
async fn delivers_exact_bytes_with_identity_headers() {
    let relay = TestServer::start().await;
    let sink = Sink::start().await;
    let conn = relay.connection("acme").await;
    let hook = relay.attach(&conn, &sink.url, None).await;
    let body = crate::harness::fixture("payloads/legacy-image-created-with-id.json");
    relay.ingest(&conn, &body).await;
    let got = sink.recv().await;
    assert_eq!(got.body.as_ref(), body.as_slice(), "the exact bytes, whitespace included");
    assert_eq!(got.header("content-type"), "application/json");
    assert!(got.header("user-agent").starts_with("stencil-relay/"));
    assert_eq!(got.header("x-relay-event-id"), "7d2a3c1e-5b4f-4e8a-9c6d-2f1e0a9b8c7d");
    assert_eq!(got.header("webhook-id"), "7d2a3c1e-5b4f-4e8a-9c6d-2f1e0a9b8c7d");
    assert_eq!((got.header("x-relay-hook-id"), got.header("x-relay-attempt")), (hook.as_str(), "1"));
    let ts: u64 = got.header("webhook-timestamp").parse().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(now.abs_diff(ts) < 60);
}

#[tokio::test]
async fn fan_out_reaches_exactly_the_matching_hooks_of_the_connection() {
    let relay = TestServer::start().await;
    let (all_a, tpl_a, other_tpl_a, all_b) =
        (Sink::start().await, Sink::start().await, Sink::start().await, Sink::start().await);
    let a = relay.connection("a").await;
    let b = relay.connection("b").await;
    relay.attach(&a, &all_a.url, None).await;
    relay.attach(&a, &tpl_a.url, Some("tpl-1")).await;
    relay.attach(&a, &other_tpl_a.url, Some("tpl-2")).await;
    relay.attach(&b, &all_b.url, None).await;

    let for_a = stencil_event("image-of-a");
    let reply = relay.ingest_for(&a, "tpl-1", &for_a).await;
    assert_eq!(reply.body["deliveries"], 2);
    assert_eq!(all_a.recv().await.header("webhook-id"), event_id(&for_a));
    assert_eq!(tpl_a.recv().await.header("webhook-id"), event_id(&for_a));

    let for_b = stencil_event("image-of-b");
    relay.ingest_for(&b, "tpl-1", &for_b).await;
    assert_eq!(all_b.recv().await.header("webhook-id"), event_id(&for_b));
    for silent in [&other_tpl_a, &all_b, &all_a, &tpl_a] {
        silent.assert_silent(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn retries_count_attempts_and_keep_the_event_id() {
    let relay = TestServer::start().await;
    let sink = Sink::start().await;
    sink.script([SinkReply::Status(500), SinkReply::Status(503)]);
    let conn = relay.connection("acme").await;
    let hook = relay.attach(&conn, &sink.url, None).await;
    let body = stencil_event("retried");
    relay.ingest(&conn, &body).await;
    let tries = sink.recv_n(3).await;
    let attempts: Vec<&str> = tries.iter().map(|t| t.header("x-relay-attempt")).collect();
    assert_eq!(attempts, ["1", "2", "3"]);
    assert!(tries.iter().all(|t| t.header("webhook-id") == event_id(&body) && t.body == tries[0].body));
    assert!(tries[1].at - tries[0].at >= Duration::from_millis(100), "first retry waits the schedule's 100ms");
    assert!(tries[2].at - tries[1].at >= Duration::from_millis(200));
    let log = relay.await_attempts(&conn, &hook, 3).await;
    let statuses: Vec<u64> = log.iter().map(|a| a["status_code"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [200, 503, 500]);
    assert_eq!(log[1]["error"], "the target answered 503");
}

#[tokio::test]
async fn retry_after_lengthens_the_wait() {
    let relay = TestServer::start().await;
    let sink = Sink::start().await;
    sink.script([SinkReply::RetryAfter(429, 1)]);
    let conn = relay.connection("acme").await;
    relay.attach(&conn, &sink.url, None).await;
    relay.ingest(&conn, &stencil_event("evt-429")).await;
    let tries = sink.recv_n(2).await;
    assert!(tries[1].at - tries[0].at >= Duration::from_millis(950), "waited {:?}", tries[1].at - tries[0].at);
}

#[tokio::test]
async fn gone_detaches_the_hook() {
    let relay = TestServer::start().await;
    let sink = Sink::start_with(SinkReply::Status(410)).await;
    let conn = relay.connection("acme").await;
    let hook = relay.attach(&conn, &sink.url, None).await;
    relay.ingest(&conn, &stencil_event("gone-1")).await;
    sink.recv().await;
    eventually("the hook to be detached", || async {
        let reply = relay.api(&conn, Method::GET, &format!("/hooks/{hook}"), None).await;
        (reply.status == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    assert_eq!(relay.ingest(&conn, &stencil_event("gone-2")).await.body["deliveries"], 0);
    sink.assert_silent(Duration::from_millis(400)).await;
    let letters = relay.admin(Method::GET, "/dead-letters", None).await;
    assert_eq!(letters.body["data"], json!([]), "a detach is not a dead letter");
}

#[tokio::test]
async fn exhausted_schedule_and_other_4xx_go_to_dead_letters() {
    let relay = TestServer::start().await;
    let failing = Sink::start_with(SinkReply::Status(500)).await;
    let refusing = Sink::start_with(SinkReply::Status(404)).await;
    let conn = relay.connection("acme").await;
    relay.attach(&conn, &failing.url, None).await;
    relay.attach(&conn, &refusing.url, None).await;
    relay.ingest(&conn, &stencil_event("dead")).await;
    failing.recv_n(4).await; // 1 try + 3 retries
    refusing.recv().await;
    let letters = relay.await_dead_letters("", 2).await;
    let mut seen: Vec<(u64, u64)> =
        letters.iter().map(|l| (l["attempts"].as_u64().unwrap(), l["last_status"].as_u64().unwrap())).collect();
    seen.sort_unstable();
    assert_eq!(seen, [(1, 404), (4, 500)]);
    failing.assert_silent(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let relay = TestServer::start().await;
    let elsewhere = Sink::start().await;
    let redirecting = Sink::start_with(SinkReply::Redirect(elsewhere.url.clone())).await;
    let conn = relay.connection("acme").await;
    relay.attach(&conn, &redirecting.url, None).await;
    relay.ingest(&conn, &stencil_event("evt-302")).await;
    redirecting.recv().await;
    let letters = relay.await_dead_letters("", 1).await;
    assert_eq!(letters[0]["last_status"], 302);
    elsewhere.assert_silent(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn slow_targets_time_out_and_are_retried() {
    let mut args = TestServer::args();
    args.delivery_timeout = std::time::Duration::from_millis(200);
    let relay = TestServer::start_with(args).await;
    let sink = Sink::start().await;
    sink.script([SinkReply::Slow(Duration::from_secs(2))]);
    let conn = relay.connection("acme").await;
    let hook = relay.attach(&conn, &sink.url, None).await;
    relay.ingest(&conn, &stencil_event("evt-slow")).await;
    let tries = sink.recv_n(2).await;
    assert_eq!(tries[1].header("x-relay-attempt"), "2");
    let log = relay.await_attempts(&conn, &hook, 2).await;
    assert_eq!(log[1]["status_code"], serde_json::Value::Null);
    assert!(log[1]["error"].as_str().unwrap().contains("timed out"), "{}", log[1]);
}

#[tokio::test]
async fn deliveries_to_one_hook_are_paced() {
    let mut args = TestServer::args();
    args.hook_rate = 2;
    let relay = TestServer::start_with(args).await;
    let paced = Sink::start().await;
    let conn = relay.connection("acme").await;
    relay.attach(&conn, &paced.url, None).await;
    for n in 0..6 {
        assert_eq!(relay.ingest(&conn, &event(&format!("evt-{n}"), None)).await.status, StatusCode::ACCEPTED);
    }
    let arrivals = paced.recv_n(6).await;
    // What Make enforces: never more than `rate` requests to one hook within one second.
    for window in arrivals.windows(3) {
        let span = window[2].at - window[0].at;
        assert!(span >= Duration::from_secs(1), "3 deliveries at 2/s within {span:?}");
    }
}

#[tokio::test]
async fn a_waiting_retry_is_not_overtaken_by_a_stream_of_new_events() {
    // New events may skip the store's queue only while their hook has nothing waiting in it;
    // otherwise a steady stream would keep the hook busy and its retry would wait forever.
    let mut args = TestServer::args();
    args.hook_rate = 2;
    let relay = TestServer::start_with(args).await;
    let sink = Sink::start().await;
    sink.script([SinkReply::Status(500)]);
    let conn = relay.connection("acme").await;
    relay.attach(&conn, &sink.url, None).await;
    relay.ingest(&conn, &event("evt-0", None)).await;
    assert_eq!(sink.recv().await.header("x-relay-attempt"), "1");
    for n in 1..=6 {
        assert_eq!(relay.ingest(&conn, &event(&format!("evt-{n}"), None)).await.status, StatusCode::ACCEPTED);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let after: Vec<String> = sink.recv_n(7).await.iter().map(|r| r.header("webhook-id").to_owned()).collect();
    let retry = after.iter().position(|id| id == "evt-0").expect("the retry arrives");
    assert!(retry <= 2, "the retry waited behind newer events: {after:?}");
}

#[tokio::test]
async fn refuses_inward_addresses_at_delivery_time() {
    // Hooks attached while private targets were allowed must not reach loopback once the relay
    // runs with production rules, by name or by IP literal: the target rules are checked again
    // before every attempt, and a URL they refuse is a dead letter at once.
    let sink = Sink::start().await;
    let relay = TestServer::start().await;
    let conn = relay.connection("acme").await;
    let by_name = relay.attach(&conn, &sink.url.replace("127.0.0.1", "localhost"), None).await;
    let by_ip = relay.attach(&conn, &sink.url, None).await;
    let mut strict_args = relay.args.clone();
    strict_args.allow_private_targets = false;
    let relay = relay.restart_with(strict_args).await;
    assert_eq!(relay.ingest(&conn, &stencil_event("evt-inward")).await.body["deliveries"], 2);
    for hook in [by_name, by_ip] {
        let attempt = relay.await_attempts(&conn, &hook, 1).await.remove(0);
        assert_eq!(attempt["status_code"], serde_json::Value::Null);
        assert!(attempt["error"].as_str().unwrap().contains("no longer allowed"), "{attempt}");
    }
    relay.await_dead_letters("?connection=acme", 2).await;
    sink.assert_silent(Duration::from_millis(200)).await;
}

/// A hook attached while any host and port were allowed stops receiving once the relay runs
/// with the default target rules, without a restart of the hook's owner being needed.
#[tokio::test]
async fn target_rules_in_force_apply_to_hooks_attached_under_looser_ones() {
    let relay = TestServer::start().await;
    let conn = relay.connection("acme").await;
    let hook = relay.attach(&conn, "https://example.com:8443/hook", None).await;
    let mut strict_args = relay.args.clone();
    strict_args.target_hosts = stencil_relay::config::ServeArgs::default().target_hosts;
    strict_args.allow_private_targets = false;
    let relay = relay.restart_with(strict_args).await;
    relay.ingest(&conn, &stencil_event("after-tightening")).await;
    let attempt = relay.await_attempts(&conn, &hook, 1).await.remove(0);
    assert!(attempt["error"].as_str().unwrap().contains("not in the allowed target hosts"), "{attempt}");
    let letters = relay.await_dead_letters("?connection=acme", 1).await;
    assert_eq!(letters[0]["attempts"], 1, "not retried");
}

#[tokio::test]
async fn an_attempt_that_would_outlive_its_lease_is_handed_back_not_sent() {
    // A 429 halves the hook's pace: deliveries already leased would wait longer for their turn
    // than their 2 s lease leaves room for a 1 s attempt, and go back to the queue instead.
    let dir = tempfile::tempdir().unwrap();
    let mut env = crate::harness::process::sqlite_env(dir.path());
    env.retain(|(k, _)| !matches!(k.as_str(), "RELAY_HOOK_RATE" | "RELAY_LEASE" | "RELAY_DELIVERY_TIMEOUT"));
    env.push(("RELAY_HOOK_RATE".to_owned(), "5".to_owned()));
    env.push(("RELAY_DELIVERY_TIMEOUT".to_owned(), "1s".to_owned()));
    env.push(("RELAY_LEASE".to_owned(), "2s".to_owned())); // the least allowed: twice the timeout
    let relay = crate::harness::RelayProcess::spawn(&env);
    let sink = Sink::start().await;
    sink.script([SinkReply::Status(429)]);
    let conn = relay.connection("acme").await;
    relay.attach(&conn, &sink.url, None).await;
    let ids: Vec<String> = (0..6).map(|n| format!("leased-{n}")).collect();
    for id in &ids {
        relay.ingest(&conn, &event(id, None)).await;
    }
    let mut seen = std::collections::HashMap::<String, usize>::new();
    while seen.len() < ids.len() || seen.values().sum::<usize>() < ids.len() + 1 {
        *seen.entry(sink.recv().await.header("webhook-id").to_owned()).or_default() += 1;
    }
    sink.assert_silent(Duration::from_millis(500)).await;
    assert_eq!(seen.values().sum::<usize>(), ids.len() + 1, "each once, and the one that got the 429 again: {seen:?}");
    let log = relay.log();
    assert!(log.iter().any(|l| l.contains("handed back")), "an attempt was handed back unsent");
}
