//! Assembles a relay instance: [`App::build`] opens the store, warms the registry and binds the
//! listeners (so callers learn the ports before serving); [`App::run`] serves HTTP and runs the
//! delivery workers until shutdown, then drains both within the grace period. The only module
//! that starts long-lived tasks.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::delivery::{DeliveryClient, DeliveryQueue, Dispatcher, HandedOff};
use crate::http::{self, AppState, Surface};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::store::{ChangeFeed, Store, StoreError};

/// Why an instance could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store could not be opened or read.
    #[error("cannot open the store")]
    Store(#[from] StoreError),
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The outbound HTTP client could not be built.
    #[error("cannot build the delivery client")]
    Client(#[from] crate::delivery::ClientError),
}

/// A built, bound, not yet serving relay.
pub struct App {
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    state: Arc<AppState>,
    dispatcher: Dispatcher,
    handed: HandedOff,
    /// Registry changes announced since before the registry was loaded (PostgreSQL).
    changes: Option<ChangeFeed>,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, source })
}

impl App {
    /// Opens the store, loads the registry and binds the listeners.
    ///
    /// # Errors
    /// See [`StartError`].
    pub async fn build(config: Config) -> Result<Self, StartError> {
        let metrics = Metrics::default();
        let store = Store::open(&config.database, metrics.clone()).await?;
        // Listening first: a change another instance makes while the registry loads is then
        // either in what is loaded or announced on this feed. Without a feed, `sync::follow`
        // keeps trying, and resyncs once it listens.
        let changes = store.listen().await.unwrap_or_else(|e| {
            tracing::warn!(cause = %e, "cannot listen for registry changes yet");
            None
        });
        let registry = Registry::load(&store, config.ingest_rate).await?;
        let listener = bind(config.listen).await?;
        let metrics_listener = match config.metrics_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let (queue, handed) = DeliveryQueue::new(&store, config.hook_rate, config.lease, config.disable_after);
        queue.load_health(&store).await?;
        let dispatcher = Dispatcher {
            store: store.clone(),
            registry: registry.clone(),
            client: DeliveryClient::new(config.targets.clone(), config.delivery_timeout)?,
            schedule: config.retry_schedule.clone(),
            make_hosts: config.make_hosts.clone(),
            hook_rate: config.hook_rate,
            queue: queue.clone(),
            metrics: metrics.clone(),
        };
        let state = Arc::new(AppState::new(config, store, registry, queue, metrics));
        Ok(Self { listener, metrics_listener, state, dispatcher, handed, changes })
    }

    /// The bound API address (useful after asking for port 0).
    ///
    /// # Errors
    /// The socket has no local address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The instance's store (for reaching behind the API: tests, embedding).
    pub fn store(&self) -> &Store {
        &self.state.store
    }

    /// The bound metrics address, when `/metrics` has its own listener.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` resolves, then stops accepting, starts no new attempts, waits up
    /// to the shutdown grace for in-flight requests and attempts, and gives back the hook leases
    /// it no longer needs (PostgreSQL), for the other instances to take over at once.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Self { listener, metrics_listener, state, dispatcher, handed, changes } = self;
        let (grace, store) = (state.config.shutdown_grace, state.store.clone());
        let token = CancellationToken::new();
        let tracker = TaskTracker::new();
        let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(addr = %addr, metrics_addr = ?metrics_listener.as_ref().and_then(|l| l.local_addr().ok()), "listening");
        tracker.spawn(dispatcher.run(handed, tracker.clone(), token.clone()));
        tracker.spawn(housekeeping(Arc::clone(&state), token.clone()));
        let retention = crate::retention::Retention::new(state.config.retention);
        tracker.spawn(retention.run(state.store.clone(), state.metrics.clone(), token.clone()));
        tracker.spawn(crate::retention::reap_removals(state.store.clone(), token.clone()));
        let (counts, store_for_counts, counted) = (Arc::clone(&state.event_counts), state.store.clone(), token.clone());
        tracker.spawn(async move { counts.run(store_for_counts, counted).await });
        tracker.spawn(crate::sync::follow(state.store.clone(), state.registry.clone(), changes, token.clone()));
        let mut servers =
            vec![tokio::spawn(http::serve(listener, Surface::Api, Arc::clone(&state), token.clone(), grace))];
        if let Some(listener) = metrics_listener {
            servers.push(tokio::spawn(http::serve(listener, Surface::Metrics, state, token.clone(), grace)));
        }
        shutdown.await;
        tracing::info!("shutting down");
        token.cancel();
        tracker.close();
        let drained = tokio::time::timeout(grace, async {
            for server in servers {
                let _ = server.await;
            }
            tracker.wait().await;
        });
        if drained.await.is_err() {
            tracing::warn!("work still running after the shutdown grace; pending deliveries resume at next start");
        }
        match store.give_back_hooks().await {
            Ok(0) => {}
            Ok(hooks) => tracing::info!(hooks, "gave back hook leases to the other instances"),
            Err(e) => tracing::warn!(cause = %e, "giving back hook leases failed; they run out as usual"),
        }
        tracing::info!("stopped");
    }
}

/// How often the store's figures that `/metrics` shows are read: so that scraping, which needs
/// no credentials, never waits on (or adds to) the store's reads.
const STATS_REFRESH: Duration = Duration::from_secs(2);

/// Periodic upkeep: the cached pending count, and forgetting quiet addresses of the
/// failed-authentication limits so that their memory stays bounded.
async fn housekeeping(state: Arc<AppState>, shutdown: CancellationToken) {
    let mut prune = tokio::time::interval(Duration::from_secs(60));
    let mut count = tokio::time::interval(STATS_REFRESH);
    count.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = prune.tick() => {
                state.auth_failures.prune();
                state.admin_auth_failures.prune();
            }
            _ = count.tick() => match state.store.stats().await {
                Ok(stats) => *state.store_stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = stats,
                Err(e) => tracing::warn!(cause = %e, "reading the store's figures failed"),
            },
            () = shutdown.cancelled() => return,
        }
    }
}
