//! The files of `docker/` checked against the real tools, the crates and
//! each other: promtool on the Prometheus config and rules; the dashboards'
//! shape and metric names; the compose file and the Kubernetes manifests
//! against the topology they run.

use std::collections::{BTreeMap, BTreeSet};

use choreo_core::RECEIPTS_TOPIC;
use choreo_stack_tests::repo::{self, Dashboard, strings};
use choreo_stack_tests::{prom, promql};
use choreo_topology::Topology;
use serde_json::Value;

const TOPOLOGY: &str = "topologies/order-fulfillment.yaml";

/// The example topology, through the project's own loader.
fn topology() -> Topology {
    Topology::parse(&repo::read(TOPOLOGY), TOPOLOGY).expect("the example topology loads")
}

fn topology_services() -> BTreeSet<String> {
    topology().services().map(|s| s.name.clone()).collect()
}

fn topology_topics() -> BTreeSet<String> {
    topology().topics().iter().cloned().collect()
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

fn compose() -> Value {
    repo::yaml("docker/compose.yaml")
}

/// The provisioned Prometheus data source's uid.
fn datasource_uid() -> String {
    let ds = repo::yaml("docker/grafana/provisioning/datasources/prometheus.yml");
    let list = ds["datasources"].as_array().expect("datasources");
    assert_eq!(list.len(), 1, "one provisioned data source");
    assert_eq!(list[0]["type"], "prometheus");
    list[0]["uid"].as_str().expect("a fixed uid").to_owned()
}

#[test]
fn promtool_accepts_the_config_and_the_rules() {
    let root = repo::root();
    let out = prom::promtool(
        &["check", "config", "docker/prometheus/prometheus.yml"],
        None,
        &root,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let rule_files = repo::files("docker/prometheus/rules", ".yml");
    assert!(!rule_files.is_empty(), "no rule file");
    assert!(
        out.contains(&format!("SUCCESS: {} rule files found", rule_files.len())),
        "prometheus.yml must load every file of docker/prometheus/rules:\n{out}"
    );
    for file in &rule_files {
        let out = prom::promtool(&["check", "rules", file], None, &root)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(out.contains("SUCCESS"), "{out}");
    }
}

#[test]
fn every_alert_fires_in_its_promtool_unit_test() {
    let tests = "docker/prometheus/tests/choreo.yml";
    prom::promtool(&["test", "rules", tests], None, &repo::root())
        .unwrap_or_else(|e| panic!("{e}"));
    // Each alert has a case where it fires, and one where it stays quiet.
    let doc = repo::yaml(tests);
    let (mut fires, mut quiet) = (BTreeSet::new(), BTreeSet::new());
    for t in doc["tests"].as_array().expect("tests") {
        for case in t["alert_rule_test"].as_array().expect("alert_rule_test") {
            let name = case["alertname"].as_str().expect("alertname").to_owned();
            if case["exp_alerts"].as_array().is_some_and(|a| !a.is_empty()) {
                fires.insert(name);
            } else {
                quiet.insert(name);
            }
        }
    }
    let alerts: BTreeSet<String> = repo::rules().into_iter().map(|r| r.name).collect();
    assert_eq!(fires, alerts, "every alert has a case where it fires");
    assert_eq!(quiet, alerts, "every alert has a case where it stays quiet");
}

#[test]
fn alerts_say_what_and_how_bad() {
    let mut names = BTreeSet::new();
    for file in repo::files("docker/prometheus/rules", ".yml") {
        let doc = repo::yaml(&file);
        for g in doc["groups"].as_array().expect("groups") {
            for r in g["rules"].as_array().expect("rules") {
                let name = r["alert"].as_str().expect("alerting rules only");
                assert!(names.insert(name.to_owned()), "alert {name} twice");
                assert!(
                    r["labels"]["severity"].is_string(),
                    "{file}: {name} has no severity label"
                );
                for a in ["summary", "description"] {
                    assert!(
                        r["annotations"][a].as_str().is_some_and(|s| !s.is_empty()),
                        "{file}: {name} has no {a}"
                    );
                }
            }
        }
    }
    for wanted in [
        "ChoreoFlowsStuck",
        "ChoreoDeadLettersGrowing",
        "ChoreoViolationSpike",
        "ChoreoConsumerLagHigh",
        "ChoreoTracerEvicting",
    ] {
        assert!(names.contains(wanted), "no alert {wanted}: {names:?}");
    }
}

#[test]
fn dashboards_are_well_formed() {
    let uid = datasource_uid();
    let dashboards = repo::dashboards();
    let uids: BTreeSet<String> = dashboards.iter().map(Dashboard::uid).collect();
    assert_eq!(
        uids,
        BTreeSet::from(["choreo-overview", "choreo-service", "choreo-tracer"].map(String::from))
    );
    for d in &dashboards {
        let f = &d.file;
        assert!(
            d.json["schemaVersion"].as_u64().is_some_and(|v| v >= 39),
            "{f}: schemaVersion below Grafana 11's"
        );
        assert!(d.json["title"].is_string(), "{f}: no title");
        let variables: BTreeSet<String> = d.variables().into_iter().map(|v| v.name).collect();
        let mut ids = BTreeSet::new();
        for p in d.panels() {
            let title = p["title"].as_str().unwrap_or_default();
            assert!(!title.is_empty(), "{f}: a panel without title");
            assert!(
                ids.insert(p["id"].as_u64()),
                "{f}: panel id {} twice",
                p["id"]
            );
            let g = &p["gridPos"];
            let (x, w) = (g["x"].as_u64(), g["w"].as_u64());
            assert!(
                matches!((x, w, g["h"].as_u64()), (Some(x), Some(w), Some(_)) if x + w <= 24),
                "{f}: '{title}' is outside the 24-column grid: {g}"
            );
            if p["type"] == "row" {
                continue;
            }
            assert_eq!(
                p["datasource"]["uid"], uid,
                "{f}: '{title}' must use the provisioned data source"
            );
            let targets = p["targets"].as_array();
            assert!(
                targets.is_some_and(|t| !t.is_empty()),
                "{f}: '{title}' has no query"
            );
            let mut refs = BTreeSet::new();
            for t in targets.into_iter().flatten() {
                let r = t["refId"].as_str().unwrap_or_default();
                assert!(refs.insert(r.to_owned()), "{f}: '{title}': refId {r} twice");
                assert_eq!(t["datasource"]["uid"], uid, "{f}: '{title}' {r}");
                let expr = t["expr"].as_str().unwrap_or_default();
                assert!(!expr.is_empty(), "{f}: '{title}' {r} has no expr");
                // Every variable the query uses is defined (or Grafana's own).
                let mut vars: BTreeMap<String, String> = variables
                    .iter()
                    .map(|v| (v.clone(), "x".to_owned()))
                    .collect();
                vars.insert("__rate_interval".into(), "1m".into());
                vars.insert("__range".into(), "1h".into());
                vars.insert("__interval".into(), "1m".into());
                promql::substitute(expr, &vars).unwrap_or_else(|e| panic!("{f}: '{title}': {e}"));
            }
        }
    }
}

#[test]
fn the_service_graph_panel_is_a_node_graph_of_the_service_graph_series() {
    let overview = repo::dashboards()
        .into_iter()
        .find(|d| d.uid() == "choreo-overview")
        .expect("the overview dashboard");
    let panel = overview
        .panels()
        .into_iter()
        .find(|p| p["type"] == "nodeGraph")
        .expect("a node graph panel");
    let refs: Vec<String> = panel["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            // Instant tables: one row per node or edge, as the node graph reads them.
            assert_eq!(t["format"], "table", "{t}");
            assert_eq!(t["instant"], true, "{t}");
            assert!(
                t["expr"]
                    .as_str()
                    .is_some_and(|e| e.contains("traces_service_graph_request_total")),
                "{t}"
            );
            t["refId"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    // The node graph tells nodes from edges by these refIds (and the edges
    // by their `source` field).
    assert_eq!(refs, ["nodes", "edges"]);
    let calc = panel["transformations"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["id"] == "calculateField"))
        .expect("the value becomes the `mainstat` field");
    assert_eq!(calc["options"]["alias"], "mainstat");
    // Without it Grafana would join the two frames into one by time.
    assert_eq!(calc["options"]["timeSeries"], false);
}

#[test]
fn every_metric_a_dashboard_or_rule_reads_is_exported_by_a_crate() {
    let catalog = repo::metric_catalog();
    assert_eq!(
        catalog.get("choreo_kafka_consumer_lag").map(String::as_str),
        Some("gauge"),
        "the Kafka backend's lag gauge, in choreo_kafka::METRICS"
    );
    let mut used = BTreeMap::new();
    for d in repo::dashboards() {
        for q in d.queries() {
            for name in promql::metric_names(&q.expr) {
                used.entry(name).or_insert_with(|| q.location());
            }
        }
    }
    for r in repo::rules() {
        for name in promql::metric_names(&r.expr) {
            used.entry(name)
                .or_insert_with(|| format!("rule {}", r.name));
        }
    }
    assert!(used.len() > 20, "too few metric names found: {used:?}");
    for (name, where_) in &used {
        let family = repo::family(name, &catalog);
        assert!(
            catalog.contains_key(family),
            "{where_} reads '{name}', which is in no crate's METRICS (choreo-bus, \
             choreo-kafka, choreo-trace)"
        );
    }
}

#[test]
fn compose_runs_the_topology_on_kafka() {
    let c = compose();
    let services = &c["services"];
    let names = keys(services);
    for s in ["kafka", "kafka-init", "tracer", "prometheus", "grafana"] {
        assert!(names.contains(s), "compose has no '{s}' service");
    }
    for (name, s) in services.as_object().expect("services") {
        let image = s["image"].as_str().unwrap_or_default();
        let (_, tag) = image
            .rsplit_once(':')
            .unwrap_or_else(|| panic!("'{name}': image '{image}' has no pinned tag"));
        assert!(
            !tag.is_empty() && tag != "latest",
            "'{name}': pin the image '{image}'"
        );
    }
    assert!(
        services["kafka"]["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("apache/kafka:")),
        "Kafka is the official image"
    );
    let env = &services["kafka"]["environment"];
    assert_eq!(
        env["KAFKA_PROCESS_ROLES"], "broker,controller",
        "KRaft, one node"
    );

    // One container per service of the topology, all of the choreo image.
    let image = services["tracer"]["image"].as_str().expect("tracer image");
    assert!(services["tracer"]["build"]["dockerfile"] == "docker/Dockerfile");
    let mut saga = BTreeSet::new();
    for (name, s) in services.as_object().expect("services") {
        let cmd = strings(&s["command"]);
        if cmd.first().map(String::as_str) != Some("order-saga") {
            continue;
        }
        assert_eq!(s["image"], image, "'{name}' runs another image");
        let service = cmd
            .iter()
            .position(|a| a == "--service")
            .and_then(|i| cmd.get(i + 1))
            .unwrap_or_else(|| panic!("'{name}' runs no --service"));
        assert_eq!(service, name, "the container is named after its service");
        assert_eq!(
            s["depends_on"]["kafka-init"]["condition"], "service_completed_successfully",
            "'{name}' starts once the topics exist"
        );
        saga.insert(name.clone());
    }
    assert_eq!(
        saga,
        topology_services(),
        "one container per topology service"
    );

    // kafka-init creates every topic the saga uses, and their dead letters.
    let init = strings(&services["kafka-init"]["command"]).join(" ");
    let mut wanted = topology_topics();
    for t in topology_topics() {
        wanted.insert(format!("{t}.dlq"));
    }
    wanted.insert(RECEIPTS_TOPIC.to_owned());
    let listed: BTreeSet<String> = init
        .lines()
        .find_map(|l| l.trim().strip_prefix("for topic in "))
        .and_then(|l| l.strip_suffix("; do"))
        .expect("kafka-init loops over the topics")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(listed, wanted, "kafka-init's topics");

    // The tracer follows Kafka against the topology, mounted from the repo.
    let tracer = strings(&services["tracer"]["command"]);
    assert_eq!(tracer[..2], ["choreo", "trace"]);
    assert!(tracer.contains(&"--follow".to_owned()), "{tracer:?}");
    let topo_arg = tracer
        .iter()
        .position(|a| a == "--topology")
        .and_then(|i| tracer.get(i + 1))
        .expect("the tracer gets the topology");
    assert_eq!(
        host_path(&services["tracer"], topo_arg).as_deref(),
        Some("topologies/order-fulfillment.yaml"),
        "the tracer's --topology is the repository's topology"
    );

    // Every bind mount exists.
    for (name, s) in services.as_object().expect("services") {
        for v in strings(&s["volumes"]) {
            let src = v.split(':').next().unwrap_or_default();
            if src.starts_with('.') {
                let path = repo::root().join("docker").join(src);
                assert!(path.exists(), "'{name}' mounts {src}, which does not exist");
            }
        }
    }
    assert!(
        repo::root()
            .join("docker")
            .join(
                services["tracer"]["build"]["context"]
                    .as_str()
                    .expect("context")
            )
            .join("Cargo.toml")
            .is_file(),
        "the build context is the workspace root"
    );
}

/// The repository path (relative to the root) that `container_path` of
/// `service` comes from, through its bind mounts.
fn host_path(service: &Value, container_path: &str) -> Option<String> {
    strings(&service["volumes"]).into_iter().find_map(|v| {
        let mut parts = v.split(':');
        let (src, dst) = (parts.next()?, parts.next()?);
        let rest = container_path.strip_prefix(dst)?;
        let src = src.strip_prefix("../")?.trim_end_matches('/');
        Some(format!("{src}{rest}"))
    })
}

#[test]
fn prometheus_scrapes_what_compose_runs_and_grafana_reads_it() {
    let c = compose();
    let services = &c["services"];
    let p = repo::yaml("docker/prometheus/prometheus.yml");
    let mut targets = BTreeSet::new();
    for job in p["scrape_configs"].as_array().expect("scrape_configs") {
        for sc in job["static_configs"].as_array().expect("static_configs") {
            targets.extend(strings(&sc["targets"]));
        }
    }
    // Everything that serves metrics in compose is scraped at its port.
    let mut serving = BTreeSet::new();
    for (name, s) in services.as_object().expect("services") {
        let cmd = strings(&s["command"]);
        if let Some(addr) = cmd
            .iter()
            .position(|a| a == "--metrics-addr")
            .and_then(|i| cmd.get(i + 1))
        {
            let port = addr.rsplit(':').next().unwrap_or_default();
            serving.insert(format!("{name}:{port}"));
        }
    }
    assert_eq!(targets, serving, "Prometheus' targets");
    assert_eq!(strings(&p["rule_files"]), ["rules/*.yml"]);
    let mounts = strings(&services["prometheus"]["volumes"]);
    assert!(
        mounts.contains(&"./prometheus:/etc/prometheus:ro".to_owned()),
        "{mounts:?}"
    );

    // Grafana: the data source is compose's Prometheus, the dashboards are
    // provisioned from where compose mounts them, the home dashboard exists.
    let ds = repo::yaml("docker/grafana/provisioning/datasources/prometheus.yml");
    assert_eq!(ds["datasources"][0]["url"], "http://prometheus:9090");
    let provider = repo::yaml("docker/grafana/provisioning/dashboards/choreo.yml");
    let path = provider["providers"][0]["options"]["path"]
        .as_str()
        .expect("provider path");
    let grafana = &services["grafana"];
    let mounts = strings(&grafana["volumes"]);
    assert!(
        mounts.contains(&format!("./grafana/dashboards:{path}:ro")),
        "the provider reads {path}, compose mounts {mounts:?}"
    );
    let home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
        .as_str()
        .expect("a home dashboard");
    let file = home
        .strip_prefix(path)
        .expect("the home dashboard is provisioned");
    assert!(
        repo::root()
            .join("docker/grafana/dashboards")
            .join(file.trim_start_matches('/'))
            .is_file(),
        "{home}"
    );
    assert_eq!(grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"], "true");
    assert_eq!(
        grafana["environment"]["GF_AUTH_ANONYMOUS_ORG_ROLE"],
        "Viewer"
    );
}

/// The Kubernetes objects of docker/k8s, by kind and name.
fn k8s() -> BTreeMap<(String, String), Value> {
    let mut out = BTreeMap::new();
    for file in repo::files("docker/k8s", ".yaml") {
        for doc in repo::yaml_docs(&file) {
            if doc.is_null() {
                continue;
            }
            let kind = doc["kind"].as_str().expect("kind").to_owned();
            let name = doc["metadata"]["name"].as_str().expect("name").to_owned();
            assert!(
                kind == "Namespace" || doc["metadata"]["namespace"] == "choreo",
                "{file}: {kind}/{name} is outside the choreo namespace"
            );
            assert!(
                out.insert((kind.clone(), name.clone()), doc).is_none(),
                "{kind}/{name} twice"
            );
        }
    }
    out
}

#[test]
fn the_config_map_holds_the_topology_verbatim() {
    let objects = k8s();
    let cm = &objects[&("ConfigMap".to_owned(), "choreo-topology".to_owned())];
    let held = cm["data"]["order-fulfillment.yaml"]
        .as_str()
        .expect("the ConfigMap holds order-fulfillment.yaml");
    assert!(
        held == repo::read(TOPOLOGY),
        "docker/k8s/10-config.yaml holds another order-fulfillment.yaml than {TOPOLOGY}: \
         copy the topology into it again"
    );
}

#[test]
fn the_manifests_run_the_topology_behind_the_check_gate() {
    let objects = k8s();
    let pod = |kind: &str, name: &str| -> Value {
        objects
            .get(&(kind.to_owned(), name.to_owned()))
            .unwrap_or_else(|| panic!("no {kind}/{name}"))["spec"]["template"]["spec"]
            .clone()
    };
    let mounts_topology = |spec: &Value, path_arg: &str| {
        let volume = spec["volumes"]
            .as_array()
            .and_then(|v| {
                v.iter()
                    .find(|v| v["configMap"]["name"] == "choreo-topology")
            })
            .expect("the topology ConfigMap is a volume");
        let mount = spec["containers"][0]["volumeMounts"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["name"] == volume["name"]))
            .expect("and it is mounted");
        let dir = mount["mountPath"].as_str().expect("mountPath");
        assert_eq!(path_arg, format!("{dir}/order-fulfillment.yaml"));
    };

    let job = pod("Job", "choreo-check");
    let cmd = strings(&job["containers"][0]["command"]);
    assert_eq!(cmd[..2], ["choreo", "check"]);
    mounts_topology(&job, &cmd[2]);

    let tracer = pod("Deployment", "choreo-tracer");
    let cmd = strings(&tracer["containers"][0]["command"]);
    assert_eq!(cmd[..2], ["choreo", "trace"]);
    let topo = cmd
        .iter()
        .position(|a| a == "--topology")
        .and_then(|i| cmd.get(i + 1))
        .expect("--topology");
    mounts_topology(&tracer, topo);
    let deployment = &objects[&("Deployment".to_owned(), "choreo-tracer".to_owned())];
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], "9464");
    let svc = &objects[&("Service".to_owned(), "choreo-tracer".to_owned())];
    assert_eq!(
        svc["spec"]["selector"],
        deployment["spec"]["selector"]["matchLabels"]
    );

    let mut saga = BTreeSet::new();
    for ((kind, name), o) in &objects {
        let c = &o["spec"]["template"]["spec"]["containers"][0];
        if kind == "Deployment"
            && strings(&c["command"]).first().map(String::as_str) == Some("order-saga")
        {
            let cmd = strings(&c["command"]);
            let i = cmd
                .iter()
                .position(|a| a == "--service")
                .expect("--service");
            assert_eq!(&cmd[i + 1], name);
            assert_eq!(
                o["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"],
                "true"
            );
            saga.insert(name.clone());
        }
    }
    assert_eq!(
        saga,
        topology_services(),
        "one Deployment per topology service"
    );
}
