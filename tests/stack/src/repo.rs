//! The repository's files the stack is made of, parsed: YAML with
//! serde-saphyr, JSON with serde_json, both into [`serde_json::Value`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("tests/stack sits two levels below the root")
        .to_path_buf()
}

/// `rel` (relative to the root) as text; panics naming the file.
pub fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

/// The YAML file `rel`, one document.
pub fn yaml(rel: &str) -> Value {
    serde_saphyr::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not valid YAML: {e}"))
}

/// The YAML file `rel`, every document.
pub fn yaml_docs(rel: &str) -> Vec<Value> {
    serde_saphyr::from_multiple(&read(rel))
        .unwrap_or_else(|e| panic!("{rel} is not valid YAML: {e}"))
}

/// The items of a YAML/JSON list as strings (non-strings as their JSON
/// text); empty for anything that is not a list. For command lines.
pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|s| match s {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect()
}

/// The files of directory `rel` whose name ends with `suffix`, sorted,
/// relative to the root.
pub fn files(rel: &str, suffix: &str) -> Vec<String> {
    let dir = root().join(rel);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {rel}: {e}"))
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(suffix))
        .map(|n| format!("{rel}/{n}"))
        .collect();
    names.sort();
    names
}

/// A Grafana dashboard of `docker/grafana/dashboards`.
#[derive(Debug, Clone)]
pub struct Dashboard {
    /// Its file, relative to the root.
    pub file: String,
    /// The dashboard JSON.
    pub json: Value,
}

/// One query of a dashboard panel.
#[derive(Debug, Clone)]
pub struct PanelQuery {
    /// The dashboard's uid.
    pub dashboard: String,
    /// The panel's title.
    pub panel: String,
    /// The panel's type (`timeseries`, `nodeGraph`...).
    pub panel_type: String,
    /// The query's refId.
    pub ref_id: String,
    /// The PromQL, with Grafana's variables still in it.
    pub expr: String,
}

impl PanelQuery {
    /// "dashboard / panel / refId": how the tests name a query.
    pub fn location(&self) -> String {
        format!("{} / {} / {}", self.dashboard, self.panel, self.ref_id)
    }
}

/// A template variable of a dashboard whose options come from
/// `label_values(metric, label)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Variable {
    /// Its name (`service` for `$service`).
    pub name: String,
    /// The series selector of `label_values`.
    pub matcher: String,
    /// The label whose values are the options.
    pub label: String,
    /// What "All" stands for, when the variable offers it.
    pub all_value: Option<String>,
}

/// Every dashboard, sorted by file.
pub fn dashboards() -> Vec<Dashboard> {
    files("docker/grafana/dashboards", ".json")
        .into_iter()
        .map(|file| {
            let json = serde_json::from_str(&read(&file))
                .unwrap_or_else(|e| panic!("{file} is not valid JSON: {e}"));
            Dashboard { file, json }
        })
        .collect()
}

impl Dashboard {
    /// The dashboard's uid.
    pub fn uid(&self) -> String {
        self.json["uid"].as_str().unwrap_or_default().to_owned()
    }

    /// Every panel, rows' nested panels included (rows themselves too).
    pub fn panels(&self) -> Vec<&Value> {
        fn walk<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
            for p in panels.as_array().into_iter().flatten() {
                out.push(p);
                walk(&p["panels"], out);
            }
        }
        let mut out = Vec::new();
        walk(&self.json["panels"], &mut out);
        out
    }

    /// Every query of every panel that is not hidden.
    pub fn queries(&self) -> Vec<PanelQuery> {
        let uid = self.uid();
        let mut out = Vec::new();
        for p in self.panels() {
            for t in p["targets"].as_array().into_iter().flatten() {
                if t["hide"] == true {
                    continue;
                }
                out.push(PanelQuery {
                    dashboard: uid.clone(),
                    panel: p["title"].as_str().unwrap_or_default().to_owned(),
                    panel_type: p["type"].as_str().unwrap_or_default().to_owned(),
                    ref_id: t["refId"].as_str().unwrap_or_default().to_owned(),
                    expr: t["expr"].as_str().unwrap_or_default().to_owned(),
                });
            }
        }
        out
    }

    /// The template variables; panics on a kind the tests cannot resolve.
    pub fn variables(&self) -> Vec<Variable> {
        let mut out = Vec::new();
        for v in self.json["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let name = v["name"].as_str().unwrap_or_default().to_owned();
            let query = v["query"]["query"]
                .as_str()
                .or_else(|| v["query"].as_str())
                .unwrap_or_default();
            let inner = query
                .strip_prefix("label_values(")
                .and_then(|q| q.strip_suffix(')'))
                .unwrap_or_else(|| {
                    panic!(
                        "{}: variable '{name}': only label_values(metric, label) queries are \
                         checked, found {query:?}",
                        self.file
                    )
                });
            let (matcher, label) = inner.rsplit_once(',').unwrap_or_else(|| {
                panic!(
                    "{}: variable '{name}': label_values needs a metric and a label",
                    self.file
                )
            });
            let (matcher, label) = (matcher.trim(), label.trim());
            // Grafana's query editor reads these fields, the variable support
            // the query text: they must agree.
            for (field, parsed) in [("metric", matcher), ("label", label)] {
                if let Some(set) = v["query"][field].as_str() {
                    assert_eq!(
                        set, parsed,
                        "{}: variable '{name}': query.{field} disagrees with {query:?}",
                        self.file
                    );
                }
            }
            out.push(Variable {
                name,
                matcher: matcher.to_owned(),
                label: label.to_owned(),
                all_value: (v["includeAll"] == true)
                    .then(|| v["allValue"].as_str().unwrap_or_default().to_owned()),
            });
        }
        out
    }
}

/// One alerting or recording rule of `docker/prometheus/rules`.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Its file, relative to the root.
    pub file: String,
    /// Its group.
    pub group: String,
    /// The alert's (or recorded series') name.
    pub name: String,
    /// Its expression.
    pub expr: String,
}

/// Every rule of every rule file.
pub fn rules() -> Vec<Rule> {
    let mut out = Vec::new();
    for file in files("docker/prometheus/rules", ".yml") {
        let doc = yaml(&file);
        for g in doc["groups"].as_array().into_iter().flatten() {
            for r in g["rules"].as_array().into_iter().flatten() {
                out.push(Rule {
                    file: file.clone(),
                    group: g["name"].as_str().unwrap_or_default().to_owned(),
                    name: r["alert"]
                        .as_str()
                        .or_else(|| r["record"].as_str())
                        .unwrap_or_default()
                        .to_owned(),
                    expr: r["expr"].as_str().unwrap_or_default().trim().to_owned(),
                });
            }
        }
    }
    out
}

/// Every metric family the crates export, by name, with its type: the
/// `METRICS` constants of the SDK (and in-process bus), the Kafka backend,
/// the tracer and the PostgreSQL outbox.
pub fn metric_catalog() -> BTreeMap<String, String> {
    choreo_bus::METRICS
        .iter()
        .chain(choreo_kafka::METRICS)
        .chain(choreo_trace::METRICS)
        .chain(choreo_postgres::METRICS)
        .map(|(name, kind, _, _)| ((*name).to_owned(), (*kind).to_owned()))
        .collect()
}

/// The family a series name belongs to: `x_bucket`, `x_sum` and `x_count`
/// belong to the histogram `x`.
pub fn family<'a>(name: &'a str, catalog: &BTreeMap<String, String>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && catalog.get(base).is_some_and(|k| k == "histogram")
        {
            return base;
        }
    }
    name
}
