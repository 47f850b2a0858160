//! What Stencil, Make and Zapier really send and expect: Stencil's documented payload (no id, no
//! template) with a bearer token or a signature in any encoding, the template from the ingest
//! URL, Zapier's target URLs under the default settings, Make's 410, Standard Webhooks
//! signatures checked by the official library, and `doctor`.

use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use stencil_relay::target::DEFAULT_HOSTS;

use crate::harness::process::{BIN, sqlite_env};
use crate::harness::{Conn, RelayProcess, Sink, SinkReply, TestServer, fixture, stencil_event};

const ZAPIER_TARGET: &str = "https://hooks.zapier.com/hooks/standard/1234567/0a1b2c3d4e5f/";

/// Posts `body` to `conn`'s ingest URL plus `query`, with `headers`.
async fn post(
    relay: &crate::harness::client::RelayClient,
    conn: &Conn,
    query: &str,
    body: &[u8],
    headers: &[(&str, &str)],
) -> crate::harness::client::Reply {
    relay.send(Method::POST, &format!("/v1/ingest/{}{query}", conn.id), None, Some(body.to_vec()), headers).await
}

async fn event_count(relay: &crate::harness::client::RelayClient, conn: &Conn) -> usize {
    let events = relay.send(Method::GET, "/v1/events?limit=100", Some(&conn.api_key), None, &[]).await;
    events.body["data"].as_array().unwrap().len()
}

/// The whole path as a new user sets it up: the relay's default target hosts (plus the
/// loopback sink that stands in for Make), a connection whose Stencil webhook carries
/// `Authorization: Bearer <secret>`, a Zapier subscription, and a Make hook filtered to template
/// T. Stencil's documented payload, posted to `?template_id=T`, reaches exactly that hook.
#[tokio::test]
async fn stencils_documented_webhook_with_a_bearer_token_reaches_the_hook_of_its_template() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = sqlite_env(dir.path());
    env.retain(|(k, _)| k != "RELAY_TARGET_HOSTS");
    env.push(("RELAY_TARGET_HOSTS".into(), format!("{DEFAULT_HOSTS},127.0.0.1")));
    let relay = RelayProcess::spawn(&env);
    let conn = relay.connection_with(json!({ "name": "Shop", "id": "shop", "ingest_auth": "token" })).await;
    let zap = relay
        .api(&conn, Method::POST, "/hooks", Some(json!({ "target_url": ZAPIER_TARGET, "template_id": "tpl-other" })))
        .await;
    assert_eq!(zap.status, StatusCode::CREATED, "a Zapier target is allowed by default: {:?}", zap.body);
    let sink = Sink::start().await;
    let hook = relay.attach(&conn, &sink.url, Some("tpl-T")).await;

    let body = fixture("payloads/stencil-image-created.json");
    let bearer = format!("Bearer {}", conn.secret);
    let reply = post(&relay, &conn, "?template_id=tpl-T", &body, &[("authorization", &bearer)]).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{:?}", reply.body);
    assert_eq!(reply.body["deliveries"], 1, "the filtered hook only; the Zap wants another template");
    let got = sink.recv().await;
    assert_eq!(got.body.as_ref(), body.as_slice());
    assert_eq!(got.header("x-relay-hook-id"), hook);

    let events = relay.api(&conn, Method::GET, "/events", None).await;
    assert_eq!(events.body["data"][0]["template_id"], "tpl-T");
    assert_eq!(events.body["data"][0]["payload"]["image_url_jpg"].as_str().unwrap().rsplit('.').next(), Some("jpeg"));

    let other = stencil_event("second-image");
    for headers in
        [vec![], vec![("authorization", "Bearer not-the-secret")], vec![("authorization", conn.secret.as_str())]]
    {
        let refused = post(&relay, &conn, "?template_id=tpl-T", &other, &headers).await;
        assert_eq!((refused.status, refused.error()), (StatusCode::UNAUTHORIZED, "unauthorized"), "{headers:?}");
    }
    let signed_only = stencil_relay::signature::sign(&conn.secret, &other);
    let refused = post(&relay, &conn, "", &other, &[("x-usestencil-signature", &signed_only)]).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "a token connection takes no signature");
    assert_eq!(event_count(&relay, &conn).await, 1, "nothing refused was stored");
    sink.assert_silent(Duration::from_millis(300)).await;
}

/// Stencil does not document how it encodes `X-UseStencil-Signature`: every common encoding of
/// the HMAC is taken, and anything else stores nothing.
#[tokio::test]
async fn signatures_in_every_encoding_are_taken_and_wrong_ones_store_nothing() {
    let relay = TestServer::start().await;
    let conn = relay.connection("shop").await;
    let engines = [
        base64::engine::general_purpose::STANDARD,
        base64::engine::general_purpose::STANDARD_NO_PAD,
        base64::engine::general_purpose::URL_SAFE,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    let mut accepted = 0;
    for (i, encode) in (0..8).map(|i| (i, i)) {
        let body = stencil_event(&format!("encoding-{i}"));
        let hex = stencil_relay::signature::sign(&conn.secret, &body);
        let raw = hex::decode(&hex).unwrap();
        let header = match encode {
            0 => hex.clone(),
            1 => hex.to_uppercase(),
            2 => format!("sha256={hex}"),
            3 => format!("sha256={}", hex.to_uppercase()),
            n => engines[n - 4].encode(&raw),
        };
        let reply = post(&relay, &conn, "?template_id=tpl-1", &body, &[("x-usestencil-signature", &header)]).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{header}");
        accepted += 1;
    }
    let body = stencil_event("refused");
    let wrong = stencil_relay::signature::sign("not-the-secret", &body);
    let bearer = format!("Bearer {}", conn.secret);
    let cases: [&[(&str, &str)]; 4] = [
        &[("x-usestencil-signature", &wrong)],
        &[("x-usestencil-signature", "c2hvcnQ=")],
        &[],
        &[("authorization", &bearer)],
    ];
    for headers in cases {
        let reply = post(&relay, &conn, "", &body, headers).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{headers:?}");
    }
    assert_eq!(event_count(&relay, &conn).await, accepted);
    let check = relay.api(&conn, Method::GET, "/connection", None).await;
    let rejected = &check.body["rejected_ingests"];
    assert_eq!(rejected["total"], 4);
    assert_eq!(rejected["by_reason"]["invalid_signature"], 2);
    assert_eq!(rejected["by_reason"]["missing_credentials"], 1);
    assert_eq!(rejected["by_reason"]["token_not_accepted"], 1);
    assert_eq!(rejected["recent"][0]["reason"], "token_not_accepted", "newest first");
    assert!(!check.body.to_string().contains(&conn.secret), "no credential is ever shown back");
}

#[tokio::test]
async fn ingest_auth_is_set_at_creation_and_changed_by_patch() {
    let relay = TestServer::start().await;
    let created =
        relay.admin(Method::POST, "/connections", Some(json!({ "name": "Shop", "ingest_auth": "either" }))).await;
    assert_eq!((created.status, created.body["ingest_auth"].as_str()), (StatusCode::CREATED, Some("either")));
    let bad = relay.admin(Method::POST, "/connections", Some(json!({ "name": "x", "ingest_auth": "hmac" }))).await;
    assert_eq!((bad.status, bad.error()), (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"));

    let conn = relay.connection("shop").await;
    let body = stencil_event("patched");
    let bearer = format!("Bearer {}", conn.secret);
    assert_eq!(post(&relay, &conn, "", &body, &[("authorization", &bearer)]).await.status, StatusCode::UNAUTHORIZED);
    let patched = relay
        .admin(Method::PATCH, "/connections/shop", Some(json!({ "ingest_auth": "token", "name": "Shop 2" })))
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{:?}", patched.body);
    assert_eq!((patched.body["ingest_auth"].as_str(), patched.body["name"].as_str()), (Some("token"), Some("Shop 2")));
    assert!(patched.body.get("signing_secret").is_none() && patched.body.get("api_key").is_none());
    assert_eq!(post(&relay, &conn, "", &body, &[("authorization", &bearer)]).await.status, StatusCode::ACCEPTED);
    let rate = relay.admin(Method::PATCH, "/connections/shop", Some(json!({ "ingest_rate": 7 }))).await;
    assert_eq!(
        (rate.body["ingest_rate"].as_u64(), rate.body["ingest_auth"].as_str()),
        (Some(7), Some("token")),
        "what is left out stays"
    );

    for (body, status) in [
        (json!({ "ingest_auth": "nope" }), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({ "ingest_rate": 0 }), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({ "name": " " }), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({ "api_key": "sk_x" }), StatusCode::BAD_REQUEST),
    ] {
        assert_eq!(relay.admin(Method::PATCH, "/connections/shop", Some(body.clone())).await.status, status, "{body}");
    }
    assert_eq!(relay.admin(Method::PATCH, "/connections/nobody", Some(json!({}))).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_bad_template_parameter_is_invalid_request_after_authentication() {
    let relay = TestServer::start().await;
    let conn = relay.connection("shop").await;
    let body = stencil_event("bad-template");
    let signature = stencil_relay::signature::sign(&conn.secret, &body);
    let reply = post(&relay, &conn, "?template_id=a%20b", &body, &[("x-usestencil-signature", &signature)]).await;
    assert_eq!((reply.status, reply.error()), (StatusCode::BAD_REQUEST, "invalid_request"));
    let unsigned = post(&relay, &conn, "?template_id=a%20b", &body, &[]).await;
    assert_eq!(unsigned.status, StatusCode::UNAUTHORIZED, "credentials are checked first");
}

/// A relay with no target settings at all takes Make's and Zapier's URLs and nothing else.
#[tokio::test]
async fn default_settings_accept_zapier_and_make_targets_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = sqlite_env(dir.path());
    env.retain(|(k, _)| !matches!(k.as_str(), "RELAY_TARGET_HOSTS" | "RELAY_ALLOW_PRIVATE_TARGETS"));
    let relay = RelayProcess::spawn(&env);
    let conn = relay.connection("shop").await;
    for url in [ZAPIER_TARGET, "https://hook.eu2.make.com/abc123", "https://hook.integromat.com/abc123"] {
        let reply = relay.api(&conn, Method::POST, "/hooks", Some(json!({ "target_url": url }))).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{url}: {:?}", reply.body);
    }
    let other = relay.api(&conn, Method::POST, "/hooks", Some(json!({ "url": "https://example.com/hook" }))).await;
    assert_eq!((other.status, other.error()), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_url"));
}

/// Make answers 410 while no scenario listens (also while one is being built): the hook stays
/// and the delivery is retried. From any other host 410 means unsubscribed: the hook goes.
#[tokio::test]
async fn a_410_from_make_keeps_the_hook_and_from_others_detaches_it() {
    let sink = Sink::start_with(SinkReply::Status(410)).await;
    let make = TestServer::start_with(stencil_relay::config::ServeArgs {
        make_hosts: "127.0.0.1".parse().unwrap(),
        ..TestServer::args()
    })
    .await;
    let conn = make.connection("shop").await;
    let hook = make.attach(&conn, &sink.url, None).await;
    make.ingest(&conn, &stencil_event("make-410")).await;
    let attempts = make.await_attempts(&conn, &hook, 4).await;
    assert!(attempts.iter().all(|a| a["status_code"] == 410), "retried on the schedule: {attempts:?}");
    make.await_dead_letters("?connection=shop", 1).await;
    assert_eq!(
        make.api(&conn, Method::GET, &format!("/hooks/{hook}"), None).await.status,
        StatusCode::OK,
        "still attached"
    );

    let other = TestServer::start().await;
    let conn = other.connection("shop").await;
    let hook = other.attach(&conn, &sink.url, None).await;
    other.ingest(&conn, &stencil_event("zapier-410")).await;
    crate::harness::eventually("the hook to be detached", || async {
        let reply = other.api(&conn, Method::GET, &format!("/hooks/{hook}"), None).await;
        (reply.status == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
}

/// Runs the official Standard Webhooks library (Python) over deliveries: one verdict per case.
fn verified_by_the_library(cases: &[(String, &crate::harness::sink::Received)]) -> Vec<bool> {
    let cases: Vec<Value> = cases
        .iter()
        .map(|(secret, got)| {
            let headers: serde_json::Map<String, Value> = ["webhook-id", "webhook-timestamp", "webhook-signature"]
                .iter()
                .map(|name| ((*name).to_owned(), got.header(name).into()))
                .collect();
            json!({ "secret": secret, "headers": headers, "body_b64": base64::engine::general_purpose::STANDARD.encode(&got.body) })
        })
        .collect();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/standard_webhooks/verify.py");
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    serde_json::to_writer(child.stdin.take().unwrap(), &cases).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "the verifier failed (is standardwebhooks installed?)");
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Deliveries verify with the official `standardwebhooks` library under the hook's key, also
/// across a rotation: for 24 h both keys sign, so a receiver on either key accepts.
#[tokio::test]
#[ignore = "needs Python's standardwebhooks package (pip install standardwebhooks==1.3.0); .ci/run installs it and runs this"]
async fn deliveries_verify_with_the_official_standard_webhooks_library_across_a_rotation() {
    let relay = TestServer::start().await;
    let sink = Sink::start().await;
    let conn = relay.connection("shop").await;
    let attached = relay.api(&conn, Method::POST, "/hooks", Some(json!({ "url": sink.url }))).await;
    let hook = attached.body["id"].as_str().unwrap().to_owned();
    let old = attached.body["secret"].as_str().unwrap().to_owned();
    relay.ingest(&conn, &stencil_event("before-rotation")).await;
    let before = sink.recv().await;
    let rotated = relay.api(&conn, Method::POST, &format!("/hooks/{hook}/secret/rotate"), None).await;
    let new = rotated.body["secret"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    let shown = relay.api(&conn, Method::GET, &format!("/hooks/{hook}/secret"), None).await;
    assert_eq!(shown.body["secret"], new.as_str());
    relay.ingest(&conn, &stencil_event("after-rotation")).await;
    let after = sink.recv().await;
    assert_eq!(after.header("webhook-signature").split(' ').count(), 2, "both keys sign during the overlap");
    let mut tampered = after.clone();
    tampered.body = bytes::Bytes::from(stencil_event("tampered"));
    let other = stencil_relay::model::new_hook_secret();
    let verdicts = verified_by_the_library(&[
        (old.clone(), &before),
        (new.clone(), &before),
        (old.clone(), &after),
        (new.clone(), &after),
        (new.clone(), &tampered),
        (other, &after),
    ]);
    assert_eq!(verdicts, [true, false, true, true, false, false]);
}

/// `doctor` tells a user, with only their API key, what is wrong between Stencil and their hooks.
#[tokio::test]
async fn doctor_names_the_refusals_and_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayProcess::spawn(&sqlite_env(dir.path()));
    let conn = relay.connection_with(json!({ "name": "Shop", "id": "shop", "ingest_auth": "token" })).await;
    let doctor = |key: &str| {
        let output = Command::new(BIN)
            .args(["doctor", "--server", &relay.base, "--api-key", key, "--template", "tpl-T"])
            .env_remove("RELAY_API_KEY")
            .output()
            .unwrap();
        (output.status.code(), String::from_utf8(output.stdout).unwrap())
    };
    let (code, text) = doctor(&conn.api_key);
    assert_eq!(code, Some(1), "no event and no hook yet: {text}");
    assert!(text.contains("/v1/ingest/shop?template_id=tpl-T"), "{text}");
    assert!(text.contains("Authorization: Bearer"), "{text}");

    let body = stencil_event("doctor");
    let signature = stencil_relay::signature::sign(&conn.secret, &body);
    post(&relay, &conn, "", &body, &[("x-usestencil-signature", &signature)]).await;
    let (_, text) = doctor(&conn.api_key);
    assert!(text.contains("signature_not_accepted"), "{text}");
    assert!(!text.contains(&conn.secret), "no secret in the report");

    let sink = Sink::start().await;
    relay.attach(&conn, &sink.url, None).await;
    let bearer = format!("Bearer {}", conn.secret);
    post(&relay, &conn, "?template_id=tpl-T", &body, &[("authorization", &bearer)]).await;
    sink.recv().await;
    let (code, text) = doctor("sk_wrong");
    assert_eq!(code, Some(1));
    assert!(text.contains("API key is not valid"), "{text}");
    let (_, text) = doctor(&conn.api_key);
    assert!(text.contains("last event received") && text.contains("tpl-T"), "{text}");
}
