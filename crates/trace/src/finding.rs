//! Conformance findings: the rules, with stable codes, and what each finding names.

use std::fmt;

use choreo_core::{EventId, Timestamp};
use serde::Serialize;

macro_rules! rules {
    ($( $(#[$doc:meta])* $variant:ident = $code:literal, $summary:literal; )*) => {
        /// A conformance rule. Codes are stable: scripts and dashboards may
        /// match them. [`Rule::explain`] gives a rule's section of the
        /// reference below (`docs/rules.md`, which `choreo trace --explain`
        /// prints).
        ///
        #[doc = include_str!("../../../docs/rules.md")]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(into = "&'static str")]
        #[non_exhaustive]
        pub enum Rule {
            $( $(#[$doc])* $variant, )*
        }

        impl Rule {
            /// Every rule, in documentation order.
            pub const ALL: &'static [Rule] = &[$(Rule::$variant),*];

            /// The stable code, e.g. `undeclared-emit`.
            pub fn code(self) -> &'static str {
                match self { $(Rule::$variant => $code,)* }
            }

            /// One line saying what the rule checks.
            pub fn summary(self) -> &'static str {
                match self { $(Rule::$variant => $summary,)* }
            }

            /// The rule with this code.
            pub fn from_code(code: &str) -> Option<Rule> {
                match code { $($code => Some(Rule::$variant),)* _ => None }
            }
        }
    };
}

rules! {
    /// An event type the topology does not declare.
    UnknownEvent = "unknown-event", "an event type the topology does not declare";
    /// A publishing or handling service the topology does not declare.
    UnknownService = "unknown-service", "a service (event source or receipt) the topology does not declare";
    /// A service handled an event it has no reaction to.
    UndeclaredConsume = "undeclared-consume", "a service handled (or reacted to) an event it declares no reaction to: an undeclared edge";
    /// A service emitted an event its contract does not allow here.
    UndeclaredEmit = "undeclared-emit", "a service emitted an event that its reaction to the cause (or, for a flow's first event, its `emits`) does not list: an undeclared edge";
    /// A reaction emitted nothing, or less than its `emit` list, where it must.
    MissingEmit = "missing-emit", "a handler finished without emitting what its reaction must emit (attributed with its receipt)";
    /// A `one_of` reaction emitted more than one of its branches.
    BothBranches = "both-branches", "a handler emitted more than one branch of a `one_of`";
    /// A reaction took longer than its `within`.
    ReactionLate = "reaction-late", "a handler's emissions (or, for a sink, its settlement) came later than its reaction's `within` after the event";
    /// A flow took longer than its `within` to end.
    FlowLate = "flow-late", "a flow ended later than its `within` after its first event";
    /// A flow stopped on an event that ends no flow.
    BadEnd = "bad-end", "a flow came to rest (nothing more owed) on events that do not end it";
    /// A flow whose first event starts no declared flow.
    UnknownFlow = "unknown-flow", "a flow's first event is not the `starts_with` of any flow";
    /// A flow is past its `within`, or a reaction past its `within`, with events still owed.
    Stuck = "stuck", "a flow or a reaction is past its `within` and a service still owes events";
    /// An event was dead-lettered.
    DeadLettered = "dead-lettered", "a service gave up on an event and dead-lettered it";
    /// An event type repeated along one causal path more than the bound.
    CycleBound = "cycle-bound", "an event type repeats along one causal path more often than the cycle bound";
    /// An event's cause is not in its flow.
    Orphan = "orphan", "an event's causation id names no event of its flow (the cause was not captured, or the ids are wrong)";
    /// An event is earlier than its cause.
    ClockSkew = "clock-skew", "an event's time is earlier than its cause's (clocks disagree between services)";
    /// Causation ids that loop.
    CausalLoop = "causal-loop", "causation ids form a loop (an event is its own ancestor): corrupt ids";
    /// A service handled one event twice: acked it twice, or emitted its reaction twice.
    HandledTwice = "handled-twice", "a service handled one event more than once: two acked receipts for one event id, or its reaction emitted twice under new ids (its idempotency failed)";
    /// An event published on a topic other than the one its type declares.
    WrongTopic = "wrong-topic", "an event was published on a topic other than the one the topology declares for its type";
    /// A declared consumer never handled an event it reacts to.
    NeverHandled = "never-handled", "a declared consumer (a sink included) never handled an event it reacts to, past its bound, where receipts show its silence is real";
    /// A record no service could read.
    MalformedRecord = "malformed-record", "a record no service could read (its metadata is broken) was dead-lettered by every service that received it";
    /// A dead letter replayed and handled: a note, not a violation.
    Recovered = "recovered", "an event dead-lettered was replayed and then handled: the flow recovered (a note, not a violation)";
}

/// The rules' reference: what triggers each, whom it names, an example.
const REFERENCE: &str = include_str!("../../../docs/rules.md");

impl Rule {
    /// The rule's section of the reference (`docs/rules.md`): what triggers
    /// it, which service it names, an example, and what to do.
    pub fn explain(self) -> &'static str {
        let heading = format!("\n## `{}`\n", self.code());
        let Some(start) = REFERENCE.find(&heading) else {
            return self.summary();
        };
        let body = &REFERENCE[start + 1..];
        let end = body[3..].find("\n## ").map_or(body.len(), |i| i + 3);
        body[..end].trim_end()
    }

    /// Whether a finding of this rule is a violation (it fails the verdict);
    /// `recovered` is only a note.
    pub fn is_violation(self) -> bool {
        self != Rule::Recovered
    }
}

impl From<Rule> for &'static str {
    fn from(r: Rule) -> Self {
        r.code()
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// One finding: which rule, in which flow, about which service and event, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The rule broken.
    pub rule: Rule,
    /// The flow (correlation id).
    pub correlation_id: EventId,
    /// The flow's name in the topology, when known.
    pub flow: Option<String>,
    /// The service at fault (empty when none can be named).
    pub service: String,
    /// The event type concerned.
    pub event_type: String,
    /// The event concerned, when one is.
    pub event_id: Option<EventId>,
    /// When it happened (the event's time).
    pub time: Timestamp,
    /// What exactly, in words.
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "violation[{}]", self.rule)?;
        if !self.service.is_empty() {
            write!(f, " service '{}'", self.service)?;
        }
        if !self.event_type.is_empty() {
            write!(f, " event '{}'", self.event_type)?;
        }
        write!(f, " flow {}: {}", self.correlation_id, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_explains_every_rule_in_order() {
        let mut last = 0;
        for r in Rule::ALL {
            let text = r.explain();
            assert!(
                text.starts_with(&format!("## `{}`", r.code())),
                "{r} has no section in docs/rules.md"
            );
            for part in ["**Trigger:**", "**Names:**", "**Example:**"] {
                assert!(text.contains(part), "{r}: no {part}");
            }
            assert!(!text.contains("\n## "), "{r}: one section only");
            let at = REFERENCE.find(text).unwrap();
            assert!(at > last, "{r} is out of the order of Rule::ALL");
            last = at;
            // And a row in the table at the top.
            assert!(
                REFERENCE.contains(&format!("| [`{0}`](#{0}) |", r.code())),
                "{r} is not in the table"
            );
        }
        let sections = REFERENCE.matches("\n## `").count();
        assert_eq!(
            sections,
            Rule::ALL.len(),
            "a section for a rule that does not exist"
        );
    }

    #[test]
    fn codes_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for r in Rule::ALL {
            assert!(seen.insert(r.code()), "{r:?}");
            assert_eq!(Rule::from_code(r.code()), Some(*r));
        }
        assert_eq!(
            serde_json::to_string(&Rule::BothBranches).unwrap(),
            "\"both-branches\""
        );
    }
}
