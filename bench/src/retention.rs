//! Retention: what pruning costs the hot path, and whether the store levels off.
//!
//! `pruning` is an A/B in one run: the latency scenario's open loop (1,000 events/s) on a relay
//! that keeps everything (`RELAY_RETENTION=30d`) and on one that prunes all the while (a 3 s
//! window, so after the warm-up it deletes as fast as events arrive), alternated `--runs`
//! times. `soak` drives one relay with a short window for `--seconds` and samples its size.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::Bench;
use crate::load::open_loop;
use crate::report::{Row, paired_p99_row};
use crate::scenarios::{relay_row, setup_with};

/// Events per second of both scenarios.
const RATE: u32 = 1000;
/// The short window: pruning starts within the warm-up.
const SHORT: &str = "3s";
/// Load before a measured run, so that the pruning relay is deleting at steady state.
const WARM_UP: Duration = Duration::from_secs(6);

/// p99 end to end at 1,000 events/s, pruning vs not, alternated.
pub(crate) async fn pruning(bench: &Bench, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let mut p99 = [Vec::new(), Vec::new()];
    for run in 0..bench.runs {
        for (i, (label, window)) in [("keeps all", "30d"), ("pruning", SHORT)].into_iter().enumerate() {
            let setup = setup_with(bench, 10, 1, &[("RELAY_RETENTION", window)]).await?;
            open_loop(&setup.target, &format!("warm{run}{i}"), RATE, WARM_UP).await?;
            let before = (setup.relay.cpu_seconds(), setup.sink.total.load(Ordering::Relaxed));
            let started = Instant::now();
            let outcome = open_loop(&setup.target, &format!("run{run}{i}"), RATE, bench.duration).await?;
            let mut row = relay_row(bench, "pruning", &setup, &outcome, before, started.elapsed()).await;
            let pruned = setup.relay.metric("relay_store_pruned_rows_total{table=\"events\"}").await?;
            row.note = format!("RELAY_RETENTION={window} ({label}), {pruned} events pruned so far");
            p99[i].push(row.end_to_end_ms.as_ref().map_or(0.0, |p| p.p99));
            rows.push(row);
        }
    }
    rows.push(paired_p99_row("pruning", &bench.backend, p99, ["keeping all", "pruning"]));
    Ok(())
}

/// A relay with a 30 s window under 1,000 events/s for `--seconds`: its size every 30 s.
pub(crate) async fn soak(bench: &Bench, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    const WINDOW: Duration = Duration::from_secs(30);
    let setup = setup_with(bench, 10, 1, &[("RELAY_RETENTION", "30s")]).await?;
    let before = (setup.relay.cpu_seconds(), setup.sink.total.load(Ordering::Relaxed));
    let started = Instant::now();
    let (target, duration) = (setup.target.clone(), bench.duration);
    let load = tokio::spawn(async move { open_loop(&target, "soak", RATE, duration).await });
    let mut sizes = Vec::new();
    while !load.is_finished() {
        tokio::time::sleep(WINDOW).await;
        let mib = setup.relay.metric("relay_store_size_bytes").await? / (1024.0 * 1024.0);
        sizes.push(format!("{:.0}s {mib:.1}", started.elapsed().as_secs_f64()));
    }
    let outcome = load.await??;
    let mut row = relay_row(bench, "soak", &setup, &outcome, before, started.elapsed()).await;
    let pruned = setup.relay.metric("relay_store_pruned_rows_total{table=\"events\"}").await?;
    row.note =
        format!("RELAY_RETENTION=30s, 1000/s; store MiB every 30 s: {}; {pruned} events pruned", sizes.join(", "));
    rows.push(row);
    Ok(())
}
