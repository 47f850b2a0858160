//! Settings of `stencil-relay serve`: flags and `RELAY_*` variables (flags win, clap reads
//! both), each parsed by its value parser (`parse.rs`) with its default in one place, then
//! checked together into a typed [`Config`]. The only module that declares the relay's
//! variables (the client commands in `cli` declare their own few: the server, the key). A bad
//! value becomes a one-line [`ConfigError`] naming the variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, FromArgMatches};
use hyper::header::HeaderName;
use url::Url;

use crate::target::{DEFAULT_HOSTS, DEFAULT_PORTS, HostPattern, MAKE_HOSTS, TargetPolicy};

mod parse;

use parse::{
    parse_addr, parse_at_least_a_second, parse_bool, parse_count, parse_database, parse_duration, parse_header_name,
    parse_hosts, parse_log_filter, parse_log_format, parse_ports, parse_positive_duration, parse_public_url,
    parse_rate, parse_schedule, parse_token,
};

/// The settings of `stencil-relay serve`, parsed and checked value by value by clap (each
/// field's parser is the one place its rules live, its `default_value` the one place its
/// default does, which `--help` shows). [`Config::from_args`] checks what spans several settings.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "RELAY_LISTEN", default_value = "127.0.0.1:8080", value_parser = parse_addr)]
    pub listen: SocketAddr,
    /// `sqlite://PATH` (embedded, created on first start) or `postgres://…` (several instances).
    #[arg(long, env = "RELAY_DATABASE_URL", default_value = "sqlite://./data/relay.db", value_parser = parse_database)]
    pub database_url: DatabaseUrl,
    /// Bearer token of the admin API [default: unset, the admin API is off].
    #[arg(long, env = "RELAY_ADMIN_TOKEN", hide_env_values = true, value_parser = parse_token)]
    pub admin_token: Option<String>,
    /// Default ingest events per second per connection (burst the same).
    #[arg(long, env = "RELAY_INGEST_RATE", default_value = "50", value_parser = parse_rate)]
    pub ingest_rate: u32,
    /// Delivery requests per second per hook.
    #[arg(long, env = "RELAY_HOOK_RATE", default_value = "5", value_parser = parse_rate)]
    pub hook_rate: u32,
    /// Comma-separated waits between attempts; its length is the number of retries.
    #[arg(long, env = "RELAY_RETRY_SCHEDULE", default_value = "5s,30s,2m,10m,30m,1h,3h,6h,12h,24h", value_parser = parse_schedule)]
    pub retry_schedule: Schedule,
    /// How long events, their finished deliveries and attempts are kept (an event with a
    /// delivery still pending is kept until it finishes); also the duplicate check's window.
    #[arg(long, env = "RELAY_RETENTION", default_value = "30d", value_parser = parse_at_least_a_second)]
    pub retention: Duration,
    /// A hook whose attempts have all failed this long is disabled (its waiting deliveries
    /// become dead letters) until it is enabled or attached again.
    #[arg(long, env = "RELAY_DISABLE_AFTER", default_value = "5d", value_parser = parse_at_least_a_second)]
    pub disable_after: Duration,
    /// Timeout of one delivery attempt.
    #[arg(long, env = "RELAY_DELIVERY_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration)]
    pub delivery_timeout: Duration,
    /// Largest ingest body in bytes.
    #[arg(long, env = "RELAY_MAX_BODY", default_value = "1048576", value_parser = parse_count)]
    pub max_body: usize,
    /// Comma-separated allowed target host patterns (`*` = one label; `*` alone = any host).
    #[arg(long, env = "RELAY_TARGET_HOSTS", default_value = DEFAULT_HOSTS, value_parser = parse_hosts)]
    pub target_hosts: Hosts,
    /// Hooks one connection may have at most.
    #[arg(long, env = "RELAY_MAX_HOOKS_PER_CONNECTION", default_value = "1000", value_parser = parse_count)]
    pub max_hooks_per_connection: usize,
    /// Comma-separated ports a target URL may use (the URL's, or 443 when it names none).
    #[arg(long, env = "RELAY_TARGET_PORTS", default_value = DEFAULT_PORTS, value_parser = parse_ports)]
    pub target_ports: Ports,
    /// Comma-separated host patterns of Make's webhooks, where a 410 answer means "no scenario
    /// is listening right now" and is retried; from any other host 410 detaches the hook.
    #[arg(long, env = "RELAY_MAKE_HOSTS", default_value = MAKE_HOSTS, value_parser = parse_hosts)]
    pub make_hosts: Hosts,
    /// Allow http and loopback/private targets (local development and tests only).
    #[arg(long, env = "RELAY_ALLOW_PRIVATE_TARGETS", default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub allow_private_targets: bool,
    /// Log filter, such as `info` or `stencil_relay=debug`.
    #[arg(long, env = "RELAY_LOG", default_value = "info", value_parser = parse_log_filter)]
    pub log: String,
    /// `text` or `json`.
    #[arg(long, env = "RELAY_LOG_FORMAT", default_value = "text", value_parser = parse_log_format)]
    pub log_format: LogFormat,
    /// Public base URL used in `ingest_url` answers [default: from the request's Host].
    #[arg(long, env = "RELAY_PUBLIC_URL", value_parser = parse_public_url)]
    pub public_url: Option<Url>,
    /// How long shutdown waits for in-flight requests and attempts.
    #[arg(long, env = "RELAY_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// How long a claimed delivery (and, with PostgreSQL, a hook) stays with this instance; at
    /// least twice the delivery timeout [default: twice the delivery timeout plus a minute].
    #[arg(long, env = "RELAY_LEASE", value_parser = parse_positive_duration)]
    pub lease: Option<Duration>,
    /// How long a client may take to send its request headers.
    #[arg(long, env = "RELAY_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration)]
    pub header_timeout: Duration,
    /// How long a client may take to send its request body.
    #[arg(long, env = "RELAY_BODY_TIMEOUT", default_value = "30s", value_parser = parse_positive_duration)]
    pub body_timeout: Duration,
    /// Open client connections at most; more are answered 503 and closed.
    #[arg(long, env = "RELAY_MAX_CONNECTIONS", default_value = "4096", value_parser = parse_count)]
    pub max_connections: usize,
    /// Open connections from one address at most (not applied behind a proxy, see
    /// RELAY_CLIENT_IP_HEADER).
    #[arg(long, env = "RELAY_MAX_CONNECTIONS_PER_ADDRESS", default_value = "256", value_parser = parse_count)]
    pub max_connections_per_address: usize,
    /// How long a connection may sit without a request in progress before it is closed.
    #[arg(long, env = "RELAY_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_positive_duration)]
    pub idle_timeout: Duration,
    /// Slowest a request body may arrive, in bytes per second (after its first second).
    #[arg(long, env = "RELAY_MIN_BODY_RATE", default_value = "1024", value_parser = parse_count)]
    pub min_body_rate: usize,
    /// Ingest requests in progress from one client address at most.
    #[arg(long, env = "RELAY_MAX_INGEST_PER_ADDRESS", default_value = "128", value_parser = parse_count)]
    pub max_ingest_per_address: usize,
    /// Ingest requests in progress for one connection id at most.
    #[arg(long, env = "RELAY_MAX_INGEST_PER_CONNECTION", default_value = "128", value_parser = parse_count)]
    pub max_ingest_per_connection: usize,
    /// Ingest requests being read, verified or committed at once; more are answered 503.
    #[arg(long, env = "RELAY_MAX_INFLIGHT_INGEST", default_value = "512", value_parser = parse_count)]
    pub max_inflight_ingest: usize,
    /// Separate address serving only `/metrics` [default: unset, `/metrics` is on the API address].
    #[arg(long, env = "RELAY_METRICS_LISTEN", value_parser = parse_addr)]
    pub metrics_listen: Option<SocketAddr>,
    /// Header set by a trusted proxy with the client's address, e.g. `Fly-Client-IP`
    /// [default: unset, the TCP peer is the client].
    #[arg(long, env = "RELAY_CLIENT_IP_HEADER", value_parser = parse_header_name)]
    pub client_ip_header: Option<HeaderName>,
}

/// Waits between attempts, as `RELAY_RETRY_SCHEDULE` lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule(pub Vec<Duration>);

/// Host patterns, as `RELAY_TARGET_HOSTS` and `RELAY_MAKE_HOSTS` list them.
#[derive(Debug, Clone)]
pub struct Hosts(pub Vec<HostPattern>);

/// Ports, as `RELAY_TARGET_PORTS` lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ports(pub Vec<u16>);

impl std::str::FromStr for Schedule {
    type Err = String;
    fn from_str(v: &str) -> Result<Self, String> {
        parse_schedule(v)
    }
}

impl std::str::FromStr for Hosts {
    type Err = String;
    fn from_str(v: &str) -> Result<Self, String> {
        parse_hosts(v)
    }
}

impl std::str::FromStr for Ports {
    type Err = String;
    fn from_str(v: &str) -> Result<Self, String> {
        parse_ports(v)
    }
}

impl Default for ServeArgs {
    /// Every setting at its default, whatever the environment holds.
    fn default() -> Self {
        Self::from_flags::<[&str; 0], &str>([]).expect("the defaults are valid")
    }
}

impl ServeArgs {
    /// Parses `serve`'s flags alone, ignoring the environment: for embedding the relay (the demo,
    /// tests) with settings of its own.
    ///
    /// # Errors
    /// The first bad value, naming its variable.
    pub fn from_flags<I, S>(flags: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: Into<std::ffi::OsString> + Clone,
    {
        let command = Self::augment_args(clap::Command::new("serve").no_binary_name(true).args_override_self(true))
            .mut_args(|arg| arg.env(None::<&'static str>));
        let matches = command.try_get_matches_from(flags).map_err(|e| explain(&e).unwrap_or_else(|| other(&e)))?;
        Self::from_arg_matches(&matches).map_err(|e| other(&e))
    }
}

/// The one-line [`ConfigError`] for a clap error about a `serve` setting's value (naming its
/// variable, as the flag and the variable share the value), or `None` for any other error
/// (unknown flags, `--help`), which clap reports itself.
pub fn explain(error: &clap::Error) -> Option<ConfigError> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(error.kind(), ErrorKind::ValueValidation | ErrorKind::InvalidValue) {
        return None;
    }
    let text = |kind| match error.get(kind) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    let flag = text(ContextKind::InvalidArg)?;
    let long = flag.trim_start_matches("--").split([' ', '=']).next()?.to_owned();
    let command = ServeArgs::augment_args(clap::Command::new("serve"));
    let var = command.get_arguments().find(|a| a.get_long() == Some(long.as_str()))?.get_env()?.to_str()?.to_owned();
    let value = text(ContextKind::InvalidValue).unwrap_or_default();
    let problem = std::error::Error::source(error).map_or_else(|| "invalid value".to_owned(), ToString::to_string);
    // A database URL may carry a password and the admin token is one: their values are not shown.
    let problem = if matches!(var.as_str(), "RELAY_DATABASE_URL" | "RELAY_ADMIN_TOKEN") {
        problem
    } else {
        format!("{problem}, got {value:?}")
    };
    Some(ConfigError { var, problem })
}

fn other(error: &clap::Error) -> ConfigError {
    ConfigError { var: "serve".to_owned(), problem: error.to_string().lines().next().unwrap_or_default().to_owned() }
}

/// Where the store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// Embedded SQLite file.
    Sqlite(PathBuf),
    /// PostgreSQL connection string (several instances may share it).
    Postgres(String),
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Validated settings of a relay instance.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen address (port 0 picks a free port).
    pub listen: SocketAddr,
    /// The store.
    pub database: DatabaseUrl,
    /// Admin API bearer token; `None` disables the admin API.
    pub admin_token: Option<String>,
    /// Default ingest rate per connection (events/s, burst the same).
    pub ingest_rate: u32,
    /// Delivery rate per hook (requests/s).
    pub hook_rate: u32,
    /// Waits between attempts; its length is the number of retries.
    pub retry_schedule: Vec<Duration>,
    /// How long finished history is kept.
    pub retention: Duration,
    /// How long a hook may fail before it is disabled.
    pub disable_after: Duration,
    /// Per-attempt timeout.
    pub delivery_timeout: Duration,
    /// Largest ingest body in bytes.
    pub max_body: usize,
    /// Target-URL rules.
    pub targets: TargetPolicy,
    /// Hosts whose 410 does not detach (Make's).
    pub make_hosts: Vec<HostPattern>,
    /// Cap on a connection's hooks.
    pub max_hooks_per_connection: usize,
    /// Log filter directive.
    pub log: String,
    /// Log format.
    pub log_format: LogFormat,
    /// Public base URL for `ingest_url`.
    pub public_url: Option<Url>,
    /// Bound on graceful shutdown.
    pub shutdown_grace: Duration,
    /// How long claimed deliveries and owned hooks stay with an instance before another may
    /// take them over; at least twice the delivery timeout, so that an attempt started with
    /// half its lease left always ends inside it.
    pub lease: Duration,
    /// Bound on receiving request headers (slow-header clients are cut off).
    pub header_timeout: Duration,
    /// Bound on receiving a request body (slow-body clients get 408).
    pub body_timeout: Duration,
    /// Cap on open client connections.
    pub max_connections: usize,
    /// Cap on open connections from one address (when no proxy header names clients).
    pub max_connections_per_address: usize,
    /// How long a connection may be idle (no request in progress) before it is closed.
    pub idle_timeout: Duration,
    /// Slowest accepted request body, bytes per second after its first second.
    pub min_body_rate: u64,
    /// Cap on ingest requests in progress.
    pub max_inflight_ingest: usize,
    /// Cap on ingest requests in progress from one client address.
    pub max_ingest_per_address: usize,
    /// Cap on ingest requests in progress for one connection id (known or not).
    pub max_ingest_per_connection: usize,
    /// Where `/metrics` is served alone; `None`: on the API listener.
    pub metrics_listen: Option<SocketAddr>,
    /// Header a trusted proxy puts the client address in; `None`: the socket's peer address.
    pub client_ip_header: Option<HeaderName>,
}

/// A setting that stops the start: which variable, and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{var}: {problem}")]
pub struct ConfigError {
    /// The environment variable (its flag says the same).
    pub var: String,
    /// What is wrong, for a human.
    pub problem: String,
}

impl Default for Config {
    fn default() -> Self {
        Self::from_args(&ServeArgs::default()).expect("the defaults are valid")
    }
}

impl Config {
    /// Turns parsed settings into a relay's configuration, checking what spans several of them.
    ///
    /// # Errors
    /// Settings that cannot work together, naming the variable to change.
    pub fn from_args(a: &ServeArgs) -> Result<Self, ConfigError> {
        let twice_the_timeout = a.delivery_timeout.saturating_mul(2);
        let lease = a.lease.unwrap_or(twice_the_timeout.saturating_add(Duration::from_secs(60)));
        if lease < twice_the_timeout {
            return Err(ConfigError {
                var: "RELAY_LEASE".to_owned(),
                problem: format!(
                    "{} is less than twice RELAY_DELIVERY_TIMEOUT ({}): an attempt could outlive its lease and be made twice",
                    humantime::format_duration(lease),
                    humantime::format_duration(a.delivery_timeout)
                ),
            });
        }
        Ok(Self {
            listen: a.listen,
            database: a.database_url.clone(),
            admin_token: a.admin_token.clone(),
            ingest_rate: a.ingest_rate,
            hook_rate: a.hook_rate,
            retry_schedule: a.retry_schedule.0.clone(),
            retention: a.retention,
            disable_after: a.disable_after,
            delivery_timeout: a.delivery_timeout,
            max_body: a.max_body,
            targets: TargetPolicy {
                hosts: a.target_hosts.0.clone(),
                ports: a.target_ports.0.clone(),
                allow_private: a.allow_private_targets,
            },
            make_hosts: a.make_hosts.0.clone(),
            max_hooks_per_connection: a.max_hooks_per_connection,
            log: a.log.clone(),
            log_format: a.log_format,
            public_url: a.public_url.clone(),
            shutdown_grace: a.shutdown_grace,
            lease,
            header_timeout: a.header_timeout,
            body_timeout: a.body_timeout,
            max_connections: a.max_connections,
            max_connections_per_address: a.max_connections_per_address,
            idle_timeout: a.idle_timeout,
            min_body_rate: a.min_body_rate as u64,
            max_inflight_ingest: a.max_inflight_ingest,
            max_ingest_per_address: a.max_ingest_per_address,
            max_ingest_per_connection: a.max_ingest_per_connection,
            metrics_listen: a.metrics_listen,
            client_ip_header: a.client_ip_header.clone(),
        })
    }
}

#[cfg(test)]
mod tests;
