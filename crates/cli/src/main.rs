//! `choreo`: check, draw and export choreography topologies.
//!
//! Each subcommand lives in its own module under `cmd/` with its clap `Args`,
//! the one place that turns them into a validated config, and a `run`
//! returning the process exit code. Adding a subcommand means adding a module
//! and one line to [`Command`] and [`Command::run`].

mod cmd;

use std::io;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The tracer allocates and frees millions of small per-event and per-flow
/// values; mimalloc's thread-local free lists serve them faster than the
/// system allocator (see docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code: success, nothing to report.
pub(crate) const EXIT_OK: u8 = 0;
/// Exit code: the command ran and found problems (verifier findings).
pub(crate) const EXIT_FINDINGS: u8 = 1;
/// Exit code: bad usage or unusable input (unreadable or invalid file).
pub(crate) const EXIT_INPUT: u8 = 2;

/// choreo: a choreography event-bus runtime and tracer.
///
/// Exit codes: 0 ok; 1 findings (verifier errors, or warnings without
/// --allow-warnings); 2 usage or input error (bad arguments, unreadable file,
/// invalid topology).
#[derive(Debug, Parser)]
#[command(name = "choreo", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Check(cmd::check::Args),
    Graph(cmd::graph::Args),
    #[command(subcommand)]
    Export(cmd::export::Export),
    Trace(cmd::trace::Args),
    Simulate(cmd::simulate::Args),
    Demo(cmd::demo::Args),
    #[cfg(feature = "kafka")]
    Capture(cmd::capture::Args),
    #[cfg(feature = "kafka")]
    #[command(subcommand)]
    Dlq(cmd::dlq::Dlq),
}

impl Command {
    fn run(self) -> anyhow::Result<u8> {
        match self {
            Command::Check(args) => cmd::check::run(args),
            Command::Graph(args) => cmd::graph::run(args),
            Command::Export(args) => cmd::export::run(args),
            Command::Trace(args) => cmd::trace::run(args),
            Command::Simulate(args) => cmd::simulate::run(args),
            Command::Demo(args) => cmd::demo::run(args),
            #[cfg(feature = "kafka")]
            Command::Capture(args) => cmd::capture::run(args),
            #[cfg(feature = "kafka")]
            Command::Dlq(args) => cmd::dlq::run(args),
        }
    }
}

fn main() -> ExitCode {
    // Usage errors exit with 2 (clap's convention matches ours); help and version with 0.
    let cli = Cli::parse();
    match cli.command.run() {
        Ok(code) => ExitCode::from(code),
        Err(err) if is_broken_pipe(&err) => ExitCode::from(EXIT_OK),
        Err(err) => {
            eprintln!("choreo: {err:#}");
            ExitCode::from(EXIT_INPUT)
        }
    }
}

/// A closed stdout (`choreo graph … | head`) is the reader's choice, not a failure.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn broken_pipe_is_recognised_through_context() {
        let err = anyhow::Error::new(io::Error::from(io::ErrorKind::BrokenPipe))
            .context("writing the graph");
        assert!(is_broken_pipe(&err));
        assert!(!is_broken_pipe(&anyhow::anyhow!("other")));
    }
}
