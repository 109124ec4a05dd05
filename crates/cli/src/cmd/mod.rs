//! The subcommands, one module each, and what they share.

#[cfg(feature = "kafka")]
pub(crate) mod capture;
pub(crate) mod check;
pub(crate) mod demo;
#[cfg(feature = "kafka")]
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

/// Serves `registry` at `http://ADDR/metrics`, and the flow viewer beside
/// it when given, until `shutdown` is cancelled.
pub(crate) async fn serve_registry(
    addr: &str,
    registry: prometheus::Registry,
    viewer: Option<&choreo_ui::Viewer>,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<choreo_bus::MetricsServer> {
    let registries = std::sync::Arc::new(vec![registry]);
    let render: choreo_bus::Render = std::sync::Arc::new(move || choreo_bus::render(&registries));
    let mut server = choreo_bus::MetricsServer::builder(render);
    if let Some(v) = viewer {
        server = v.routes(server);
    }
    server
        .start(addr, shutdown)
        .await
        .with_context(|| format!("cannot serve metrics at {addr}"))
}

/// A single-threaded tokio runtime for a command's Kafka or network work.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")
}

/// A progress bar on stderr when it is a terminal and the work is worth one
/// (`total` at least `worth`); none when piped or asked to be quiet.
pub(crate) fn progress_bar(
    wanted: bool,
    total: u64,
    worth: u64,
    template: &str,
) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal as _;
    if !wanted || !io::stderr().is_terminal() || total < worth {
        return None;
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    Some(bar)
}

/// Parses one subcommand's flags as the `choreo` binary would, for the
/// commands' tests of their flag conversions.
#[cfg(test)]
pub(crate) fn parse_args<A: clap::Args>(command: &str, argv: &[&str]) -> Result<A, clap::Error> {
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap<A: clap::Args> {
        #[command(flatten)]
        args: A,
    }

    let mut all = vec![command];
    all.extend_from_slice(argv);
    Wrap::<A>::try_parse_from(all).map(|w| w.args)
}
