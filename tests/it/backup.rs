//! `stencil-relay backup`: a copy taken while the relay serves restores everything committed
//! before it began.

use std::collections::HashSet;
use std::process::Command;

use reqwest::{Method, StatusCode};
use stencil_relay::config::DatabaseUrl;

use crate::harness::process::{BIN, ingest_until_stopped, sqlite_env};
use crate::harness::{RelayProcess, Sink, SinkReply, TestServer, event_id, eventually, stencil_event};

#[tokio::test]
async fn a_backup_taken_while_serving_restores_every_committed_hook_event_and_pending_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let env = sqlite_env(dir.path());
    let relay = RelayProcess::spawn(&env);
    let down = Sink::start_with(SinkReply::Status(503)).await; // deliveries stay pending
    let conn = relay.connection("acme").await;
    let hook = relay.attach(&conn, &down.url, None).await;
    let before: Vec<Vec<u8>> = (0..20).map(|n| stencil_event(&format!("before-{n}"))).collect();
    for body in &before {
        assert_eq!(relay.ingest(&conn, body).await.status, StatusCode::ACCEPTED);
    }

    let (during, writers) = ingest_until_stopped(&relay.base, &conn, "during", 2); // the backup runs under load
    eventually("ingest under way", || async { (!during.lock().unwrap().is_empty()).then_some(()) }).await;
    let copy = dir.path().join("copy.db");
    let source = env.iter().find(|(k, _)| k == "RELAY_DATABASE_URL").unwrap().1.clone();
    let backup = |copy: std::path::PathBuf, source: String| {
        // Off the test's thread, so that the ingest tasks keep running meanwhile.
        tokio::task::spawn_blocking(move || {
            Command::new(BIN).arg("backup").arg(copy).env("RELAY_DATABASE_URL", source).output().unwrap()
        })
    };
    let out = backup(copy.clone(), source.clone()).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("copy.db"));
    let again = backup(copy.clone(), source).await.unwrap();
    assert!(!again.status.success(), "a backup never overwrites a file");
    relay.kill();
    for writer in writers {
        writer.await.unwrap();
    }

    let mut args = TestServer::args();
    args.database_url = DatabaseUrl::Sqlite(copy);
    let restored = TestServer::start_with(args).await;
    let hooks = restored.api(&conn, Method::GET, "/hooks", None).await;
    assert_eq!(hooks.status, StatusCode::OK, "the connection's API key works on the copy");
    assert_eq!(hooks.body["data"][0]["id"], hook.as_str());
    let listed = restored.api(&conn, Method::GET, "/events?limit=100", None).await.body["data"].clone();
    let listed: HashSet<String> =
        listed.as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();
    let wanted: HashSet<String> = before.iter().map(|b| event_id(b)).collect();
    assert!(wanted.is_subset(&listed), "every event committed before the backup is in it");
    down.answer(SinkReply::Status(200));
    let mut delivered = HashSet::new();
    while !wanted.is_subset(&delivered) {
        delivered.insert(down.recv().await.header("webhook-id").to_owned());
    }
}

#[test]
fn on_postgresql_backup_points_to_pg_dump() {
    let out = Command::new(BIN)
        .args(["backup", "/nonexistent/copy"])
        .env("RELAY_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/relay")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("pg_dump"), "{}", String::from_utf8_lossy(&out.stderr));
}
