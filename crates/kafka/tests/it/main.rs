//! The integration tests of choreo-kafka, one binary with a module per topic
//! (one link of librdkafka instead of one per file). Two tests are binaries
//! of their own because they install process-wide state that would see the
//! other tests' work: `tests/otel.rs` (the OpenTelemetry tracer provider) and
//! `tests/secrets.rs` (a tracing subscriber capturing every log line).

mod common;

mod broker_restart;
mod cloudevents;
mod conformance_mock;
mod conformance_tansu;
mod consumer_crash;
mod faults;
mod interop;
mod lag;
mod lookback;
mod poison;
mod reader;
mod rebalance;
mod sasl;
mod tls;
mod topics;
