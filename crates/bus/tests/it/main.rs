//! The integration tests of choreo-bus, one binary with a module per topic
//! (one link instead of one per file). `cargo test -p choreo-bus --test it
//! retry::` runs one topic. The OpenTelemetry test (`--features otel`) is
//! `tests/otel.rs`, a binary of its own: it installs a process-wide tracer
//! provider.

mod common;
mod flow;

mod back_pressure;
mod batches;
mod conformance;
mod dead_letter;
mod fairness;
mod idempotency;
mod limits;
mod malformed;
mod metrics;
mod middleware;
mod replay;
mod retention;
mod retry;
mod serve;
mod settled;
mod shutdown;
mod stamping;
mod workers;
