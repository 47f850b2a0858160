//! Settings of `stencil-relay serve`: flags and `RELAY_*` variables (flags win, clap reads
//! both), validated into a typed [`Config`]. The only module that declares environment
//! variables. A bad value becomes a [`ConfigError`] naming the variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, FromArgMatches};
use hyper::header::HeaderName;
use url::Url;

use crate::target::{DEFAULT_HOSTS, DEFAULT_PORTS, HostPattern, MAKE_HOSTS, TargetPolicy};

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
    #[arg(long, env = "RELAY_RETENTION", default_value = "30d", value_parser = parse_retention)]
    pub retention: Duration,
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
    /// How long a claimed delivery (and, with PostgreSQL, a hook) stays with this instance
    /// [default: twice the delivery timeout plus a minute].
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
    let var: &'static str = VARIABLES.iter().find(|v| **v == var)?;
    let value = text(ContextKind::InvalidValue).unwrap_or_default();
    let problem = std::error::Error::source(error).map_or_else(|| "invalid value".to_owned(), ToString::to_string);
    Some(ConfigError { var, problem: format!("{problem}, got {value:?}") })
}

/// Every variable `serve` reads, so errors can name one as a `&'static str`.
const VARIABLES: &[&str] = &[
    "RELAY_LISTEN",
    "RELAY_DATABASE_URL",
    "RELAY_ADMIN_TOKEN",
    "RELAY_INGEST_RATE",
    "RELAY_HOOK_RATE",
    "RELAY_RETRY_SCHEDULE",
    "RELAY_RETENTION",
    "RELAY_DELIVERY_TIMEOUT",
    "RELAY_MAX_BODY",
    "RELAY_TARGET_HOSTS",
    "RELAY_MAX_HOOKS_PER_CONNECTION",
    "RELAY_TARGET_PORTS",
    "RELAY_MAKE_HOSTS",
    "RELAY_ALLOW_PRIVATE_TARGETS",
    "RELAY_LOG",
    "RELAY_LOG_FORMAT",
    "RELAY_PUBLIC_URL",
    "RELAY_SHUTDOWN_GRACE",
    "RELAY_LEASE",
    "RELAY_HEADER_TIMEOUT",
    "RELAY_BODY_TIMEOUT",
    "RELAY_MAX_CONNECTIONS",
    "RELAY_MAX_CONNECTIONS_PER_ADDRESS",
    "RELAY_IDLE_TIMEOUT",
    "RELAY_MIN_BODY_RATE",
    "RELAY_MAX_INGEST_PER_ADDRESS",
    "RELAY_MAX_INGEST_PER_CONNECTION",
    "RELAY_MAX_INFLIGHT_INGEST",
    "RELAY_METRICS_LISTEN",
    "RELAY_CLIENT_IP_HEADER",
];

fn other(error: &clap::Error) -> ConfigError {
    ConfigError { var: "serve", problem: error.to_string().lines().next().unwrap_or_default().to_owned() }
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
    /// Turns parsed settings into a relay's configuration, checking what spans several of them.
    ///
    /// # Errors
    /// Settings that cannot work together, naming the variable to change.
    pub fn from_args(a: &ServeArgs) -> Result<Self, ConfigError> {
        Ok(Self {
            listen: a.listen,
            database: a.database_url.clone(),
            admin_token: a.admin_token.clone(),
            ingest_rate: a.ingest_rate,
            hook_rate: a.hook_rate,
            retry_schedule: a.retry_schedule.0.clone(),
            retention: a.retention,
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
            lease: a.lease,
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

fn parse_token(v: &str) -> Result<String, String> {
    match v.trim() {
        "" => Err("must not be empty".to_owned()),
        t => Ok(t.to_owned()),
    }
}

fn parse_hosts(v: &str) -> Result<Hosts, String> {
    TargetPolicy::parse_hosts(v).map(Hosts)
}

fn parse_ports(v: &str) -> Result<Ports, String> {
    TargetPolicy::parse_ports(v).map(Ports)
}

fn parse_log_filter(v: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(v.trim())
        .map(|_| v.trim().to_owned())
        .map_err(|e| format!("not a log filter ({e})"))
}

fn parse_log_format(v: &str) -> Result<LogFormat, String> {
    match v.trim() {
        "text" | "pretty" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err("expected text or json".to_owned()),
    }
}

fn parse_header_name(v: &str) -> Result<HeaderName, String> {
    HeaderName::try_from(v.trim()).map_err(|_| "expected an HTTP header name such as Fly-Client-IP".to_owned())
}

fn parse_addr(v: &str) -> Result<SocketAddr, String> {
    v.trim().parse().map_err(|_| "expected an address such as 127.0.0.1:8080".to_owned())
}

fn parse_count(v: &str) -> Result<usize, String> {
    match v.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("expected a whole number above 0".to_owned()),
    }
}

fn parse_rate(v: &str) -> Result<u32, String> {
    match v.trim().parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("expected a whole number per second above 0".to_owned()),
    }
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("expected true or false".to_owned()),
    }
}

fn parse_duration(v: &str) -> Result<Duration, String> {
    humantime::parse_duration(v.trim()).map_err(|_| "expected a duration such as 500ms, 10s or 2m".to_owned())
}

fn parse_positive_duration(v: &str) -> Result<Duration, String> {
    match parse_duration(v)? {
        Duration::ZERO => Err("expected a duration above zero".to_owned()),
        d => Ok(d),
    }
}

fn parse_retention(v: &str) -> Result<Duration, String> {
    match parse_duration(v)? {
        d if d < Duration::from_secs(1) => Err("expected a duration of at least 1s".to_owned()),
        d => Ok(d),
    }
}

fn parse_schedule(v: &str) -> Result<Schedule, String> {
    let waits = v
        .split(',')
        .map(|part| parse_duration(part.trim()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| "expected comma-separated durations such as 5s,30s,2m".to_owned())?;
    Ok(Schedule(waits))
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
    let v = v.trim();
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
        _ => Err("expected an http(s) base URL such as https://relay.example.com".to_owned()),
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
        assert_eq!(c.retention, Duration::from_secs(30 * 86_400));
        assert!(c.admin_token.is_none() && !c.targets.allow_private);
        assert!(c.targets.check("https://hooks.zapier.com/hooks/standard/1/abc/").is_ok(), "Zapier is allowed");
        assert!(c.targets.check("https://hook.eu2.make.com/abc").is_ok());
        assert!(crate::target::host_matches("https://hook.eu2.make.com/abc", &c.make_hosts));
        assert!(!crate::target::host_matches("https://hooks.zapier.com/hooks/standard/1/", &c.make_hosts));
    }

    #[test]
    fn bad_values_name_their_variable() {
        let cases = [
            ("--make-hosts", "hook..make.com", "RELAY_MAKE_HOSTS"),
            ("--ingest-rate", "abc", "RELAY_INGEST_RATE"),
            ("--hook-rate", "0", "RELAY_HOOK_RATE"),
            ("--retry-schedule", "5s,soon", "RELAY_RETRY_SCHEDULE"),
            ("--delivery-timeout", "0s", "RELAY_DELIVERY_TIMEOUT"),
            ("--retention", "500ms", "RELAY_RETENTION"),
            ("--listen", "nowhere", "RELAY_LISTEN"),
            ("--database-url", "mysql://x", "RELAY_DATABASE_URL"),
            ("--allow-private-targets", "maybe", "RELAY_ALLOW_PRIVATE_TARGETS"),
            ("--target-hosts", "a..b", "RELAY_TARGET_HOSTS"),
            ("--admin-token", " ", "RELAY_ADMIN_TOKEN"),
            ("--client-ip-header", "not a header", "RELAY_CLIENT_IP_HEADER"),
        ];
        for (flag, value, var) in cases {
            let e = ServeArgs::from_flags([format!("{flag}={value}")]).unwrap_err();
            assert_eq!(e.var, var);
            assert!(e.to_string().starts_with(var) && e.to_string().contains(value), "{e}");
            assert_eq!(e.to_string().lines().count(), 1, "{e}");
        }
    }

    #[test]
    fn help_shows_every_default() {
        let help = ServeArgs::augment_args(clap::Command::new("serve")).render_long_help().to_string();
        let settings = ServeArgs::augment_args(clap::Command::new("serve"));
        for arg in settings.get_arguments().filter(|a| a.get_long().is_some()) {
            let long = arg.get_long().unwrap();
            let entry = help.split(&format!("--{long} ")).nth(1).unwrap_or_else(|| panic!("--{long} is in --help"));
            let entry = entry.split("\n      --").next().unwrap();
            assert!(entry.contains("[default: "), "--{long} shows its default: {entry}");
        }
        assert_eq!(VARIABLES.len(), settings.get_arguments().filter(|a| a.get_env().is_some()).count());
    }

    #[test]
    fn sqlite_urls_name_a_path() {
        assert_eq!(parse_database("sqlite:///var/lib/relay.db"), Ok(DatabaseUrl::Sqlite("/var/lib/relay.db".into())));
        assert!(parse_database("sqlite://").is_err());
    }

    proptest! {
        /// Any value of any setting either configures the relay or names its variable.
        #[test]
        fn any_values_configure_or_name_the_variable(values in proptest::collection::vec(".{0,24}", 12)) {
            let flags = ["--listen", "--database-url", "--ingest-rate", "--hook-rate", "--retry-schedule",
                "--delivery-timeout", "--max-body", "--target-hosts", "--allow-private-targets", "--log-format",
                "--body-timeout", "--max-connections"];
            let args: Vec<String> = flags.iter().zip(values).map(|(flag, value)| format!("{flag}={value}")).collect();
            match ServeArgs::from_flags(args) {
                Ok(args) => prop_assert!(Config::from_args(&args).is_ok()),
                Err(e) => prop_assert!(e.var.starts_with("RELAY_") && e.to_string().starts_with(e.var), "{}", e),
            }
        }
    }
}
