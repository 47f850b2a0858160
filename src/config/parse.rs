//! The value parsers of `serve`'s settings: each says what it expects in one phrase, which
//! `explain` turns into the one-line error naming the variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use hyper::header::HeaderName;
use url::Url;

use super::{DatabaseUrl, Hosts, LogFormat, Ports, Schedule};
use crate::target::TargetPolicy;

pub(super) fn parse_token(v: &str) -> Result<String, String> {
    match v.trim() {
        "" => Err("must not be empty".to_owned()),
        t => Ok(t.to_owned()),
    }
}

pub(super) fn parse_hosts(v: &str) -> Result<Hosts, String> {
    TargetPolicy::parse_hosts(v).map(Hosts)
}

pub(super) fn parse_ports(v: &str) -> Result<Ports, String> {
    TargetPolicy::parse_ports(v).map(Ports)
}

pub(super) fn parse_log_filter(v: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(v.trim())
        .map(|_| v.trim().to_owned())
        .map_err(|e| format!("not a log filter ({e})"))
}

pub(super) fn parse_log_format(v: &str) -> Result<LogFormat, String> {
    match v.trim() {
        "text" | "pretty" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err("expected text or json".to_owned()),
    }
}

pub(super) fn parse_header_name(v: &str) -> Result<HeaderName, String> {
    HeaderName::try_from(v.trim()).map_err(|_| "expected an HTTP header name such as Fly-Client-IP".to_owned())
}

pub(super) fn parse_addr(v: &str) -> Result<SocketAddr, String> {
    v.trim().parse().map_err(|_| "expected an address such as 127.0.0.1:8080".to_owned())
}

pub(super) fn parse_count(v: &str) -> Result<usize, String> {
    match v.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("expected a whole number above 0".to_owned()),
    }
}

pub(super) fn parse_rate(v: &str) -> Result<u32, String> {
    match v.trim().parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("expected a whole number per second above 0".to_owned()),
    }
}

pub(super) fn parse_bool(v: &str) -> Result<bool, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("expected true or false".to_owned()),
    }
}

pub(super) fn parse_duration(v: &str) -> Result<Duration, String> {
    humantime::parse_duration(v.trim()).map_err(|_| "expected a duration such as 500ms, 10s or 2m".to_owned())
}

pub(super) fn parse_positive_duration(v: &str) -> Result<Duration, String> {
    match parse_duration(v)? {
        Duration::ZERO => Err("expected a duration above zero".to_owned()),
        d => Ok(d),
    }
}

pub(super) fn parse_at_least_a_second(v: &str) -> Result<Duration, String> {
    match parse_duration(v)? {
        d if d < Duration::from_secs(1) => Err("expected a duration of at least 1s".to_owned()),
        d => Ok(d),
    }
}

pub(super) fn parse_schedule(v: &str) -> Result<Schedule, String> {
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

pub(super) fn parse_database(v: &str) -> Result<DatabaseUrl, String> {
    let v = v.trim();
    if let Some(path) = v.strip_prefix("sqlite://").or_else(|| v.strip_prefix("sqlite:")) {
        if path.is_empty() {
            return Err("the sqlite URL names no file".to_owned());
        }
        return Ok(DatabaseUrl::Sqlite(PathBuf::from(path)));
    }
    if v.starts_with("postgres://") || v.starts_with("postgresql://") {
        crate::store::check_postgres_url(v)?;
        return Ok(DatabaseUrl::Postgres(v.to_owned()));
    }
    Err("expected sqlite://PATH or postgres://USER@HOST/DATABASE".to_owned())
}

pub(super) fn parse_public_url(v: &str) -> Result<Url, String> {
    match Url::parse(v) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(u),
        _ => Err("expected an http(s) base URL such as https://relay.example.com".to_owned()),
    }
}
