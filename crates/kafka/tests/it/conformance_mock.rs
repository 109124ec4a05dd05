//! The bus conformance suite on librdkafka's mock cluster: a real
//! Kafka-protocol broker inside the test process.

choreo_testkit::conformance_suite!(|| async { crate::common::Mock::start(1) });
