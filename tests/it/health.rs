//! Hook health against real sinks: a `Retry-After` pauses the whole hook, a run of failures
//! pauses it for longer each time with one probe first, 429s slow its pace, a hook failing for
//! `RELAY_DISABLE_AFTER` is disabled and comes back with `enable` or a new attach, pauses survive
//! a restart and hold across PostgreSQL instances.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::harness::process::test_env;
use crate::harness::sink::Received;
use crate::harness::{
    Conn, RelayProcess, Sink, SinkReply, TestServer, event, event_id, eventually, sample, scrape, stencil_event,
};

/// Test settings at Make's pace (5 requests/s per hook), where a hook's requests are far enough
/// apart for its answers to arrive between them.
fn at_makes_pace() -> stencil_relay::config::ServeArgs {
    let mut args = TestServer::args();
    args.hook_rate = 5;
    args
}

/// The hook as the hook API shows it.
async fn hook(relay: &TestServer, conn: &Conn, id: &str) -> Value {
    let reply = relay.api(conn, Method::GET, &format!("/hooks/{id}"), None).await;
    assert_eq!(reply.status, StatusCode::OK);
    reply.body
}

/// Waits until the hook shows `status`.
async fn until_status(relay: &TestServer, conn: &Conn, id: &str, status: &str) -> Value {
    eventually(&format!("the hook to be {status}"), || async {
        let shown = hook(relay, conn, id).await;
        (shown["status"] == status).then_some(shown)
    })
    .await
}

/// Ingests `n` distinct events; their ids.
async fn ingest_n(relay: &TestServer, conn: &Conn, tag: &str, n: usize) -> HashSet<String> {
    let mut ids = HashSet::new();
    for i in 0..n {
        let body = stencil_event(&format!("{tag}-{i}"));
        relay.ingest(conn, &body).await;
        ids.insert(event_id(&body));
    }
    ids
}

/// Receives requests until every id of `ids` has arrived; the requests seen.
async fn until_all_arrive(sink: &Sink, ids: &HashSet<String>) -> Vec<Received> {
    let mut seen = Vec::new();
    let mut missing = ids.clone();
    while !missing.is_empty() {
        let got = sink.recv().await;
        missing.remove(got.header("webhook-id"));
        seen.push(got);
    }
    seen
}

#[tokio::test]
async fn retry_after_pauses_the_whole_hook_and_waiting_deliveries_use_no_attempts() {
    let relay = TestServer::start_with(at_makes_pace()).await;
    let sink = Sink::start_with(SinkReply::RetryAfter(429, 2)).await;
    let conn = relay.connection("acme").await;
    let id = relay.attach(&conn, &sink.url, None).await;
    let ids = ingest_n(&relay, &conn, "paused", 20).await;
    let first = sink.recv().await;
    let shown = until_status(&relay, &conn, &id, "paused").await;
    assert_eq!(shown["consecutive_failures"], 1);
    assert!(shown["paused_until"].as_str().is_some_and(|t| t.ends_with('Z')), "{shown}");
    let pause_ends = first.at + Duration::from_secs(2);
    sink.assert_silent(pause_ends.saturating_duration_since(Instant::now()) - Duration::from_millis(100)).await;
    sink.answer(SinkReply::Status(200));
    let seen = until_all_arrive(&sink, &ids).await;
    assert!(seen[0].at >= pause_ends - Duration::from_millis(50), "nothing before the pause ended");
    let retried = seen.iter().filter(|r| r.header("x-relay-attempt") != "1").count();
    assert!(retried <= 1, "only the delivery that got the 429 used a second attempt: {retried}");
    let dead = relay.admin(Method::GET, "/dead-letters?connection=acme", None).await;
    assert_eq!(dead.body["data"].as_array().unwrap().len(), 0);
    let shown = until_status(&relay, &conn, &id, "active").await;
    assert_eq!(shown["consecutive_failures"], 0);
    assert!(shown["last_success_at"].is_string() && shown["paused_until"].is_null(), "{shown}");
}

#[tokio::test]
async fn a_run_of_failures_pauses_longer_each_time_and_one_probe_goes_first() {
    let relay = TestServer::start_with(at_makes_pace()).await;
    let sink = Sink::start_with(SinkReply::Status(500)).await;
    let conn = relay.connection("acme").await;
    relay.attach(&conn, &sink.url, None).await;
    let ids = ingest_n(&relay, &conn, "failing", 10).await;
    let tries = sink.recv_n(3).await;
    let gaps: Vec<Duration> = tries.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert!(gaps[0] >= Duration::from_millis(950), "paused 1 s after the first failure: {gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(1950), "then 2 s: {gaps:?}");
    sink.answer(SinkReply::Status(200));
    let seen = until_all_arrive(&sink, &ids).await;
    let first_tries = seen.iter().filter(|r| r.header("x-relay-attempt") == "1").count();
    assert!(first_tries >= 7, "the waiting deliveries used no attempts: {first_tries} first tries of {}", seen.len());
}

#[tokio::test]
async fn each_429_halves_the_pace_and_successes_restore_it() {
    let relay = TestServer::start_with(at_makes_pace()).await;
    let sink = Sink::start().await;
    sink.script([SinkReply::Status(429), SinkReply::Status(429), SinkReply::Status(429)]);
    let conn = relay.connection("acme").await;
    relay.attach(&conn, &sink.url, None).await;
    ingest_n(&relay, &conn, "paced", 30).await;
    let tries = sink.recv_n(18).await;
    let gaps: Vec<Duration> = tries.windows(2).map(|w| w[1].at - w[0].at).collect();
    // Full pace is 5/s (one every 210 ms); after each 429 the gap doubles: 420, 840, 1680 ms.
    for (gap, halved) in gaps.iter().zip([420, 840, 1680]) {
        let expected = Duration::from_millis(halved);
        assert!(*gap >= expected.mul_f64(0.95) && *gap < expected * 2, "{gaps:?}");
    }
    let mut last: Vec<Duration> = gaps[gaps.len() - 5..].to_vec();
    last.sort();
    assert!(last[2] < Duration::from_millis(300), "back near the full pace after successes: {gaps:?}");
}

#[tokio::test]
async fn a_hook_failing_for_disable_after_is_disabled_and_enable_or_attach_brings_it_back() {
    let mut args = at_makes_pace();
    args.disable_after = Duration::from_secs(3);
    let relay = TestServer::start_with(args).await;
    let sink = Sink::start_with(SinkReply::Status(500)).await;
    let conn = relay.connection("acme").await;
    let id = relay.attach(&conn, &sink.url, None).await;
    ingest_n(&relay, &conn, "doomed", 3).await;
    let shown = until_status(&relay, &conn, &id, "disabled").await;
    assert!(shown["consecutive_failures"].as_u64().unwrap() >= 2, "{shown}");
    let dead = relay.await_dead_letters("?connection=acme", 3).await;
    assert!(dead.iter().all(|d| d["hook_id"] == id.as_str()));
    let metrics = eventually("the metrics to show the disabled hook", || async {
        let (_, text) = scrape(&relay.base).await;
        (sample(&text, "relay_hooks{status=\"disabled\"}") == 1.0).then_some(text)
    })
    .await;
    assert_eq!(sample(&metrics, "relay_hook_disables_total"), 1.0);
    assert!(sample(&metrics, "relay_hook_pauses_total") >= 1.0);

    let reply = relay.ingest(&conn, &stencil_event("while-disabled")).await;
    assert_eq!(reply.body["deliveries"], 0, "a disabled hook gets no new deliveries");
    sink.answer(SinkReply::Status(200));
    sink.drain().await;
    sink.assert_silent(Duration::from_millis(500)).await;

    let enabled = relay.api(&conn, Method::POST, &format!("/hooks/{id}/enable"), None).await;
    assert_eq!(enabled.status, StatusCode::OK);
    assert_eq!((&enabled.body["status"], &enabled.body["consecutive_failures"]), (&"active".into(), &0.into()));
    let body = stencil_event("after-enable");
    relay.ingest(&conn, &body).await;
    assert_eq!(sink.recv().await.header("webhook-id"), event_id(&body));
    let replay =
        relay.admin(Method::POST, &format!("/dead-letters/{}/retry", dead[0]["id"].as_str().unwrap()), None).await;
    assert_eq!(replay.status, StatusCode::ACCEPTED, "its dead letters replay");
    assert_eq!(sink.recv().await.header("webhook-id"), dead[0]["event_id"].as_str().unwrap());

    sink.answer(SinkReply::Status(500));
    relay.ingest(&conn, &stencil_event("doomed-again")).await;
    sink.drain().await;
    until_status(&relay, &conn, &id, "disabled").await;
    let again = relay.api(&conn, Method::POST, "/hooks", Some(serde_json::json!({ "url": sink.url }))).await;
    assert_eq!((again.status, &again.body["id"]), (StatusCode::OK, &id.as_str().into()), "the same hook");
    assert_eq!(again.body["status"], "active", "attaching it again enables it");
    assert_eq!(hook(&relay, &conn, &id).await["status"], "active");
}

#[tokio::test]
async fn enable_is_the_connections_own() {
    let relay = TestServer::start().await;
    let (a, b) = (relay.connection("a").await, relay.connection("b").await);
    let sink = Sink::start().await;
    let id = relay.attach(&a, &sink.url, None).await;
    let reply = relay.api(&b, Method::POST, &format!("/hooks/{id}/enable"), None).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let reply = relay.api(&a, Method::POST, &format!("/hooks/{id}/enable"), None).await;
    assert_eq!((reply.status, &reply.body["status"]), (StatusCode::OK, &"active".into()));
}

#[tokio::test]
async fn a_pause_is_stored_and_holds_across_a_restart() {
    let relay = TestServer::start_with(at_makes_pace()).await;
    let sink = Sink::start_with(SinkReply::RetryAfter(503, 30)).await;
    let conn = relay.connection("acme").await;
    let id = relay.attach(&conn, &sink.url, None).await;
    ingest_n(&relay, &conn, "held", 3).await;
    sink.recv().await;
    until_status(&relay, &conn, &id, "paused").await;
    // The pause reaches the store with the attempt's record; a restart before that would
    // forget it, so wait for the record.
    relay.await_attempts(&conn, &id, 1).await;
    let relay = relay.restart().await;
    sink.answer(SinkReply::Status(200));
    assert_eq!(hook(&relay, &conn, &id).await["status"], "paused", "the pause outlived the process");
    sink.assert_silent(Duration::from_secs(2)).await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set RELAY_TEST_POSTGRES_URL (.ci/run does)"]
async fn on_postgresql_a_paused_hook_receives_nothing_from_either_instance() {
    assert!(crate::harness::is_postgres(), "needs PostgreSQL: set RELAY_TEST_POSTGRES_URL (.ci/run does)");
    let dir = tempfile::tempdir().unwrap();
    let mut env = test_env(dir.path()).await;
    env.push(("RELAY_HOOK_RATE".to_owned(), "5".to_owned()));
    let (a, b) = (RelayProcess::spawn(&env), RelayProcess::spawn(&env));
    let sink = Sink::start_with(SinkReply::RetryAfter(429, 3)).await;
    let conn = a.connection("acme").await;
    let id = a.attach(&conn, &sink.url, None).await;
    eventually("the second instance to know the hook", || async {
        (b.api(&conn, Method::GET, &format!("/hooks/{id}"), None).await.status == StatusCode::OK).then_some(())
    })
    .await;
    let mut ids = HashSet::new();
    for i in 0..12 {
        let body = event(&format!("evt-{i}"), None);
        let through = if i % 2 == 0 { &a } else { &b };
        assert_eq!(through.ingest(&conn, &body).await.status, StatusCode::ACCEPTED);
        ids.insert(format!("evt-{i}"));
    }
    let first = sink.recv().await;
    sink.assert_silent((first.at + Duration::from_millis(2800)).saturating_duration_since(Instant::now())).await;
    sink.answer(SinkReply::Status(200));
    let mut missing = ids;
    while !missing.is_empty() {
        let got = sink.recv().await;
        assert!(got.at >= first.at + Duration::from_secs(3) - Duration::from_millis(50));
        missing.remove(got.header("webhook-id"));
    }
}
