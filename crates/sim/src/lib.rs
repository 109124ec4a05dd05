//! Runs a topology as simulated services on the in-process bus, with faults.
//!
//! Every service of the topology becomes a real [`choreo_bus::Service`] whose
//! handlers follow their reaction's contract — emit all of a list, one of a
//! `one_of` (branches chosen by weight), or nothing — after a simulated
//! latency. They run through the same runtime as real services (retry,
//! dead-lettering, idempotency, receipts, metrics), so what the tracer sees is
//! what production would produce. Faults can be injected; every injected
//! fault is recorded in a [`Truth`] that can be written beside a capture and
//! compared with the tracer's findings.
//!
//! Runs are reproducible: every decision (branch, latency, fault) is a hash of
//! the seed, the flow number and the service and event involved (for a branch,
//! also of the event's depth in its flow, so a flow that loops back to a
//! `one_of` draws again), not of the scheduling. A flow goes round a loop of
//! the topology at most as often as the tracer's default cycle bound allows
//! (3 occurrences of an event type along one causal path), then takes the
//! way out, so a run without faults is judged clean.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use choreo_sim::{Fault, SimConfig, Simulation};
//!
//! let topology = choreo_topology::Topology::from_path("topologies/order-fulfillment.yaml")?;
//! let config = SimConfig {
//!     flows: 100,
//!     faults: vec![Fault::parse("drop", "shipping=0.05")?],
//!     ..SimConfig::default()
//! };
//! let bus = choreo_bus::InProcessBus::new();
//! let metrics = choreo_bus::Metrics::new(&prometheus::Registry::new())?;
//! let truth = Simulation::new(topology, config)?.run(&bus, &metrics, &|_| {}).await?;
//! println!("{} faults injected", truth.injected.len());
//! # Ok(()) }
//! ```

mod config;
mod engine;

pub use config::{
    Fault, Latency, SimConfig, duration, parse_deferred, parse_latency, parse_weight,
};
pub use engine::{Injected, SimProgress, Simulation, Truth, undeclared_event, wait_quiet};

/// Errors from configuring or running a simulation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration does not fit the topology, or an argument is malformed.
    #[error("{0}")]
    Config(String),
    /// The runtime failed to start or stop a simulated service.
    #[error("simulated service: {source}")]
    Runtime {
        /// The runtime's error.
        #[source]
        source: Box<choreo_bus::Error>,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
