//! The bus conformance suite on the in-process backend.

use choreo_bus::InProcessBus;
use choreo_testkit::conformance::{Features, Harness};

struct InProcess {
    bus: InProcessBus,
}

impl Harness for InProcess {
    type Bus = InProcessBus;

    fn bus(&self) -> InProcessBus {
        self.bus.clone()
    }

    async fn create_topic(&self, name: &str, partitions: u32) {
        self.bus.create_topic(name, partitions);
    }

    fn features(&self) -> Features {
        Features::default()
    }
}

choreo_testkit::conformance_suite!(|| async {
    InProcess {
        bus: InProcessBus::new(),
    }
});
