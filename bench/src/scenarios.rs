//! The scenarios: each starts what it needs, drives load, and adds rows to the report.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::Bench;
use crate::load::{Outcome, Target, closed_loop, open_loop};
use crate::relay::{BenchConn, Relay, attach_series};
use crate::report::{Percentiles, Row, median};
use crate::servers::{Sink, start_baseline, start_sink};

/// How long delivery may take to catch up after the load stops before the backlog counts as
/// unbounded.
const DRAIN: Duration = Duration::from_secs(10);
/// How long each load of the registry scenario runs.
const REGISTRY_LOAD: Duration = Duration::from_secs(5);
/// Attaches measured under each load.
const ATTACHES: usize = 400;
/// Time between two measured attaches (they span most of a load).
const ATTACH_SPACING: Duration = Duration::from_millis(8);
/// Hook pacing that never limits a benchmark (Make's 5/s is tested elsewhere).
const UNPACED: u32 = 1_000_000;

/// What a run's store leaves behind, removed when dropped: after the relay that uses it, so a
/// struct holding both declares the relay first.
enum Scratch {
    /// A temporary directory holding the SQLite file.
    Dir(PathBuf),
    /// A schema in the PostgreSQL database at `url`.
    Schema { url: String, name: String },
}

impl Drop for Scratch {
    fn drop(&mut self) {
        match self {
            Scratch::Dir(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Scratch::Schema { url, name } => {
                // Dropped inside the harness's runtime, which must not be blocked on: a thread
                // with a runtime of its own does the work.
                let (url, sql) = (url.clone(), format!("DROP SCHEMA IF EXISTS {name} CASCADE"));
                let dropped = std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
                    rt.block_on(async {
                        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.ok()?;
                        tokio::spawn(connection);
                        client.batch_execute(&sql).await.ok()
                    })
                })
                .join();
                if !matches!(dropped, Ok(Some(()))) {
                    eprintln!("warning: the benchmark schema {name} could not be dropped");
                }
            }
        }
    }
}

/// A fresh store for one relay: a temporary SQLite file, or a new schema in the PostgreSQL database.
async fn fresh_store(bench: &Bench) -> anyhow::Result<(String, Scratch)> {
    let name = stencil_relay::model::random_token("bench_", 6);
    match &bench.database_url {
        Some(url) if url.starts_with("postgres") => {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            client.batch_execute(&format!("CREATE SCHEMA {name}")).await?;
            let separator = if url.contains('?') { '&' } else { '?' };
            let store = format!("{url}{separator}options=-csearch_path%3D{name}");
            Ok((store, Scratch::Schema { url: url.clone(), name }))
        }
        _ => {
            let dir = std::env::temp_dir().join(name);
            std::fs::create_dir_all(&dir)?;
            Ok((format!("sqlite://{}", dir.join("relay.db").display()), Scratch::Dir(dir)))
        }
    }
}

/// A relay with `connections` × `hooks` hooks on one sink.
pub(crate) struct Setup {
    pub(crate) relay: Relay,
    pub(crate) sink: Arc<Sink>,
    pub(crate) target: Target,
    hooks_per_event: u64,
    _scratch: Scratch,
}

pub(crate) async fn setup(bench: &Bench, connections: usize, hooks: usize) -> anyhow::Result<Setup> {
    setup_with(bench, connections, hooks, &[]).await
}

/// The load generator is one address standing in for all of Stencil's: the per-address limits
/// (meant for one client among many) are lifted for the throughput runs, so that they measure
/// the relay, not its defence against a single address.
const ONE_ADDRESS_FOR_ALL: &[(&str, &str)] =
    &[("RELAY_MAX_INGEST_PER_ADDRESS", "4096"), ("RELAY_MAX_CONNECTIONS_PER_ADDRESS", "4096")];

/// [`setup`] with more relay settings (`RELAY_*` variables).
pub(crate) async fn setup_with(
    bench: &Bench,
    connections: usize,
    hooks: usize,
    settings: &[(&str, &str)],
) -> anyhow::Result<Setup> {
    let (database, scratch) = fresh_store(bench).await?;
    let relay = Relay::start_with(&bench.relay, &database, UNPACED, settings).await?;
    let sink = Arc::new(Sink::default());
    let sink_addr = start_sink(Arc::clone(&sink)).await?;
    let mut conns = Vec::with_capacity(connections);
    for c in 0..connections {
        let conn = relay.connection(&format!("c{c}")).await?;
        for h in 0..hooks {
            relay.attach(&conn, &format!("http://{sink_addr}/c{c}/h{h}")).await?;
        }
        conns.push(conn);
    }
    let target = Target { addr: relay.addr, conns: Arc::new(conns) };
    Ok(Setup { relay, sink, target, hooks_per_event: hooks as u64, _scratch: scratch })
}

/// Waits until every accepted event's deliveries arrived (or [`DRAIN`] passed); `true` if they
/// did. `before` is what the sink had counted when the run started.
async fn drained(setup: &Setup, outcome: &Outcome, before: u64) -> bool {
    let expected = before + outcome.accepted.load(Ordering::Relaxed) * setup.hooks_per_event;
    let deadline = Instant::now() + DRAIN;
    while setup.sink.total.load(Ordering::Relaxed) < expected {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// The row of one relay run: throughput, latencies, deliveries, backlog, CPU, memory.
pub(crate) async fn relay_row(
    bench: &Bench,
    scenario: &str,
    setup: &Setup,
    outcome: &Outcome,
    before: (f64, u64),
    took: Duration,
) -> Row {
    let (cpu_before, delivered_before) = before;
    let delivered_in_run = setup.sink.total.load(Ordering::Relaxed) - delivered_before;
    let bounded = drained(setup, outcome, delivered_before).await;
    let accepted = outcome.accepted.load(Ordering::Relaxed);
    let cpu = setup.relay.cpu_seconds() - cpu_before;
    let e2e: Vec<u64> = outcome
        .sent
        .iter()
        .filter_map(|e| setup.sink.arrivals.get(e.key()).map(|a| a.first.saturating_duration_since(*e.value())))
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .collect();
    let refused = outcome.refused.load(Ordering::Relaxed);
    Row {
        scenario: scenario.to_owned(),
        backend: bench.backend.clone(),
        server: "relay".to_owned(),
        events_per_s: accepted as f64 / took.as_secs_f64(),
        ingest_ms: Percentiles::of(std::mem::take(&mut *outcome.latencies.lock().expect("not poisoned"))),
        end_to_end_ms: Percentiles::of(e2e),
        deliveries_per_s: Some(delivered_in_run as f64 / took.as_secs_f64()),
        backlog_bounded: Some(bounded),
        cpu_us_per_event: (accepted > 0).then(|| cpu * 1e6 / accepted as f64),
        peak_rss_mib: Some(setup.relay.peak_rss_mib()),
        note: if refused > 0 { format!("{refused} refused") } else { String::new() },
    }
}

async fn baseline_row(bench: &Bench, scenario: &str, clients: usize) -> anyhow::Result<Row> {
    let addr = start_baseline().await?;
    let dummy = BenchConn { id: "baseline".into(), api_key: String::new(), secret: "baseline".into() };
    let target = Target { addr, conns: Arc::new(vec![dummy]) };
    let started = Instant::now();
    let outcome = closed_loop(&target, "base", clients, bench.duration).await?;
    let took = started.elapsed();
    Ok(Row {
        scenario: scenario.to_owned(),
        backend: "-".to_owned(),
        server: "baseline".to_owned(),
        events_per_s: outcome.accepted.load(Ordering::Relaxed) as f64 / took.as_secs_f64(),
        ingest_ms: Percentiles::of(std::mem::take(&mut *outcome.latencies.lock().expect("not poisoned"))),
        ..Row::default()
    })
}

/// A few seconds: every accepted event must arrive. Asserts no speed.
pub(crate) async fn smoke(bench: &Bench, rows: &mut Vec<Row>) -> anyhow::Result<bool> {
    let bench = Bench { duration: Duration::from_secs(2), ..clone(bench) };
    let setup = setup(&bench, 2, 1).await?;
    let before = (setup.relay.cpu_seconds(), 0);
    let started = Instant::now();
    let outcome = closed_loop(&setup.target, "smoke", 4, bench.duration).await?;
    let row = relay_row(&bench, "smoke", &setup, &outcome, before, started.elapsed()).await;
    let complete = row.backlog_bounded == Some(true) && outcome.accepted.load(Ordering::Relaxed) > 0;
    rows.push(row);
    rows.push(baseline_row(&bench, "smoke", 4).await?);
    if !complete {
        eprintln!("smoke: not every accepted event was delivered");
    }
    Ok(complete)
}

/// 100 connections with one hook each, 64 client connections, closed-loop and interleaved
/// with the baseline: the medians and their ratio are the headline. With `--rate` the load is
/// open-loop at that rate and no baseline runs (for A/Bs of CPU per event). With `--against`
/// a second binary runs right after the first in every round, and each round's ratio of the
/// two is reported: back-to-back runs share the machine's mood of the moment, which drifts by
/// more than most changes weigh.
pub(crate) async fn ingest(bench: &Bench, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let mut contenders = vec![("relay", clone(bench))];
    if let Some(against) = &bench.against {
        contenders.push(("against", Bench { relay: against.clone(), ..clone(bench) }));
    }
    let mut rates = vec![Vec::new(); contenders.len()];
    let mut cpu = vec![Vec::new(); contenders.len()];
    let mut base_rates = Vec::new();
    for run in 0..bench.runs {
        for (i, (server, contender)) in contenders.iter().enumerate() {
            let row = ingest_run(contender, server, run).await?;
            rates[i].push(row.events_per_s);
            cpu[i].push(row.cpu_us_per_event.unwrap_or(0.0));
            rows.push(row);
        }
        // A closed-loop baseline says nothing about an open-loop relay run, so `--rate` has none.
        if bench.rate.is_none() {
            let base = baseline_row(bench, "ingest", 64).await?;
            base_rates.push(base.events_per_s);
            rows.push(base);
        }
    }
    let relay = median(rates[0].clone());
    let note = match bench.rate {
        Some(rate) => format!("open-loop {rate}/s, no baseline ({} runs)", bench.runs),
        None => {
            let base = median(base_rates);
            format!(
                "relay ÷ baseline = {:.2} (baseline median {base:.0}/s, {} runs)",
                relay / base.max(1.0),
                bench.runs
            )
        }
    };
    rows.push(ingest_median(bench, "median", relay, median(cpu[0].clone()), note));
    if let (Some(rates_b), Some(cpu_b)) = (rates.get(1), cpu.get(1)) {
        let note = format!(
            "against ÷ relay, the median of the rounds' ratios: {:.2}× events/s, {:.2}× CPU per event",
            median(ratios(rates_b, &rates[0])),
            median(ratios(cpu_b, &cpu[0]))
        );
        rows.push(ingest_median(bench, "median B", median(rates_b.clone()), median(cpu_b.clone()), note));
    }
    Ok(())
}

/// One run of the ingest scenario on `bench.relay`, its row labelled `server`.
async fn ingest_run(bench: &Bench, server: &str, run: usize) -> anyhow::Result<Row> {
    let setup = setup_with(bench, 100, 1, ONE_ADDRESS_FOR_ALL).await?;
    let before = (setup.relay.cpu_seconds(), setup.sink.total.load(Ordering::Relaxed));
    let started = Instant::now();
    let name = format!("ingest{run}");
    let outcome = match bench.rate {
        Some(rate) => open_loop(&setup.target, &name, rate, bench.duration).await?,
        None => closed_loop(&setup.target, &name, 64, bench.duration).await?,
    };
    let mut row = relay_row(bench, "ingest", &setup, &outcome, before, started.elapsed()).await;
    row.server = server.to_owned();
    if let Some(rate) = bench.rate {
        row.note = format!("open-loop {rate}/s {}", row.note).trim().to_owned();
    }
    Ok(row)
}

/// The summary row of one binary's ingest runs.
fn ingest_median(bench: &Bench, server: &str, events_per_s: f64, cpu_us_per_event: f64, note: String) -> Row {
    Row {
        scenario: "ingest".into(),
        backend: bench.backend.clone(),
        server: server.into(),
        events_per_s,
        cpu_us_per_event: Some(cpu_us_per_event),
        note,
        ..Row::default()
    }
}

/// `b[i] ÷ a[i]` for each round.
fn ratios(b: &[f64], a: &[f64]) -> Vec<f64> {
    b.iter().zip(a).map(|(b, a)| b / a.max(f64::MIN_POSITIVE)).collect()
}

/// Open-loop 1,000 events/s, one hook per event: ingest and end-to-end latency.
pub(crate) async fn latency(bench: &Bench, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let setup = setup(bench, 10, 1).await?;
    let before = (setup.relay.cpu_seconds(), setup.sink.total.load(Ordering::Relaxed));
    let started = Instant::now();
    let outcome = open_loop(&setup.target, "latency", 1000, bench.duration).await?;
    let mut row = relay_row(bench, "latency", &setup, &outcome, before, started.elapsed()).await;
    row.note = format!("open-loop 1000/s {}", row.note).trim().to_owned();
    rows.push(row);
    Ok(())
}

/// One connection with 1,000 hooks, events one at a time: until all 1,000 deliveries arrived.
pub(crate) async fn fanout(bench: &Bench, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let setup = setup(bench, 1, 1000).await?;
    let mut times = Vec::new();
    for n in 0..5 {
        let outcome = send_one(&setup, &format!("fanout{n}")).await?;
        let (id, sent) = outcome.sent.iter().next().map(|e| (e.key().clone(), *e.value())).context("not accepted")?;
        let deadline = Instant::now() + DRAIN;
        let last = loop {
            if let Some(a) = setup.sink.arrivals.get(&id).filter(|a| a.count >= 1000) {
                break a.last;
            }
            anyhow::ensure!(Instant::now() < deadline, "the fan-out of {id} did not complete");
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        times.push(u64::try_from(last.duration_since(sent).as_micros()).unwrap_or(u64::MAX));
    }
    rows.push(Row {
        scenario: "fanout".into(),
        backend: bench.backend.clone(),
        server: "relay".into(),
        end_to_end_ms: Percentiles::of(times),
        peak_rss_mib: Some(setup.relay.peak_rss_mib()),
        note: "time until all 1000 deliveries of one event arrived (5 events)".into(),
        ..Row::default()
    });
    Ok(())
}

/// Sends one event (an open loop of one).
async fn send_one(setup: &Setup, run: &str) -> anyhow::Result<Arc<Outcome>> {
    open_loop(&setup.target, run, 1, Duration::from_secs(1)).await
}

/// Rising open-loop rates until ingest and delivery no longer keep up together.
pub(crate) async fn sustained(bench: &Bench, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let setup = setup_with(bench, 10, 1, ONE_ADDRESS_FOR_ALL).await?;
    let mut best = 0;
    for rate in [2_000, 4_000, 6_000, 8_000, 10_000, 12_000, 15_000] {
        let before = (setup.relay.cpu_seconds(), setup.sink.total.load(Ordering::Relaxed));
        let started = Instant::now();
        let outcome = open_loop(&setup.target, &format!("sustained{rate}"), rate, bench.duration).await?;
        let mut row = relay_row(bench, "sustained", &setup, &outcome, before, started.elapsed()).await;
        let offered = (f64::from(rate) * bench.duration.as_secs_f64()) as u64;
        // Kept up: nearly all of it accepted, delivered as fast as accepted, nothing left over.
        let delivered_apace = row.deliveries_per_s.unwrap_or(0.0) >= 0.95 * row.events_per_s;
        let kept_up = row.backlog_bounded == Some(true)
            && delivered_apace
            && outcome.accepted.load(Ordering::Relaxed) * 100 >= offered * 99;
        row.note = format!("offered {rate}/s: {}", if kept_up { "kept up" } else { "fell behind" });
        rows.push(row);
        if !kept_up {
            break;
        }
        best = rate;
    }
    rows.push(Row {
        scenario: "sustained".into(),
        backend: bench.backend.clone(),
        server: "result".into(),
        events_per_s: f64::from(best),
        note: "highest offered rate at which ingest and delivery kept up together".into(),
        ..Row::default()
    });
    Ok(())
}

/// 100,000 connections and 1,000,000 hooks in the store: time to ready, memory, and attach
/// latency while ingest runs.
pub(crate) async fn registry(bench: &Bench, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let (database, _scratch) = fresh_store(bench).await?;
    drop(Relay::start(&bench.relay, &database, UNPACED).await?); // creates the schema
    let sink = Arc::new(Sink::default());
    let sink_addr = start_sink(Arc::clone(&sink)).await?;
    let sink_url = format!("http://{sink_addr}");
    match database.strip_prefix("sqlite://") {
        Some(path) => {
            let path = path.to_owned();
            tokio::task::spawn_blocking(move || populate_sqlite(&path, 100_000, 10, &sink_url)).await??;
        }
        None => populate_postgres(&database, 100_000, 10, &sink_url).await?,
    }
    let relay = Relay::start(&bench.relay, &database, UNPACED).await?;
    let conn = |c: usize| BenchConn { id: format!("r{c}"), api_key: format!("key-{c}"), secret: format!("secret-{c}") };
    let target = Target { addr: relay.addr, conns: Arc::new((0..10).map(conn).collect()) };
    // Attaches go to connections the load does not use, so they do not widen its fan-out.
    let quiet: Vec<BenchConn> = (1000..2000).map(conn).collect();
    let sink = format!("http://{sink_addr}");
    let ready = relay.ready_after.as_secs_f64();
    // The steady load first: the saturating one leaves a delivery backlog behind.
    for (load, label) in [(Load::Fixed(300), "open-loop 300/s"), (Load::Saturating, "closed-loop, saturating")] {
        let attaches = attach_series(relay.addr, quiet.clone(), format!("{sink}/{label}"), ATTACHES, ATTACH_SPACING);
        let outcome = match load {
            Load::Saturating => closed_loop(&target, label, 16, REGISTRY_LOAD).await?,
            Load::Fixed(rate) => open_loop(&target, label, rate, REGISTRY_LOAD).await?,
        };
        let attach = tokio::task::spawn_blocking(move || attaches.join())
            .await?
            .map_err(|_| anyhow::anyhow!("the attach thread panicked"))??;
        rows.push(Row {
            scenario: "registry".into(),
            backend: bench.backend.clone(),
            server: "relay".into(),
            events_per_s: outcome.accepted.load(Ordering::Relaxed) as f64 / REGISTRY_LOAD.as_secs_f64(),
            ingest_ms: Percentiles::of(attach),
            peak_rss_mib: Some(relay.peak_rss_mib()),
            note: format!(
                "100k connections, 1M hooks: ready in {ready:.2} s; the latency column is attach under {label} ingest (10 hooks per event)"
            ),
            ..Row::default()
        });
    }
    Ok(())
}

/// How the registry scenario loads the relay while it measures attaches.
enum Load {
    /// Closed-loop: every core busy, the worst case.
    Saturating,
    /// Open-loop at this many events per second.
    Fixed(u32),
}

fn clone(bench: &Bench) -> Bench {
    Bench {
        relay: bench.relay.clone(),
        against: bench.against.clone(),
        database_url: bench.database_url.clone(),
        duration: bench.duration,
        runs: bench.runs,
        rate: bench.rate,
        backend: bench.backend.clone(),
    }
}

/// Writes `connections` connections with `hooks` hooks each straight into an SQLite store.
fn populate_sqlite(path: &str, connections: usize, hooks: usize, sink: &str) -> anyhow::Result<()> {
    let mut db = rusqlite::Connection::open(path)?;
    let tx = db.transaction()?;
    {
        let mut conn = tx.prepare("INSERT INTO connections (id, name, api_key_hash, secrets, ingest_rate, created_at) VALUES (?1, ?1, ?2, ?3, NULL, 0)")?;
        let mut hook = tx.prepare("INSERT INTO hooks (id, connection_id, url, event, template_id, created_at, secrets) VALUES (?1, ?2, ?3, 'image.created', '', 0, ?4)")?;
        for c in 0..connections {
            let id = format!("r{c}");
            let secrets = format!(r#"[{{"secret":"secret-{c}","expires_at":null}}]"#);
            conn.execute(rusqlite::params![
                id,
                stencil_relay::model::api_key_hash(&format!("key-{c}")).as_slice(),
                secrets
            ])?;
            for h in 0..hooks {
                let key = stencil_relay::model::new_hook_secret();
                let keys = format!(r#"[{{"secret":"{key}","expires_at":null}}]"#);
                hook.execute(rusqlite::params![format!("hk_{c}_{h}"), id, format!("{sink}/r{c}/{h}"), keys])?;
            }
        }
    }
    tx.commit()?;
    Ok(())
}

/// The same rows as [`populate_sqlite`], generated by PostgreSQL itself (two statements instead
/// of a million round trips), then analyzed as a store of that size would be.
async fn populate_postgres(url: &str, connections: i64, hooks: i64, sink: &str) -> anyhow::Result<()> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    client
        .execute(
            r#"INSERT INTO connections (id, name, api_key_hash, secrets, ingest_rate, created_at)
               SELECT 'r' || c, 'r' || c, sha256(convert_to('key-' || c, 'UTF8')),
                      '[{"secret":"secret-' || c || '","expires_at":null}]', NULL, 0
               FROM generate_series(0, $1::bigint - 1) AS c"#,
            &[&connections],
        )
        .await?;
    client
        .execute(
            "INSERT INTO hooks (id, connection_id, url, event, template_id, created_at, secrets)
             SELECT 'hk_' || c || '_' || h, 'r' || c, $3::text || '/r' || c || '/' || h, 'image.created', '', 0,
                    '[{\"secret\":\"whsec_' || encode(sha256(convert_to('hk_' || c || '_' || h, 'UTF8')), 'base64')
                        || '\",\"expires_at\":null}]'
             FROM generate_series(0, $1::bigint - 1) AS c, generate_series(0, $2::bigint - 1) AS h",
            &[&connections, &hooks, &sink],
        )
        .await?;
    client.batch_execute("ANALYZE connections; ANALYZE hooks").await?;
    Ok(())
}
