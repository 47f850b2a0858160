//! Fairness: does a healthy hook keep its latency while 100 hooks never answer?
//!
//! One relay (`RELAY_HOOK_RATE=50`, so that 5 events/s are well within one hook's pace, and the
//! default 10 s delivery timeout). Connection `healthy` has one hook on the recording sink;
//! connection `failing` has 100 hooks on a server that accepts connections and never answers.
//! Each round measures the healthy hook's end-to-end latency at 5 events/s, first alone, then
//! while the failing connection gets 5 events/s (500 deliveries a second that hang until the
//! timeout: without a fair share they take all 512 request slots within a second). The report
//! is the median of the rounds' p99 ratios, and both p99s.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;

use crate::Bench;
use crate::load::{Target, open_loop};
use crate::report::{Row, paired_p99_row};
use crate::scenarios::{relay_row, setup_with};

/// Events per second to the healthy hook, and to the failing connection.
const RATE: u32 = 5;
/// Hooks that never answer.
const FAILING_HOOKS: usize = 100;
/// The shortest measured run: long enough for the failing hooks' first requests to time out.
const AT_LEAST: Duration = Duration::from_secs(30);

/// The healthy hook's p99 alone and beside 100 hanging hooks, `--runs` rounds.
pub(crate) async fn fairness(bench: &Bench, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let duration = bench.duration.max(AT_LEAST);
    let mut p99 = [Vec::new(), Vec::new()];
    for run in 0..bench.runs {
        let setup = setup_with(bench, 1, 1, &[("RELAY_HOOK_RATE", "50")]).await?;
        let silent = start_silent().await?;
        let failing = setup.relay.connection("failing").await?;
        for h in 0..FAILING_HOOKS {
            setup.relay.attach(&failing, &format!("http://{silent}/h{h}")).await?;
        }
        let failing = Target { addr: setup.target.addr, conns: Arc::new(vec![failing]) };
        for (i, label) in ["alone", "beside 100 hooks that never answer"].into_iter().enumerate() {
            let flood = (i == 1).then(|| {
                let failing = failing.clone();
                tokio::spawn(async move { open_loop(&failing, &format!("flood{run}"), RATE, duration).await })
            });
            let before = (setup.relay.cpu_seconds(), setup.sink.total.load(Ordering::Relaxed));
            let started = Instant::now();
            let outcome = open_loop(&setup.target, &format!("healthy{run}{i}"), RATE, duration).await?;
            let mut row = relay_row(bench, "fairness", &setup, &outcome, before, started.elapsed()).await;
            if let Some(flood) = flood {
                let flooded = flood.await??.accepted.load(Ordering::Relaxed);
                let paused = setup.relay.metric("relay_hook_pauses_total").await?;
                row.note = format!("{label}: {flooded} events to them ({paused} hook pauses so far)");
            } else {
                row.note = label.to_owned();
            }
            p99[i].push(row.end_to_end_ms.as_ref().map_or(0.0, |p| p.p99));
            rows.push(row);
        }
    }
    rows.push(paired_p99_row("fairness", &bench.backend, p99, ["alone", "beside 100 hanging hooks"]));
    Ok(())
}

/// A server that accepts connections, reads nothing and never answers; its address.
async fn start_silent() -> anyhow::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    Ok(addr)
}
