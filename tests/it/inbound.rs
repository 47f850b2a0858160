//! Inbound limits, on real sockets: slow clients are cut off, connections and in-flight ingest
//! are capped with 503, and well-behaved clients keep being answered meanwhile.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{PATIENCE, TestServer, stencil_event};

async fn connect(relay: &TestServer) -> TcpStream {
    TcpStream::connect(relay.base.trim_start_matches("http://")).await.unwrap()
}

/// Reads until the server closes the connection; returns what it sent.
async fn read_to_close(socket: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, socket.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection");
    String::from_utf8_lossy(&answer).into_owned()
}

fn quick_timeouts() -> stencil_relay::config::ServeArgs {
    let mut args = TestServer::args();
    args.header_timeout = std::time::Duration::from_millis(300);
    args.body_timeout = std::time::Duration::from_millis(300);
    args
}

#[tokio::test]
async fn slow_header_clients_are_cut_off_while_others_are_served() {
    let relay = TestServer::start_with(quick_timeouts()).await;
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut socket = connect(&relay).await;
        socket.write_all(b"GET /healthz HTTP/1.1\r\nhost: relay\r\n").await.unwrap();
        slow.push(socket);
    }
    let started = Instant::now();
    for _ in 0..10 {
        assert_eq!(relay.send(Method::GET, "/healthz", None, None, &[]).await.status, StatusCode::OK);
    }
    assert!(started.elapsed() < Duration::from_secs(5), "well-behaved clients waited {:?}", started.elapsed());
    for socket in &mut slow {
        let answer = read_to_close(socket).await;
        assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
}

#[tokio::test]
async fn slow_bodies_get_408() {
    let relay = TestServer::start_with(quick_timeouts()).await;
    let conn = relay.connection("acme").await;
    let mut socket = connect(&relay).await;
    let head = format!("POST /v1/ingest/{} HTTP/1.1\r\nhost: relay\r\ncontent-length: 100\r\n\r\n{{\"id\":", conn.id);
    socket.write_all(head.as_bytes()).await.unwrap();
    let answer = read_to_close(&mut socket).await;
    assert!(answer.starts_with("HTTP/1.1 408") && answer.contains("request_timeout"), "{answer}");
}

#[tokio::test]
async fn connections_over_the_cap_get_503_and_capacity_returns() {
    let mut args = TestServer::args();
    args.max_connections = 4;
    let relay = TestServer::start_with(args).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut socket = connect(&relay).await;
        socket.write_all(b"GET /healthz HTTP/1.1\r\nhost: relay\r\n\r\n").await.unwrap();
        let mut first = [0u8; 12];
        socket.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"HTTP/1.1 200");
        held.push(socket); // kept alive, each holding a connection slot
    }
    let mut extra = connect(&relay).await;
    let answer = read_to_close(&mut extra).await;
    assert!(answer.starts_with("HTTP/1.1 503") && answer.contains("retry-after: 1"), "{answer}");
    drop(held);
    crate::harness::eventually("a connection slot", || async {
        let ok = reqwest::Client::new().get(format!("{}/healthz", relay.base)).send().await;
        ok.is_ok_and(|r| r.status() == StatusCode::OK).then_some(())
    })
    .await;
}

#[tokio::test]
async fn ingest_over_the_in_flight_cap_gets_503_with_retry_after() {
    let mut args = quick_timeouts();
    args.body_timeout = std::time::Duration::from_secs(2);
    args.max_inflight_ingest = 1;
    let relay = TestServer::start_with(args).await;
    let conn = relay.connection("acme").await;
    let mut slow = connect(&relay).await;
    let head = format!("POST /v1/ingest/{} HTTP/1.1\r\nhost: relay\r\ncontent-length: 100\r\n\r\n{{", conn.id);
    slow.write_all(head.as_bytes()).await.unwrap();
    let busy = crate::harness::eventually("the slot to be taken", || async {
        let reply = relay.ingest(&conn, &stencil_event("evt-busy")).await;
        (reply.status == StatusCode::SERVICE_UNAVAILABLE).then_some(reply)
    })
    .await;
    assert_eq!((busy.error(), busy.header("retry-after")), ("unavailable", "1"));
    assert!(read_to_close(&mut slow).await.starts_with("HTTP/1.1 408"));
    assert_eq!(relay.ingest(&conn, &stencil_event("evt-after")).await.status, StatusCode::ACCEPTED);
}
