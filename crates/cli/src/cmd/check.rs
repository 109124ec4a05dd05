//! `choreo check`: the static verifier over one or more topology files.

use std::fmt::Write as _;
use std::path::PathBuf;

use choreo_topology::{Diagnostic, Error, FlowPaths, PathLimits, Severity, Tally, Topology};
use serde_json::{Value, json};

use crate::{EXIT_FINDINGS, EXIT_INPUT, EXIT_OK};

/// Verify topology files: events nobody emits or consumes, flows that can't
/// end, cycles, unreached services, time bounds that can't hold, duplicates.
///
/// Every finding is printed as `file:line:column: severity[code]: message`
/// (codes are explained in docs/topology.md). Exit code 0 when clean (notes
/// allowed), 1 when there is an error, or a warning without --allow-warnings,
/// 2 when a file can't be read or is not a valid topology.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The topology files.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Also list the possible executions of each flow (through every one_of,
    /// loops unrolled twice).
    #[arg(long)]
    paths: bool,
    /// How many executions to list per flow with --paths.
    #[arg(long, default_value_t = 20, value_name = "N", requires = "paths")]
    max_paths: usize,
    /// Output format; json is stable (see docs/topology.md).
    #[arg(long, value_enum, default_value_t = Format::Human)]
    format: Format,
    /// Exit 0 when there are warnings but no errors.
    #[arg(long)]
    allow_warnings: bool,
}

/// An output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// One line per finding, then a summary per file.
    Human,
    /// One JSON document.
    Json,
}

/// The validated form of [`Args`].
#[derive(Debug, PartialEq)]
struct Config {
    files: Vec<PathBuf>,
    paths: Option<PathLimits>,
    format: Format,
    /// The least severity that makes the exit code 1.
    fail_at: Severity,
}

impl TryFrom<Args> for Config {
    type Error = anyhow::Error;

    fn try_from(args: Args) -> anyhow::Result<Self> {
        if args.paths && args.max_paths == 0 {
            anyhow::bail!("--max-paths must be at least 1");
        }
        Ok(Config {
            files: args.files,
            paths: args
                .paths
                .then(|| PathLimits::default().max_listed(args.max_paths)),
            format: args.format,
            fail_at: if args.allow_warnings {
                Severity::Error
            } else {
                Severity::Warning
            },
        })
    }
}

/// What checking one file gave.
enum Checked {
    /// The file could not be read.
    Unreadable(String),
    /// The file was read but is not a valid topology.
    Invalid(Vec<Diagnostic>),
    /// The verifier ran.
    Verified {
        topology: Box<Topology>,
        diagnostics: Vec<Diagnostic>,
        paths: Option<Vec<FlowPaths>>,
    },
}

fn check_one(path: &PathBuf, limits: Option<PathLimits>) -> Checked {
    match Topology::from_path(path) {
        Ok(topology) => {
            let diagnostics = topology.verify();
            let paths = limits.map(|l| topology.paths(l));
            Checked::Verified {
                topology: Box::new(topology),
                diagnostics,
                paths,
            }
        }
        Err(Error::Invalid { diagnostics, .. }) => Checked::Invalid(diagnostics),
        Err(other) => Checked::Unreadable(other.to_string()),
    }
}

pub(crate) fn run(args: Args) -> anyhow::Result<u8> {
    let config = Config::try_from(args)?;
    let results: Vec<(&PathBuf, Checked)> = config
        .files
        .iter()
        .map(|f| (f, check_one(f, config.paths)))
        .collect();
    let mut code = EXIT_OK;
    for (_, checked) in &results {
        let c = match checked {
            Checked::Unreadable(_) | Checked::Invalid(_) => EXIT_INPUT,
            Checked::Verified { diagnostics, .. } => {
                if diagnostics.iter().any(|d| d.severity >= config.fail_at) {
                    EXIT_FINDINGS
                } else {
                    EXIT_OK
                }
            }
        };
        code = code.max(c);
    }
    let text = match config.format {
        Format::Human => human(&results),
        Format::Json => {
            let mut s = serde_json::to_string_pretty(&json_report(&results, code))?;
            s.push('\n');
            s
        }
    };
    super::emit(super::output(None)?, &text)?;
    Ok(code)
}

fn plural(n: usize, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}

fn summary(tally: Tally) -> String {
    let mut parts = Vec::new();
    if tally.errors > 0 {
        parts.push(plural(tally.errors, "error"));
    }
    if tally.warnings > 0 {
        parts.push(plural(tally.warnings, "warning"));
    }
    if tally.notes > 0 {
        parts.push(plural(tally.notes, "note"));
    }
    parts.join(", ")
}

fn human(results: &[(&PathBuf, Checked)]) -> String {
    let mut out = String::new();
    for (path, checked) in results {
        let file = path.display();
        match checked {
            Checked::Unreadable(reason) => {
                let _ = writeln!(out, "{file}: error: {reason}");
            }
            Checked::Invalid(diagnostics) => {
                for d in diagnostics {
                    let _ = writeln!(out, "{d}");
                }
                let _ = writeln!(
                    out,
                    "{file}: not a valid topology: {}",
                    summary(Tally::of(diagnostics))
                );
            }
            Checked::Verified {
                topology,
                diagnostics,
                paths,
            } => {
                for d in diagnostics {
                    let _ = writeln!(out, "{d}");
                }
                let tally = Tally::of(diagnostics);
                let shape = format!(
                    "{}, {}, {}",
                    plural(topology.events().len(), "event"),
                    plural(topology.services().len(), "service"),
                    plural(topology.flows().len(), "flow")
                );
                if tally.errors + tally.warnings == 0 {
                    let notes = if tally.notes > 0 {
                        format!(", {}", plural(tally.notes, "note"))
                    } else {
                        String::new()
                    };
                    let _ = writeln!(out, "{file}: ok ({shape}{notes})");
                } else {
                    let _ = writeln!(out, "{file}: {} ({shape})", summary(tally));
                }
                for flow in paths.iter().flatten() {
                    human_paths(&mut out, flow);
                }
            }
        }
    }
    out
}

fn human_paths(out: &mut String, flow: &FlowPaths) {
    let count = if flow.exact {
        plural(usize::try_from(flow.count).unwrap_or(usize::MAX), "path")
    } else {
        format!("at least {} paths", flow.count)
    };
    let _ = writeln!(out, "flow '{}': {count}", flow.flow);
    for (i, execution) in flow.listed.iter().enumerate() {
        let _ = writeln!(out, "  {}. {execution}", i + 1);
    }
    let more = flow.more();
    if more > 0 {
        if flow.exact {
            let _ = writeln!(out, "  ... and {more} more");
        } else {
            let _ = writeln!(out, "  ... and at least {more} more");
        }
    }
}

fn diagnostic_json(d: &Diagnostic) -> Value {
    json!({
        "severity": d.severity,
        "code": d.code,
        "message": d.message,
        "file": d.file,
        "line": d.pos.line,
        "column": d.pos.column,
    })
}

fn json_report(results: &[(&PathBuf, Checked)], exit_code: u8) -> Value {
    let mut total = Tally::default();
    let files: Vec<Value> = results
        .iter()
        .map(|(path, checked)| {
            let file = path.display().to_string();
            match checked {
                Checked::Unreadable(reason) => json!({
                    "file": file,
                    "status": "unreadable",
                    "error": reason,
                    "diagnostics": [],
                }),
                Checked::Invalid(diagnostics) => {
                    let tally = Tally::of(diagnostics);
                    total.errors += tally.errors;
                    json!({
                        "file": file,
                        "status": "invalid",
                        "diagnostics": diagnostics.iter().map(diagnostic_json).collect::<Vec<_>>(),
                        "summary": tally,
                    })
                }
                Checked::Verified {
                    topology,
                    diagnostics,
                    paths,
                } => {
                    let tally = Tally::of(diagnostics);
                    total.errors += tally.errors;
                    total.warnings += tally.warnings;
                    total.notes += tally.notes;
                    let mut v = json!({
                        "file": file,
                        "status": "verified",
                        "topology": topology.name(),
                        "diagnostics": diagnostics.iter().map(diagnostic_json).collect::<Vec<_>>(),
                        "summary": tally,
                    });
                    if let Some(paths) = paths {
                        v["paths"] = paths
                            .iter()
                            .map(|f| {
                                json!({
                                    "flow": f.flow,
                                    "count": f.count,
                                    "exact": f.exact,
                                    "executions": f.listed.iter().map(|e| json!({
                                        "text": e.root.to_string(),
                                        "outcome": e.outcome,
                                        "ends": e.ends,
                                        "root": e.root,
                                    })).collect::<Vec<_>>(),
                                })
                            })
                            .collect();
                    }
                    v
                }
            }
        })
        .collect();
    json!({
        "format": "choreo-check",
        "version": 1,
        "files": files,
        "summary": total,
        "exit_code": exit_code,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(argv: &[&str]) -> Result<Args, clap::Error> {
        super::super::parse_args("check", argv)
    }

    #[test]
    fn warnings_fail_unless_allowed() {
        let strict = Config::try_from(parse(&["a.yaml"]).unwrap()).unwrap();
        assert_eq!(strict.fail_at, Severity::Warning);
        let lenient = Config::try_from(parse(&["a.yaml", "--allow-warnings"]).unwrap()).unwrap();
        assert_eq!(lenient.fail_at, Severity::Error);
    }

    #[test]
    fn paths_flag_sets_limits() {
        let c = Config::try_from(parse(&["a.yaml", "b.yaml"]).unwrap()).unwrap();
        assert_eq!(c.paths, None);
        assert_eq!(c.files.len(), 2);
        let c =
            Config::try_from(parse(&["a.yaml", "--paths", "--max-paths", "3"]).unwrap()).unwrap();
        assert_eq!(c.paths, Some(PathLimits::default().max_listed(3)));
    }

    #[test]
    fn bad_flag_combinations_are_rejected() {
        assert!(parse(&[]).is_err(), "a file is required");
        assert!(
            parse(&["a.yaml", "--max-paths", "3"]).is_err(),
            "--max-paths needs --paths"
        );
        assert!(parse(&["a.yaml", "--format", "xml"]).is_err());
        let zero = parse(&["a.yaml", "--paths", "--max-paths", "0"]).unwrap();
        assert!(Config::try_from(zero).is_err());
    }

    #[test]
    fn json_format_is_selected() {
        let c = Config::try_from(parse(&["a.yaml", "--format", "json"]).unwrap()).unwrap();
        assert_eq!(c.format, Format::Json);
    }
}
