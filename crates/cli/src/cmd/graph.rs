//! `choreo graph`: the service graph as DOT, Mermaid or JSON.

use std::path::PathBuf;

use choreo_topology::render::{self, GraphOptions};

use crate::EXIT_OK;

/// Draw a topology's service graph: services as nodes, events as labelled edges.
///
/// DOT renders with Graphviz (`choreo graph t.yaml | dot -Tsvg > t.svg`);
/// Mermaid renders on GitHub in a ```mermaid block; JSON is for tools
/// (format in docs/topology.md).
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The topology file.
    file: PathBuf,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Format::Dot)]
    format: Format,
    /// Draw topics as nodes between emitters and consumers.
    #[arg(long)]
    topics: bool,
    /// Write to this file instead of standard output.
    #[arg(long, short)]
    output: Option<PathBuf>,
}

/// A graph format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// Graphviz DOT.
    Dot,
    /// A Mermaid flowchart.
    Mermaid,
    /// JSON: nodes and edges.
    Json,
}

/// The validated form of [`Args`].
#[derive(Debug, PartialEq)]
struct Config {
    file: PathBuf,
    format: Format,
    options: GraphOptions,
    output: Option<PathBuf>,
}

impl From<Args> for Config {
    fn from(args: Args) -> Self {
        Config {
            file: args.file,
            format: args.format,
            options: GraphOptions::default().topics(args.topics),
            output: args.output,
        }
    }
}

pub(crate) fn run(args: Args) -> anyhow::Result<u8> {
    let config = Config::from(args);
    let topology = super::load(&config.file)?;
    let text = match config.format {
        Format::Dot => render::dot(&topology, config.options),
        Format::Mermaid => render::mermaid(&topology, config.options),
        Format::Json => {
            let mut s = serde_json::to_string_pretty(&render::json(&topology, config.options))?;
            s.push('\n');
            s
        }
    };
    super::emit(super::output(config.output.as_ref())?, &text)?;
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(argv: &[&str]) -> Config {
        Config::from(super::super::parse_args::<Args>("graph", argv).unwrap())
    }

    #[test]
    fn defaults_to_dot_without_topics() {
        let c = config(&["t.yaml"]);
        assert_eq!(c.format, Format::Dot);
        assert_eq!(c.options, GraphOptions::default().topics(false));
        assert_eq!(c.output, None);
    }

    #[test]
    fn topics_and_format_flags_convert() {
        let c = config(&["t.yaml", "--format", "mermaid", "--topics", "-o", "g.mmd"]);
        assert_eq!(c.format, Format::Mermaid);
        assert_eq!(c.options, GraphOptions::default().topics(true));
        assert_eq!(c.output, Some(PathBuf::from("g.mmd")));
    }

    #[test]
    fn unknown_format_is_a_usage_error() {
        assert!(super::super::parse_args::<Args>("graph", &["t.yaml", "--format", "svg"]).is_err());
    }
}
