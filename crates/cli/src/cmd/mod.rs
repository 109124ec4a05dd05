//! The subcommands, one module each, and what they share.

pub(crate) mod capture;
pub(crate) mod check;
pub(crate) mod demo;
pub(crate) mod dlq;
pub(crate) mod export;
pub(crate) mod graph;
pub(crate) mod kafka;
pub(crate) mod simulate;
pub(crate) mod trace;

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use choreo_topology::{Error, Topology};

/// Loads a topology; an invalid one becomes an error listing every problem.
pub(crate) fn load(path: &Path) -> anyhow::Result<Topology> {
    Topology::from_path(path).map_err(|err| match err {
        Error::Invalid { file, diagnostics } => {
            let list: Vec<String> = diagnostics.iter().map(|d| format!("  {d}")).collect();
            anyhow::anyhow!(
                "{file} is not a valid topology ({} problem{}):\n{}",
                diagnostics.len(),
                if diagnostics.len() == 1 { "" } else { "s" },
                list.join("\n")
            )
        }
        other => anyhow::Error::new(other),
    })
}

/// Where output goes: a file (`-o`) or standard output.
pub(crate) fn output(to: Option<&PathBuf>) -> anyhow::Result<Box<dyn Write>> {
    Ok(match to {
        Some(path) if path.as_os_str() != "-" => {
            Box::new(BufWriter::new(File::create(path).with_context(|| {
                format!("cannot create '{}'", path.display())
            })?))
        }
        _ => Box::new(BufWriter::new(io::stdout().lock())),
    })
}

/// Writes `text` and flushes, so a closed pipe is seen here as an io error.
pub(crate) fn emit(mut out: Box<dyn Write>, text: &str) -> anyhow::Result<()> {
    out.write_all(text.as_bytes())
        .context("cannot write the output")?;
    out.flush().context("cannot write the output")?;
    Ok(())
}
