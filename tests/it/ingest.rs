//! Ingest: every row of the ingest table, signatures, rate limits.

use reqwest::{Method, StatusCode};
use serde_json::json;
use sha2::{Digest, Sha256};
use stencil_relay::signature::sign;

use crate::harness::{Sink, TestServer, event, fixture, stencil_event};

#[tokio::test]
async fn accepted_event_counts_matching_deliveries_then_is_a_duplicate() {
    let relay = TestServer::start().await;
    let sink = Sink::start().await;
    let conn = relay.connection("acme").await;
    relay.attach(&conn, &sink.url, None).await;
    relay.attach(&conn, &format!("{}?t=1", sink.url), Some("tpl-1")).await;
    relay.attach(&conn, &format!("{}?t=2", sink.url), Some("tpl-2")).await;

    let body = event("evt-1", Some("tpl-1"));
    let first = relay.ingest(&conn, &body).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    assert_eq!(first.body, json!({ "event_id": "evt-1", "deliveries": 2 }));

    let again = relay.ingest(&conn, &body).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body, json!({ "event_id": "evt-1", "duplicate": true, "deliveries": 0 }));
    sink.recv_n(2).await;
}

#[tokio::test]
async fn unknown_connection_missing_and_wrong_signatures_get_the_same_401() {
    let relay = TestServer::start().await;
    let conn = relay.connection("acme").await;
    let body = fixture("payloads/legacy-image-created-with-id.json");
    let unknown = relay.ingest_signed("nobody", &body, &sign(&conn.secret, &body)).await;
    let wrong = relay.ingest_signed(&conn.id, &body, &sign("not-the-secret", &body)).await;
    let missing = relay.send(Method::POST, &format!("/v1/ingest/{}", conn.id), None, Some(body.clone()), &[]).await;
    let tampered = relay.ingest_signed(&conn.id, b"{\"id\":\"x\"}", &sign(&conn.secret, &body)).await;
    for reply in [&unknown, &wrong, &missing, &tampered] {
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert_eq!(reply.body, unknown.body);
        assert_eq!(reply.error(), "unauthorized");
        assert!(reply.headers.get("x-ratelimit-limit").is_none(), "401 must not reveal the connection");
    }
}

#[tokio::test]
async fn signature_accepts_prefix_and_uppercase() {
    let relay = TestServer::start().await;
    let conn = relay.connection("acme").await;
    for (i, form) in ["sha256={}", "{}", "SHA256={}"].iter().enumerate() {
        let body = event(&format!("evt-{i}"), None);
        let sig = sign(&conn.secret, &body);
        let sig = if i == 1 { sig.to_uppercase() } else { sig };
        let reply = relay.ingest_signed(&conn.id, &body, &form.replace("{}", &sig)).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{form}");
    }
}

#[tokio::test]
async fn signed_but_not_a_json_object_is_invalid_payload() {
    let relay = TestServer::start().await;
    let conn = relay.connection("acme").await;
    for body in [&b"not json"[..], b"[1,2]", b"\"text\"", b""] {
        let reply = relay.ingest(&conn, body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body:?}");
        assert_eq!(reply.error(), "invalid_payload");
    }
}

#[tokio::test]
async fn event_id_falls_back_to_the_body_hash_and_type_is_read() {
    let relay = TestServer::start().await;
    let sink = Sink::start().await;
    let conn = relay.connection("acme").await;
    relay.attach(&conn, &sink.url, None).await;
    let body = fixture("payloads/legacy-image-created-minimal.json");
    let reply = relay.ingest(&conn, &body).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    assert_eq!(reply.body["event_id"], hex::encode(Sha256::digest(&body)));
    let other_type = relay.ingest(&conn, br#"{"id":"evt-x","type":"image.deleted"}"#).await;
    assert_eq!(other_type.body, json!({ "event_id": "evt-x", "deliveries": 0 }));
    let events = relay.api(&conn, Method::GET, "/events?limit=5", None).await;
    assert_eq!(events.body["data"][0]["type"], "image.deleted");
    assert_eq!(events.body["data"][1]["type"], "image.created");
    sink.recv().await;
}

#[tokio::test]
async fn oversized_bodies_are_refused_while_streaming() {
    let mut args = TestServer::args();
    args.max_body = 1024;
    let relay = TestServer::start_with(args).await;
    let conn = relay.connection("acme").await;
    let big = vec![b' '; 2048];
    let declared = relay.ingest(&conn, &big).await;
    assert_eq!(declared.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(declared.error(), "payload_too_large");

    // Chunked, so no Content-Length warns the server: the limit must hold while it streams.
    let head = format!(
        "POST /v1/ingest/{} HTTP/1.1\r\nhost: relay\r\ntransfer-encoding: chunked\r\nx-usestencil-signature: 00\r\n\r\n",
        conn.id
    );
    let answer =
        raw_exchange(&relay.base, head.as_bytes(), &[&b"200\r\n"[..], &[b' '; 512], b"\r\n"].concat(), 64).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let exact = relay
        .ingest(&conn, &{
            let mut b = br#"{"id":"fits"}"#.to_vec();
            b.resize(1024, b' ');
            b
        })
        .await;
    assert_eq!(exact.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn a_client_that_sends_all_of_a_refused_body_still_reads_the_answer() {
    // Most HTTP clients write the whole body before they read the answer. Were the connection
    // closed as soon as the request was refused, the rest of the body would meet a reset, and
    // the client would see a broken connection instead of the 413 or 401.
    let relay = TestServer::start().await;
    let conn = relay.connection("acme").await;
    let chunk = [b' '; 64 * 1024];
    let times = 48; // 3 MiB, well past the default 1 MiB limit
    let start = format!("POST /v1/ingest/{} HTTP/1.1\r\nhost: relay\r\nx-usestencil-signature: 00\r\n", conn.id);
    let declared = format!("{start}content-length: {}\r\n\r\n", times * chunk.len());
    let answer = send_whole_then_read(&relay.base, declared.as_bytes(), &chunk, times, 0).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "declared: {answer}");
    let streamed = format!("{start}transfer-encoding: chunked\r\n\r\n");
    let framed = [&format!("{:x}\r\n", chunk.len()).into_bytes()[..], &chunk, b"\r\n"].concat();
    let answer = send_whole_then_read(&relay.base, streamed.as_bytes(), &framed, times, 17).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "streamed: {answer}");
    let unknown = format!(
        "POST /v1/ingest/nobody HTTP/1.1\r\nhost: relay\r\nx-usestencil-signature: 00\r\ncontent-length: {}\r\n\r\n",
        14 * chunk.len()
    );
    // An unknown connection's body is read like any other (the answer must not tell them apart).
    let answer = send_whole_then_read(&relay.base, unknown.as_bytes(), &chunk, 14, 14).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "unknown connection: {answer}");
}

/// Writes `head` then `chunk` `times` times, all of it, as most clients do, and returns the
/// answer. After `answered_after` chunks it waits until the relay has answered, so the rest of
/// the body arrives after the refusal, as it does from a client farther away than loopback.
async fn send_whole_then_read(base: &str, head: &[u8], chunk: &[u8], times: usize, answered_after: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(base.trim_start_matches("http://")).await.unwrap();
    socket.write_all(head).await.unwrap();
    for n in 0..times {
        if n == answered_after {
            tokio::time::timeout(crate::harness::PATIENCE, socket.readable()).await.unwrap().unwrap();
        }
        let sent = socket.write_all(chunk).await;
        assert!(sent.is_ok(), "the relay broke the connection after {n} chunks: {sent:?}");
    }
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(crate::harness::PATIENCE, socket.read(&mut answer)).await.unwrap().unwrap();
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

/// Writes `head` then `chunk` up to `times` times (stopping if the server closes), returns the answer.
async fn raw_exchange(base: &str, head: &[u8], chunk: &[u8], times: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(base.trim_start_matches("http://")).await.unwrap();
    socket.write_all(head).await.unwrap();
    for _ in 0..times {
        if socket.write_all(chunk).await.is_err() {
            break;
        }
    }
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(crate::harness::PATIENCE, socket.read(&mut answer)).await.unwrap().unwrap_or(0);
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

#[tokio::test]
async fn ingest_rate_is_per_connection_with_headers() {
    let relay = TestServer::start().await;
    let slow = relay.connection_with(json!({ "name": "Slow", "id": "slow", "ingest_rate": 2 })).await;
    let other = relay.connection("other").await;
    let first = relay.ingest(&slow, &stencil_event("a")).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    assert_eq!((first.header("x-ratelimit-limit"), first.header("x-ratelimit-remaining")), ("2", "1"));
    assert!(first.header("x-ratelimit-reset").parse::<u64>().unwrap() > 1_700_000_000);
    assert_eq!(relay.ingest(&slow, &stencil_event("b")).await.status, StatusCode::ACCEPTED);
    let limited = relay.ingest(&slow, &stencil_event("c")).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.error(), "rate_limited");
    assert!(limited.header("retry-after").parse::<u64>().unwrap() >= 1);
    assert_eq!(limited.header("x-ratelimit-remaining"), "0");
    assert_eq!(
        relay.ingest(&other, &stencil_event("c")).await.status,
        StatusCode::ACCEPTED,
        "limits are per connection"
    );
}
