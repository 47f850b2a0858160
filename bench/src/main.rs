//! `relay-bench`: measures the real relay binary against a bare hyper server in the same run.
//!
//! ```text
//! cargo run --release -p relay-bench -- --scenario all [--database-url postgres://…] [--json out.json]
//! ```
//!
//! Scenarios: `smoke` (a few seconds; checks every accepted event arrived; asserts no speed),
//! `ingest`, `latency`, `fanout`, `sustained`, `registry`, `attack`, `pruning`, `fairness`, `all`, and `soak`
//! (only by name: it runs for `--seconds`). See BENCHMARKS.md.

mod attack;
mod fairness;
mod load;
mod relay;
mod report;
mod retention;
mod scenarios;
mod servers;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Smoke,
    Ingest,
    Latency,
    Fanout,
    Sustained,
    Registry,
    Attack,
    Pruning,
    Fairness,
    Soak,
    All,
}

/// Command line.
#[derive(Debug, Parser)]
#[command(name = "relay-bench", about = "Benchmarks stencil-relay against a bare hyper server in the same run")]
struct Args {
    /// Which scenario.
    #[arg(long, value_enum, default_value = "smoke")]
    scenario: Scenario,
    /// Store for the relay: a fresh temporary SQLite file by default, or `postgres://…` (a fresh
    /// schema is made in that database for every run).
    #[arg(long)]
    database_url: Option<String>,
    /// The relay binary; default: `stencil-relay` next to this program (built first when run by cargo).
    #[arg(long)]
    relay: Option<PathBuf>,
    /// A second relay binary for the ingest scenario, run right after the first in every
    /// round: an A/B in one command, reported as the median of the rounds' ratios.
    #[arg(long)]
    against: Option<PathBuf>,
    /// Seconds each timed run lasts.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Interleaved relay/baseline repetitions of the ingest scenario (medians are reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Drive the ingest scenario open-loop at this many events per second instead of
    /// closed-loop: commit batches then have the same size for every binary, so CPU per event
    /// can be compared between two of them (an A/B), which saturation's batch sizes blur.
    #[arg(long)]
    rate: Option<u32>,
    /// Also write the rows as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Settings every scenario shares.
pub(crate) struct Bench {
    pub(crate) relay: PathBuf,
    /// A second binary the ingest scenario compares with the first.
    pub(crate) against: Option<PathBuf>,
    pub(crate) database_url: Option<String>,
    pub(crate) duration: Duration,
    pub(crate) runs: usize,
    pub(crate) rate: Option<u32>,
    pub(crate) backend: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = tokio::runtime::Runtime::new().context("runtime").and_then(|rt| rt.block_on(run(args)));
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let bench = Bench {
        relay: relay_binary(args.relay)?,
        against: args.against,
        backend: if args.database_url.as_deref().is_some_and(|u| u.starts_with("postgres")) {
            "postgres"
        } else {
            "sqlite"
        }
        .to_owned(),
        database_url: args.database_url,
        duration: Duration::from_secs(args.seconds),
        runs: args.runs.max(1),
        rate: args.rate,
    };
    let mut rows = Vec::new();
    let mut ok = true;
    let all = args.scenario == Scenario::All;
    if args.scenario == Scenario::Smoke {
        ok &= scenarios::smoke(&bench, &mut rows).await?;
    }
    if all || args.scenario == Scenario::Ingest {
        scenarios::ingest(&bench, &mut rows).await?;
    }
    if all || args.scenario == Scenario::Latency {
        scenarios::latency(&bench, &mut rows).await?;
    }
    if all || args.scenario == Scenario::Fanout {
        scenarios::fanout(&bench, &mut rows).await?;
    }
    if all || args.scenario == Scenario::Sustained {
        scenarios::sustained(&bench, &mut rows).await?;
    }
    if all || args.scenario == Scenario::Registry {
        scenarios::registry(&bench, &mut rows).await?;
    }
    if all || args.scenario == Scenario::Attack {
        attack::attack(&bench, &mut rows).await?;
    }
    if all || args.scenario == Scenario::Pruning {
        retention::pruning(&bench, &mut rows).await?;
    }
    if all || args.scenario == Scenario::Fairness {
        fairness::fairness(&bench, &mut rows).await?;
    }
    if args.scenario == Scenario::Soak {
        retention::soak(&bench, &mut rows).await?;
    }
    println!("{}", report::table(&rows));
    if let Some(path) = args.json {
        std::fs::write(&path, report::json(&rows)?).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ok)
}

/// The relay binary next to this one, rebuilt first when cargo started us (so it is never stale).
fn relay_binary(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path);
    }
    let me = std::env::current_exe()?;
    if let Ok(cargo) = std::env::var("CARGO") {
        let release = me.components().any(|c| c.as_os_str() == "release");
        let mut build = std::process::Command::new(cargo);
        build.args(["build", "--bin", "stencil-relay"]);
        if release {
            build.arg("--release");
        }
        anyhow::ensure!(build.status()?.success(), "building stencil-relay failed");
    }
    let relay = me.with_file_name("stencil-relay");
    anyhow::ensure!(relay.exists(), "{} not found: build it, or pass --relay", relay.display());
    Ok(relay)
}
