//! The relay under test, in process: a temp SQLite file, port 0, loopback targets allowed, and
//! the shared [`RelayClient`] to talk to it.

use std::sync::Arc;

use stencil_relay::app::App;
use stencil_relay::config::{Config, DatabaseUrl, ServeArgs};
use stencil_relay::store::Store;
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

use super::client::{ADMIN_TOKEN, RelayClient};

/// A running relay.
pub(crate) struct TestServer {
    /// `http://127.0.0.1:PORT`.
    pub(crate) base: String,
    /// `http://127.0.0.1:PORT` of the separate metrics listener, when configured.
    pub(crate) metrics_base: Option<String>,
    /// Settings it was started with (reused on restart).
    pub(crate) args: ServeArgs,
    /// Its store, for what a test checks behind the API.
    pub(crate) store: Store,
    dir: Arc<TempDir>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
    client: RelayClient,
}

impl std::ops::Deref for TestServer {
    type Target = RelayClient;

    fn deref(&self) -> &RelayClient {
        &self.client
    }
}

impl TestServer {
    /// Settings for tests: fast retries, loopback targets, admin on.
    pub(crate) fn args() -> ServeArgs {
        ServeArgs::from_flags([
            "--listen=127.0.0.1:0",
            &format!("--admin-token={ADMIN_TOKEN}"),
            "--retry-schedule=100ms,200ms,300ms",
            "--delivery-timeout=2s",
            "--target-hosts=*",
            "--allow-private-targets=true",
            "--hook-rate=100",
            "--ingest-rate=1000",
            "--shutdown-grace=2s",
            "--lease=4s",
        ])
        .expect("test settings are valid")
    }

    /// Starts a relay with the test settings.
    pub(crate) async fn start() -> Self {
        Self::start_with(Self::args()).await
    }

    /// Starts a relay with these settings (the database is always a fresh temp file).
    pub(crate) async fn start_with(mut args: ServeArgs) -> Self {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        if args.database_url == ServeArgs::default().database_url {
            args.database_url = DatabaseUrl::parse(&super::database_url(dir.path()).await).unwrap();
        }
        Self::start_in(dir, args).await
    }

    async fn start_in(dir: Arc<TempDir>, args: ServeArgs) -> Self {
        let config = Config::from_args(&args).expect("test settings are valid");
        let app = App::build(config).await.expect("the relay starts");
        let base = format!("http://{}", app.local_addr().unwrap());
        let metrics_base = app.metrics_addr().map(|a| format!("http://{a}"));
        let store = app.store().clone();
        let stop = CancellationToken::new();
        let signal = stop.clone();
        let task = tokio::spawn(async move { app.run(signal.cancelled_owned()).await });
        let client = RelayClient::new(base.clone());
        Self { base, metrics_base, args, store, dir, stop, task: Some(task), client }
    }

    /// Stops gracefully and starts again on the same database (a new port).
    pub(crate) async fn restart(self) -> Self {
        let args = self.args.clone();
        self.restart_with(args).await
    }

    /// Stops gracefully and starts again on the same database with other settings.
    pub(crate) async fn restart_with(mut self, args: ServeArgs) -> Self {
        self.shutdown().await;
        Self::start_in(Arc::clone(&self.dir), args).await
    }

    /// Stops gracefully and waits until it has.
    pub(crate) async fn shutdown(&mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
