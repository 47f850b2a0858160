//! The operator API.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use stencil_relay::config::ServeArgs;

use crate::harness::{Sink, SinkReply, TestServer, event, stencil_event};

#[tokio::test]
async fn create_generates_credentials_shown_only_once() {
    let relay = TestServer::start().await;
    let created = relay.admin(Method::POST, "/connections", Some(json!({ "name": "Acme" }))).await;
    assert_eq!(created.status, StatusCode::CREATED);
    let body = &created.body;
    let id = body["id"].as_str().unwrap();
    assert!(!id.is_empty() && id.len() <= 64);
    for field in ["api_key", "signing_secret"] {
        assert!(body[field].as_str().unwrap().len() >= 32, "{field}");
    }
    assert!(body["ingest_url"].as_str().unwrap().ends_with(&format!("/v1/ingest/{id}")));

    let listed = relay.admin(Method::GET, "/connections", None).await;
    let shown = relay.admin(Method::GET, &format!("/connections/{id}"), None).await;
    assert_eq!(shown.status, StatusCode::OK);
    for text in [listed.body.to_string(), shown.body.to_string()] {
        assert!(!text.contains(body["api_key"].as_str().unwrap()));
        assert!(!text.contains(body["signing_secret"].as_str().unwrap()));
    }
    assert_eq!(shown.body["name"], "Acme");
    assert_eq!(relay.admin(Method::GET, "/connections/nope", None).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn create_takes_given_fields_and_refuses_conflicts() {
    let relay = TestServer::start().await;
    let body = json!({ "name": "Acme", "id": "acme_1-x", "api_key": "sk_given_key_1234567890_abcdefghijklm", "signing_secret": "whsec_given_secret_0123456789abcdef", "ingest_rate": 7 });
    let created = relay.admin(Method::POST, "/connections", Some(body.clone())).await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(
        (created.body["api_key"].as_str(), created.body["signing_secret"].as_str()),
        (Some("sk_given_key_1234567890_abcdefghijklm"), Some("whsec_given_secret_0123456789abcdef"))
    );
    let check =
        relay.send(Method::GET, "/v1/connection", Some("sk_given_key_1234567890_abcdefghijklm"), None, &[]).await;
    assert_eq!(check.body["id"], "acme_1-x");
    assert_eq!(relay.admin(Method::GET, "/connections/acme_1-x", None).await.body["ingest_rate"], 7);

    let conflict = relay.admin(Method::POST, "/connections", Some(body)).await;
    assert_eq!((conflict.status, conflict.error()), (StatusCode::CONFLICT, "conflict"));
    for bad in [
        json!({ "name": "x", "id": "has space" }),
        json!({ "name": "x", "id": "a".repeat(65) }),
        json!({ "id": "ok" }),
        json!({ "name": "x", "ingest_rate": 0 }),
        json!({ "name": "x", "signing_secret": "s" }),
        json!({ "name": "x", "signing_secret": "a".repeat(31) }),
        json!({ "name": "x", "api_key": "sk_ünïcödé_ünïcödé_ünïcödé_ünïcödé" }),
        json!({ "name": "x", "api_key": "sk_with a space in it 0123456789abcdef" }),
    ] {
        let reply = relay.admin(Method::POST, "/connections", Some(bad.clone())).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }
    let malformed = relay
        .send(
            Method::POST,
            "/admin/v1/connections",
            Some(crate::harness::client::ADMIN_TOKEN),
            Some(b"{".to_vec()),
            &[],
        )
        .await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn list_counts_hooks() {
    let relay = TestServer::start().await;
    let a = relay.connection("a").await;
    relay.connection("b").await;
    relay.attach(&a, "http://127.0.0.1:9/1", None).await;
    relay.attach(&a, "http://127.0.0.1:9/2", None).await;
    let list = relay.admin(Method::GET, "/connections", None).await;
    let counts: Vec<(String, u64)> = list.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["id"].as_str().unwrap().to_owned(), c["hook_count"].as_u64().unwrap()))
        .collect();
    assert_eq!(counts, [("a".to_owned(), 2), ("b".to_owned(), 0)]);
}

#[tokio::test]
async fn delete_removes_connection_hooks_and_pending_deliveries() {
    let relay = TestServer::start().await;
    let sink = Sink::start_with(SinkReply::Status(503)).await;
    let conn = relay.connection("acme").await;
    relay.attach(&conn, &sink.url, None).await;
    relay.ingest(&conn, &event("evt-1", None)).await;
    sink.recv().await; // first attempt failed; a retry is pending
    assert_eq!(relay.admin(Method::DELETE, "/connections/acme", None).await.status, StatusCode::NO_CONTENT);
    assert_eq!(relay.admin(Method::DELETE, "/connections/acme", None).await.status, StatusCode::NOT_FOUND);
    assert_eq!(relay.api(&conn, Method::GET, "/connection", None).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(relay.ingest(&conn, &event("evt-2", None)).await.status, StatusCode::UNAUTHORIZED);
    sink.assert_silent(std::time::Duration::from_millis(600)).await; // retries were at 100ms and 200ms
}

#[tokio::test]
async fn api_key_rotation_refuses_the_old_key_at_once() {
    let relay = TestServer::start().await;
    let conn = relay.connection("acme").await;
    let rotated = relay.admin(Method::POST, "/connections/acme/api-key", None).await;
    assert_eq!(rotated.status, StatusCode::OK);
    let new_key = rotated.body["api_key"].as_str().unwrap();
    assert_ne!(new_key, conn.api_key);
    assert_eq!(relay.api(&conn, Method::GET, "/connection", None).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(relay.send(Method::GET, "/v1/connection", Some(new_key), None, &[]).await.status, StatusCode::OK);
    assert_eq!(relay.admin(Method::POST, "/connections/nope/api-key", None).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn signing_secret_rotation_with_and_without_grace() {
    let relay = TestServer::start().await;
    let conn = relay.connection("acme").await;
    let graced =
        relay.admin(Method::POST, "/connections/acme/signing-secret", Some(json!({ "grace_seconds": 300 }))).await;
    assert_eq!(graced.status, StatusCode::OK);
    let second =
        crate::harness::Conn { secret: graced.body["signing_secret"].as_str().unwrap().into(), ..conn.clone() };
    assert_eq!(relay.ingest(&conn, &stencil_event("old-secret")).await.status, StatusCode::ACCEPTED);
    assert_eq!(relay.ingest(&second, &stencil_event("new-secret")).await.status, StatusCode::ACCEPTED);

    let abrupt = relay.admin(Method::POST, "/connections/acme/signing-secret", None).await;
    let third = crate::harness::Conn { secret: abrupt.body["signing_secret"].as_str().unwrap().into(), ..conn.clone() };
    assert_eq!(
        relay.ingest(&conn, &stencil_event("a")).await.status,
        StatusCode::UNAUTHORIZED,
        "grace ended by a rotation without grace"
    );
    assert_eq!(relay.ingest(&second, &stencil_event("b")).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(relay.ingest(&third, &stencil_event("c")).await.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn dead_letters_are_listed_and_replayed_from_attempt_one() {
    let relay = TestServer::start().await;
    let sink = Sink::start_with(SinkReply::Status(400)).await;
    let a = relay.connection("a").await;
    let b = relay.connection("b").await;
    let hook = relay.attach(&a, &sink.url, None).await;
    relay.ingest(&a, &event("evt-dead", None)).await;
    assert_eq!(sink.recv().await.header("x-relay-attempt"), "1");
    let letters = relay.await_dead_letters("?connection=a&limit=10", 1).await;
    let letter = &letters[0];
    assert_eq!((letter["event_id"].as_str(), letter["hook_id"].as_str()), (Some("evt-dead"), Some(hook.as_str())));
    assert_eq!((letter["attempts"].as_u64(), letter["last_status"].as_u64()), (Some(1), Some(400)));
    let other = relay.admin(Method::GET, "/dead-letters?connection=b", None).await;
    assert_eq!(other.body["data"], json!([]));
    let _ = b;

    sink.answer(SinkReply::Status(200));
    let id = letter["id"].as_str().unwrap();
    let retried = relay.admin(Method::POST, &format!("/dead-letters/{id}/retry"), None).await;
    assert_eq!(retried.status, StatusCode::ACCEPTED);
    let replay = sink.recv().await;
    assert_eq!((replay.header("x-relay-attempt"), replay.header("webhook-id")), ("1", "evt-dead"));
    let again = relay.admin(Method::POST, &format!("/dead-letters/{id}/retry"), None).await;
    assert_eq!(again.status, StatusCode::NOT_FOUND, "no longer a dead letter");
    assert_eq!(relay.admin(Method::POST, "/dead-letters/dlv_999999/retry", None).await.status, StatusCode::NOT_FOUND);
}

/// The overview's row of connection `id`, once `check` holds for it.
async fn overview_row(relay: &TestServer, id: &str, check: impl Fn(&Value) -> bool) -> Value {
    crate::harness::eventually(&format!("the overview's row of {id}"), || async {
        let overview = relay.admin(Method::GET, "/overview", None).await;
        let rows = overview.body["connections"].as_array()?.clone();
        rows.into_iter().find(|row| row["id"] == id && check(row))
    })
    .await
}

#[tokio::test]
async fn the_overview_counts_each_connections_backlog_dead_letters_and_events_of_the_last_day() {
    let relay = TestServer::start().await;
    let refusing = Sink::start_with(SinkReply::Status(400)).await;
    let a = relay.connection("a").await;
    let b = relay.connection("b").await;
    relay.attach(&a, &refusing.url, None).await;
    for tag in ["1", "2", "3"] {
        assert_eq!(relay.ingest(&a, &stencil_event(tag)).await.status, StatusCode::ACCEPTED);
    }
    let once = event("evt-once", None);
    assert_eq!(relay.ingest(&b, &once).await.status, StatusCode::ACCEPTED);
    assert_eq!(relay.ingest(&b, &once).await.status, StatusCode::OK, "a duplicate is not counted again");

    let row = overview_row(&relay, "a", |row| row["events_24h"] == 3 && row["dead_letters"] == 3).await;
    assert_eq!(row["pending"], 0);
    let row = overview_row(&relay, "b", |row| row["events_24h"] == 1).await;
    assert_eq!((&row["pending"], &row["dead_letters"]), (&json!(0), &json!(0)));

    assert_eq!(relay.admin(Method::DELETE, "/connections/b", None).await.status, StatusCode::NO_CONTENT);
    // The id is taken until the old connection's rows are gone.
    crate::harness::eventually("connection b created again", || async {
        let again = relay.admin(Method::POST, "/connections", Some(json!({ "name": "b again", "id": "b" }))).await;
        (again.status == StatusCode::CREATED).then_some(())
    })
    .await;
    let overview = relay.admin(Method::GET, "/overview", None).await;
    let rows = overview.body["connections"].as_array().unwrap();
    assert!(
        !rows.iter().any(|row| row["id"] == "b"),
        "a new connection does not inherit the old one's counts: {rows:?}"
    );
}

#[tokio::test]
async fn admin_token_is_required_and_the_api_is_off_without_one() {
    let relay = TestServer::start().await;
    let wrong = relay.send(Method::GET, "/admin/v1/connections", Some("nope"), None, &[]).await;
    assert_eq!((wrong.status, wrong.error()), (StatusCode::UNAUTHORIZED, "unauthorized"));
    let missing = relay.send(Method::GET, "/admin/v1/connections", None, None, &[]).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);

    let off = TestServer::start_with(ServeArgs { admin_token: None, ..TestServer::args() }).await;
    let reply = off.send(Method::GET, "/admin/v1/connections", Some("anything"), None, &[]).await;
    assert_eq!((reply.status, reply.error()), (StatusCode::NOT_FOUND, "not_found"));
    assert_eq!(off.send(Method::GET, "/healthz", None, None, &[]).await.body, json!({ "status": "ok" }));
    assert_eq!(off.send(Method::GET, "/readyz", None, None, &[]).await.status, StatusCode::OK);
    let _: Value = reply.body;
}
