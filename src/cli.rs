//! The command line: `serve` runs the relay, `sign` prints the `X-UseStencil-Signature` of a
//! payload so anyone can send a correctly signed webhook with curl.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::app::App;
use crate::config::{Config, ServeArgs};

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

/// Runs a parsed command line and returns the process exit code: 0 success, 1 runtime failure,
/// 2 bad configuration.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve(args) => serve(&args),
        Command::Sign(args) => match sign(&args) {
            Ok(signature) => {
                println!("{signature}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
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
    let result = tokio::runtime::Runtime::new()
        .context("cannot start the async runtime")
        .and_then(|rt| {
            rt.block_on(async {
                let app = App::build(config).await?;
                app.run(crate::shutdown::signal()).await;
                anyhow::Ok(())
            })
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn sign(args: &SignArgs) -> anyhow::Result<String> {
    let body = match &args.file {
        Some(path) => {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
        }
        None => {
            let mut body = Vec::new();
            std::io::stdin()
                .read_to_end(&mut body)
                .context("cannot read stdin")?;
            body
        }
    };
    Ok(crate::signature::sign(&args.secret, &body))
}
