//! A stand-in for a Make hook: a local hyper server that records every request it receives and
//! answers as the test scripts it.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderMap;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// One request the sink received.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    /// Its path.
    pub(crate) path: String,
    /// Its headers.
    pub(crate) headers: HeaderMap,
    /// Its exact body.
    pub(crate) body: Bytes,
    /// When it arrived.
    pub(crate) at: Instant,
}

impl Received {
    /// A header as text.
    pub(crate) fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
    }
}

/// How the sink answers one request.
#[derive(Debug, Clone)]
pub(crate) enum SinkReply {
    /// This status.
    Status(u16),
    /// This status with `Retry-After: secs`.
    RetryAfter(u16, u64),
    /// A redirect to this location.
    Redirect(String),
    /// Wait, then answer 200.
    Slow(Duration),
}

struct Script {
    queue: VecDeque<SinkReply>,
    otherwise: SinkReply,
}

/// A running sink.
pub(crate) struct Sink {
    /// Where it listens, as a hook URL.
    pub(crate) url: String,
    received: tokio::sync::Mutex<mpsc::UnboundedReceiver<Received>>,
    script: Arc<Mutex<Script>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sink {
    /// Starts a sink that answers 200.
    pub(crate) async fn start() -> Self {
        Self::start_with(SinkReply::Status(200)).await
    }

    /// Starts a sink that answers `otherwise` unless a scripted answer is queued.
    pub(crate) async fn start_with(otherwise: SinkReply) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let script = Arc::new(Mutex::new(Script { queue: VecDeque::new(), otherwise }));
        let task = tokio::spawn(accept(listener, tx, Arc::clone(&script)));
        Self { url: format!("http://{addr}/hook"), received: tokio::sync::Mutex::new(rx), script, task }
    }

    /// Queues answers for the next requests.
    pub(crate) fn script(&self, replies: impl IntoIterator<Item = SinkReply>) {
        self.script.lock().unwrap().queue.extend(replies);
    }

    /// Changes the answer given when nothing is queued.
    pub(crate) fn answer(&self, reply: SinkReply) {
        self.script.lock().unwrap().otherwise = reply;
    }

    /// The next request, failing the test if none arrives in time.
    pub(crate) async fn recv(&self) -> Received {
        let mut rx = self.received.lock().await;
        tokio::time::timeout(super::PATIENCE, rx.recv())
            .await
            .expect("the sink received nothing in time")
            .expect("the sink is running")
    }

    /// The next `n` requests.
    pub(crate) async fn recv_n(&self, n: usize) -> Vec<Received> {
        let mut all = Vec::with_capacity(n);
        for _ in 0..n {
            all.push(self.recv().await);
        }
        all
    }

    /// Forgets the requests received so far and not yet looked at.
    pub(crate) async fn drain(&self) {
        let mut rx = self.received.lock().await;
        while rx.try_recv().is_ok() {}
    }

    /// Asserts nothing arrives within `quiet`.
    pub(crate) async fn assert_silent(&self, quiet: Duration) {
        let mut rx = self.received.lock().await;
        if let Ok(Some(r)) = tokio::time::timeout(quiet, rx.recv()).await {
            panic!("the sink unexpectedly received {:?}", String::from_utf8_lossy(&r.body));
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept(listener: TcpListener, tx: mpsc::UnboundedSender<Received>, script: Arc<Mutex<Script>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let tx = tx.clone();
        let script = Arc::clone(&script);
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let tx = tx.clone();
                let script = Arc::clone(&script);
                async move {
                    let (parts, body) = req.into_parts();
                    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    let path = parts.uri.path().to_owned();
                    let _ = tx.send(Received { path, headers: parts.headers, body, at: Instant::now() });
                    let reply = {
                        let mut s = script.lock().unwrap();
                        s.queue.pop_front().unwrap_or_else(|| s.otherwise.clone())
                    };
                    Ok::<_, Infallible>(respond(reply).await)
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

async fn respond(reply: SinkReply) -> Response<Full<Bytes>> {
    let builder = Response::builder();
    let builder = match reply {
        SinkReply::Status(s) => builder.status(s),
        SinkReply::RetryAfter(s, secs) => builder.status(s).header("retry-after", secs.to_string()),
        SinkReply::Redirect(location) => builder.status(302).header("location", location),
        SinkReply::Slow(wait) => {
            tokio::time::sleep(wait).await;
            builder.status(200)
        }
    };
    builder.body(Full::new(Bytes::from_static(b"ok"))).unwrap()
}
