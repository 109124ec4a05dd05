//! Checking services against their topology in a test (the `testing`
//! feature): [`conforms`].
//!
//! An event's topic is written twice — in `event!(…, topic = …)` and in the
//! topology file — and a service's handlers twice — `Service::on` in code
//! and its reactions in the file. `choreo trace` notices when they disagree,
//! in production; [`conforms`] notices in `cargo test`:
//!
//! ```
//! use choreo::{Context, HandlerError, Service};
//! use choreo::topology::Topology;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct OrderPlaced { order_id: u64 }
//! choreo::event!(OrderPlaced, topic = "order"); // the topology says "orders"
//!
//! async fn charge(_: OrderPlaced, _: Context) -> Result<(), HandlerError> { Ok(()) }
//!
//! let topology = Topology::parse(r#"
//! name: checkout
//! events:
//!   OrderPlaced: { topic: orders }
//!   PaymentCaptured: { topic: payments }
//! services:
//!   checkout: { emits: [OrderPlaced] }
//!   payment:
//!     on:
//!       OrderPlaced: { emit: [PaymentCaptured] }
//!   ledger:
//!     on:
//!       PaymentCaptured: {}
//! "#, "checkout.yaml").unwrap();
//!
//! let err = choreo::testing::conforms(&topology, &[Service::new("payment").on(charge)]).unwrap_err();
//! assert_eq!(err.to_string(), "\
//! the services do not conform to topology 'checkout' (checkout.yaml): 1 mismatch
//! checkout.yaml:4:3: error[wrong-topic]: service 'payment' reads 'OrderPlaced' from topic 'order', but the topology puts 'OrderPlaced' on 'orders': make event!(OrderPlaced, topic = …) and the topology say the same topic");
//! ```
//!
//! Only the services passed are checked (`ledger` above is not): pass every
//! service the topology declares that this crate implements.

use std::collections::BTreeSet;
use std::fmt;

use choreo_topology::{Pos, Topology};

use crate::Service;

/// One way the services differ from the topology, shown as `choreo check`
/// shows a finding: `file:line:column: error[code]: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Mismatch {
    /// What kind of mismatch, a stable kebab-case code:
    ///
    /// - `unknown-service`: a service the topology does not declare;
    /// - `unknown-event`: a handler of an event type the topology does not declare;
    /// - `wrong-topic`: a handler reads an event type from another topic than the topology's;
    /// - `undeclared-handler`: a handler of an event the topology gives the service no reaction to;
    /// - `missing-handler`: a reaction of the service in the topology with no handler.
    pub code: &'static str,
    /// The topology file, as loaded.
    pub file: String,
    /// Where in the file (unknown for what the file lacks).
    pub pos: Pos,
    /// Lowercase, names the service, the event and the topics, and says the fix.
    pub message: String,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.pos.is_known() {
            write!(f, "{}:{}: ", self.file, self.pos)?;
        } else {
            write!(f, "{}: ", self.file)?;
        }
        write!(f, "error[{}]: {}", self.code, self.message)
    }
}

/// The services do not do what the topology declares: every [`Mismatch`],
/// in the order of the services given. Its `Debug` is its `Display`, so that
/// `conforms(…).unwrap()` fails a test with the readable list.
#[derive(Clone, PartialEq, Eq)]
pub struct Nonconformance {
    /// The topology's name.
    pub topology: String,
    /// The topology file.
    pub file: String,
    /// Every mismatch. Never empty.
    pub mismatches: Vec<Mismatch>,
}

impl fmt::Display for Nonconformance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.mismatches.len();
        write!(
            f,
            "the services do not conform to topology '{}' ({}): {n} mismatch{}",
            self.topology,
            self.file,
            if n == 1 { "" } else { "es" }
        )?;
        for m in &self.mismatches {
            write!(f, "\n{m}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Nonconformance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for Nonconformance {}

/// Checks that `services` do what `topology` declares for them:
///
/// - each service is declared in the topology;
/// - each handler's event type is declared, on the topic the handler reads it
///   from (its `event!(…, topic = …)`);
/// - each service handles exactly the events the topology gives it
///   reactions to: no handler without a reaction, no reaction without a
///   handler.
///
/// Returns every mismatch at once. What services emit is not known before
/// they run: `choreo trace` checks that against the topology
/// (`choreo::trace::record` records a run for it).
pub fn conforms(topology: &Topology, services: &[Service]) -> Result<(), Nonconformance> {
    let file = topology.file();
    let mut mismatches = Vec::new();
    let mut push = |code, pos, message: String| {
        mismatches.push(Mismatch {
            code,
            file: file.to_owned(),
            pos,
            message,
        })
    };
    // An event type on a wrong topic is said once, however many services
    // handle it.
    let mut wrong_topics = BTreeSet::new();
    for service in services {
        let name = service.name();
        let declared = topology.service(name);
        if declared.is_none() {
            push(
                "unknown-service",
                Pos::default(),
                format!(
                    "service '{name}' is not in topology '{}': declare it under `services:`, or pass the name the topology uses to Service::new",
                    topology.name()
                ),
            );
        }
        let handles = service.handles();
        for &(event, topic) in &handles {
            match topology.event(event) {
                None => push(
                    "unknown-event",
                    Pos::default(),
                    format!(
                        "service '{name}' handles '{event}', which topology '{}' does not declare: add `{event}: {{ topic: {topic} }}` under `events:`, or remove the handler",
                        topology.name()
                    ),
                ),
                Some(declared_event) if declared_event.topic != topic => {
                    if wrong_topics.insert((event, topic)) {
                        push(
                            "wrong-topic",
                            declared_event.pos,
                            format!(
                                "service '{name}' reads '{event}' from topic '{topic}', but the topology puts '{event}' on '{}': make event!({event}, topic = …) and the topology say the same topic",
                                declared_event.topic
                            ),
                        );
                    }
                }
                Some(_) => {}
            }
            if let Some(d) = declared
                && topology.event(event).is_some()
                && !d.reactions.contains_key(event)
            {
                push(
                    "undeclared-handler",
                    d.pos,
                    format!(
                        "service '{name}' handles '{event}', but the topology gives it no reaction to '{event}': add `{event}: {{ emit: … }}` under `services: {name}: on:`, or remove the handler"
                    ),
                );
            }
        }
        if let Some(d) = declared {
            for (event, reaction) in &d.reactions {
                if !handles.iter().any(|(e, _)| e == event) {
                    push(
                        "missing-handler",
                        reaction.pos,
                        format!(
                            "service '{name}' has no handler for '{event}', which the topology says it reacts to: add one with Service::on, or remove the reaction"
                        ),
                    );
                }
            }
        }
    }
    if mismatches.is_empty() {
        Ok(())
    } else {
        Err(Nonconformance {
            topology: topology.name().to_owned(),
            file: file.to_owned(),
            mismatches,
        })
    }
}
