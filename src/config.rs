//! Settings of `stencil-relay serve`: flags and `RELAY_*` variables (flags win, clap reads
//! both), validated into a typed [`Config`]. The only module that declares environment
//! variables. A bad value becomes a [`ConfigError`] naming the variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use hyper::header::HeaderName;
use url::Url;

use crate::target::{DEFAULT_HOSTS, DEFAULT_PORTS, HostPattern, MAKE_HOSTS, TargetPolicy};

/// Raw settings exactly as given; [`Config::from_args`] validates them.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "RELAY_LISTEN")]
    pub listen: Option<String>,
    /// `sqlite://PATH` (embedded, default) or `postgres://…`.
    #[arg(long, env = "RELAY_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Bearer token of the admin API; unset turns the admin API off.
    #[arg(long, env = "RELAY_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Default ingest events per second per connection (burst the same).
    #[arg(long, env = "RELAY_INGEST_RATE")]
    pub ingest_rate: Option<String>,
    /// Delivery requests per second per hook.
    #[arg(long, env = "RELAY_HOOK_RATE")]
    pub hook_rate: Option<String>,
    /// Comma-separated waits between attempts, such as `5s,30s,2m`.
    #[arg(long, env = "RELAY_RETRY_SCHEDULE")]
    pub retry_schedule: Option<String>,
    /// Timeout of one delivery attempt.
    #[arg(long, env = "RELAY_DELIVERY_TIMEOUT")]
    pub delivery_timeout: Option<String>,
    /// Largest ingest body in bytes.
    #[arg(long, env = "RELAY_MAX_BODY")]
    pub max_body: Option<String>,
    /// Comma-separated allowed target host patterns (`*` = one label; `*` alone = any host).
    #[arg(long, env = "RELAY_TARGET_HOSTS")]
    pub target_hosts: Option<String>,
    /// Hooks one connection may have at most.
    #[arg(long, env = "RELAY_MAX_HOOKS_PER_CONNECTION")]
    pub max_hooks_per_connection: Option<String>,
    /// Comma-separated ports a target URL may use (the URL's, or 443 when it names none).
    #[arg(long, env = "RELAY_TARGET_PORTS")]
    pub target_ports: Option<String>,
    /// Comma-separated host patterns of Make's webhooks, where a 410 answer means "no scenario
    /// is listening right now" and is retried; from any other host 410 detaches the hook.
    #[arg(long, env = "RELAY_MAKE_HOSTS")]
    pub make_hosts: Option<String>,
    /// Allow http and loopback/private targets (local development and tests only).
    #[arg(long, env = "RELAY_ALLOW_PRIVATE_TARGETS")]
    pub allow_private_targets: Option<String>,
    /// Log filter, such as `info` or `stencil_relay=debug`.
    #[arg(long, env = "RELAY_LOG")]
    pub log: Option<String>,
    /// `text` or `json`.
    #[arg(long, env = "RELAY_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Public base URL used in `ingest_url` answers; default: from the request's Host.
    #[arg(long, env = "RELAY_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// How long shutdown waits for in-flight requests and attempts.
    #[arg(long, env = "RELAY_SHUTDOWN_GRACE")]
    pub shutdown_grace: Option<String>,
    /// How long a claimed delivery (and, with PostgreSQL, a hook) stays with this instance.
    #[arg(long, env = "RELAY_LEASE")]
    pub lease: Option<String>,
    /// How long a client may take to send its request headers.
    #[arg(long, env = "RELAY_HEADER_TIMEOUT")]
    pub header_timeout: Option<String>,
    /// How long a client may take to send its request body.
    #[arg(long, env = "RELAY_BODY_TIMEOUT")]
    pub body_timeout: Option<String>,
    /// Open client connections at most; more are answered 503 and closed.
    #[arg(long, env = "RELAY_MAX_CONNECTIONS")]
    pub max_connections: Option<String>,
    /// Open connections from one address at most (not applied behind a proxy, see
    /// RELAY_CLIENT_IP_HEADER).
    #[arg(long, env = "RELAY_MAX_CONNECTIONS_PER_ADDRESS")]
    pub max_connections_per_address: Option<String>,
    /// How long a connection may sit without a request in progress before it is closed.
    #[arg(long, env = "RELAY_IDLE_TIMEOUT")]
    pub idle_timeout: Option<String>,
    /// Slowest a request body may arrive, in bytes per second (after its first second).
    #[arg(long, env = "RELAY_MIN_BODY_RATE")]
    pub min_body_rate: Option<String>,
    /// Ingest requests in progress from one client address at most.
    #[arg(long, env = "RELAY_MAX_INGEST_PER_ADDRESS")]
    pub max_ingest_per_address: Option<String>,
    /// Ingest requests in progress for one connection id at most.
    #[arg(long, env = "RELAY_MAX_INGEST_PER_CONNECTION")]
    pub max_ingest_per_connection: Option<String>,
    /// Ingest requests being read, verified or committed at once; more are answered 503.
    #[arg(long, env = "RELAY_MAX_INFLIGHT_INGEST")]
    pub max_inflight_ingest: Option<String>,
    /// Separate address serving only `/metrics` (then the API address does not).
    #[arg(long, env = "RELAY_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Header set by a trusted proxy with the client's address (e.g. `Fly-Client-IP`).
    #[arg(long, env = "RELAY_CLIENT_IP_HEADER")]
    pub client_ip_header: Option<String>,
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
    /// take them over; `None`: twice the delivery timeout plus a minute.
    pub lease: Option<Duration>,
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
    pub var: &'static str,
    /// What is wrong, for a human.
    pub problem: String,
}

impl Default for Config {
    fn default() -> Self {
        Self::from_args(&ServeArgs::default()).expect("the defaults are valid")
    }
}

impl Config {
    /// Validates raw settings, filling in the documented defaults.
    ///
    /// # Errors
    /// The first bad value, naming its variable.
    pub fn from_args(a: &ServeArgs) -> Result<Self, ConfigError> {
        Ok(Self {
            listen: setting(&a.listen, "RELAY_LISTEN", "127.0.0.1:8080", parse_addr)?,
            database: setting(&a.database_url, "RELAY_DATABASE_URL", "sqlite://./data/relay.db", parse_database)?,
            admin_token: match a.admin_token.as_deref() {
                None => None,
                Some(t) if t.trim().is_empty() => {
                    return Err(err("RELAY_ADMIN_TOKEN", "must not be empty"));
                }
                Some(t) => Some(t.to_owned()),
            },
            ingest_rate: setting(&a.ingest_rate, "RELAY_INGEST_RATE", "50", parse_rate)?,
            hook_rate: setting(&a.hook_rate, "RELAY_HOOK_RATE", "5", parse_rate)?,
            retry_schedule: setting(
                &a.retry_schedule,
                "RELAY_RETRY_SCHEDULE",
                "5s,30s,2m,10m,30m,1h,3h,6h,12h,24h",
                parse_schedule,
            )?,
            delivery_timeout: setting(&a.delivery_timeout, "RELAY_DELIVERY_TIMEOUT", "10s", parse_positive_duration)?,
            max_body: setting(&a.max_body, "RELAY_MAX_BODY", "1048576", |v| match v.parse::<usize>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err("expected a whole number of bytes above 0".to_owned()),
            })?,
            targets: TargetPolicy {
                hosts: setting(&a.target_hosts, "RELAY_TARGET_HOSTS", DEFAULT_HOSTS, TargetPolicy::parse_hosts)?,
                ports: setting(&a.target_ports, "RELAY_TARGET_PORTS", DEFAULT_PORTS, TargetPolicy::parse_ports)?,
                allow_private: setting(&a.allow_private_targets, "RELAY_ALLOW_PRIVATE_TARGETS", "false", parse_bool)?,
            },
            make_hosts: setting(&a.make_hosts, "RELAY_MAKE_HOSTS", MAKE_HOSTS, TargetPolicy::parse_hosts)?,
            max_hooks_per_connection: setting(
                &a.max_hooks_per_connection,
                "RELAY_MAX_HOOKS_PER_CONNECTION",
                "1000",
                parse_count,
            )?,
            log: setting(&a.log, "RELAY_LOG", "info", |v| {
                tracing_subscriber::EnvFilter::try_new(v)
                    .map(|_| v.to_owned())
                    .map_err(|e| format!("not a log filter ({e})"))
            })?,
            log_format: setting(&a.log_format, "RELAY_LOG_FORMAT", "text", |v| match v {
                "text" | "pretty" => Ok(LogFormat::Text),
                "json" => Ok(LogFormat::Json),
                _ => Err("expected text or json".to_owned()),
            })?,
            public_url: match a.public_url.as_deref() {
                None => None,
                Some(v) => Some(parse_public_url(v).map_err(|p| err("RELAY_PUBLIC_URL", &p))?),
            },
            shutdown_grace: setting(&a.shutdown_grace, "RELAY_SHUTDOWN_GRACE", "10s", parse_duration)?,
            lease: match a.lease.as_deref() {
                None => None,
                Some(v) => {
                    Some(parse_positive_duration(v).map_err(|problem| ConfigError {
                        var: "RELAY_LEASE",
                        problem: format!("{problem}, got {v:?}"),
                    })?)
                }
            },
            header_timeout: setting(&a.header_timeout, "RELAY_HEADER_TIMEOUT", "10s", parse_positive_duration)?,
            body_timeout: setting(&a.body_timeout, "RELAY_BODY_TIMEOUT", "30s", parse_positive_duration)?,
            max_connections: setting(&a.max_connections, "RELAY_MAX_CONNECTIONS", "4096", parse_count)?,
            max_connections_per_address: setting(
                &a.max_connections_per_address,
                "RELAY_MAX_CONNECTIONS_PER_ADDRESS",
                "256",
                parse_count,
            )?,
            idle_timeout: setting(&a.idle_timeout, "RELAY_IDLE_TIMEOUT", "60s", parse_positive_duration)?,
            min_body_rate: setting(&a.min_body_rate, "RELAY_MIN_BODY_RATE", "1024", |v| {
                parse_count(v).map(|n| n as u64)
            })?,
            max_inflight_ingest: setting(&a.max_inflight_ingest, "RELAY_MAX_INFLIGHT_INGEST", "512", parse_count)?,
            max_ingest_per_address: setting(
                &a.max_ingest_per_address,
                "RELAY_MAX_INGEST_PER_ADDRESS",
                "128",
                parse_count,
            )?,
            max_ingest_per_connection: setting(
                &a.max_ingest_per_connection,
                "RELAY_MAX_INGEST_PER_CONNECTION",
                "128",
                parse_count,
            )?,
            metrics_listen: match a.metrics_listen.as_deref() {
                None => None,
                Some(v) => Some(parse_addr(v).map_err(|problem| ConfigError {
                    var: "RELAY_METRICS_LISTEN",
                    problem: format!("{problem}, got {v:?}"),
                })?),
            },
            client_ip_header: match a.client_ip_header.as_deref() {
                None => None,
                Some(v) => Some(HeaderName::try_from(v.trim()).map_err(|_| ConfigError {
                    var: "RELAY_CLIENT_IP_HEADER",
                    problem: format!("expected an HTTP header name such as Fly-Client-IP, got {v:?}"),
                })?),
            },
        })
    }
}

fn err(var: &'static str, problem: &str) -> ConfigError {
    ConfigError { var, problem: problem.to_owned() }
}

fn setting<T>(
    value: &Option<String>,
    var: &'static str,
    default: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<T, ConfigError> {
    let raw = value.as_deref().unwrap_or(default).trim();
    parse(raw).map_err(|problem| ConfigError { var, problem: format!("{problem}, got {raw:?}") })
}

fn parse_addr(v: &str) -> Result<SocketAddr, String> {
    v.trim().parse().map_err(|_| "expected an address such as 127.0.0.1:8080".to_owned())
}

fn parse_count(v: &str) -> Result<usize, String> {
    match v.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("expected a whole number above 0".to_owned()),
    }
}

fn parse_rate(v: &str) -> Result<u32, String> {
    match v.parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("expected a whole number per second above 0".to_owned()),
    }
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("expected true or false".to_owned()),
    }
}

fn parse_duration(v: &str) -> Result<Duration, String> {
    humantime::parse_duration(v).map_err(|_| "expected a duration such as 500ms, 10s or 2m".to_owned())
}

fn parse_positive_duration(v: &str) -> Result<Duration, String> {
    match parse_duration(v)? {
        Duration::ZERO => Err("expected a duration above zero".to_owned()),
        d => Ok(d),
    }
}

fn parse_schedule(v: &str) -> Result<Vec<Duration>, String> {
    let waits = v
        .split(',')
        .map(|part| parse_duration(part.trim()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| "expected comma-separated durations such as 5s,30s,2m".to_owned())?;
    Ok(waits)
}

impl DatabaseUrl {
    /// Parses `sqlite://PATH` or `postgres://…`.
    ///
    /// # Errors
    /// Anything else, with what is expected.
    pub fn parse(v: &str) -> Result<Self, String> {
        parse_database(v)
    }
}

fn parse_database(v: &str) -> Result<DatabaseUrl, String> {
    if let Some(path) = v.strip_prefix("sqlite://").or_else(|| v.strip_prefix("sqlite:")) {
        if path.is_empty() {
            return Err("the sqlite URL names no file".to_owned());
        }
        return Ok(DatabaseUrl::Sqlite(PathBuf::from(path)));
    }
    if v.starts_with("postgres://") || v.starts_with("postgresql://") {
        return Ok(DatabaseUrl::Postgres(v.to_owned()));
    }
    Err("expected sqlite://PATH or postgres://USER@HOST/DATABASE".to_owned())
}

fn parse_public_url(v: &str) -> Result<Url, String> {
    match Url::parse(v) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(u),
        _ => Err(format!("expected an http(s) base URL such as https://relay.example.com, got {v:?}")),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn defaults_match_the_contract() {
        let c = Config::default();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.database, DatabaseUrl::Sqlite("./data/relay.db".into()));
        assert_eq!((c.ingest_rate, c.hook_rate, c.max_body), (50, 5, 1_048_576));
        assert_eq!(c.retry_schedule.len(), 10);
        assert_eq!(c.retry_schedule[2], Duration::from_secs(120));
        assert_eq!(c.retry_schedule[9], Duration::from_secs(86_400));
        assert_eq!(c.delivery_timeout, Duration::from_secs(10));
        assert!(c.admin_token.is_none() && !c.targets.allow_private);
        assert!(c.targets.check("https://hooks.zapier.com/hooks/standard/1/abc/").is_ok(), "Zapier is allowed");
        assert!(c.targets.check("https://hook.eu2.make.com/abc").is_ok());
        assert!(crate::target::host_matches("https://hook.eu2.make.com/abc", &c.make_hosts));
        assert!(!crate::target::host_matches("https://hooks.zapier.com/hooks/standard/1/", &c.make_hosts));
    }

    #[test]
    fn bad_values_name_their_variable() {
        type Setter = fn(&mut ServeArgs, String);
        let cases: [(Setter, &str, &str); 9] = [
            (|a, v| a.make_hosts = Some(v), "hook..make.com", "RELAY_MAKE_HOSTS"),
            (|a, v| a.ingest_rate = Some(v), "abc", "RELAY_INGEST_RATE"),
            (|a, v| a.hook_rate = Some(v), "0", "RELAY_HOOK_RATE"),
            (|a, v| a.retry_schedule = Some(v), "5s,soon", "RELAY_RETRY_SCHEDULE"),
            (|a, v| a.delivery_timeout = Some(v), "0s", "RELAY_DELIVERY_TIMEOUT"),
            (|a, v| a.listen = Some(v), "nowhere", "RELAY_LISTEN"),
            (|a, v| a.database_url = Some(v), "mysql://x", "RELAY_DATABASE_URL"),
            (|a, v| a.allow_private_targets = Some(v), "maybe", "RELAY_ALLOW_PRIVATE_TARGETS"),
            (|a, v| a.target_hosts = Some(v), "a..b", "RELAY_TARGET_HOSTS"),
        ];
        for (set, value, var) in cases {
            let mut args = ServeArgs::default();
            set(&mut args, value.to_owned());
            let e = Config::from_args(&args).unwrap_err();
            assert_eq!(e.var, var);
            assert!(e.to_string().starts_with(var) && e.to_string().contains(value), "{e}");
        }
    }

    #[test]
    fn sqlite_urls_name_a_path() {
        assert_eq!(parse_database("sqlite:///var/lib/relay.db"), Ok(DatabaseUrl::Sqlite("/var/lib/relay.db".into())));
        assert!(parse_database("sqlite://").is_err());
    }

    proptest! {
        /// Any value of any setting either configures the relay or names its variable.
        #[test]
        fn any_values_configure_or_name_the_variable(values in proptest::collection::vec(proptest::option::of(".{0,24}"), 12)) {
            let mut v = values.into_iter();
            let args = ServeArgs {
                listen: v.next().flatten(),
                database_url: v.next().flatten(),
                ingest_rate: v.next().flatten(),
                hook_rate: v.next().flatten(),
                retry_schedule: v.next().flatten(),
                delivery_timeout: v.next().flatten(),
                max_body: v.next().flatten(),
                target_hosts: v.next().flatten(),
                allow_private_targets: v.next().flatten(),
                log_format: v.next().flatten(),
                body_timeout: v.next().flatten(),
                max_connections: v.next().flatten(),
                ..ServeArgs::default()
            };
            if let Err(e) = Config::from_args(&args) {
                prop_assert!(e.var.starts_with("RELAY_") && e.to_string().starts_with(e.var));
            }
        }
    }
}
