//! Every command line of the compose file and the Kubernetes manifests
//! checked against the `--help` of the binary it runs, built from this
//! workspace: a renamed or removed flag fails here, not in a container.

use std::collections::BTreeMap;

use choreo_stack_tests::repo::strings;
use choreo_stack_tests::{bins, repo};

/// Every command line of compose and the manifests, as (binary, args).
fn command_lines() -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for (name, s) in repo::yaml("docker/compose.yaml")["services"]
        .as_object()
        .expect("services")
    {
        let cmd = strings(&s["command"]);
        if matches!(
            cmd.first().map(String::as_str),
            Some("choreo" | "order-saga")
        ) {
            out.push((format!("compose service {name}"), cmd));
        }
    }
    for file in repo::files("docker/k8s", ".yaml") {
        for o in repo::yaml_docs(&file) {
            let kind = o["kind"].as_str().unwrap_or_default();
            let name = o["metadata"]["name"].as_str().unwrap_or_default();
            for c in o["spec"]["template"]["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let cmd = strings(&c["command"]);
                if !cmd.is_empty() {
                    out.push((format!("{file}: {kind}/{name}"), cmd));
                }
            }
        }
    }
    out
}

#[test]
fn every_command_line_uses_flags_its_binary_accepts() {
    let lines = command_lines();
    assert!(lines.len() >= 12, "{lines:?}");
    let mut help: BTreeMap<Vec<String>, String> = BTreeMap::new();
    for (where_, cmd) in &lines {
        // `choreo <subcommand>`: the subcommand's help; `order-saga`: its own.
        let key: Vec<String> = if cmd[0] == "choreo" {
            cmd[..2].to_vec()
        } else {
            cmd[..1].to_vec()
        };
        let text = help.entry(key.clone()).or_insert_with(|| {
            let out = std::process::Command::new(bins::binary(&key[0]))
                .args(&key[1..])
                .arg("--help")
                .output()
                .expect("the binary runs");
            assert!(out.status.success(), "{key:?} --help failed");
            String::from_utf8_lossy(&out.stdout).into_owned()
        });
        for flag in cmd.iter().filter(|a| a.starts_with("--")) {
            let flag = flag.split('=').next().unwrap_or(flag);
            assert!(
                text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                    .any(|w| w == flag),
                "{where_}: `{}` has no flag {flag}:\n{text}",
                key.join(" ")
            );
        }
    }
    // The image has both binaries.
    let dockerfile = repo::read("docker/Dockerfile");
    assert!(
        dockerfile.contains("-p choreo-cli -p order-saga"),
        "the Dockerfile builds both binaries"
    );
    for bin in ["choreo", "order-saga"] {
        assert!(
            dockerfile.contains(&format!("/out/{bin}")),
            "the image has {bin}"
        );
    }
}
