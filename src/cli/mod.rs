//! The command line: `serve` runs the relay; `sign` prints a payload's signature; the operator
//! commands (`connections`, `hooks`, `dead-letters`) drive a running relay's admin API; `doctor`
//! tells a connection's owner what stands between Stencil and their hooks; `demo` shows the whole
//! flow on a temporary database. The only library module that uses `anyhow`.

mod demo;
mod doctor;
mod http;
mod operator;

use std::future::Future;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

pub use doctor::DoctorArgs;
pub use http::{Answer, CallError, DEFAULT_TIMEOUT, JsonClient};
pub use operator::{AdminClient, ConnectionsCommand, DeadLettersCommand, HooksCommand, OperatorError, Remote};

use crate::app::App;
use crate::config::{Config, DatabaseUrl, ServeArgs};
use crate::metrics::Metrics;
use crate::store::Store;

/// `stencil-relay`: Stencil webhooks in, Make instant triggers out.
#[derive(Debug, Parser)]
#[command(name = "stencil-relay", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay.
    Serve(Box<ServeArgs>),
    /// Print the hex HMAC-SHA256 signature of FILE (or stdin) for X-UseStencil-Signature.
    Sign(SignArgs),
    /// Start a relay on a temporary database and walk one event from Stencil to a Make hook.
    Demo,
    /// Copy connections, hooks and undelivered deliveries from an SQLite store into PostgreSQL
    /// (stop the relay first).
    MigrateStore(MigrateArgs),
    /// Write a consistent copy of the SQLite store to PATH while the relay serves (on
    /// PostgreSQL, use pg_dump).
    Backup(BackupArgs),
    /// Tell why a connection's images do not arrive: the relay's reachability, how Stencil must
    /// authenticate, refused ingests, the last event, and each hook's last delivery.
    Doctor(DoctorArgs),
    /// Manage connections (admin API).
    Connections {
        /// The relay to talk to.
        #[command(flatten)]
        remote: Remote,
        /// What to do.
        #[command(subcommand)]
        command: ConnectionsCommand,
    },
    /// Inspect hooks (admin API).
    Hooks {
        /// The relay to talk to.
        #[command(flatten)]
        remote: Remote,
        /// What to do.
        #[command(subcommand)]
        command: HooksCommand,
    },
    /// List and replay dead letters (admin API).
    DeadLetters {
        /// The relay to talk to.
        #[command(flatten)]
        remote: Remote,
        /// What to do.
        #[command(subcommand)]
        command: DeadLettersCommand,
    },
}

/// Arguments of `migrate-store`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The SQLite store to copy from (`sqlite://PATH`).
    #[arg(long)]
    pub from: String,
    /// The PostgreSQL store to copy into (`postgres://…`); migrated first if new.
    #[arg(long)]
    pub to: String,
}

/// Arguments of `backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Where the copy goes; a file that does not exist yet.
    pub path: PathBuf,
    /// The store to copy, as `serve` names it.
    #[arg(long, env = "RELAY_DATABASE_URL", default_value = "sqlite://./data/relay.db", value_parser = DatabaseUrl::parse)]
    pub database_url: DatabaseUrl,
}

/// Arguments of `sign`.
#[derive(Debug, Args)]
pub struct SignArgs {
    /// The connection's signing secret.
    #[arg(long, env = "RELAY_SIGNING_SECRET", hide_env_values = true)]
    pub secret: String,
    /// The payload file; stdin when absent.
    pub file: Option<PathBuf>,
}

/// Runs a parsed command line and returns the process exit code: 0 success, 1 failure, 2 bad
/// configuration; operator commands also use 3 (unreachable), 4 (unauthorized), 5 (not found).
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve(args) => serve(&args),
        Command::Sign(args) => report(sign(&args).map(|signature| println!("{signature}"))),
        Command::Demo => report(block_on(demo::run())),
        Command::MigrateStore(args) => report(block_on(migrate_store(args))),
        Command::Backup(args) => report(backup(&args)),
        Command::Doctor(args) => match block_on(doctor::run(&args)) {
            Ok(found) => {
                print!("{}", found.text);
                if found.problems == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
            }
            Err(e) => report(Err(e)),
        },
        Command::Connections { remote, command } => {
            operate(&remote, |client| async move { operator::connections(&client, command, remote.json).await })
        }
        Command::Hooks { remote, command } => {
            operate(&remote, |client| async move { operator::hooks(&client, command, remote.json).await })
        }
        Command::DeadLetters { remote, command } => {
            operate(&remote, |client| async move { operator::dead_letters(&client, command, remote.json).await })
        }
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn block_on<T>(work: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Runtime::new().context("cannot start the async runtime")?.block_on(work)
}

fn operate<F, Fut>(remote: &Remote, command: F) -> ExitCode
where
    F: FnOnce(AdminClient) -> Fut,
    Fut: Future<Output = Result<String, OperatorError>>,
{
    let printed = match (AdminClient::new(remote), tokio::runtime::Runtime::new()) {
        (Err(e), _) => Err(e),
        (Ok(_), Err(e)) => {
            return report(Err(anyhow::Error::new(e).context("cannot start the async runtime")));
        }
        (Ok(client), Ok(runtime)) => runtime.block_on(command(client)),
    };
    match printed {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

/// Answers a command line clap refused: a `serve` setting's bad value as one line naming its
/// variable (exit 2), anything else (unknown flags, `--help`, `--version`) as clap says it.
pub fn refuse(error: &clap::Error) -> ExitCode {
    match crate::config::explain(error) {
        Some(problem) => {
            eprintln!("error: {problem}");
            ExitCode::from(2)
        }
        None => {
            let _ = error.print();
            ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(2))
        }
    }
}

fn serve(args: &ServeArgs) -> ExitCode {
    let config = match Config::from_args(args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    crate::telemetry::init(&config.log, config.log_format);
    report(block_on(async {
        crate::shutdown::survive_file_size_limits()?;
        let app = App::build(config).await?;
        app.run(crate::shutdown::signal()).await;
        Ok(())
    }))
}

async fn migrate_store(args: MigrateArgs) -> anyhow::Result<()> {
    let from = DatabaseUrl::parse(&args.from).map_err(|e| anyhow::anyhow!("--from: {e}"))?;
    let to = DatabaseUrl::parse(&args.to).map_err(|e| anyhow::anyhow!("--to: {e}"))?;
    let (DatabaseUrl::Sqlite(path), DatabaseUrl::Postgres(_)) = (&from, &to) else {
        anyhow::bail!("migrate-store copies from sqlite://PATH to postgres://…");
    };
    anyhow::ensure!(path.exists(), "--from: {} does not exist", path.display());
    let metrics = Metrics::default();
    let source = Store::open(&from, metrics.clone()).await.context("opening the SQLite store")?;
    let target = Store::open(&to, metrics).await.context("opening the PostgreSQL store")?;
    let (Store::Sqlite(source), Store::Postgres(target)) = (source, target) else {
        anyhow::bail!("migrate-store copies from sqlite://PATH to postgres://…");
    };
    let transfer = source.export().await.context("reading the SQLite store")?;
    let (connections, hooks, deliveries) =
        (transfer.connections.len(), transfer.hooks.len(), transfer.deliveries.len());
    let added = target.import(transfer).await.context("writing to PostgreSQL")?;
    println!("copied {connections} connections, {hooks} hooks and {added} of {deliveries} undelivered deliveries");
    Ok(())
}

fn backup(args: &BackupArgs) -> anyhow::Result<()> {
    let DatabaseUrl::Sqlite(source) = &args.database_url else {
        anyhow::bail!(
            "the store is PostgreSQL: back it up with PostgreSQL's own tools, e.g. pg_dump --format=custom \"$RELAY_DATABASE_URL\" > relay.dump"
        );
    };
    let bytes = crate::store::backup_sqlite(source, &args.path)
        .with_context(|| format!("backing up {} to {}", source.display(), args.path.display()))?;
    println!(
        "copied {} to {} ({bytes} bytes), consistent as of the moment the copy began",
        source.display(),
        args.path.display()
    );
    Ok(())
}

fn sign(args: &SignArgs) -> anyhow::Result<String> {
    let body = match &args.file {
        Some(path) => std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
        None => {
            let mut body = Vec::new();
            std::io::stdin().read_to_end(&mut body).context("cannot read stdin")?;
            body
        }
    };
    Ok(crate::signature::sign(&args.secret, &body))
}
