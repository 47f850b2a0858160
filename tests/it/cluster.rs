//! Several instances on one PostgreSQL database, as real processes on different ports. These
//! need `RELAY_TEST_POSTGRES_URL` (`.ci/run` always sets it); without it they say so and pass.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};

use crate::harness::process::test_env;
use crate::harness::{RelayProcess, Sink, SinkReply, event, eventually};

/// The shared-database settings, or `None` (with a note) when PostgreSQL is not configured.
async fn cluster_env(dir: &std::path::Path) -> Option<Vec<(String, String)>> {
    if std::env::var("RELAY_TEST_POSTGRES_URL").map_or(true, |u| u.is_empty()) {
        eprintln!("RELAY_TEST_POSTGRES_URL is not set: multi-instance tests need PostgreSQL");
        return None;
    }
    Some(test_env(dir).await)
}

#[tokio::test]
async fn attach_through_one_ingest_through_the_other_delivers_once() {
    let dir = tempfile::tempdir().unwrap();
    let Some(env) = cluster_env(dir.path()).await else { return };
    let (a, b) = (RelayProcess::spawn(&env), RelayProcess::spawn(&env));
    let sink = Sink::start().await;
    let conn = a.connection("acme").await;
    let hook = a.attach(&conn, &sink.url, None).await;
    eventually("instance b to know the hook", || async {
        let reply = b.api(&conn, Method::GET, &format!("/hooks/{hook}"), None).await;
        (reply.status == StatusCode::OK).then_some(())
    })
    .await;
    assert_eq!(b.ingest(&conn, &event("evt-shared", None)).await.body["deliveries"], 1);
    assert_eq!(sink.recv().await.header("webhook-id"), "evt-shared");
    sink.assert_silent(Duration::from_millis(1500)).await; // both instances poll; one delivery
}

#[tokio::test]
async fn a_key_rotated_through_one_is_refused_by_the_other_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let Some(env) = cluster_env(dir.path()).await else { return };
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
async fn deliveries_leased_by_a_killed_instance_are_taken_over_after_the_lease() {
    let dir = tempfile::tempdir().unwrap();
    let Some(env) = cluster_env(dir.path()).await else { return };
    let sink = Sink::start_with(SinkReply::Slow(Duration::from_secs(30))).await;
    let a = RelayProcess::spawn(&env);
    let conn = a.connection("acme").await;
    a.attach(&conn, &sink.url, None).await;
    let ids: Vec<String> = (0..5).map(|n| format!("evt-{n}")).collect();
    for id in &ids {
        assert_eq!(a.ingest(&conn, &event(id, None)).await.status, StatusCode::ACCEPTED);
    }
    sink.recv().await; // a holds the hook and its deliveries, stuck on a slow target
    let b = RelayProcess::spawn(&env);
    a.kill();
    sink.answer(SinkReply::Status(200));
    let killed = Instant::now();
    let mut delivered = HashSet::new();
    while delivered.len() < ids.len() {
        let got = sink.recv().await;
        if got.at > killed {
            delivered.insert(got.header("webhook-id").to_owned()); // sent by b
        }
    }
    assert_eq!(delivered, ids.iter().cloned().collect(), "nothing lost");
    assert!(killed.elapsed() < Duration::from_secs(15), "taken over once the 2 s lease ran out");
    drop(b);
}
