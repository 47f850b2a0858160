//! Several instances on one PostgreSQL database, as real processes on different ports. These
//! need `RELAY_TEST_POSTGRES_URL`: `cargo test` lists them as ignored, and `.ci/run` runs them
//! (`--include-ignored`) with PostgreSQL.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};

use crate::harness::process::test_env;
use crate::harness::{Conn, RelayProcess, Sink, SinkReply, event, eventually};

/// Why these tests are ignored by a plain `cargo test`.
const NEEDS_POSTGRES: &str = "needs PostgreSQL: set RELAY_TEST_POSTGRES_URL (.ci/run does)";

/// The shared-database settings.
async fn cluster_env(dir: &std::path::Path) -> Vec<(String, String)> {
    assert!(crate::harness::is_postgres(), "{NEEDS_POSTGRES}");
    test_env(dir).await
}

/// Waits until `instance` serves `hook` of `conn` (it learns of an attach through another
/// instance by `NOTIFY`).
async fn knows_hook(instance: &RelayProcess, conn: &Conn, hook: &str) {
    eventually("the other instance to know the hook", || async {
        let reply = instance.api(conn, Method::GET, &format!("/hooks/{hook}"), None).await;
        (reply.status == StatusCode::OK).then_some(())
    })
    .await;
}

/// Two instances, and connection `acme` with a hook on a sink, attached through the first and
/// known to the second.
async fn two_instances_one_hook(env: &[(String, String)]) -> (RelayProcess, RelayProcess, Sink, Conn) {
    let (a, b) = (RelayProcess::spawn(env), RelayProcess::spawn(env));
    let sink = Sink::start().await;
    let conn = a.connection("acme").await;
    let hook = a.attach(&conn, &sink.url, None).await;
    knows_hook(&b, &conn, &hook).await;
    (a, b, sink, conn)
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set RELAY_TEST_POSTGRES_URL (.ci/run does)"]
async fn attach_through_one_ingest_through_the_other_delivers_once() {
    let dir = tempfile::tempdir().unwrap();
    let env = cluster_env(dir.path()).await;
    let (_a, b, sink, conn) = two_instances_one_hook(&env).await; // `_a` keeps the first one running
    assert_eq!(b.ingest(&conn, &event("evt-shared", None)).await.body["deliveries"], 1);
    assert_eq!(sink.recv().await.header("webhook-id"), "evt-shared");
    sink.assert_silent(Duration::from_millis(1500)).await; // both instances poll; one delivery
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set RELAY_TEST_POSTGRES_URL (.ci/run does)"]
async fn events_through_both_instances_reach_a_hook_one_holds_each_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let env = cluster_env(dir.path()).await;
    let (a, b, sink, conn) = two_instances_one_hook(&env).await;
    // The first event makes a claim lease the hook to a; its next ones are handed off at a's
    // ingest, while b's wait in the store for a's next claim of the hook.
    let ids: Vec<String> = (0..12).map(|n| format!("evt-{n}")).collect();
    for (n, id) in ids.iter().enumerate() {
        let through = if n % 3 == 2 { &b } else { &a };
        assert_eq!(through.ingest(&conn, &event(id, None)).await.status, StatusCode::ACCEPTED);
    }
    let mut delivered: Vec<String> =
        sink.recv_n(ids.len()).await.iter().map(|got| got.header("webhook-id").to_owned()).collect();
    sink.assert_silent(Duration::from_millis(1500)).await;
    delivered.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(delivered, expected, "each event once");
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set RELAY_TEST_POSTGRES_URL (.ci/run does)"]
async fn an_instance_stopped_gracefully_gives_its_hooks_to_the_others_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = cluster_env(dir.path()).await;
    env.retain(|(k, _)| k != "RELAY_LEASE");
    env.push(("RELAY_LEASE".to_owned(), "120s".to_owned())); // far beyond the sink's patience
    let (a, b) = (RelayProcess::spawn(&env), RelayProcess::spawn(&env));
    let sink = Sink::start().await;
    let conn = a.connection("acme").await;
    let hook = a.attach(&conn, &sink.url, None).await;
    assert_eq!(a.ingest(&conn, &event("evt-a", None)).await.status, StatusCode::ACCEPTED);
    assert_eq!(sink.recv().await.header("webhook-id"), "evt-a", "a claimed the hook: it is a's for two minutes");
    knows_hook(&b, &conn, &hook).await;
    let (status, log) = a.terminate();
    assert!(status.success());
    assert!(log.iter().any(|l| l.contains("gave back hook leases")), "{log:?}");
    assert_eq!(b.ingest(&conn, &event("evt-b", None)).await.status, StatusCode::ACCEPTED);
    assert_eq!(sink.recv().await.header("webhook-id"), "evt-b", "b delivers it without waiting out a's lease");
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set RELAY_TEST_POSTGRES_URL (.ci/run does)"]
async fn a_key_rotated_through_one_is_refused_by_the_other_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let env = cluster_env(dir.path()).await;
    let (a, b) = (RelayProcess::spawn(&env), RelayProcess::spawn(&env));
    let conn = a.connection("acme").await;
    eventually("instance b to know the connection", || async {
        (b.api(&conn, Method::GET, "/connection", None).await.status == StatusCode::OK).then_some(())
    })
    .await;
    let rotated = a.admin(Method::POST, "/connections/acme/api-key", None).await;
    let new_key = rotated.body["api_key"].as_str().unwrap().to_owned();
    let started = Instant::now();
    loop {
        let old = b.api(&conn, Method::GET, "/connection", None).await.status;
        let new = b.send(Method::GET, "/v1/connection", Some(&new_key), None, &[]).await.status;
        if old == StatusCode::UNAUTHORIZED && new == StatusCode::OK {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(1), "b still takes the old key after {:?}", started.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set RELAY_TEST_POSTGRES_URL (.ci/run does)"]
async fn deliveries_leased_by_a_killed_instance_are_taken_over_after_the_lease() {
    let dir = tempfile::tempdir().unwrap();
    let env = cluster_env(dir.path()).await;
    let sink = Sink::start_with(SinkReply::Slow(Duration::from_secs(30))).await;
    let a = RelayProcess::spawn(&env);
    let conn = a.connection("acme").await;
    a.attach(&conn, &sink.url, None).await;
    let ids: Vec<String> = (0..5).map(|n| format!("evt-{n}")).collect();
    for id in &ids {
        assert_eq!(a.ingest(&conn, &event(id, None)).await.status, StatusCode::ACCEPTED);
    }
    sink.recv().await; // a holds the hook and its deliveries, stuck on a slow target
    let (b, killed, delivered) = kill_and_take_over(a, &env, &sink, ids.len()).await;
    assert_eq!(delivered, ids.iter().cloned().collect(), "nothing lost");
    assert!(killed.elapsed() < Duration::from_secs(15), "taken over once the 2 s lease ran out");
    drop(b);
}

/// Starts a second instance, kills `a` (stuck on `sink`), lets the sink answer, and collects the
/// event ids sent after the kill — by the second instance — until there are `n`; returns the
/// second instance and when `a` died with them.
async fn kill_and_take_over(
    a: RelayProcess,
    env: &[(String, String)],
    sink: &Sink,
    n: usize,
) -> (RelayProcess, Instant, HashSet<String>) {
    let b = RelayProcess::spawn(env);
    a.kill();
    sink.answer(SinkReply::Status(200));
    let killed = Instant::now();
    let mut delivered = HashSet::new();
    while delivered.len() < n {
        let got = sink.recv().await;
        if got.at > killed {
            delivered.insert(got.header("webhook-id").to_owned());
        }
    }
    (b, killed, delivered)
}

/// The stored state of the delivery of event `id` (PostgreSQL: 0 waiting, 3 handed off).
async fn delivery_state(env: &[(String, String)], id: &str) -> Option<i32> {
    let url = &env.iter().find(|(name, _)| name == "RELAY_DATABASE_URL").expect("the cluster's database").1;
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let row = client
        .query_opt("SELECT d.state FROM deliveries d JOIN events e ON e.seq = d.event_seq WHERE e.id = $1", &[&id])
        .await
        .unwrap();
    row.map(|r| r.get(0))
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set RELAY_TEST_POSTGRES_URL (.ci/run does)"]
async fn deliveries_handed_off_by_a_killed_instance_are_delivered_by_another_after_their_lease() {
    let dir = tempfile::tempdir().unwrap();
    let env = cluster_env(dir.path()).await;
    let sink = Sink::start().await;
    let a = RelayProcess::spawn(&env);
    let conn = a.connection("acme").await;
    a.attach(&conn, &sink.url, None).await;
    // A first event makes a claim the hook and find nothing else of it due: for a second after,
    // a's ingests hand its deliveries off, stored in flight, outside the waiting ones.
    a.ingest(&conn, &event("evt-first", None)).await;
    sink.recv().await;
    sink.answer(SinkReply::Slow(Duration::from_secs(30)));
    let mut ids = Vec::new();
    for n in 0..5 {
        let id = format!("evt-{n}");
        assert_eq!(a.ingest(&conn, &event(&id, None)).await.status, StatusCode::ACCEPTED);
        ids.push(id.clone());
        if delivery_state(&env, &id).await == Some(3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let handed = ids.last().unwrap().clone();
    assert_eq!(delivery_state(&env, &handed).await, Some(3), "one of the events was handed off: {ids:?}");
    sink.recv().await; // a is stuck on it
    let (b, _, delivered) = kill_and_take_over(a, &env, &sink, ids.len()).await;
    assert_eq!(delivered, ids.iter().cloned().collect(), "nothing lost, the handed-off one included");
    eventually("the handed-off delivery recorded as delivered", || async {
        (delivery_state(&env, &handed).await == Some(1)).then_some(())
    })
    .await;
    drop(b);
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set RELAY_TEST_POSTGRES_URL (.ci/run does)"]
async fn migrate_store_moves_an_sqlite_relay_to_postgresql_without_losing_pending_work() {
    let dir = tempfile::tempdir().unwrap();
    let env = cluster_env(dir.path()).await;
    let sqlite = format!("sqlite://{}", dir.path().join("old.db").display());
    let sink = Sink::start_with(SinkReply::Status(503)).await;
    let mut args = crate::harness::TestServer::args();
    args.database_url = stencil_relay::config::DatabaseUrl::parse(&sqlite).unwrap();
    args.retry_schedule = "2s".parse().unwrap();
    let mut old = crate::harness::TestServer::start_with(args).await;
    let conn = old.connection("acme").await;
    let hook = old.attach(&conn, &sink.url, Some("tpl")).await;
    for n in 0..3 {
        old.ingest(&conn, &event(&format!("evt-{n}"), Some("tpl"))).await;
    }
    sink.recv_n(3).await; // each failed once; their retries are due in 2 s
    old.shutdown().await;

    let postgres = env.iter().find(|(k, _)| k == "RELAY_DATABASE_URL").unwrap().1.clone();
    let out = tokio::process::Command::new(crate::harness::process::BIN)
        .args(["migrate-store", "--from", &sqlite, "--to", &postgres])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("1 connections, 1 hooks and 3 of 3 undelivered deliveries"), "{stdout}");

    sink.answer(SinkReply::Status(200));
    let new = RelayProcess::spawn(&env);
    let hooks = new.api(&conn, Method::GET, "/hooks", None).await;
    assert_eq!(hooks.body["data"][0]["id"], hook.as_str(), "the same key sees the same hook");
    assert_eq!(new.ingest(&conn, &event("evt-0", Some("tpl"))).await.status, StatusCode::OK, "events came along");
    let mut delivered = HashSet::new();
    while delivered.len() < 3 {
        delivered.insert(sink.recv().await.header("webhook-id").to_owned());
    }
    assert_eq!(delivered, (0..3).map(|n| format!("evt-{n}")).collect(), "the pending retries ran on PostgreSQL");
    let rerun = tokio::process::Command::new(crate::harness::process::BIN)
        .args(["migrate-store", "--from", &sqlite, "--to", &postgres])
        .output()
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&rerun.stdout).contains("0 of 3"), "running it again adds nothing");
}

/// libfaketime, which shifts a process's wall clock (not its monotonic one) without touching
/// its code (Debian's `faketime`; `.ci/run` installs it).
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

#[tokio::test]
#[ignore = "needs PostgreSQL and libfaketime: .ci/run sets them up"]
async fn instances_whose_clocks_disagree_still_share_a_hook_by_the_databases_clock() {
    assert!(std::path::Path::new(LIBFAKETIME).exists(), "needs {LIBFAKETIME} (Debian's faketime)");
    let dir = tempfile::tempdir().unwrap();
    let mut env = cluster_env(dir.path()).await;
    env.retain(|(k, _)| k != "RELAY_HOOK_RATE");
    env.push(("RELAY_HOOK_RATE".to_owned(), "5".to_owned()));
    let mut ahead = env.clone();
    ahead.extend([
        ("LD_PRELOAD".to_owned(), LIBFAKETIME.to_owned()),
        ("FAKETIME".to_owned(), "+45s".to_owned()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".to_owned(), "1".to_owned()),
    ]);
    let (a, b) = (RelayProcess::spawn(&env), RelayProcess::spawn(&ahead));
    let skew = b.send(Method::GET, "/healthz", None, None, &[]).await;
    assert_eq!(skew.status, StatusCode::OK);
    let sink = Sink::start().await;
    let conn = a.connection("acme").await;
    let hook = a.attach(&conn, &sink.url, None).await;
    knows_hook(&b, &conn, &hook).await;
    // Instance b's clock runs 45 s ahead: by its own clock every lease a holds (3 s) has run
    // out. a takes the hook and its first events (paced at 5/s, most of them wait in a for their
    // turn); then events through b make b claim: by its own clock it would take the hook over
    // and attempt the deliveries a holds, beside a.
    let ids: Vec<String> = (0..30).map(|n| format!("skew-{n}")).collect();
    for id in &ids[..15] {
        assert_eq!(a.ingest(&conn, &event(id, None)).await.status, StatusCode::ACCEPTED);
    }
    let mut arrivals = vec![sink.recv().await];
    for id in &ids[15..] {
        assert_eq!(b.ingest(&conn, &event(id, None)).await.status, StatusCode::ACCEPTED);
    }
    arrivals.extend(sink.recv_n(ids.len() - 1).await);
    sink.assert_silent(Duration::from_millis(1500)).await;
    let mut delivered: Vec<&str> = arrivals.iter().map(|r| r.header("webhook-id")).collect();
    delivered.sort_unstable();
    let mut expected: Vec<&str> = ids.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(delivered, expected, "each event once: no delivery attempted by both");
    for window in arrivals.windows(6) {
        let span = window[5].at - window[0].at;
        assert!(span >= Duration::from_millis(950), "6 requests within {span:?}: the hook's pace of 5/s was broken");
    }
    // The skew was real: b stamped the events it accepted with its own clock.
    let events = b.api(&conn, Method::GET, "/events?limit=30", None).await.body;
    let stamped_by_b = events["data"].as_array().unwrap().iter().find(|e| e["id"] == "skew-29").unwrap();
    let _ = &a;
    let at = humantime::parse_rfc3339(stamped_by_b["received_at"].as_str().unwrap()).unwrap();
    let ahead = at.duration_since(std::time::SystemTime::now()).unwrap_or_default();
    assert!(ahead > Duration::from_secs(30), "b's clock ran {ahead:?} ahead");
}
