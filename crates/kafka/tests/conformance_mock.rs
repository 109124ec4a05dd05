//! The bus conformance suite on librdkafka's mock cluster: a real
//! Kafka-protocol broker inside the test process.

mod common;

choreo_testkit::conformance_suite!(|| async { common::Mock::start(1) });
