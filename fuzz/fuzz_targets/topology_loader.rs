//! Any text through `Topology::parse` and, when it loads, the verifier, the
//! flow-path analysis behind it and every renderer (DOT, Mermaid, JSON,
//! AsyncAPI): none may panic or loop. Seeds in `corpus/topology_loader/`:
//! the example topologies and the loader's fixtures.

#![no_main]

use choreo_topology::render::{self, GraphOptions};
use choreo_topology::{Topology, asyncapi};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Topology::parse(text, "fuzz.yaml") {
        Ok(t) => {
            for d in t.verify() {
                let _ = d.to_string();
            }
            for topics in [false, true] {
                let options = GraphOptions::default().topics(topics);
                let _ = render::dot(&t, options);
                let _ = render::mermaid(&t, options);
                let _ = render::json(&t, options);
            }
            let _ = asyncapi::export(&t, |_, _| Ok(serde_json::json!({"type": "object"})));
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
