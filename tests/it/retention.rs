//! Retention and the write path: history leaves after `RELAY_RETENTION`, pending work never
//! does, the store stops growing under steady traffic, and a writer that fails says so.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use stencil_relay::config::DatabaseUrl;
use stencil_relay::store::Store;

use crate::harness::{Sink, SinkReply, TestServer, event_id, eventually, sample, scrape, stencil_event};

/// `/metrics`' value of `series`.
async fn metric(relay: &TestServer, series: &str) -> f64 {
    sample(&scrape(&relay.base).await.1, series)
}

/// Rows in `table` and the bytes the store takes, read from the database itself.
async fn rows_and_size(url: &DatabaseUrl, table: &str) -> (u64, u64) {
    match url {
        DatabaseUrl::Sqlite(path) => {
            let db = rusqlite::Connection::open(path).unwrap();
            let rows: u64 = db.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0)).unwrap();
            let size = |suffix: &str| {
                let mut file = path.as_os_str().to_owned();
                file.push(suffix);
                std::fs::metadata(file).map_or(0, |m| m.len())
            };
            (rows, size("") + size("-wal"))
        }
        DatabaseUrl::Postgres(url) => {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(connection);
            let sql = format!(
                "SELECT (SELECT COUNT(*) FROM {table}),
                        (SELECT SUM(pg_total_relation_size(to_regclass(t)))::BIGINT
                         FROM unnest(ARRAY['events', 'deliveries', 'attempts']) t)"
            );
            let row = client.query_one(&sql, &[]).await.unwrap();
            (row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64)
        }
    }
}

#[tokio::test]
async fn history_leaves_after_the_window_but_events_with_pending_deliveries_stay() {
    let mut args = TestServer::args();
    args.retention = Duration::from_secs(3);
    args.retry_schedule = "1h".parse().unwrap(); // a failed delivery stays pending for the test
    let relay = TestServer::start_with(args).await;
    let (ok, refusing, failing) = (
        Sink::start().await,
        Sink::start_with(SinkReply::Status(400)).await,
        Sink::start_with(SinkReply::Status(500)).await,
    );
    let done = relay.connection("done").await;
    let waiting = relay.connection("waiting").await;
    let delivered_to = relay.attach(&done, &ok.url, None).await;
    relay.attach(&done, &refusing.url, None).await;
    relay.attach(&waiting, &failing.url, None).await;

    let old = stencil_event("old");
    assert_eq!(relay.ingest(&done, &old).await.status, StatusCode::ACCEPTED);
    assert_eq!(relay.ingest(&waiting, &stencil_event("pending")).await.status, StatusCode::ACCEPTED);
    for sink in [&ok, &refusing, &failing] {
        sink.recv().await;
    }
    relay.await_attempts(&done, &delivered_to, 1).await;
    relay.await_dead_letters("?connection=done", 1).await;

    eventually("the finished event to be pruned", || async {
        let events = relay.api(&done, Method::GET, "/events", None).await;
        events.body["data"].as_array().unwrap().is_empty().then_some(())
    })
    .await;
    let attempts = relay.api(&done, Method::GET, &format!("/hooks/{delivered_to}/deliveries"), None).await;
    assert_eq!(attempts.body["data"], serde_json::json!([]), "its attempts went with it");
    let dead = relay.admin(Method::GET, "/dead-letters?connection=done", None).await;
    assert_eq!(dead.body["data"], serde_json::json!([]), "and its dead letter: dead letters follow the window");
    let kept = relay.api(&waiting, Method::GET, "/events", None).await;
    assert_eq!(kept.body["data"].as_array().unwrap().len(), 1, "an event with a pending delivery stays");

    let again = relay.ingest(&done, &old).await;
    assert_eq!(
        again.status,
        StatusCode::ACCEPTED,
        "the duplicate check covers the window, not longer: {:?}",
        again.body
    );
    assert_eq!(ok.recv().await.header("webhook-id"), event_id(&old));
    assert!(metric(&relay, "relay_store_pruned_rows_total{table=\"events\"}").await >= 1.0);
    assert!(metric(&relay, "relay_store_pruned_rows_total{table=\"attempts\"}").await >= 2.0);
    let age = eventually("the backlog's age to show", || async {
        let age = metric(&relay, "relay_oldest_pending_delivery_age_seconds").await;
        (age >= 3.0).then_some(age)
    });
    assert!(age.await < 600.0, "the pending delivery's event is seconds old");
}

/// The soak: steady traffic for many retention periods. Rows and bytes level off, and every
/// accepted event is delivered.
#[tokio::test]
async fn under_steady_traffic_the_store_stops_growing_and_every_event_arrives() {
    const WINDOW: Duration = Duration::from_secs(2);
    const RUN: Duration = Duration::from_secs(28);
    let mut args = TestServer::args();
    args.retention = WINDOW;
    args.hook_rate = 1000; // the hook keeps up with the traffic, so nothing stays pending
    let relay = TestServer::start_with(args).await;
    let sink = Sink::start().await;
    let conn = relay.connection("soak").await;
    relay.attach(&conn, &sink.url, None).await;
    let url = relay.args.database_url.clone();

    let started = Instant::now();
    let (mut accepted, mut samples, mut n) = (HashSet::new(), Vec::new(), 0);
    let mut next_sample = started + WINDOW;
    while started.elapsed() < RUN {
        for _ in 0..6 {
            let body = stencil_event(&format!("soak-{n}"));
            n += 1;
            if relay.ingest(&conn, &body).await.status == StatusCode::ACCEPTED {
                accepted.insert(event_id(&body));
            }
        }
        if Instant::now() >= next_sample {
            let (events, size) = rows_and_size(&url, "events").await;
            let (attempts, _) = rows_and_size(&url, "attempts").await;
            samples.push((started.elapsed(), events, attempts, size));
            next_sample += WINDOW;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut received = HashSet::new();
    while received.len() < accepted.len() {
        received.insert(sink.recv().await.header("webhook-id").to_owned());
    }
    assert_eq!(received, accepted, "every accepted event was delivered");
    assert!(accepted.len() > 1000, "the traffic ran: {} events", accepted.len());

    // After five windows of warm-up (the WAL reaches its working size after a few checkpoints),
    // the second half of the run holds no more than the first.
    println!("samples (elapsed, events, attempts, bytes): {samples:?}");
    let settled: Vec<Sample> = samples.into_iter().filter(|s| s.0 >= WINDOW * 5).collect();
    let (first, second) = settled.split_at(settled.len() / 2);
    let checks: [(&str, Pick, f64); 3] =
        [("events", |s| s.1, 0.0), ("attempts", |s| s.2, 0.0), ("bytes", |s| s.3, 256.0 * 1024.0)];
    for (what, pick, slack) in checks {
        let most = |half: &[Sample]| half.iter().map(pick).max().unwrap() as f64;
        let (early, late) = (most(first), most(second));
        assert!(late <= early * 1.3 + slack, "{what} kept growing: {early} early, {late} late");
    }
}

/// (elapsed, events, attempts, bytes on disk).
type Sample = (Duration, u64, u64, u64);
/// One figure of a [`Sample`].
type Pick = fn(&Sample) -> u64;

/// A writer job that panics fails its own write, and the writer goes on committing.
#[tokio::test]
async fn a_writer_job_that_panics_fails_alone_and_the_writer_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = TestServer::args();
    args.database_url = DatabaseUrl::Sqlite(dir.path().join("relay.db")); // the SQLite writer, on either pass
    let relay = TestServer::start_with(args).await;
    let sink = Sink::start().await;
    let conn = relay.connection("acme").await;
    relay.attach(&conn, &sink.url, None).await;
    let Store::Sqlite(sqlite) = relay.store.clone() else { unreachable!("an SQLite URL opens an SQLite store") };

    assert!(sqlite.write_that_panics().await.is_err(), "the panicking write fails");
    assert_eq!(relay.send(Method::GET, "/readyz", None, None, &[]).await.status, StatusCode::OK);
    let body = stencil_event("after-the-panic");
    assert_eq!(relay.ingest(&conn, &body).await.status, StatusCode::ACCEPTED);
    assert_eq!(sink.recv().await.header("webhook-id"), event_id(&body));
}

/// A connection with 100,000 waiting deliveries is deleted while another connection ingests:
/// the API answers at once (the rows go in steps afterwards), and the other connection's
/// ingests keep their pace throughout.
#[tokio::test]
async fn deleting_a_connection_with_a_large_backlog_answers_at_once_and_holds_up_no_other_ingest() {
    let mut args = TestServer::args();
    args.hook_rate = 1; // the backlog stays a backlog
    args.retry_schedule = "1h".parse().unwrap();
    let relay = std::sync::Arc::new(TestServer::start_with(args).await);
    let (stuck, ok) = (Sink::start_with(SinkReply::Status(503)).await, Sink::start().await);
    let big = relay.connection("big").await;
    for h in 0..100 {
        relay.attach(&big, &format!("{}?h={h}", stuck.url), None).await;
    }
    for n in 0..1000 {
        assert_eq!(relay.ingest(&big, &stencil_event(&format!("big-{n}"))).await.status, StatusCode::ACCEPTED);
    }
    assert!(relay.store.stats().await.unwrap().pending >= 99_000, "a backlog of 100,000 deliveries");
    let other = relay.connection("other").await;
    relay.attach(&other, &ok.url, None).await;

    let (server, other) = (std::sync::Arc::clone(&relay), other.clone());
    let ingests = tokio::spawn(async move {
        let mut took = Vec::new();
        for n in 0..300 {
            let sent = Instant::now();
            assert_eq!(server.ingest(&other, &stencil_event(&format!("other-{n}"))).await.status, StatusCode::ACCEPTED);
            took.push(sent.elapsed());
        }
        took
    });
    tokio::time::sleep(Duration::from_millis(100)).await; // the other connection's ingests are under way
    let asked = Instant::now();
    assert_eq!(relay.admin(Method::DELETE, "/connections/big", None).await.status, StatusCode::NO_CONTENT);
    let answered = asked.elapsed();
    assert_eq!(relay.api(&big, Method::GET, "/hooks", None).await.status, StatusCode::UNAUTHORIZED, "gone at once");
    let mut took = ingests.await.unwrap();
    took.sort();
    let p99 = took[took.len() * 99 / 100];
    println!("delete answered in {answered:?}; the other connection's ingests meanwhile: p99 {p99:?}");
    assert!(answered < Duration::from_millis(500), "the delete answered at once: {answered:?}");
    assert!(p99 < Duration::from_millis(50), "other ingests kept their pace: p99 {p99:?}");
    // Until everything of it is gone its id stays taken (409); then it is free again.
    let recreate = serde_json::json!({ "name": "big", "id": "big" });
    let deadline = Instant::now() + Duration::from_secs(120);
    let again = loop {
        let again = relay.admin(Method::POST, "/connections", Some(recreate.clone())).await;
        if again.status != StatusCode::CONFLICT || Instant::now() > deadline {
            break again;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("removed {:?} after the delete", asked.elapsed());
    assert!(relay.store.stats().await.unwrap().pending < 1000, "the backlog went with it");
    assert_eq!(again.status, StatusCode::CREATED, "once removed, its id is free again");
}
