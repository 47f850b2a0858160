//! The hook API as Make and Zapier call it, isolation between connections, and the
//! target-URL rules.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::process::sqlite_env;
use crate::harness::{Conn, RelayProcess, Sink, SinkReply, TestServer, event, stencil_event};

#[tokio::test]
async fn connection_check_needs_a_valid_key() {
    let relay = TestServer::start().await;
    let conn = relay.connection("acme").await;
    let ok = relay.api(&conn, Method::GET, "/connection", None).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!((ok.body["id"].as_str(), ok.body["name"].as_str()), (Some("acme"), Some("Project acme")));
    assert_eq!(ok.body["ingest_auth"], "signature");
    assert!(ok.body["ingest_url"].as_str().unwrap().ends_with("/v1/ingest/acme"));
    assert_eq!(ok.body["rejected_ingests"]["total"], 0);
    let missing = relay.send(Method::GET, "/v1/connection", None, None, &[]).await;
    let wrong = relay.send(Method::GET, "/v1/connection", Some("sk_wrong"), None, &[]).await;
    for reply in [missing, wrong] {
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert_eq!(reply.error(), "unauthorized");
        assert!(reply.body["message"].is_string());
    }
}

#[tokio::test]
async fn attach_is_idempotent_and_accepts_zapier_target_url() {
    let relay = TestServer::start().await;
    let conn = relay.connection("acme").await;
    let url = "http://127.0.0.1:9/hook";
    let created = relay.api(&conn, Method::POST, "/hooks", Some(json!({ "url": url }))).await;
    assert_eq!(created.status, StatusCode::CREATED);
    let hook = &created.body;
    assert!(hook["id"].as_str().unwrap().starts_with("hk_"));
    assert_eq!((hook["url"].as_str(), hook["event"].as_str()), (Some(url), Some("image.created")));
    assert_eq!(hook["template_id"], Value::Null);
    assert!(hook["created_at"].as_str().unwrap().ends_with('Z'));
    let secret = hook["secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_"), "attach answers with the key that signs the hook's deliveries");

    let again =
        relay.api(&conn, Method::POST, "/hooks", Some(json!({ "target_url": url, "event": "image.created" }))).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body, created.body);
    let mut shown = created.body.clone();
    shown.as_object_mut().unwrap().remove("secret");

    let narrowed = relay.api(&conn, Method::POST, "/hooks", Some(json!({ "url": url, "template_id": "tpl" }))).await;
    assert_eq!(narrowed.status, StatusCode::CREATED);
    assert_ne!(narrowed.body["id"], created.body["id"]);
    assert_eq!(narrowed.body["template_id"], "tpl");

    let list = relay.api(&conn, Method::GET, "/hooks", None).await;
    assert_eq!(list.body["data"].as_array().unwrap().len(), 2);
    let id = created.body["id"].as_str().unwrap();
    assert_eq!(relay.api(&conn, Method::GET, &format!("/hooks/{id}"), None).await.body, shown, "no key outside attach");
    let key = relay.api(&conn, Method::GET, &format!("/hooks/{id}/secret"), None).await;
    assert_eq!(key.body, json!({ "secret": secret }));
}

#[tokio::test]
async fn template_filters_are_checked_like_ingests_template_ids() {
    let relay = TestServer::start().await;
    let conn = relay.connection("acme").await;
    for bad in ["a b", "x/../y", "\u{1b}]0;owned\u{7}", &"t".repeat(129)] {
        let reply = relay
            .api(&conn, Method::POST, "/hooks", Some(json!({ "url": "http://127.0.0.1:9/h", "template_id": bad })))
            .await;
        assert_eq!((reply.status, reply.error()), (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"), "{bad:?}");
    }
}

#[tokio::test]
async fn hook_ids_are_random() {
    let relay = TestServer::start().await;
    let conn = relay.connection("acme").await;
    let a = relay.attach(&conn, "http://127.0.0.1:9/a", None).await;
    let b = relay.attach(&conn, "http://127.0.0.1:9/b", None).await;
    assert!(a.len() >= 3 + 32 && b.len() == a.len());
    assert_ne!(a[3..], b[3..]);
}

#[tokio::test]
async fn connections_never_see_each_others_hooks() {
    let relay = TestServer::start().await;
    let a = relay.connection("a").await;
    let b = relay.connection("b").await;
    let hook_a = relay.attach(&a, "http://127.0.0.1:9/a", None).await;
    relay.attach(&b, "http://127.0.0.1:9/b", None).await;

    let list_b = relay.api(&b, Method::GET, "/hooks", None).await;
    let ids: Vec<&str> = list_b.body["data"].as_array().unwrap().iter().map(|h| h["id"].as_str().unwrap()).collect();
    assert!(!ids.contains(&hook_a.as_str()));
    for (method, path) in [
        (Method::GET, format!("/hooks/{hook_a}")),
        (Method::GET, format!("/hooks/{hook_a}/deliveries")),
        (Method::GET, format!("/hooks/{hook_a}/secret")),
        (Method::POST, format!("/hooks/{hook_a}/secret/rotate")),
    ] {
        let reply = relay.api(&b, method, &path, None).await;
        assert_eq!((reply.status, reply.error()), (StatusCode::NOT_FOUND, "not_found"), "{path}");
    }
    let detach = relay.api(&b, Method::DELETE, &format!("/hooks/{hook_a}"), None).await;
    assert_eq!(detach.status, StatusCode::NO_CONTENT, "a detach of a hook b does not have is already done");
    assert_eq!(
        relay.api(&a, Method::GET, &format!("/hooks/{hook_a}"), None).await.status,
        StatusCode::OK,
        "and a's hook stays"
    );

    relay.ingest(&a, &event("evt-a", None)).await;
    let events_b = relay.api(&b, Method::GET, "/events", None).await;
    assert_eq!(events_b.body["data"], json!([]));
}

#[tokio::test]
async fn detach_removes_the_hook_and_repeats_quietly() {
    let relay = TestServer::start().await;
    let conn = relay.connection("acme").await;
    let id = relay.attach(&conn, "http://127.0.0.1:9/hook", None).await;
    let path = format!("/hooks/{id}");
    let gone = relay.api(&conn, Method::DELETE, &path, None).await;
    assert_eq!((gone.status, &gone.body), (StatusCode::NO_CONTENT, &Value::Null));
    let again = relay.api(&conn, Method::DELETE, &path, None).await;
    assert_eq!((again.status, &again.body), (StatusCode::NO_CONTENT, &Value::Null), "detach is idempotent");
    let never = relay.api(&conn, Method::DELETE, "/hooks/hk_never", None).await;
    assert_eq!(never.status, StatusCode::NO_CONTENT);
    assert_eq!(relay.api(&conn, Method::GET, &path, None).await.status, StatusCode::NOT_FOUND);
    assert_eq!(relay.ingest(&conn, &stencil_event("e")).await.body["deliveries"], 0);
}

#[tokio::test]
async fn deliveries_and_events_list_newest_first() {
    let relay = TestServer::start().await;
    let sink = Sink::start().await;
    let conn = relay.connection("acme").await;
    let id = relay.attach(&conn, &sink.url, None).await;
    for n in 1..=3 {
        relay.ingest(&conn, &event(&format!("evt-{n}"), None)).await;
        sink.recv().await;
    }
    let path = format!("/hooks/{id}/deliveries?limit=2");
    relay.await_attempts(&conn, &id, 3).await;
    let newest = relay.api(&conn, Method::GET, &path, None).await;
    let data = newest.body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[0]["event_id"], "evt-3");
    assert_eq!((data[0]["attempt"].as_u64(), data[0]["status_code"].as_u64()), (Some(1), Some(200)));
    assert_eq!(data[0]["error"], Value::Null);
    assert!(data[0]["duration_ms"].is_u64() && data[0]["at"].as_str().unwrap().ends_with('Z'));

    let events = relay.api(&conn, Method::GET, "/events?limit=2", None).await;
    let events = events.body["data"].as_array().unwrap().clone();
    assert_eq!(events.iter().map(|e| e["id"].as_str().unwrap()).collect::<Vec<_>>(), ["evt-3", "evt-2"]);
    assert_eq!(
        events[0]["payload"]["image_url"],
        "https://images.usestencil.com/images/7d2a3c1e-5b4f-4e8a-9c6d-2f1e0a9b8c7d.png"
    );
    assert_eq!(events[0]["type"], "image.created");
    assert!(events[0]["received_at"].is_string());
    let bad = relay.api(&conn, Method::GET, "/events?limit=0", None).await;
    assert_eq!((bad.status, bad.error()), (StatusCode::BAD_REQUEST, "invalid_request"));
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let relay = TestServer::start().await;
    let conn = relay.connection("acme").await;
    let malformed = relay.send(Method::POST, "/v1/hooks", Some(&conn.api_key), Some(b"{nope".to_vec()), &[]).await;
    assert_eq!((malformed.status, malformed.error()), (StatusCode::BAD_REQUEST, "invalid_request"));
    let event = relay
        .api(&conn, Method::POST, "/hooks", Some(json!({ "url": "http://127.0.0.1:9/", "event": "image.deleted" })))
        .await;
    assert_eq!((event.status, event.error()), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_event"));
    let no_url = relay.api(&conn, Method::POST, "/hooks", Some(json!({}))).await;
    assert_eq!((no_url.status, no_url.error()), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_url"));
    let unknown = relay.send(Method::GET, "/v2/nothing", None, None, &[]).await;
    assert_eq!((unknown.status, unknown.error()), (StatusCode::NOT_FOUND, "not_found"));
    let method = relay.send(Method::PUT, "/v1/hooks", Some(&conn.api_key), None, &[]).await;
    assert_eq!(method.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(method.header("allow"), "GET, POST");
}

async fn attach_status(relay: &TestServer, conn: &Conn, url: &str) -> (StatusCode, String) {
    let reply = relay.api(conn, Method::POST, "/hooks", Some(json!({ "url": url }))).await;
    (reply.status, format!("{} {}", reply.error(), reply.body["message"].as_str().unwrap_or_default()))
}

#[tokio::test]
async fn target_rules_in_production_settings() {
    let mut args = TestServer::args();
    args.target_hosts = stencil_relay::config::ServeArgs::default().target_hosts;
    args.allow_private_targets = false;
    let relay = TestServer::start_with(args).await;
    let conn = relay.connection("acme").await;
    for url in ["https://hook.eu1.make.com/abc", "https://hook.integromat.com/abc", "https://hook.make.com/x"] {
        assert_eq!(attach_status(&relay, &conn, url).await.0, StatusCode::CREATED, "{url}");
    }
    for (url, why) in [
        ("http://hook.eu1.make.com/abc", "https"),
        ("https://example.com/abc", "allowed target hosts"),
        ("https://hook.eu1.make.com.evil.com/abc", "allowed target hosts"),
        ("https://127.0.0.1/abc", "loopback"),
        ("https://2130706433/abc", "loopback"),
        ("https://[::ffff:127.0.0.1]/abc", "loopback"),
        ("https://169.254.169.254/latest/meta-data", "loopback"),
        ("https://localhost/abc", "localhost"),
        ("https://a.localhost/abc", "localhost"),
        ("not a url", "absolute"),
    ] {
        let (status, message) = attach_status(&relay, &conn, url).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{url}");
        assert!(message.starts_with("invalid_url") && message.contains(why), "{url}: {message}");
    }
    let long = format!("https://hook.make.com/{}", "a".repeat(2048));
    assert!(attach_status(&relay, &conn, &long).await.1.contains("longer"));
}

#[tokio::test]
async fn custom_target_host_patterns() {
    let mut args = TestServer::args();
    args.target_hosts = "hook.*.example.com, api.example.org".parse().unwrap();
    args.allow_private_targets = false;
    let relay = TestServer::start_with(args).await;
    let conn = relay.connection("acme").await;
    assert_eq!(attach_status(&relay, &conn, "https://HOOK.eu.example.com/a").await.0, StatusCode::CREATED);
    assert_eq!(attach_status(&relay, &conn, "https://api.example.org/a").await.0, StatusCode::CREATED);
    assert_eq!(attach_status(&relay, &conn, "https://hook.make.com/a").await.0, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        attach_status(&relay, &conn, "https://hook.a.b.example.com/a").await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
}

/// Make and Zapier call from shared addresses: one user's wrong keys must slow only the wrong
/// keys, never a valid key or the admin token from the same address.
#[tokio::test]
async fn failures_are_slowed_but_valid_credentials_always_get_through() {
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayProcess::spawn(&sqlite_env(dir.path()));
    let conn = relay.connection("acme").await;
    let mut statuses = Vec::new();
    for _ in 0..=stencil_relay::ratelimit::AUTH_FAILURE_BURST {
        statuses.push(relay.send(Method::GET, "/v1/connection", Some("sk_guess"), None, &[]).await.status);
    }
    assert!(statuses[..statuses.len() - 1].iter().all(|s| *s == StatusCode::UNAUTHORIZED));
    let slowed = relay.send(Method::GET, "/v1/connection", Some("sk_guess"), None, &[]).await;
    assert_eq!((slowed.status, slowed.error()), (StatusCode::TOO_MANY_REQUESTS, "rate_limited"));
    assert!(slowed.header("retry-after").parse::<u64>().unwrap() >= 1);
    let valid = relay.api(&conn, Method::GET, "/connection", None).await;
    assert_eq!(valid.status, StatusCode::OK, "a valid key from the same address gets through");
    let admin = relay.admin(Method::GET, "/connections", None).await;
    assert_eq!(admin.status, StatusCode::OK, "so does the admin token");
    let wrong_admin = relay.send(Method::GET, "/admin/v1/connections", Some("not-the-token"), None, &[]).await;
    assert_eq!(wrong_admin.status, StatusCode::UNAUTHORIZED, "the admin API has a budget of its own");
}

#[tokio::test]
async fn behind_a_proxy_the_failure_limit_is_per_forwarded_client() {
    let mut args = TestServer::args();
    args.client_ip_header = Some(hyper::header::HeaderName::from_static("fly-client-ip"));
    let relay = TestServer::start_with(args).await;
    let attacker = [("fly-client-ip", "203.0.113.7")];
    for _ in 0..=stencil_relay::ratelimit::AUTH_FAILURE_BURST {
        relay.send(Method::GET, "/v1/connection", Some("sk_guess"), None, &attacker).await;
    }
    let blocked = relay.send(Method::GET, "/v1/connection", Some("sk_guess"), None, &attacker).await;
    assert_eq!(blocked.status, StatusCode::TOO_MANY_REQUESTS);
    let make = [("fly-client-ip", "198.51.100.20")];
    let served = relay.send(Method::GET, "/v1/connection", Some("sk_guess"), None, &make).await;
    assert_eq!(served.status, StatusCode::UNAUTHORIZED, "another client behind the same proxy is not slowed");
}

/// `X-Forwarded-For` is `client-written, …, what-the-proxy-saw`: only the rightmost entry is the
/// proxy's. An attacker who writes a new leftmost address each time is still one address.
#[tokio::test]
async fn the_rightmost_forwarded_for_entry_is_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = sqlite_env(dir.path());
    env.push(("RELAY_CLIENT_IP_HEADER".into(), "X-Forwarded-For".into()));
    let relay = RelayProcess::spawn(&env);
    let mut last = StatusCode::OK;
    for n in 0..=stencil_relay::ratelimit::AUTH_FAILURE_BURST + 1 {
        let spoofed = format!("10.9.{}.{}, 203.0.113.7", n / 200, n % 200);
        last = relay
            .send(Method::GET, "/v1/connection", Some("sk_guess"), None, &[("x-forwarded-for", &spoofed)])
            .await
            .status;
    }
    assert_eq!(last, StatusCode::TOO_MANY_REQUESTS, "spoofed leftmost entries do not evade the limit");
    let victim = [("x-forwarded-for", "203.0.113.7, 198.51.100.20")];
    let other = relay.send(Method::GET, "/v1/connection", Some("sk_guess"), None, &victim).await;
    assert_eq!(other.status, StatusCode::UNAUTHORIZED, "writing a victim's address first does not lock it out");
}

#[tokio::test]
async fn a_test_event_goes_through_the_pipeline_to_the_connections_hooks_only() {
    let relay = TestServer::start().await;
    let (a, b) = (relay.connection("a").await, relay.connection("b").await);
    let (sink_a, sink_b) = (Sink::start().await, Sink::start().await);
    relay.attach(&a, &sink_a.url, None).await;
    relay.attach(&a, &format!("{}/tpl", sink_a.url), Some("tpl-9")).await;
    relay.attach(&b, &sink_b.url, None).await;
    let sent = relay.api(&a, Method::POST, "/test-events", None).await;
    assert_eq!((sent.status, &sent.body["deliveries"]), (StatusCode::ACCEPTED, &1.into()), "{:?}", sent.body);
    let got = sink_a.recv().await;
    let id = sent.body["event_id"].as_str().unwrap();
    assert!(id.starts_with("evt_test_") && got.header("webhook-id") == id);
    let payload: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!((&payload["test"], &payload["status"]), (&true.into(), &"completed".into()), "Stencil's shape");
    let templated = relay.api(&a, Method::POST, "/test-events", Some(json!({ "template_id": "tpl-9" }))).await;
    assert_eq!(templated.body["deliveries"], 2, "the template's hook gets it too");
    let bad = relay.api(&a, Method::POST, "/test-events", Some(json!({ "template_id": "no way" }))).await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    sink_b.assert_silent(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_connection_lists_and_replays_its_own_dead_letters_only() {
    let relay = TestServer::start().await;
    let (a, b) = (relay.connection("a").await, relay.connection("b").await);
    let sink = Sink::start_with(SinkReply::Status(400)).await;
    relay.attach(&a, &sink.url, None).await;
    relay.attach(&b, &format!("{}/b", sink.url), None).await;
    relay.ingest(&a, &event("dead-a", None)).await;
    relay.ingest(&b, &event("dead-b", None)).await;
    let own = relay.await_list(&a.api_key, "/v1/dead-letters", 1).await;
    assert_eq!((own.len(), &own[0]["event_id"]), (1, &"dead-a".into()));
    let theirs = relay.await_list(&b.api_key, "/v1/dead-letters", 1).await;
    let path = format!("/dead-letters/{}/retry", theirs[0]["id"].as_str().unwrap());
    assert_eq!(relay.api(&a, Method::POST, &path, None).await.status, StatusCode::NOT_FOUND, "not a's to replay");
    sink.drain().await;
    sink.answer(SinkReply::Status(200));
    let path = format!("/dead-letters/{}/retry", own[0]["id"].as_str().unwrap());
    assert_eq!(relay.api(&a, Method::POST, &path, None).await.status, StatusCode::ACCEPTED);
    assert_eq!(sink.recv().await.header("webhook-id"), "dead-a");
    sink.assert_silent(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn an_events_deliveries_show_per_hook_and_a_finished_one_replays_to_its_hook() {
    let relay = TestServer::start().await;
    let (a, b) = (relay.connection("a").await, relay.connection("b").await);
    let (ok, refusing) = (Sink::start().await, Sink::start_with(SinkReply::Status(400)).await);
    let good = relay.attach(&a, &ok.url, None).await;
    let bad = relay.attach(&a, &refusing.url, None).await;
    relay.ingest(&a, &event("per-hook", None)).await;
    ok.recv().await;
    refusing.recv().await;
    let deliveries = crate::harness::eventually("both outcomes recorded", || async {
        let reply = relay.api(&a, Method::GET, "/events/per-hook/deliveries", None).await;
        let data = reply.body["data"].as_array()?.clone();
        data.iter().all(|d| d["state"] != "pending").then_some(data)
    })
    .await;
    let state_of = |hook: &str| deliveries.iter().find(|d| d["hook_id"] == hook).unwrap()["state"].clone();
    assert_eq!((state_of(&good), state_of(&bad)), ("delivered".into(), "dead".into()));
    let not_theirs = relay.api(&b, Method::GET, "/events/per-hook/deliveries", None).await;
    assert_eq!(not_theirs.status, StatusCode::NOT_FOUND, "another connection's event is not found");
    let delivered =
        deliveries.iter().find(|d| d["hook_id"] == good.as_str()).unwrap()["id"].as_str().unwrap().to_owned();
    let path = format!("/deliveries/{delivered}/replay");
    assert_eq!(relay.api(&b, Method::POST, &path, None).await.status, StatusCode::NOT_FOUND);
    assert_eq!(relay.api(&a, Method::POST, &path, None).await.status, StatusCode::ACCEPTED);
    let again = ok.recv().await;
    assert_eq!((again.header("webhook-id"), again.header("x-relay-attempt")), ("per-hook", "1"));
    refusing.assert_silent(Duration::from_millis(300)).await;
    // The hook's attempts keep the first success as well as the replay's, newest first.
    let attempts = relay.await_attempts(&a, &good, 2).await;
    let summary: Vec<_> =
        attempts.iter().map(|t| (t["event_id"].clone(), t["attempt"].clone(), t["status_code"].clone())).collect();
    assert_eq!(summary, [("per-hook".into(), 1.into(), 200.into()), ("per-hook".into(), 1.into(), 200.into())]);
    assert!(attempts[0]["at"].as_str() >= attempts[1]["at"].as_str(), "newest first: {attempts:?}");
}
