//! Any bytes given to the capture reader, and whatever it yields to the tracer:
//! neither may panic. Seeds in `corpus/capture_reader/`.

#![no_main]

use std::sync::OnceLock;

use choreo_topology::Topology;
use choreo_trace::capture::Reader;
use choreo_trace::{Tracer, TracerConfig};
use libfuzzer_sys::fuzz_target;

fn topology() -> &'static Topology {
    static T: OnceLock<Topology> = OnceLock::new();
    T.get_or_init(|| {
        Topology::parse(
            include_str!("../../topologies/order-fulfillment.yaml"),
            "order-fulfillment.yaml",
        )
        .expect("the example topology is valid")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(reader) = Reader::from_read("fuzz", std::io::Cursor::new(data.to_vec())) else {
        return;
    };
    let mut tracer = Tracer::new(TracerConfig::batch(), Some(topology()));
    let mut records = 0u64;
    for r in reader {
        match r {
            Ok(r) => {
                tracer.ingest(&r);
                records += 1;
            }
            Err(e) => {
                // The error names the damage; the records before it stand.
                let _ = e.to_string();
            }
        }
    }
    tracer.finish(None);
    let report = tracer.report();
    assert!(report.input.records == records);
    let _ = report.summary();
});
