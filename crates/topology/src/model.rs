//! The topology model and the questions the tracer and the simulator ask of it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use indexmap::IndexMap;

use crate::diagnostic::Pos;

/// A declared choreography: events on topics, services that react to them,
/// and flows with a start, ends and a time bound.
///
/// Built by [`Topology::parse`] or [`Topology::from_path`]; every event name
/// it holds is declared (the loader rejects unknown ones), and everything is
/// kept in declaration order.
#[derive(Debug, Clone)]
pub struct Topology {
    pub(crate) name: String,
    pub(crate) description: Option<String>,
    pub(crate) file: String,
    pub(crate) events: IndexMap<String, Event>,
    pub(crate) services: IndexMap<String, Service>,
    pub(crate) flows: IndexMap<String, Flow>,
    pub(crate) index: Index,
}

/// An event type and the topic it travels on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Event {
    /// The event type name (`OrderPlaced`), the envelope's `type`.
    pub name: String,
    /// The topic it is published on.
    pub topic: String,
    /// Where the payload's JSON Schema is: a path relative to the topology file.
    pub schema: Option<String>,
    /// Free text for people and for the AsyncAPI export.
    pub description: Option<String>,
    /// Where the event is declared (its key under `events`).
    pub pos: Pos,
}

/// A use of an event name in the file (in `emit`, `one_of`, `emits`, a flow).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EventRef {
    /// The event name.
    pub name: String,
    /// Where it is written.
    pub pos: Pos,
}

/// A service: the events it emits on its own and its reactions.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Service {
    /// The service name, the envelope's `source`.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// Events the service emits on its own, not in reaction to an event: flow starts.
    pub emits: Vec<EventRef>,
    /// Its handlers, keyed by the event they react to, in declaration order.
    pub reactions: IndexMap<String, Reaction>,
    /// Other names its events carry as their `source`: the CloudEvents
    /// `source` URIs of a producer outside choreo
    /// (`https://shop.example.com/checkout`). The tracer takes an event with
    /// one of these sources for one of this service's.
    pub sources: Vec<String>,
    /// Where the service is declared.
    pub pos: Pos,
}

/// The contract of one handler: on this event, emit that, within this time.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reaction {
    /// The event that triggers the handler.
    pub on: String,
    /// What the handler emits.
    pub emit: Emit,
    /// How long the handler may take, from the event's publication to its emissions.
    pub within: Option<Duration>,
    /// Where the reaction is declared (its key under `on`).
    pub pos: Pos,
}

/// What a reaction emits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Emit {
    /// All of these events, every time.
    All(Vec<EventRef>),
    /// Exactly one of these events.
    OneOf(Vec<EventRef>),
    /// Nothing: the handler is a sink.
    Nothing,
}

impl Emit {
    /// Every event this reaction may emit, in declaration order.
    pub fn events(&self) -> &[EventRef] {
        match self {
            Emit::All(events) | Emit::OneOf(events) => events,
            Emit::Nothing => &[],
        }
    }

    /// Whether this reaction may emit `event`.
    pub fn may_emit(&self, event: &str) -> bool {
        self.events().iter().any(|e| e.name == event)
    }

    /// Whether this is a `one_of` choice.
    pub fn is_choice(&self) -> bool {
        matches!(self, Emit::OneOf(_))
    }
}

/// A business transaction: the event that starts it, the events that end it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Flow {
    /// The flow name.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// The event that starts a run of the flow (its correlation id is this event's id).
    pub starts_with: EventRef,
    /// A run is complete once one of these events is published.
    pub ends_with: Vec<EventRef>,
    /// How long a run may take, from the start event to an end event.
    pub within: Option<Duration>,
    /// Where the flow is declared.
    pub pos: Pos,
}

impl Flow {
    /// Whether `event` ends this flow.
    pub fn is_ended_by(&self, event: &str) -> bool {
        self.ends_with.iter().any(|e| e.name == event)
    }
}

/// Who may emit an event, and in what role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Emitter<'a> {
    /// The service.
    pub service: &'a Service,
    /// `None` when the service emits the event on its own (a flow start);
    /// otherwise the reaction that emits it.
    pub reaction: Option<&'a Reaction>,
}

/// Lookups computed once at load time, so the tracer's per-event questions
/// do not scan the whole topology.
#[derive(Debug, Clone, Default)]
pub(crate) struct Index {
    /// event → (service index, reaction index) of every reaction to it.
    consumers: HashMap<String, Vec<(usize, usize)>>,
    /// event → (service index, reaction index or None for `emits`).
    emitters: HashMap<String, Vec<(usize, Option<usize>)>>,
    /// event → indexes of the flows whose start leads to it.
    member_of: HashMap<String, Vec<usize>>,
    /// Topics in first-declared order.
    topics: Vec<String>,
}

impl Topology {
    pub(crate) fn new(
        name: String,
        description: Option<String>,
        file: String,
        events: IndexMap<String, Event>,
        services: IndexMap<String, Service>,
        flows: IndexMap<String, Flow>,
    ) -> Self {
        let mut topology = Topology {
            name,
            description,
            file,
            events,
            services,
            flows,
            index: Index::default(),
        };
        topology.index = Index::build(&topology);
        // Membership is reachability, which needs the consumer index just built.
        let mut member_of: HashMap<String, Vec<usize>> = HashMap::new();
        for (f, flow) in topology.flows.values().enumerate() {
            for event in topology.reachable_from(&flow.starts_with.name) {
                push_unique(&mut member_of, event, f);
            }
        }
        topology.index.member_of = member_of;
        topology
    }

    /// The topology's `name`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The topology's `description`, if any.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// The file label given to the loader (used in every diagnostic).
    pub fn file(&self) -> &str {
        &self.file
    }

    /// All events, in declaration order.
    pub fn events(&self) -> impl ExactSizeIterator<Item = &Event> {
        self.events.values()
    }

    /// The event named `name`.
    pub fn event(&self, name: &str) -> Option<&Event> {
        self.events.get(name)
    }

    /// All services, in declaration order.
    pub fn services(&self) -> impl ExactSizeIterator<Item = &Service> {
        self.services.values()
    }

    /// The service named `name`.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.get(name)
    }

    /// The service an event with this `source` comes from: the service of
    /// that name, or the one that lists it in its `sources`.
    pub fn service_of_source(&self, source: &str) -> Option<&Service> {
        self.services.get(source).or_else(|| {
            self.services
                .values()
                .find(|s| s.sources.iter().any(|x| x == source))
        })
    }

    /// All flows, in declaration order.
    pub fn flows(&self) -> impl ExactSizeIterator<Item = &Flow> {
        self.flows.values()
    }

    /// The flow named `name`.
    pub fn flow(&self, name: &str) -> Option<&Flow> {
        self.flows.get(name)
    }

    /// The topic `event` is published on, or `None` for an undeclared event.
    pub fn topic_of(&self, event: &str) -> Option<&str> {
        self.events.get(event).map(|e| e.topic.as_str())
    }

    /// Every topic, once each, in the order events first declare them.
    pub fn topics(&self) -> &[String] {
        &self.index.topics
    }

    /// The events published on `topic`, in declaration order.
    pub fn events_on(&self, topic: &str) -> impl Iterator<Item = &Event> {
        self.events.values().filter(move |e| e.topic == topic)
    }

    /// The services that consume `event`, each with its reaction, in declaration order.
    ///
    /// Every one of them receives each published `event` (each service is its own
    /// consumer group).
    pub fn consumers_of(&self, event: &str) -> impl Iterator<Item = (&Service, &Reaction)> {
        self.index
            .consumers
            .get(event)
            .into_iter()
            .flatten()
            .map(|&(s, r)| {
                let service = &self.services[s];
                (service, &service.reactions[r])
            })
    }

    /// The services that may emit `event`: on their own (a flow start,
    /// [`Emitter::reaction`] is `None`) or inside a reaction.
    pub fn emitters_of(&self, event: &str) -> impl Iterator<Item = Emitter<'_>> {
        self.index
            .emitters
            .get(event)
            .into_iter()
            .flatten()
            .map(|&(s, r)| {
                let service = &self.services[s];
                Emitter {
                    service,
                    reaction: r.map(|r| &service.reactions[r]),
                }
            })
    }

    /// Whether `service` may emit `event` (on its own or in any reaction).
    pub fn may_emit(&self, service: &str, event: &str) -> bool {
        self.emitters_of(event).any(|e| e.service.name == service)
    }

    /// The reaction of `service` to `event`: what its handler must emit, and within what time.
    pub fn reaction(&self, service: &str, event: &str) -> Option<&Reaction> {
        self.services.get(service)?.reactions.get(event)
    }

    /// The `within` of the reaction of `service` to `event`, if declared.
    pub fn reaction_within(&self, service: &str, event: &str) -> Option<Duration> {
        self.reaction(service, event)?.within
    }

    /// The flows that start with `event` (normally at most one; the verifier
    /// reports two flows with one start as `duplicate-declaration`).
    pub fn flows_starting_with(&self, event: &str) -> impl Iterator<Item = &Flow> {
        self.flows
            .values()
            .filter(move |f| f.starts_with.name == event)
    }

    /// Whether `event` ends the flow named `flow` (false for an unknown flow).
    pub fn ends_flow(&self, flow: &str, event: &str) -> bool {
        self.flows.get(flow).is_some_and(|f| f.is_ended_by(event))
    }

    /// The `within` of the flow named `flow`, if declared.
    pub fn flow_within(&self, flow: &str) -> Option<Duration> {
        self.flows.get(flow)?.within
    }

    /// The flows `event` can take part in: those whose start event leads to it
    /// through reactions (the start itself included). Empty for an event no
    /// flow reaches.
    pub fn flows_of(&self, event: &str) -> impl Iterator<Item = &Flow> {
        self.index
            .member_of
            .get(event)
            .into_iter()
            .flatten()
            .map(|&f| &self.flows[f])
    }

    /// The events that reactions to `event` may emit: one causal step.
    pub fn successors(&self, event: &str) -> impl Iterator<Item = &str> {
        let mut seen = HashSet::new();
        self.consumers_of(event)
            .flat_map(|(_, r)| r.emit.events())
            .map(|e| e.name.as_str())
            .filter(move |name| seen.insert(*name))
    }

    /// Every event reachable from `start` through reactions, `start` included,
    /// in breadth-first order.
    pub fn reachable_from(&self, start: &str) -> Vec<&str> {
        let mut seen: HashSet<&str> = HashSet::new();
        let mut order = Vec::new();
        let mut queue = VecDeque::new();
        if let Some((name, _)) = self.events.get_key_value(start) {
            seen.insert(name.as_str());
            queue.push_back(name.as_str());
        }
        while let Some(event) = queue.pop_front() {
            order.push(event);
            for next in self.successors(event) {
                if seen.insert(next) {
                    queue.push_back(next);
                }
            }
        }
        order
    }
}

impl Index {
    fn build(t: &Topology) -> Index {
        let mut index = Index::default();
        for (s, service) in t.services.values().enumerate() {
            for e in &service.emits {
                push_unique(&mut index.emitters, &e.name, (s, None));
            }
            for (r, reaction) in service.reactions.values().enumerate() {
                index
                    .consumers
                    .entry(reaction.on.clone())
                    .or_default()
                    .push((s, r));
                for e in reaction.emit.events() {
                    push_unique(&mut index.emitters, &e.name, (s, Some(r)));
                }
            }
        }
        for event in t.events.values() {
            if !index.topics.contains(&event.topic) {
                index.topics.push(event.topic.clone());
            }
        }
        index
    }
}

fn push_unique<T: PartialEq>(map: &mut HashMap<String, Vec<T>>, key: &str, value: T) {
    let list = map.entry(key.to_owned()).or_default();
    if !list.contains(&value) {
        list.push(value);
    }
}
