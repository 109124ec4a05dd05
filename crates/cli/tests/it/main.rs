//! The integration tests of choreo-cli, one binary with a module per topic
//! (one link instead of one per file). The soak and the runs at scale are
//! ignored tests run in a release build: `cargo test --release -p choreo-cli
//! --test it -- --ignored --test-threads=1 soak:: simulate_scale::`.

mod cli;
mod kafka;
mod metrics_loopback;
mod readme;
mod roundtrip;
mod saga_on_tansu;
mod simulate_scale;
mod soak;
mod trace;
mod trace_restart;
mod ui;
