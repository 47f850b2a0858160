//! The `stencil-relay` binary: parse the command line and hand it to the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    stencil_relay::cli::run(stencil_relay::cli::Cli::parse())
}
