//! Load: signed `image.created` events with fresh ids, closed-loop over K keep-alive
//! connections (throughput) or open-loop at a fixed rate (latency, measured from the time each
//! request was due, so slow answers are not hidden).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::relay::BenchConn;

const FIXTURE: &str = include_str!("../../fixtures/payloads/legacy-image-created-with-id.json");
const FIXTURE_ID: &str = "7d2a3c1e-5b4f-4e8a-9c6d-2f1e0a9b8c7d";

/// Where load goes: an address and the connections whose ingest URLs are spread over.
#[derive(Clone)]
pub(crate) struct Target {
    pub(crate) addr: SocketAddr,
    pub(crate) conns: Arc<Vec<BenchConn>>,
}

/// What a load run saw.
#[derive(Default)]
pub(crate) struct Outcome {
    pub(crate) accepted: AtomicU64,
    pub(crate) refused: AtomicU64,
    /// Ingest latencies in microseconds.
    pub(crate) latencies: Mutex<Vec<u64>>,
    /// When each accepted event was sent (or due, open-loop), by id.
    pub(crate) sent: DashMap<String, Instant>,
}

/// One signed request for event number `n`.
fn request(target: &Target, run: &str, n: usize) -> (String, Request<Full<Bytes>>) {
    let conn = &target.conns[n % target.conns.len()];
    let id = format!("{run}-{n}");
    let body = FIXTURE.replacen(FIXTURE_ID, &id, 1);
    let signature = stencil_relay::signature::sign(&conn.secret, body.as_bytes());
    let request = Request::post(format!("/v1/ingest/{}", conn.id))
        .header("host", "relay")
        .header("content-type", "application/json")
        .header("x-usestencil-signature", signature)
        .body(Full::new(Bytes::from(body)))
        .expect("a valid request");
    (id, request)
}

async fn connect(addr: SocketAddr) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

async fn send(sender: &mut SendRequest<Full<Bytes>>, request: Request<Full<Bytes>>) -> anyhow::Result<StatusCode> {
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    response.into_body().collect().await?;
    Ok(status)
}

impl Outcome {
    fn record(&self, id: String, status: anyhow::Result<StatusCode>, sent: Instant) {
        match status {
            Ok(s) if s == StatusCode::ACCEPTED => {
                self.accepted.fetch_add(1, Ordering::Relaxed);
                self.sent.insert(id, sent);
            }
            _ => {
                self.refused.fetch_add(1, Ordering::Relaxed);
            }
        }
        let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.latencies.lock().expect("not poisoned").push(micros);
    }
}

/// `clients` connections each sending the next event as soon as the last was answered.
pub(crate) async fn closed_loop(
    target: &Target,
    run: &str,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<Arc<Outcome>> {
    let outcome = Arc::new(Outcome::default());
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + duration;
    let mut workers = Vec::with_capacity(clients);
    for _ in 0..clients {
        let mut sender = connect(target.addr).await?;
        let (target, outcome, next, run) = (target.clone(), Arc::clone(&outcome), Arc::clone(&next), run.to_owned());
        workers.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let (id, request) = request(&target, &run, next.fetch_add(1, Ordering::Relaxed));
                let sent = Instant::now();
                let status = send(&mut sender, request).await;
                let broken = status.is_err();
                outcome.record(id, status, sent);
                if broken {
                    return;
                }
            }
        }));
    }
    for worker in workers {
        worker.await?;
    }
    Ok(outcome)
}

/// `rate` events per second for `duration`, each on the schedule whatever the answers do.
pub(crate) async fn open_loop(
    target: &Target,
    run: &str,
    rate: u32,
    duration: Duration,
) -> anyhow::Result<Arc<Outcome>> {
    let outcome = Arc::new(Outcome::default());
    let pool: Arc<Mutex<Vec<SendRequest<Full<Bytes>>>>> = Arc::new(Mutex::new(Vec::new()));
    let start = tokio::time::Instant::now();
    let total = (f64::from(rate) * duration.as_secs_f64()) as usize;
    let mut tasks = Vec::with_capacity(total);
    for n in 0..total {
        let due = start + Duration::from_secs_f64(n as f64 / f64::from(rate));
        tokio::time::sleep_until(due).await;
        let (target, outcome, pool, run) = (target.clone(), Arc::clone(&outcome), Arc::clone(&pool), run.to_owned());
        tasks.push(tokio::spawn(async move {
            let (id, request) = request(&target, &run, n);
            // A connection that idled in the pool past the relay's keep-alive timeout is closed
            // by now: a client opens a new one rather than fail the request.
            let pooled = {
                let mut pool = pool.lock().expect("not poisoned");
                std::iter::from_fn(|| pool.pop()).find(|sender| !sender.is_closed())
            };
            let mut sender = match pooled {
                Some(sender) => sender,
                None => match connect(target.addr).await {
                    Ok(sender) => sender,
                    Err(e) => return outcome.record(id, Err(e), due.into_std()),
                },
            };
            let status = send(&mut sender, request).await;
            if status.is_ok() {
                pool.lock().expect("not poisoned").push(sender);
            }
            outcome.record(id, status, due.into_std());
        }));
    }
    for task in tasks {
        task.await?;
    }
    Ok(outcome)
}
