//! The bus conformance suite on tansu, a Kafka-compatible broker running as
//! a separate process (one per case, on a free loopback port, sqlite storage
//! in a temporary directory).

choreo_testkit::conformance_suite!(|| async { crate::common::Tansu::start().await });
