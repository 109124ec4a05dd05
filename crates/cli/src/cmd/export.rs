//! `choreo export`: the topology in other ecosystems' formats.

use std::path::PathBuf;

use choreo_topology::asyncapi;

use crate::EXIT_OK;

/// Export a topology to another format.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Export {
    /// An AsyncAPI 3.0 document (JSON): channels are topics, messages are event
    /// types (with the payload schema where the topology names one), operations
    /// are each service's sends and receives.
    Asyncapi(AsyncapiArgs),
}

/// Arguments of `choreo export asyncapi`.
#[derive(Debug, clap::Args)]
pub(crate) struct AsyncapiArgs {
    /// The topology file.
    file: PathBuf,
    /// Write to this file instead of standard output.
    #[arg(long, short)]
    output: Option<PathBuf>,
}

pub(crate) fn run(export: Export) -> anyhow::Result<u8> {
    match export {
        Export::Asyncapi(args) => {
            let topology = super::load(&args.file)?;
            let doc = asyncapi::export(&topology, asyncapi::read_schema_files(&topology))?;
            let mut text = serde_json::to_string_pretty(&doc)?;
            text.push('\n');
            super::emit(super::output(args.output.as_ref())?, &text)?;
            Ok(EXIT_OK)
        }
    }
}
