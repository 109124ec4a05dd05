//! The integration tests of order-saga, one binary with a module per topic
//! (one link instead of one per file).

mod conforms_to_topology;
mod on_kafka;
mod postgres_crash;
