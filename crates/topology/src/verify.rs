//! The static verifier behind `choreo check`: every finding, with its position.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};
use std::time::Duration;

use crate::diagnostic::{Code, Diagnostic, Pos, Severity};
use crate::duration::format_duration;
use crate::model::{Emit, EventRef, Flow, Topology};

impl Topology {
    /// Checks the topology and returns every finding, sorted by position then code.
    ///
    /// Loading already rejected what is malformed (unknown keys and events, bad
    /// durations); this looks at what the choreography means: events nobody
    /// emits or consumes, flows that can't end, cycles, unreached parts, time
    /// bounds that can't hold, duplicates and reserved names. Each
    /// [`Code`] is documented in `docs/topology.md`. Never panics.
    pub fn verify(&self) -> Vec<Diagnostic> {
        let mut v = Verifier {
            t: self,
            out: Vec::new(),
        };
        v.names();
        v.duplicates();
        v.emitted_and_consumed();
        v.unreached();
        for flow in self.flows.values() {
            v.flow_ends(flow);
            v.flow_within(flow);
        }
        v.cycles();
        let mut out = v.out;
        out.sort_by(|a, b| (a.pos, a.code, &a.message).cmp(&(b.pos, b.code, &b.message)));
        out
    }
}

struct Verifier<'a> {
    t: &'a Topology,
    out: Vec<Diagnostic>,
}

/// `'A', 'B' and 'C'`.
fn quoted_list<'s>(names: impl IntoIterator<Item = &'s str>) -> String {
    let names: Vec<String> = names.into_iter().map(|n| format!("'{n}'")).collect();
    match names.len() {
        0 => String::new(),
        1 => names[0].clone(),
        n => format!("{} and {}", names[..n - 1].join(", "), names[n - 1]),
    }
}

impl<'a> Verifier<'a> {
    fn push(&mut self, severity: Severity, code: Code, pos: Pos, message: String) {
        self.out.push(Diagnostic::new(
            severity,
            code,
            self.t.file.clone(),
            pos,
            message,
        ));
    }

    /// `reserved-name` and `topic-clash`.
    fn names(&mut self) {
        let t = self.t;
        for event in t.events.values() {
            if event.name.starts_with("choreo.") {
                self.push(
                    Severity::Error,
                    Code::ReservedName,
                    event.pos,
                    format!(
                        "event type '{}' uses the reserved prefix 'choreo.' (choreo's own records, like receipts, use it); rename the event",
                        event.name
                    ),
                );
            }
            if event.topic.starts_with("choreo.") {
                self.push(
                    Severity::Error,
                    Code::ReservedName,
                    event.pos,
                    format!(
                        "event '{}' is on topic '{}', but topics named 'choreo.*' are reserved for choreo's own records; pick another topic",
                        event.name, event.topic
                    ),
                );
            }
            if event.topic.ends_with(".dlq") {
                self.push(
                    Severity::Error,
                    Code::ReservedName,
                    event.pos,
                    format!(
                        "event '{}' is on topic '{}', but topics ending in '.dlq' are dead-letter topics; pick another topic",
                        event.name, event.topic
                    ),
                );
            }
        }
        // Kafka maps '.' and '_' to the same metric names, so topics that differ
        // only there collide (Kafka itself warns about it when creating them).
        let mut seen: HashMap<String, &str> = HashMap::new();
        for topic in t.topics() {
            let key = topic.replace('.', "_");
            match seen.get(&key) {
                Some(&other) if other != topic => {
                    let event = t.events.values().find(|e| &e.topic == topic);
                    self.push(
                        Severity::Warning,
                        Code::TopicClash,
                        event.map_or(Pos::default(), |e| e.pos),
                        format!(
                            "topic '{topic}' collides with topic '{other}': Kafka treats '.' and '_' alike in metric names; use one spelling"
                        ),
                    );
                }
                Some(_) => {}
                None => {
                    seen.insert(key, topic);
                }
            }
        }
    }

    /// `duplicate-declaration`: an event twice in one list, two flows with one start.
    fn duplicates(&mut self) {
        let t = self.t;
        for service in t.services.values() {
            self.repeated(
                &service.emits,
                &format!("'emits' of service '{}'", service.name),
            );
            for r in service.reactions.values() {
                let what = match r.emit {
                    Emit::OneOf(_) => "'one_of'",
                    _ => "'emit'",
                };
                self.repeated(
                    r.emit.events(),
                    &format!("{what} of the reaction of '{}' to '{}'", service.name, r.on),
                );
            }
        }
        let mut starts: HashMap<&str, &Flow> = HashMap::new();
        for flow in t.flows.values() {
            self.repeated(
                &flow.ends_with,
                &format!("'ends_with' of flow '{}'", flow.name),
            );
            if let Some(first) = starts.get(flow.starts_with.name.as_str()) {
                self.push(
                    Severity::Error,
                    Code::DuplicateDeclaration,
                    flow.starts_with.pos,
                    format!(
                        "flows '{}' and '{}' both start with '{}', so a run can't be told apart; merge them or give one its own start event",
                        first.name, flow.name, flow.starts_with.name
                    ),
                );
            } else {
                starts.insert(&flow.starts_with.name, flow);
            }
        }
    }

    fn repeated(&mut self, list: &[EventRef], what: &str) {
        for (i, e) in list.iter().enumerate() {
            if list[..i].iter().any(|o| o.name == e.name) {
                self.push(
                    Severity::Error,
                    Code::DuplicateDeclaration,
                    e.pos,
                    format!("event '{}' is listed twice in {what}; remove one", e.name),
                );
            }
        }
    }

    /// `never-emitted`, `unconsumed-event`, `start-outside-flow`.
    fn emitted_and_consumed(&mut self) {
        let t = self.t;
        for event in t.events.values() {
            let name = event.name.as_str();
            let emitters: Vec<_> = t.emitters_of(name).collect();
            let consumers: Vec<&str> = t.consumers_of(name).map(|(s, _)| s.name.as_str()).collect();
            let ending: Vec<&str> = t
                .flows
                .values()
                .filter(|f| f.is_ended_by(name))
                .map(|f| f.name.as_str())
                .collect();
            let starting: Vec<&str> = t
                .flows_starting_with(name)
                .map(|f| f.name.as_str())
                .collect();
            if emitters.is_empty() {
                let mut uses = Vec::new();
                if !consumers.is_empty() {
                    uses.push(format!(
                        "consumed by {}",
                        quoted_list(consumers.iter().copied())
                    ));
                }
                if !starting.is_empty() {
                    uses.push(format!(
                        "starts flow {}",
                        quoted_list(starting.iter().copied())
                    ));
                }
                if !ending.is_empty() {
                    uses.push(format!("ends flow {}", quoted_list(ending.iter().copied())));
                }
                if !uses.is_empty() {
                    let fix = if starting.is_empty() {
                        "add it to the 'emit' of a reaction"
                    } else {
                        "add it to the 'emits' of the service that starts the flow"
                    };
                    self.push(
                        Severity::Error,
                        Code::NeverEmitted,
                        event.pos,
                        format!(
                            "event '{name}' is {} but no service emits it; {fix}",
                            uses.join(" and ")
                        ),
                    );
                }
            } else if !starting.is_empty() && emitters.iter().all(|e| e.reaction.is_some()) {
                // Emitted only inside reactions, the event inherits the causing
                // event's correlation id: it never starts a run of its own.
                self.push(
                    Severity::Error,
                    Code::NeverEmitted,
                    event.pos,
                    format!(
                        "event '{name}' starts flow {} but no service emits it on its own (inside a reaction it continues the current flow); add it to a service's 'emits'",
                        quoted_list(starting.iter().copied())
                    ),
                );
            }
            if !emitters.is_empty() && consumers.is_empty() && ending.is_empty() {
                let mut by: Vec<&str> = emitters.iter().map(|e| e.service.name.as_str()).collect();
                by.dedup();
                self.push(
                    Severity::Warning,
                    Code::UnconsumedEvent,
                    event.pos,
                    format!(
                        "event '{name}' is emitted by {} but no service consumes it and no flow ends with it; add a consumer, add it to a flow's 'ends_with', or stop emitting it",
                        quoted_list(by)
                    ),
                );
            }
        }
        for service in t.services.values() {
            for e in &service.emits {
                if t.flows_starting_with(&e.name).next().is_none() {
                    self.push(
                        Severity::Warning,
                        Code::StartOutsideFlow,
                        e.pos,
                        format!(
                            "service '{}' emits '{}' on its own but no flow starts with it, so its runs belong to no flow; add a flow with 'starts_with: {}'",
                            service.name, e.name, e.name
                        ),
                    );
                }
            }
        }
    }

    /// `unreached-event`, `unreached-service`, `unreached-reaction`.
    fn unreached(&mut self) {
        let t = self.t;
        let mut reached: HashSet<&str> = HashSet::new();
        for flow in t.flows.values() {
            reached.extend(t.reachable_from(&flow.starts_with.name));
        }
        for event in t.events.values() {
            let never_emitted = t.emitters_of(&event.name).next().is_none();
            // An event nobody emits is already an error (or unused); saying it is
            // also unreached would be the same finding twice.
            if !reached.contains(event.name.as_str()) && !never_emitted {
                self.push(
                    Severity::Warning,
                    Code::UnreachedEvent,
                    event.pos,
                    format!(
                        "event '{}' is never reached from any flow start; emit it from a reaction inside a flow, start a flow with it, or remove it",
                        event.name
                    ),
                );
            } else if !reached.contains(event.name.as_str())
                && t.consumers_of(&event.name).next().is_none()
                && !t.flows.values().any(|f| f.is_ended_by(&event.name))
            {
                self.push(
                    Severity::Warning,
                    Code::UnreachedEvent,
                    event.pos,
                    format!(
                        "event '{}' is declared but nothing emits or consumes it; remove it or use it",
                        event.name
                    ),
                );
            }
        }
        for service in t.services.values() {
            let starts_a_flow = service
                .emits
                .iter()
                .any(|e| t.flows_starting_with(&e.name).next().is_some());
            let live: Vec<bool> = service
                .reactions
                .values()
                .map(|r| reached.contains(r.on.as_str()))
                .collect();
            if !starts_a_flow && !live.contains(&true) {
                self.push(
                    Severity::Warning,
                    Code::UnreachedService,
                    service.pos,
                    format!(
                        "service '{}' takes part in no flow: it starts none and reacts to no event a flow reaches; connect it or remove it",
                        service.name
                    ),
                );
                continue;
            }
            for (r, live) in service.reactions.values().zip(live) {
                if !live {
                    self.push(
                        Severity::Warning,
                        Code::UnreachedReaction,
                        r.pos,
                        format!(
                            "the reaction of '{}' to '{}' never runs: no flow start leads to '{}'; remove it or make a flow emit '{}'",
                            service.name, r.on, r.on, r.on
                        ),
                    );
                }
            }
        }
    }

    /// `unreachable-end`: every run of the flow, whatever each `one_of` picks, must
    /// reach an end, assuming only that a choice inside a loop is not made the same
    /// way forever (a retry loop with an exit is fine).
    fn flow_ends(&mut self, flow: &Flow) {
        let g = FlowGraph::new(self.t, flow);
        let winning = g.almost_surely_ending();
        let start = flow.starts_with.name.as_str();
        if winning.contains(start) || flow.ends_with.is_empty() {
            return;
        }
        // Walk the part of the flow that can't be sure to end, stopping at each
        // `one_of` alternative that is to blame; report those.
        let mut culprits = Vec::new();
        let mut seen: HashSet<&str> = HashSet::from([start]);
        let mut queue = VecDeque::from([start]);
        while let Some(event) = queue.pop_front() {
            for (service, r) in self.t.consumers_of(event) {
                let losing: Vec<&EventRef> = r
                    .emit
                    .events()
                    .iter()
                    .filter(|e| !winning.contains(e.name.as_str()))
                    .collect();
                for e in losing {
                    if r.emit.is_choice() {
                        culprits.push((service.name.as_str(), r.on.as_str(), e));
                    } else if seen.insert(e.name.as_str()) {
                        queue.push_back(e.name.as_str());
                    }
                }
            }
        }
        let ends = quoted_list(flow.ends_with.iter().map(|e| e.name.as_str()));
        if culprits.is_empty() {
            let why = g.dead_end(start, &winning);
            self.push(
                Severity::Error,
                Code::UnreachableEnd,
                flow.pos,
                format!(
                    "flow '{}' can never reach its end ({ends}): {why}; make a reaction on that path emit an end event",
                    flow.name
                ),
            );
        }
        for (service, on, e) in culprits {
            let why = g.dead_end(&e.name, &winning);
            self.push(
                Severity::Error,
                Code::UnreachableEnd,
                e.pos,
                format!(
                    "in flow '{}', when '{service}' picks '{}' on '{on}' the flow can't reach its end ({ends}): {why}; make that branch lead to an end event",
                    flow.name, e.name
                ),
            );
        }
    }

    /// `within-too-short`: the flow's bound against the quickest path's reaction bounds.
    fn flow_within(&mut self, flow: &Flow) {
        let Some(limit) = flow.within else { return };
        let Some((total, path)) = quickest_path(self.t, flow) else {
            return;
        };
        if total <= limit {
            return;
        }
        let parts: Vec<String> = path
            .iter()
            .filter_map(|(service, within, _)| {
                within.map(|w| format!("{service} {}", format_duration(w)))
            })
            .collect();
        let route: Vec<&str> = std::iter::once(flow.starts_with.name.as_str())
            .chain(path.iter().map(|(_, _, event)| *event))
            .collect();
        self.push(
            Severity::Error,
            Code::WithinTooShort,
            flow.pos,
            format!(
                "flow '{}' must finish within {}, but its quickest path {} allows its reactions {} ({}); raise the flow's 'within' or lower a reaction's",
                flow.name,
                format_duration(limit),
                route.join(" -> "),
                format_duration(total),
                parts.join(" + ")
            ),
        );
    }

    /// `cycle` (a note: it has an exit) and `endless-cycle` (an error: it has none).
    fn cycles(&mut self) {
        let t = self.t;
        let names: Vec<&str> = t.events.keys().map(String::as_str).collect();
        let id: HashMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let succ: Vec<Vec<usize>> = names
            .iter()
            .map(|n| t.successors(n).filter_map(|s| id.get(s).copied()).collect())
            .collect();
        for scc in strongly_connected(&succ) {
            let single = scc.len() == 1;
            if single && !succ[scc[0]].contains(&scc[0]) {
                continue;
            }
            let members: HashSet<&str> = scc.iter().map(|&i| names[i]).collect();
            // Events in the component from which activity can leave it for good:
            // every consumer's reaction must leave; an all-of leaves when all its
            // events do, a one_of when one of them does (choices are fair).
            let mut escapes: HashSet<&str> = HashSet::new();
            let mut changed = true;
            while changed {
                changed = false;
                for &event in &members {
                    if escapes.contains(event) {
                        continue;
                    }
                    let out = |e: &EventRef| {
                        !members.contains(e.name.as_str()) || escapes.contains(e.name.as_str())
                    };
                    let leaves = t.consumers_of(event).all(|(_, r)| match &r.emit {
                        Emit::All(list) => list.iter().all(out),
                        Emit::OneOf(list) => list.iter().any(out),
                        Emit::Nothing => true,
                    });
                    if leaves {
                        escapes.insert(event);
                        changed = true;
                    }
                }
            }
            let trapped: HashSet<&str> = members.difference(&escapes).copied().collect();
            let (cycle, severity, code) = if trapped.is_empty() {
                (find_cycle(t, &members), Severity::Note, Code::Cycle)
            } else {
                (find_cycle(t, &trapped), Severity::Error, Code::EndlessCycle)
            };
            let Some(cycle) = cycle else { continue };
            let (first_service, first_event) = (cycle[0].0, cycle[0].1);
            let pos = t
                .reaction(first_service, first_event)
                .map_or(Pos::default(), |r| r.pos);
            let mut text = first_event.to_owned();
            for (service, _, next) in &cycle {
                text.push_str(&format!(" --{service}--> {next}"));
            }
            let message = if code == Code::Cycle {
                let mut exits = Vec::new();
                for &event in &members {
                    for (service, r) in t.consumers_of(event) {
                        if let Emit::OneOf(list) = &r.emit {
                            for e in list.iter().filter(|e| !members.contains(e.name.as_str())) {
                                exits.push(format!(
                                    "'{}' on '{}' may emit '{}'",
                                    service.name, event, e.name
                                ));
                            }
                        }
                    }
                }
                exits.sort();
                exits.dedup();
                format!("cycle {text}; it has an exit: {}", exits.join(", "))
            } else {
                format!(
                    "cycle {text} has no exit: once entered it repeats forever; make a reaction on it a 'one_of' with an event that leaves the cycle"
                )
            };
            self.push(severity, code, pos, message);
        }
    }
}

/// One flow as a graph of events and reactions, cut at its end events (a run is
/// complete there).
struct FlowGraph<'a> {
    t: &'a Topology,
    flow: &'a Flow,
    /// Events reachable from the start without passing an end.
    events: Vec<&'a str>,
}

impl<'a> FlowGraph<'a> {
    fn new(t: &'a Topology, flow: &'a Flow) -> Self {
        let mut seen = HashSet::from([flow.starts_with.name.as_str()]);
        let mut events = vec![flow.starts_with.name.as_str()];
        let mut i = 0;
        while i < events.len() {
            let event = events[i];
            i += 1;
            if flow.is_ended_by(event) {
                continue;
            }
            for next in t.successors(event) {
                if seen.insert(next) {
                    events.push(next);
                }
            }
        }
        FlowGraph { t, flow, events }
    }

    /// The events from which the flow reaches an end with probability one when
    /// every `one_of` picks fairly: all of a reaction's events are published,
    /// so one of them ending is enough; a `one_of` needs every alternative to
    /// stay in the set. The standard almost-sure reachability fixpoint.
    fn almost_surely_ending(&self) -> HashSet<&'a str> {
        let mut winning: HashSet<&'a str> = self.events.iter().copied().collect();
        loop {
            let mut reach: HashSet<&'a str> = self
                .events
                .iter()
                .copied()
                .filter(|e| self.flow.is_ended_by(e))
                .collect();
            let mut changed = true;
            while changed {
                changed = false;
                for &event in &self.events {
                    if reach.contains(event) || !winning.contains(event) {
                        continue;
                    }
                    let ok = self.t.consumers_of(event).any(|(_, r)| match &r.emit {
                        Emit::All(list) => list.iter().any(|e| reach.contains(e.name.as_str())),
                        Emit::OneOf(list) => {
                            list.iter().all(|e| winning.contains(e.name.as_str()))
                                && list.iter().any(|e| reach.contains(e.name.as_str()))
                        }
                        Emit::Nothing => false,
                    });
                    if ok {
                        reach.insert(event);
                        changed = true;
                    }
                }
            }
            if reach.len() == winning.len() {
                return reach;
            }
            winning = reach;
        }
    }

    /// Why `from` can't be sure to reach an end: a dead end it leads to, or a loop.
    fn dead_end(&self, from: &str, winning: &HashSet<&str>) -> String {
        let t = self.t;
        let mut seen = HashSet::from([from]);
        let mut queue = VecDeque::from([(from, vec![from])]);
        while let Some((event, path)) = queue.pop_front() {
            let consumers: Vec<_> = t.consumers_of(event).collect();
            let route = |path: &[&str]| {
                if path.len() == 1 {
                    format!("'{}'", path[0])
                } else {
                    format!("'{}' leads to '{}'", path[0], path[path.len() - 1])
                }
            };
            if consumers.is_empty() {
                return format!("{}, which no service consumes", route(&path));
            }
            if consumers
                .iter()
                .all(|(_, r)| matches!(r.emit, Emit::Nothing))
            {
                let sinks: Vec<&str> = consumers.iter().map(|(s, _)| s.name.as_str()).collect();
                return format!(
                    "{}, which only {} consume{} without emitting anything",
                    route(&path),
                    quoted_list(sinks.iter().copied()),
                    if sinks.len() == 1 { "s" } else { "" }
                );
            }
            for (_, r) in consumers {
                for e in r.emit.events() {
                    let name = e.name.as_str();
                    if !winning.contains(name) && seen.insert(name) {
                        let mut next = path.clone();
                        next.push(name);
                        queue.push_back((name, next));
                    }
                }
            }
        }
        format!("'{from}' only leads into a loop that never reaches an end")
    }
}

/// The path from the flow's start to one of its ends whose reaction `within`s add
/// up to the least (a reaction without `within` counts as zero), as
/// (total, [(service, within, event emitted)]).
#[allow(clippy::type_complexity)]
fn quickest_path<'a>(
    t: &'a Topology,
    flow: &'a Flow,
) -> Option<(Duration, Vec<(&'a str, Option<Duration>, &'a str)>)> {
    let start = flow.starts_with.name.as_str();
    let mut best: HashMap<&str, Duration> = HashMap::from([(start, Duration::ZERO)]);
    let mut previous: HashMap<&str, (&str, &str, Option<Duration>)> = HashMap::new();
    let mut heap = BinaryHeap::from([Reverse((Duration::ZERO, start))]);
    while let Some(Reverse((cost, event))) = heap.pop() {
        if best.get(event).is_some_and(|&b| b < cost) {
            continue;
        }
        if flow.is_ended_by(event) {
            let mut path = Vec::new();
            let mut at = event;
            while let Some(&(from, service, within)) = previous.get(at) {
                path.push((service, within, at));
                at = from;
            }
            path.reverse();
            return Some((cost, path));
        }
        for (service, r) in t.consumers_of(event) {
            let step = r.within.unwrap_or_default();
            for e in r.emit.events() {
                let next = cost.saturating_add(step);
                if best.get(e.name.as_str()).is_none_or(|&b| next < b) {
                    best.insert(&e.name, next);
                    previous.insert(&e.name, (event, &service.name, r.within));
                    heap.push(Reverse((next, &e.name)));
                }
            }
        }
    }
    None
}

/// Tarjan's strongly connected components, iteratively (no recursion, so a
/// long chain of events can't overflow the stack). Components come out in a
/// deterministic order: sorted by their smallest node.
fn strongly_connected(succ: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let n = succ.len();
    let mut index = vec![usize::MAX; n];
    let mut low = vec![0; n];
    let mut on_stack = vec![false; n];
    let mut stack = Vec::new();
    let mut next_index = 0;
    let mut components = Vec::new();
    for root in 0..n {
        if index[root] != usize::MAX {
            continue;
        }
        let mut work = vec![(root, 0usize)];
        while let Some(&mut (v, ref mut child)) = work.last_mut() {
            if *child == 0 && index[v] == usize::MAX {
                index[v] = next_index;
                low[v] = next_index;
                next_index += 1;
                stack.push(v);
                on_stack[v] = true;
            }
            if let Some(&w) = succ[v].get(*child) {
                *child += 1;
                if index[w] == usize::MAX {
                    work.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            work.pop();
            if let Some(&(parent, _)) = work.last() {
                low[parent] = low[parent].min(low[v]);
            }
            if low[v] == index[v] {
                let mut component = Vec::new();
                while let Some(w) = stack.pop() {
                    on_stack[w] = false;
                    component.push(w);
                    if w == v {
                        break;
                    }
                }
                component.sort_unstable();
                components.push(component);
            }
        }
    }
    components.sort();
    components
}

/// A shortest cycle inside `within`, through the first event (in declaration
/// order) that is on one, as [(service, event, next event)].
fn find_cycle<'a>(
    t: &'a Topology,
    within: &HashSet<&'a str>,
) -> Option<Vec<(&'a str, &'a str, &'a str)>> {
    t.events
        .keys()
        .map(String::as_str)
        .filter(|e| within.contains(e))
        .find_map(|start| cycle_through(t, within, start))
}

fn cycle_through<'a>(
    t: &'a Topology,
    within: &HashSet<&'a str>,
    start: &'a str,
) -> Option<Vec<(&'a str, &'a str, &'a str)>> {
    let mut previous: BTreeMap<&str, (&str, &str)> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(event) = queue.pop_front() {
        for (service, r) in t.consumers_of(event) {
            for e in r.emit.events() {
                let next = e.name.as_str();
                if !within.contains(next) {
                    continue;
                }
                if next == start {
                    let mut cycle = vec![(service.name.as_str(), event, start)];
                    let mut at = event;
                    while let Some(&(from, by)) = previous.get(at) {
                        cycle.push((by, from, at));
                        at = from;
                    }
                    cycle.reverse();
                    return Some(cycle);
                }
                if next != start && !previous.contains_key(next) {
                    previous.insert(next, (event, service.name.as_str()));
                    queue.push_back(next);
                }
            }
        }
    }
    None
}
