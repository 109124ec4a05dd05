//! Just enough of PromQL's lexical structure for the tests: the metric names
//! an expression reads, Grafana's template variables, and an alert's
//! threshold.

use std::collections::{BTreeMap, BTreeSet};

/// The prefixes of the metric families choreo exports: every identifier of
/// an expression that starts with one is a metric name (no label is named so).
pub const PREFIXES: &[&str] = &["choreo_", "traces_service_graph_"];

/// Byte ranges of `expr` that are outside string literals.
fn code_spans(expr: &str) -> Vec<(usize, usize)> {
    let bytes = expr.as_bytes();
    let (mut spans, mut start, mut i) = (Vec::new(), 0, 0);
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'"' || c == b'\'' || c == b'`' {
            spans.push((start, i));
            i += 1;
            while i < bytes.len() && bytes[i] != c {
                if bytes[i] == b'\\' && c != b'`' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            start = i.min(bytes.len());
        } else {
            i += 1;
        }
    }
    spans.push((start, bytes.len()));
    spans
}

/// The metric names `expr` reads: identifiers (outside string literals) that
/// start with one of [`PREFIXES`], histogram suffixes included
/// (`choreo_flow_duration_seconds_bucket`).
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (from, to) in code_spans(expr) {
        let code = &expr[from..to];
        let mut ident = String::new();
        for c in code.chars().chain(std::iter::once(' ')) {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                ident.push(c);
                continue;
            }
            if PREFIXES.iter().any(|p| ident.starts_with(p)) {
                names.insert(std::mem::take(&mut ident));
            }
            ident.clear();
        }
    }
    names
}

/// Splits an alert expression that ends with a comparison against a number
/// (`sum(...) > 10`) into the compared expression and the threshold, so the
/// part that must have data can be checked even when the alert does not fire.
/// `None` when the expression does not end so.
pub fn split_threshold(expr: &str) -> Option<(&str, &str)> {
    let bytes = expr.as_bytes();
    let mut depth = 0i32;
    let mut last = None;
    for (from, to) in code_spans(expr) {
        let mut i = from;
        while i < to {
            match bytes[i] {
                b'(' | b'{' | b'[' => depth += 1,
                b')' | b'}' | b']' => depth -= 1,
                b'>' | b'<' | b'=' | b'!' if depth == 0 => {
                    let two = i + 1 < to && bytes[i + 1] == b'=';
                    let op = match (bytes[i], two) {
                        (b'>' | b'<', _) | (b'=' | b'!', true) => Some(if two { 2 } else { 1 }),
                        _ => None,
                    };
                    if let Some(len) = op {
                        last = Some((i, i + len));
                        i += len;
                        continue;
                    }
                }
                _ => {}
            }
            i += 1;
        }
    }
    let (op_start, op_end) = last?;
    let mut rest = expr[op_end..].trim();
    if let Some(r) = rest.strip_prefix("bool") {
        rest = r.trim();
    }
    rest.parse::<f64>().ok()?;
    Some((expr[..op_start].trim(), rest))
}

/// Replaces Grafana's template variables (`$name`, `${name}`,
/// `${name:format}`) by their values. A variable without a value is an
/// error naming it.
pub fn substitute(expr: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, len) = if let Some(braced) = after.strip_prefix('{') {
            let end = braced
                .find('}')
                .ok_or_else(|| format!("unclosed '${{' in {expr}"))?;
            let inner = &braced[..end];
            (inner.split(':').next().unwrap_or(inner), end + 2)
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        if name.is_empty() {
            // A regex anchor or a label_replace reference such as "$1".
            out.push('$');
            rest = after;
            continue;
        }
        if name.chars().all(|c| c.is_ascii_digit()) {
            out.push('$');
            out.push_str(name);
            rest = &after[len..];
            continue;
        }
        let value = vars
            .get(name)
            .ok_or_else(|| format!("variable '${name}' has no value (in {expr})"))?;
        out.push_str(value);
        rest = &after[len..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_skip_labels_strings_and_functions() {
        let names = metric_names(
            r#"histogram_quantile(0.95, sum by (flow, le) (rate(choreo_flow_duration_seconds_bucket{flow=~"choreo_x", status="completed"}[5m]))) / on (instance) choreo_trace_cap{cap="flows"}"#,
        );
        assert_eq!(
            names.into_iter().collect::<Vec<_>>(),
            ["choreo_flow_duration_seconds_bucket", "choreo_trace_cap"]
        );
        let graph = metric_names(
            r#"label_replace(rate(traces_service_graph_request_total[1m]), "id", "$1", "server", "(.*)")"#,
        );
        assert_eq!(
            graph.into_iter().collect::<Vec<_>>(),
            ["traces_service_graph_request_total"]
        );
    }

    #[test]
    fn thresholds_split_at_the_last_top_level_comparison() {
        assert_eq!(
            split_threshold("sum by (flow) (increase(choreo_flow_stuck_total[10m])) > 0"),
            Some((
                "sum by (flow) (increase(choreo_flow_stuck_total[10m]))",
                "0"
            ))
        );
        assert_eq!(
            split_threshold("(a or b{x=\"1>2\"}) >= bool 0.8"),
            Some(("(a or b{x=\"1>2\"})", "0.8"))
        );
        assert_eq!(split_threshold("a / b > c"), None);
        assert_eq!(split_threshold("rate(x{a!=\"b\"}[5m])"), None);
        assert_eq!(split_threshold("x == 1 or y"), None);
    }

    #[test]
    fn variables_are_substituted_and_missing_ones_named() {
        let vars = BTreeMap::from([
            ("service".to_owned(), "inventory".to_owned()),
            ("__rate_interval".to_owned(), "10s".to_owned()),
        ]);
        assert_eq!(
            substitute(
                r#"rate(x{service=~"$service", g="${service:regex}"}[$__rate_interval]) and label_replace(y, "a", "$1", "b", "(.*)")"#,
                &vars
            )
            .unwrap(),
            r#"rate(x{service=~"inventory", g="inventory"}[10s]) and label_replace(y, "a", "$1", "b", "(.*)")"#
        );
        let err = substitute("x[$__range]", &vars).unwrap_err();
        assert!(err.contains("'$__range'"), "{err}");
    }
}
