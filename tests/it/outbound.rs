//! Hostile targets: a hook that answers garbage, resets, trickles or never stops talking is one
//! failed (or capped) attempt, never a stuck worker, and other hooks keep being served.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::{Sink, TestServer, event, stencil_event};

/// How a raw target misbehaves once it has read the request.
#[derive(Clone, Copy)]
enum Misbehaviour {
    /// Answers bytes that are not HTTP.
    Garbage,
    /// Closes the connection without answering.
    Reset,
    /// Sends its status line one byte every 100 ms.
    Trickle,
    /// Answers 200 and then sends body bytes forever.
    EndlessBody,
}

/// Starts a raw TCP target; returns its URL.
async fn hostile_target(behaviour: Misbehaviour) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(misbehave(socket, behaviour));
        }
    });
    url
}

async fn misbehave(mut socket: TcpStream, behaviour: Misbehaviour) {
    let mut request = [0u8; 4096];
    let _ = socket.read(&mut request).await;
    match behaviour {
        Misbehaviour::Garbage => {
            let _ = socket.write_all(b"SURPRISE \x00\x01\x02 not http at all\r\n\r\n").await;
        }
        Misbehaviour::Reset => drop(socket),
        Misbehaviour::Trickle => {
            for byte in b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n" {
                if socket.write_all(&[*byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Misbehaviour::EndlessBody => {
            let _ = socket.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").await;
            let chunk = [b"4000\r\n".as_slice(), &[b'x'; 0x4000], b"\r\n"].concat();
            while socket.write_all(&chunk).await.is_ok() {}
        }
    }
}

/// Starts a TLS target for `localhost` whose self-signed certificate no system root vouches for;
/// returns its URL. It answers 200 to anyone who completes the handshake.
async fn untrusted_tls_target() -> String {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(["localhost".to_owned()]).unwrap();
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(signing_key.serialize_der());
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key.into())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://localhost:{}/hook", listener.local_addr().unwrap().port());
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(socket).await {
                    let mut request = [0u8; 4096];
                    let _ = tls.read(&mut request).await;
                    let _ = tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
                }
            });
        }
    });
    url
}

/// Attaches `url` and a well-behaved sink to two connections, sends one event to each, and
/// returns the hostile hook's first attempt once the well-behaved one has been delivered.
async fn first_attempt_against(url: &str) -> (serde_json::Value, Duration) {
    let mut args = TestServer::args();
    args.delivery_timeout = std::time::Duration::from_millis(500);
    let relay = TestServer::start_with(args).await;
    let hostile = relay.connection("hostile").await;
    let good = relay.connection("good").await;
    let sink = Sink::start().await;
    let hook = relay.attach(&hostile, url, None).await;
    relay.attach(&good, &sink.url, None).await;
    let started = Instant::now();
    relay.ingest(&hostile, &stencil_event("evt-hostile")).await;
    relay.ingest(&good, &event("evt-good", None)).await;
    assert_eq!(sink.recv().await.header("webhook-id"), "evt-good", "other hooks are served meanwhile");
    let attempt = relay.await_attempts(&hostile, &hook, 1).await.pop().unwrap();
    (attempt, started.elapsed())
}

#[tokio::test]
async fn garbage_answers_are_a_failed_attempt() {
    let (attempt, _) = first_attempt_against(&hostile_target(Misbehaviour::Garbage).await).await;
    assert_eq!(attempt["status_code"], serde_json::Value::Null);
    assert!(attempt["error"].as_str().unwrap().contains("failed"), "{attempt}");
}

#[tokio::test]
async fn resets_are_a_failed_attempt() {
    let (attempt, _) = first_attempt_against(&hostile_target(Misbehaviour::Reset).await).await;
    assert_eq!(attempt["status_code"], serde_json::Value::Null);
    assert!(attempt["error"].is_string(), "{attempt}");
}

#[tokio::test]
async fn trickling_targets_are_cut_off_at_the_timeout() {
    let (attempt, elapsed) = first_attempt_against(&hostile_target(Misbehaviour::Trickle).await).await;
    assert!(attempt["error"].as_str().unwrap().contains("timed out"), "{attempt}");
    assert!(attempt["duration_ms"].as_u64().unwrap() < 2_000, "{attempt}");
    assert!(elapsed < Duration::from_secs(10));
}

#[tokio::test]
async fn endless_answers_are_read_only_up_to_the_cap() {
    let (attempt, _) = first_attempt_against(&hostile_target(Misbehaviour::EndlessBody).await).await;
    assert_eq!(attempt["status_code"], 200, "{attempt}");
    assert!(attempt["duration_ms"].as_u64().unwrap() < 500, "stopped reading well before the timeout: {attempt}");
}

#[tokio::test]
async fn untrusted_tls_certificates_are_refused() {
    // Deliveries verify the target's certificate against the system roots: a self-signed one
    // is a failed attempt, never a delivery.
    let (attempt, _) = first_attempt_against(&untrusted_tls_target().await).await;
    assert_eq!(attempt["status_code"], serde_json::Value::Null, "{attempt}");
    assert!(attempt["error"].as_str().unwrap().contains("certificate"), "{attempt}");
}
