//! The relay under test as a child process, and what the harness reads about it: its address,
//! its CPU time and peak RSS from `/proc`, its admin API.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hyper::Method;
use serde_json::{Value, json};
use stencil_relay::cli::{DEFAULT_TIMEOUT, JsonClient};

/// The admin token the harness gives every relay it starts.
const ADMIN_TOKEN: &str = "bench-admin-token";

/// A running relay.
pub(crate) struct Relay {
    child: Child,
    pub(crate) addr: SocketAddr,
    http: JsonClient,
    /// How long from spawning to serving (`/readyz` answering 200).
    pub(crate) ready_after: Duration,
}

/// A connection created for the benchmark.
#[derive(Clone)]
pub(crate) struct BenchConn {
    pub(crate) id: String,
    pub(crate) api_key: String,
    pub(crate) secret: String,
}

impl Relay {
    /// Starts `binary serve` on `database` with pacing that never limits the benchmark.
    pub(crate) async fn start(binary: &Path, database: &str, hook_rate: u32) -> anyhow::Result<Self> {
        Self::start_with(binary, database, hook_rate, &[]).await
    }

    /// [`Relay::start`] with more settings (`RELAY_*` variables).
    pub(crate) async fn start_with(
        binary: &Path,
        database: &str,
        hook_rate: u32,
        settings: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let started = Instant::now();
        let mut child = Command::new(binary)
            .arg("serve")
            .env("RELAY_LISTEN", "127.0.0.1:0")
            .env("RELAY_DATABASE_URL", database)
            .env("RELAY_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RELAY_TARGET_HOSTS", "*")
            .env("RELAY_ALLOW_PRIVATE_TARGETS", "true")
            .env("RELAY_INGEST_RATE", "1000000")
            .env("RELAY_HOOK_RATE", hook_rate.to_string())
            .env("RELAY_MAX_INFLIGHT_INGEST", "4096")
            .env("RELAY_LOG", "warn,stencil_relay::app=info")
            .env("RELAY_LOG_FORMAT", "json")
            .envs(settings.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let stderr = child.stderr.take().context("no stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && v["message"] == "listening"
                {
                    let _ = tx.send(v["addr"].as_str().unwrap_or_default().to_owned());
                } else if !line.contains("\"WARN\"") {
                    eprintln!("relay: {line}");
                }
            }
        });
        let addr: SocketAddr = rx.recv_timeout(Duration::from_secs(120)).context("the relay did not start")?.parse()?;
        let http = JsonClient::new(DEFAULT_TIMEOUT)?;
        loop {
            let ready = http.call(Method::GET, &format!("http://{addr}/readyz"), None, None).await;
            if ready.is_ok_and(|r| r.status.is_success()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(Self { child, addr, http, ready_after: started.elapsed() })
    }

    /// CPU seconds the relay has used so far (user + system).
    pub(crate) fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        let fields: Vec<&str> =
            stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
        (ticks(11) + ticks(12)) / clock_ticks()
    }

    /// Peak resident memory in MiB.
    pub(crate) fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    }

    /// Creates a connection through the admin API.
    pub(crate) async fn connection(&self, id: &str) -> anyhow::Result<BenchConn> {
        let url = format!("http://{}/admin/v1/connections", self.addr);
        let body =
            self.http.call(Method::POST, &url, Some(ADMIN_TOKEN), Some(&json!({ "name": id, "id": id }))).await?.body;
        let text = |k: &str| body[k].as_str().map(str::to_owned).with_context(|| format!("no {k} in {body}"));
        Ok(BenchConn { id: text("id")?, api_key: text("api_key")?, secret: text("signing_secret")? })
    }

    /// A sample's value in `/metrics` (0 when absent).
    pub(crate) async fn metric(&self, series: &str) -> anyhow::Result<f64> {
        let answer = self.http.call(Method::GET, &format!("http://{}/metrics", self.addr), None, None).await?;
        let text = String::from_utf8_lossy(&answer.raw);
        Ok(text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0))
    }

    /// Attaches `url` to `conn`.
    pub(crate) async fn attach(&self, conn: &BenchConn, url: &str) -> anyhow::Result<()> {
        attach(&self.http, self.addr, conn, url).await
    }
}

async fn attach(http: &JsonClient, addr: SocketAddr, conn: &BenchConn, url: &str) -> anyhow::Result<()> {
    let hooks = format!("http://{addr}/v1/hooks");
    let answer = http.call(Method::POST, &hooks, Some(&conn.api_key), Some(&json!({ "url": url }))).await?;
    if !answer.status.is_success() {
        bail!("attach answered {}", answer.status);
    }
    Ok(())
}

/// Attaches `count` hooks, one every `spacing`, spread over `conns`, and returns how long each
/// call took (µs). The client runs on a thread and runtime of its own, so that the load
/// generator's tasks do not queue the answers on the harness's side and inflate the figure.
pub(crate) fn attach_series(
    addr: SocketAddr,
    conns: Vec<BenchConn>,
    sink: String,
    count: usize,
    spacing: Duration,
) -> std::thread::JoinHandle<anyhow::Result<Vec<u64>>> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(async move {
            let http = JsonClient::new(DEFAULT_TIMEOUT)?;
            let mut took = Vec::with_capacity(count);
            for n in 0..count {
                tokio::time::sleep(spacing).await;
                let conn = &conns[n % conns.len()];
                let started = Instant::now();
                attach(&http, addr, conn, &format!("{sink}/new/{n}")).await?;
                took.push(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
            }
            Ok(took)
        })
    })
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}
