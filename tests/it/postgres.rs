//! PostgreSQL in production: TLS by libpq's `sslmode`, and what the relay does while its
//! database is away. Each test starts a PostgreSQL server of its own (`harness::pg_server`), so
//! a plain `cargo test` lists them as ignored and `.ci/run` runs them.

use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::harness::pg_server::{PgServer, ServerTls};
use crate::harness::process::{BIN, run_briefly, sqlite_env};
use crate::harness::{RelayProcess, Sink, event, eventually};

/// The test settings with `url` as the store.
fn env_with(dir: &std::path::Path, url: &str) -> Vec<(String, String)> {
    let mut env = sqlite_env(dir);
    env.retain(|(k, _)| k != "RELAY_DATABASE_URL");
    env.push(("RELAY_DATABASE_URL".to_owned(), url.to_owned()));
    env
}

/// Starts the relay on `url` expecting it to refuse: its exit code and what it printed.
fn refused_start(url: &str) -> (i32, String) {
    let out = run_briefly(
        Command::new(BIN).arg("serve").env_clear().env("RELAY_LISTEN", "127.0.0.1:0").env("RELAY_DATABASE_URL", url),
    );
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Whether the relay's sessions on `server` are encrypted, as the server sees them.
async fn sessions_use_tls(server: &PgServer) -> bool {
    let (client, connection) =
        tokio_postgres::connect(&server.url("127.0.0.1", "sslmode=disable"), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.pid <> pg_backend_pid() AND a.backend_type = 'client backend'",
            &[],
        )
        .await
        .unwrap();
    row.get::<_, Option<bool>>(0).unwrap_or(false)
}

#[tokio::test]
#[ignore = "needs the PostgreSQL server programs (initdb, pg_ctl): .ci/run runs it"]
async fn tls_follows_libpqs_sslmode() {
    let tls = ServerTls::for_localhost();
    let server = PgServer::start(Some(&tls));
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root.crt");
    std::fs::write(&root, &tls.ca_pem).unwrap();
    let root = root.display();

    let require = RelayProcess::spawn(&env_with(dir.path(), &server.url("127.0.0.1", "sslmode=require")));
    assert_eq!(require.send(reqwest::Method::GET, "/readyz", None, None, &[]).await.status, StatusCode::OK);
    assert!(sessions_use_tls(&server).await, "require: encrypted");
    drop(require);

    let full = server.url("localhost", &format!("sslmode=verify-full&sslrootcert={root}"));
    let verified = RelayProcess::spawn(&env_with(dir.path(), &full));
    let sink = Sink::start().await;
    let conn = verified.connection("acme").await;
    verified.attach(&conn, &sink.url, None).await;
    verified.ingest(&conn, &event("over-tls", None)).await;
    assert_eq!(sink.recv().await.header("webhook-id"), "over-tls", "verify-full: the whole way over TLS");
    assert!(sessions_use_tls(&server).await);
    drop(verified);

    let wrong_host = server.url("127.0.0.1", &format!("sslmode=verify-full&sslrootcert={root}"));
    let (code, said) = refused_start(&wrong_host);
    assert_eq!(code, 1, "{said}");
    assert_eq!(said.lines().count(), 1, "one line: {said}");
    assert!(said.starts_with("error: cannot open the store") && said.contains("not valid for name"), "{said}");

    let (code, said) = refused_start(&server.url("localhost", "sslmode=verify-full"));
    assert_eq!((code, said.lines().count()), (1, 1), "the operating system's roots do not know our CA: {said}");
    assert!(said.contains("UnknownIssuer") || said.contains("unknown issuer"), "{said}");

    let ca = server.url("127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={root}"));
    let ca = RelayProcess::spawn(&env_with(dir.path(), &ca));
    assert_eq!(
        ca.send(reqwest::Method::GET, "/readyz", None, None, &[]).await.status,
        StatusCode::OK,
        "verify-ca checks the chain, not the name"
    );
}

#[tokio::test]
#[ignore = "needs the PostgreSQL server programs (initdb, pg_ctl): .ci/run runs it"]
async fn a_plain_text_server_is_refused_under_require_and_used_under_prefer() {
    let server = PgServer::start(None);
    let (code, said) = refused_start(&server.url("127.0.0.1", "sslmode=require"));
    assert_eq!((code, said.lines().count()), (1, 1), "{said}");
    assert!(said.contains("server does not support TLS"), "{said}");
    let dir = tempfile::tempdir().unwrap();
    let prefer = RelayProcess::spawn(&env_with(dir.path(), &server.url("127.0.0.1", "")));
    assert_eq!(
        prefer.send(reqwest::Method::GET, "/readyz", None, None, &[]).await.status,
        StatusCode::OK,
        "prefer (the default) falls back to plain text"
    );
    assert!(!sessions_use_tls(&server).await);
}

#[tokio::test]
#[ignore = "needs the PostgreSQL server programs (initdb, pg_ctl): .ci/run runs it"]
async fn while_the_database_is_away_ingest_answers_503_quickly_and_everything_resumes_by_itself() {
    let server = PgServer::start(None);
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayProcess::spawn(&env_with(dir.path(), &server.url("127.0.0.1", "")));
    let sink = Sink::start().await;
    let conn = relay.connection("acme").await;
    relay.attach(&conn, &sink.url, None).await;
    let mut accepted = Vec::new();
    for i in 0..5 {
        let id = format!("before-{i}");
        assert_eq!(relay.ingest(&conn, &event(&id, None)).await.status, StatusCode::ACCEPTED);
        accepted.push(id);
    }

    server.stop();
    let asked = Instant::now();
    let reply = relay.ingest(&conn, &event("during", None)).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", reply.body);
    assert!(asked.elapsed() < Duration::from_secs(6), "answered in {:?}", asked.elapsed());
    let ready = relay.send(reqwest::Method::GET, "/readyz", None, None, &[]).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);

    server.resume();
    eventually("ingest to be accepted again", || async {
        let reply = relay.ingest(&conn, &event("after", None)).await;
        (reply.status == StatusCode::ACCEPTED).then_some(())
    })
    .await;
    accepted.push("after".to_owned());
    let ready = relay.send(reqwest::Method::GET, "/readyz", None, None, &[]).await;
    assert_eq!(ready.status, StatusCode::OK);

    // Its sessions cut off from the server's side: the pool notices and reconnects.
    let (admin, connection) =
        tokio_postgres::connect(&server.url("127.0.0.1", "sslmode=disable"), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'",
            &[],
        )
        .await
        .unwrap();
    eventually("ingest to be accepted after the sessions were terminated", || async {
        let reply = relay.ingest(&conn, &event("after-terminate", None)).await;
        (reply.status == StatusCode::ACCEPTED).then_some(())
    })
    .await;
    accepted.push("after-terminate".to_owned());

    let mut missing: std::collections::HashSet<String> = accepted.into_iter().collect();
    while !missing.is_empty() {
        missing.remove(sink.recv().await.header("webhook-id"));
    }
}
