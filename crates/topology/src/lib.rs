//! choreo's topology files: the declared choreography, its loader, static verifier and pictures.
//!
//! ```
//! use choreo_topology::{Severity, Topology};
//!
//! let yaml = r#"
//! name: greetings
//! events:
//!   Hello: { topic: greetings }
//!   Welcome: { topic: greetings }
//! services:
//!   door:
//!     emits: [Hello]
//!   host:
//!     on:
//!       Hello: { emit: [Welcome], within: 2s }
//! flows:
//!   visit: { starts_with: Hello, ends_with: [Welcome], within: 5s }
//! "#;
//! let topology = Topology::parse(yaml, "greetings.yaml")?;
//! assert_eq!(topology.topic_of("Welcome"), Some("greetings"));
//! assert!(topology.ends_flow("visit", "Welcome"));
//! let findings = topology.verify();
//! assert!(findings.iter().all(|d| d.severity < Severity::Warning), "{findings:?}");
//! # Ok::<(), choreo_topology::Error>(())
//! ```
//!
//! # Concepts
//!
//! - [`Topology`]: events (type → topic, optional payload schema), services
//!   (events they emit on their own to start flows, and reactions: on an event,
//!   emit all of a list, exactly one of a list, or nothing, within a time), and
//!   flows (start event, end events, time bound). The file format is documented
//!   in `docs/topology.md`.
//! - Loading ([`Topology::parse`], [`Topology::from_path`]) reports every problem
//!   at once as [`Diagnostic`]s with `file:line:column`, and never panics.
//! - [`Topology::verify`] is the static verifier behind `choreo check`; each
//!   finding has a stable [`Code`].
//! - [`Topology::paths`] enumerates the possible executions of each flow.
//! - [`render`] draws the service graph as DOT, Mermaid or JSON, and
//!   [`asyncapi`] exports an AsyncAPI 3.0 document.
//! - The tracer and simulator ask the model questions: [`Topology::consumers_of`],
//!   [`Topology::emitters_of`], [`Topology::reaction`], [`Topology::flows_starting_with`],
//!   [`Topology::ends_flow`], [`Topology::flows_of`], [`Topology::topic_of`], and so on.

pub mod asyncapi;
mod diagnostic;
mod duration;
mod error;
mod load;
mod model;
mod paths;
pub mod render;
mod verify;
mod yaml;

pub use diagnostic::{Code, Diagnostic, Pos, Severity, Tally};
pub use duration::{format_duration, parse_duration};
pub use error::{Error, Result};
pub use model::{Emit, Emitter, Event, EventRef, Flow, Reaction, Service, Topology};
pub use paths::{Execution, FlowPaths, Outcome, PathLimits, Step};
