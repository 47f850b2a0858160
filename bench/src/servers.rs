//! The harness's own servers: sinks that stand in for Make hooks and record when each event
//! arrives, and the bare hyper baseline that reads the body and answers 202.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use dashmap::DashMap;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// When the deliveries of one event arrived.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Arrivals {
    pub(crate) count: u32,
    pub(crate) first: Instant,
    pub(crate) last: Instant,
}

/// Every delivery a sink received, by event id.
#[derive(Default)]
pub(crate) struct Sink {
    pub(crate) arrivals: DashMap<String, Arrivals>,
    pub(crate) total: AtomicU64,
}

/// Starts a sink; returns its address.
pub(crate) async fn start_sink(sink: Arc<Sink>) -> anyhow::Result<SocketAddr> {
    serve(move |req: Request<hyper::body::Incoming>| {
        let sink = Arc::clone(&sink);
        async move {
            let now = Instant::now();
            let id = req.headers().get("x-relay-event-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
            let _ = req.into_body().collect().await;
            sink.arrivals
                .entry(id)
                .and_modify(|a| {
                    a.count += 1;
                    a.last = now;
                })
                .or_insert(Arrivals { count: 1, first: now, last: now });
            sink.total.fetch_add(1, Ordering::Relaxed);
            Response::new(Full::new(Bytes::from_static(b"ok")))
        }
    })
    .await
}

/// Starts the baseline: read the body, answer 202.
pub(crate) async fn start_baseline() -> anyhow::Result<SocketAddr> {
    serve(|req: Request<hyper::body::Incoming>| async move {
        let _ = req.into_body().collect().await;
        let mut response = Response::new(Full::new(Bytes::from_static(br#"{"deliveries":1}"#)));
        *response.status_mut() = StatusCode::ACCEPTED;
        response
    })
    .await
}

async fn serve<F, Fut>(handler: F) -> anyhow::Result<SocketAddr>
where
    F: Fn(Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let handler = handler.clone();
            let service = service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler(req).await) }
            });
            tokio::spawn(
                auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).into_owned(),
            );
        }
    });
    Ok(addr)
}
