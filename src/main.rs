//! The `stencil-relay` binary: parse the command line and hand it to the library.

use std::process::ExitCode;

use clap::Parser;

/// jemalloc, not glibc's allocator: bodies, tasks and buffers are allocated on one thread and
/// freed on another (the writer, the delivery tasks), and glibc spent a noticeable share of the
/// relay's CPU in `malloc`/`free` on that pattern (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    match stencil_relay::cli::Cli::try_parse() {
        Ok(cli) => stencil_relay::cli::run(cli),
        Err(e) => stencil_relay::cli::refuse(&e),
    }
}
