//! What `choreo trace` prints: the report in a format, one flow in a format, the flows a `--find` matched.

use std::fmt::Write as _;

use choreo_trace::{FlowStatus, FlowSummary, FlowTrace, Report};

use super::Format;

/// The whole report in `format`; `None` for `flows-jsonl` (the tracer wrote
/// the lines as flows finished).
pub(super) fn report(report: &Report, format: Format) -> anyhow::Result<Option<String>> {
    Ok(Some(match format {
        Format::Human => report.summary(),
        Format::Json => pretty(&serde_json::to_value(report)?)?,
        Format::Dot => report.graph_dot(),
        Format::Mermaid => report.graph_mermaid(),
        Format::FlowsJsonl => return Ok(None),
    }))
}

/// One flow in `format`.
pub(super) fn flow(flow: &FlowTrace, format: Format) -> anyhow::Result<String> {
    Ok(match format {
        Format::Human => flow.timeline(),
        Format::Json => pretty(&flow.to_json())?,
        Format::Dot => flow.to_dot(),
        Format::Mermaid => flow.to_mermaid(),
        Format::FlowsJsonl => line(&flow.summary())?,
    })
}

/// Whether a flow is something to act on: findings that are violations, or
/// a failed or stuck status.
pub(super) fn is_bad(flow: &FlowTrace) -> bool {
    flow.findings.iter().any(|f| f.rule.is_violation())
        || matches!(flow.status, FlowStatus::Failed | FlowStatus::Stuck)
}

/// The flows a `--find` matched, in `format` (a table for people).
pub(super) fn found(query: &str, flows: &[&FlowTrace], format: Format) -> anyhow::Result<String> {
    match format {
        Format::Json => {
            let list: Vec<FlowSummary> = flows.iter().map(|f| f.summary()).collect();
            pretty(&serde_json::to_value(list)?)
        }
        Format::FlowsJsonl => {
            let mut out = String::new();
            for f in flows {
                out.push_str(&line(&f.summary())?);
            }
            Ok(out)
        }
        Format::Dot | Format::Mermaid => anyhow::bail!(
            "--format dot and mermaid draw one flow: pick it with --flow ID from the list `--find {query}` prints"
        ),
        Format::Human => {
            let mut out = String::new();
            let _ = writeln!(
                out,
                "{} flow{} match '{query}':",
                flows.len(),
                if flows.len() == 1 { "" } else { "s" }
            );
            for f in flows {
                let mut rules: Vec<&str> = f.findings.iter().map(|x| x.rule.code()).collect();
                rules.sort_unstable();
                rules.dedup();
                let _ = writeln!(
                    out,
                    "  {}  {:<16} {:<12} started {}{}",
                    f.correlation_id,
                    f.flow.as_deref().unwrap_or("unknown"),
                    f.status.as_str(),
                    f.started,
                    if rules.is_empty() {
                        String::new()
                    } else {
                        format!("  ✗ {}", rules.join(", "))
                    }
                );
                for o in &f.owed {
                    let _ = writeln!(
                        out,
                        "      '{}' owes {}{} for {} since {}",
                        o.service,
                        if o.one_of { "one of " } else { "" },
                        if o.owes.is_empty() {
                            "a receipt".to_owned()
                        } else {
                            o.owes.join(", ")
                        },
                        o.event_type,
                        o.since
                    );
                }
            }
            let _ = writeln!(out, "(`choreo trace … --flow ID` shows one)");
            Ok(out)
        }
    }
}

fn line(summary: &FlowSummary) -> anyhow::Result<String> {
    let mut s = serde_json::to_string(summary)?;
    s.push('\n');
    Ok(s)
}

pub(super) fn pretty(v: &serde_json::Value) -> anyhow::Result<String> {
    let mut s = serde_json::to_string_pretty(v)?;
    s.push('\n');
    Ok(s)
}
