//! The loader: YAML text → [`Topology`], collecting every problem with its position.

use std::path::Path;
use std::time::Duration;

use indexmap::IndexMap;

use crate::diagnostic::{Code, Diagnostic, Pos, Severity, suggest};
use crate::duration::parse_duration;
use crate::error::{Error, Result};
use crate::model::{Emit, Event, EventRef, Flow, Reaction, Service, Topology};
use crate::yaml::{self, Kind, Node};

/// Largest topology file read, in bytes: a guard against feeding the loader
/// something that is clearly not a topology (a log, a core dump).
const MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;

impl Topology {
    /// Reads and loads the topology file at `path`; diagnostics name the file as given.
    ///
    /// # Errors
    ///
    /// [`Error::Read`] when the file can't be read, [`Error::Invalid`] with every
    /// problem found when it is not a valid topology.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Topology> {
        let path = path.as_ref();
        let label = path.display().to_string();
        let read = || -> std::io::Result<String> {
            let len = std::fs::metadata(path)?.len();
            if len > MAX_FILE_BYTES {
                return Err(std::io::Error::other(format!(
                    "{len} bytes is more than the {MAX_FILE_BYTES} a topology file may have"
                )));
            }
            std::fs::read_to_string(path)
        };
        let text = read().map_err(|source| Error::Read {
            path: label.clone(),
            source,
        })?;
        Topology::parse(&text, &label)
    }

    /// Loads a topology from YAML `text`; `file` is the label diagnostics use.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] with every problem found (all of severity error).
    /// Never panics, whatever `text` holds.
    pub fn parse(text: &str, file: &str) -> Result<Topology> {
        let mut loader = Loader {
            file: file.to_owned(),
            diagnostics: Vec::new(),
            declared: Vec::new(),
        };
        let topology = loader.topology(text);
        // Stable: problems at one position keep the order they were found in.
        loader.diagnostics.sort_by_key(|d| d.pos);
        match topology {
            Some(topology) if loader.diagnostics.is_empty() => Ok(topology),
            _ => Err(Error::Invalid {
                file: file.to_owned(),
                diagnostics: loader.diagnostics,
            }),
        }
    }
}

struct Loader {
    file: String,
    diagnostics: Vec<Diagnostic>,
    /// Every event name declared, valid or not: a reference to an event whose
    /// declaration has an error is not reported again as unknown.
    declared: Vec<String>,
}

type Entries = [(Node, Node)];

const TOP_KEYS: &[&str] = &["name", "description", "events", "services", "flows"];
const EVENT_KEYS: &[&str] = &["topic", "schema", "description"];
const SERVICE_KEYS: &[&str] = &["description", "emits", "on", "sources"];
const REACTION_KEYS: &[&str] = &["emit", "within", "description"];
const ONE_OF_KEYS: &[&str] = &["one_of"];
const FLOW_KEYS: &[&str] = &["description", "starts_with", "ends_with", "within"];

impl Loader {
    fn error(&mut self, code: Code, pos: Pos, message: impl Into<String>) {
        self.diagnostics.push(Diagnostic::new(
            Severity::Error,
            code,
            self.file.clone(),
            pos,
            message,
        ));
    }

    fn topology(&mut self, text: &str) -> Option<Topology> {
        let root = match yaml::parse(text) {
            Ok(root) => root,
            Err(err) => {
                self.error(
                    Code::YamlSyntax,
                    err.pos,
                    format!("not valid YAML: {}", syntax_message(&err.message)),
                );
                return None;
            }
        };
        let entries = match &root.kind {
            Kind::Map(entries) => entries.as_slice(),
            Kind::Null => {
                self.error(
                    Code::MissingKey,
                    root.pos,
                    "the file is empty; a topology needs at least 'name' and 'events'",
                );
                return None;
            }
            other => {
                self.error(
                    Code::InvalidType,
                    root.pos,
                    format!(
                        "a topology is a mapping with keys 'name', 'events', 'services', 'flows', not {}",
                        other.type_name()
                    ),
                );
                return None;
            }
        };
        self.check_keys(entries, TOP_KEYS, "the topology");
        let name = match get(entries, "name") {
            Some(node) => self.name(node, "topology name").unwrap_or_default(),
            None => {
                self.error(
                    Code::MissingKey,
                    root.pos,
                    "the topology has no 'name'; add 'name: <topology-name>' at the top",
                );
                String::new()
            }
        };
        let description = self.opt_text(entries, "description");

        let events = match get(entries, "events") {
            Some(node) => self.events(node),
            None => {
                self.error(
                    Code::MissingKey,
                    root.pos,
                    "the topology has no 'events'; declare each event type with its topic",
                );
                IndexMap::new()
            }
        };
        let services = get(entries, "services")
            .map(|node| self.services(node, &events))
            .unwrap_or_default();
        let flows = get(entries, "flows")
            .map(|node| self.flows(node, &events))
            .unwrap_or_default();
        Some(Topology::new(
            name,
            description,
            self.file.clone(),
            events,
            services,
            flows,
        ))
    }

    fn events(&mut self, node: &Node) -> IndexMap<String, Event> {
        let mut events = IndexMap::new();
        let Some(entries) = self.mapping(node, "'events'", "event names to { topic: … }") else {
            return events;
        };
        self.check_duplicates(entries, "event");
        for (key, _) in entries {
            if let Kind::Str(name) = &key.kind {
                self.declared.push(name.clone());
            }
        }
        for (key, value) in entries {
            let Some(name) = self.name(key, "event name") else {
                continue;
            };
            let Some(fields) = self.mapping(
                value,
                &format!("event '{name}'"),
                "{ topic: <topic> } with optional 'schema' and 'description'",
            ) else {
                continue;
            };
            self.check_keys(fields, EVENT_KEYS, &format!("event '{name}'"));
            let topic = match get(fields, "topic") {
                Some(node) => self.topic(node),
                None => {
                    self.error(
                        Code::MissingKey,
                        key.pos,
                        format!("event '{name}' has no 'topic'; add 'topic: <topic>'"),
                    );
                    None
                }
            };
            let schema = get(fields, "schema").and_then(|n| self.text(n, "'schema'"));
            let description = self.opt_text(fields, "description");
            if let Some(topic) = topic
                && !events.contains_key(&name)
            {
                events.insert(
                    name.clone(),
                    Event {
                        name,
                        topic,
                        schema,
                        description,
                        pos: key.pos,
                    },
                );
            }
        }
        events
    }

    fn services(
        &mut self,
        node: &Node,
        events: &IndexMap<String, Event>,
    ) -> IndexMap<String, Service> {
        let mut services = IndexMap::new();
        let Some(entries) =
            self.mapping(node, "'services'", "service names to { emits: …, on: … }")
        else {
            return services;
        };
        self.check_duplicates(entries, "service");
        for (key, value) in entries {
            let Some(name) = self.name(key, "service name") else {
                continue;
            };
            let what = format!("service '{name}'");
            let fields: &Entries = match &value.kind {
                Kind::Null => &[],
                _ => match self.mapping(value, &what, "{ emits: [...], on: {...} }") {
                    Some(fields) => fields,
                    None => continue,
                },
            };
            self.check_keys(fields, SERVICE_KEYS, &what);
            let description = self.opt_text(fields, "description");
            let emits = get(fields, "emits")
                .map(|n| self.event_list(n, &format!("'emits' of {what}"), events))
                .unwrap_or_default();
            let sources = get(fields, "sources")
                .map(|n| self.sources(n, &what))
                .unwrap_or_default();
            let mut reactions = IndexMap::new();
            if let Some(on) = get(fields, "on") {
                let on_entries: &Entries = match &on.kind {
                    Kind::Null => &[],
                    _ => self
                        .mapping(on, &format!("'on' of {what}"), "event names to { emit: … }")
                        .unwrap_or(&[]),
                };
                self.check_duplicates(on_entries, &format!("reaction of {what} to event"));
                for (event_key, reaction) in on_entries {
                    let Some(trigger) = self.event_ref(event_key, events) else {
                        // Still look inside, to report its problems too.
                        let _ = self.reaction(reaction, &name, "?", events);
                        continue;
                    };
                    if let Some(mut r) = self.reaction(reaction, &name, &trigger.name, events)
                        && !reactions.contains_key(&trigger.name)
                    {
                        r.pos = event_key.pos;
                        reactions.insert(trigger.name.clone(), r);
                    }
                }
            }
            if !services.contains_key(&name) {
                services.insert(
                    name.clone(),
                    Service {
                        name,
                        description,
                        emits,
                        reactions,
                        sources: sources.into_iter().map(|(s, _)| s).collect(),
                        pos: key.pos,
                    },
                );
            }
        }
        self.check_sources(entries, &services);
        services
    }

    /// The `sources` of a service: a list of non-empty strings, each once,
    /// with their positions.
    fn sources(&mut self, node: &Node, what: &str) -> Vec<(String, Pos)> {
        let items: &[Node] = match &node.kind {
            Kind::Seq(items) => items,
            Kind::Null => &[],
            Kind::Str(_) => std::slice::from_ref(node),
            other => {
                self.error(
                    Code::InvalidType,
                    node.pos,
                    format!(
                        "'sources' of {what} must be a list of the CloudEvents sources its events carry, not {}",
                        other.type_name()
                    ),
                );
                return Vec::new();
            }
        };
        let mut sources: Vec<(String, Pos)> = Vec::new();
        for item in items {
            let Some(source) = self.text(item, &format!("a source of {what}")) else {
                continue;
            };
            if source.trim().is_empty() || source.len() > 2048 {
                self.error(
                    Code::InvalidValue,
                    item.pos,
                    format!(
                        "a source of {what} is empty or longer than 2048 bytes; write the CloudEvents `source` its events carry, e.g. \"https://shop.example.com/checkout\""
                    ),
                );
            } else if sources.iter().any(|(s, _)| *s == source) {
                self.error(
                    Code::DuplicateKey,
                    item.pos,
                    format!("{what} lists source '{}' twice", truncate(&source)),
                );
            } else {
                sources.push((source, item.pos));
            }
        }
        sources
    }

    /// A source names one service only: not two services' `sources`, not
    /// another service's name.
    fn check_sources(&mut self, entries: &Entries, services: &IndexMap<String, Service>) {
        let mut owner: Vec<(&str, &str)> = Vec::new();
        for (key, value) in entries {
            let (Kind::Str(name), Kind::Map(fields)) = (&key.kind, &value.kind) else {
                continue;
            };
            let Some(Node {
                kind: Kind::Seq(items),
                ..
            }) = get(fields, "sources")
            else {
                continue;
            };
            for item in items {
                let Kind::Str(source) = &item.kind else {
                    continue;
                };
                if let Some(other) = services.get(source.as_str()).filter(|s| s.name != *name) {
                    self.error(
                        Code::InvalidValue,
                        item.pos,
                        format!(
                            "source '{}' of service '{name}' is the name of service '{}'; a source must name one service only",
                            truncate(source),
                            other.name
                        ),
                    );
                } else if let Some((_, first)) = owner.iter().find(|(s, _)| *s == source.as_str())
                    && *first != name.as_str()
                {
                    self.error(
                        Code::DuplicateKey,
                        item.pos,
                        format!(
                            "source '{}' is listed by services '{first}' and '{name}'; a source must name one service only",
                            truncate(source)
                        ),
                    );
                } else {
                    owner.push((source.as_str(), name.as_str()));
                }
            }
        }
    }

    fn reaction(
        &mut self,
        node: &Node,
        service: &str,
        on: &str,
        events: &IndexMap<String, Event>,
    ) -> Option<Reaction> {
        let what = format!("the reaction of '{service}' to '{on}'");
        let fields: &Entries = match &node.kind {
            Kind::Null => &[],
            _ => self.mapping(
                node,
                &what,
                "{ emit: [...] } or { emit: { one_of: [...] } }, with optional 'within'",
            )?,
        };
        self.check_keys(fields, REACTION_KEYS, &what);
        let emit = match get(fields, "emit") {
            None => Emit::Nothing,
            Some(emit) => match &emit.kind {
                Kind::Null => Emit::Nothing,
                Kind::Map(choice) => {
                    self.check_keys(choice, ONE_OF_KEYS, &format!("'emit' of {what}"));
                    match get(choice, "one_of") {
                        Some(list) => {
                            let alternatives =
                                self.event_list(list, &format!("'one_of' of {what}"), events);
                            if is_empty_list(list) {
                                self.error(
                                    Code::InvalidValue,
                                    list.pos,
                                    format!(
                                        "'one_of' of {what} is empty; list the events it may emit, or drop 'emit' for a sink"
                                    ),
                                );
                            }
                            Emit::OneOf(alternatives)
                        }
                        None => {
                            self.error(
                                Code::MissingKey,
                                emit.pos,
                                format!(
                                    "'emit' of {what} is a mapping without 'one_of'; write 'emit: {{ one_of: [...] }}' or a list for all-of"
                                ),
                            );
                            Emit::Nothing
                        }
                    }
                }
                _ => {
                    let list = self.event_list(emit, &format!("'emit' of {what}"), events);
                    if list.is_empty() {
                        Emit::Nothing
                    } else {
                        Emit::All(list)
                    }
                }
            },
        };
        let within = get(fields, "within").and_then(|n| self.duration(n, &what));
        Some(Reaction {
            on: on.to_owned(),
            emit,
            within,
            pos: node.pos,
        })
    }

    fn flows(&mut self, node: &Node, events: &IndexMap<String, Event>) -> IndexMap<String, Flow> {
        let mut flows = IndexMap::new();
        let Some(entries) = self.mapping(
            node,
            "'flows'",
            "flow names to { starts_with: …, ends_with: [...] }",
        ) else {
            return flows;
        };
        self.check_duplicates(entries, "flow");
        for (key, value) in entries {
            let Some(name) = self.name(key, "flow name") else {
                continue;
            };
            let what = format!("flow '{name}'");
            let Some(fields) = self.mapping(
                value,
                &what,
                "{ starts_with: <event>, ends_with: [...], within: <duration> }",
            ) else {
                continue;
            };
            self.check_keys(fields, FLOW_KEYS, &what);
            let description = self.opt_text(fields, "description");
            let starts_with = match get(fields, "starts_with") {
                Some(node) => self.event_ref(node, events),
                None => {
                    self.error(
                        Code::MissingKey,
                        key.pos,
                        format!("{what} has no 'starts_with'; name the event that starts it"),
                    );
                    None
                }
            };
            let ends_with = match get(fields, "ends_with") {
                Some(node) => {
                    let ends = self.event_list(node, &format!("'ends_with' of {what}"), events);
                    if is_empty_list(node) {
                        self.error(
                            Code::InvalidValue,
                            node.pos,
                            format!(
                                "'ends_with' of {what} is empty; list the events that complete it"
                            ),
                        );
                    }
                    ends
                }
                None => {
                    self.error(
                        Code::MissingKey,
                        key.pos,
                        format!("{what} has no 'ends_with'; list the events that complete it"),
                    );
                    Vec::new()
                }
            };
            let within = get(fields, "within").and_then(|n| self.duration(n, &what));
            if let Some(starts_with) = starts_with
                && !flows.contains_key(&name)
            {
                flows.insert(
                    name.clone(),
                    Flow {
                        name,
                        description,
                        starts_with,
                        ends_with,
                        within,
                        pos: key.pos,
                    },
                );
            }
        }
        flows
    }

    // --- building blocks ---

    /// The entries of a mapping, or an `invalid-type` error saying what was expected.
    fn mapping<'n>(&mut self, node: &'n Node, what: &str, expected: &str) -> Option<&'n Entries> {
        match &node.kind {
            Kind::Map(entries) => Some(entries),
            other => {
                self.error(
                    Code::InvalidType,
                    node.pos,
                    format!(
                        "{what} must be a mapping of {expected}, not {}",
                        other.type_name()
                    ),
                );
                None
            }
        }
    }

    /// Reports keys not in `allowed` (with a suggestion) and repeated keys.
    fn check_keys(&mut self, entries: &Entries, allowed: &[&str], what: &str) {
        for (key, _) in entries {
            let Kind::Str(k) = &key.kind else {
                self.error(
                    Code::InvalidType,
                    key.pos,
                    format!(
                        "keys of {what} are names, not {}; allowed: {}",
                        key.kind.type_name(),
                        allowed.join(", ")
                    ),
                );
                continue;
            };
            if !allowed.contains(&k.as_str()) {
                let hint = match suggest(k, allowed.iter().copied()) {
                    Some(s) => format!(" — did you mean '{s}'?"),
                    None => format!("; allowed: {}", allowed.join(", ")),
                };
                self.error(
                    Code::UnknownKey,
                    key.pos,
                    format!("unknown key '{k}' in {what}{hint}"),
                );
            }
        }
        self.check_duplicates(entries, "key");
    }

    /// Reports every repeat of a string key, pointing at the first one.
    fn check_duplicates(&mut self, entries: &Entries, what: &str) {
        for (i, (key, _)) in entries.iter().enumerate() {
            let Kind::Str(k) = &key.kind else { continue };
            let first = entries[..i]
                .iter()
                .find(|(other, _)| matches!(&other.kind, Kind::Str(o) if o == k));
            if let Some((first, _)) = first {
                self.error(
                    Code::DuplicateKey,
                    key.pos,
                    format!(
                        "{what} '{k}' is declared twice (first at line {}); keep one",
                        first.pos.line
                    ),
                );
            }
        }
    }

    fn text(&mut self, node: &Node, what: &str) -> Option<String> {
        match &node.kind {
            Kind::Str(s) => Some(s.clone()),
            other => {
                self.error(
                    Code::InvalidType,
                    node.pos,
                    format!("{what} must be a string, not {}", other.type_name()),
                );
                None
            }
        }
    }

    fn opt_text(&mut self, entries: &Entries, key: &str) -> Option<String> {
        get(entries, key).and_then(|n| self.text(n, &format!("'{key}'")))
    }

    /// A name of an event, service, flow or topology: a letter, then letters,
    /// digits, `_`, `-` or `.` — safe as a CloudEvents type, a DOT id, a metric label.
    fn name(&mut self, node: &Node, what: &str) -> Option<String> {
        let name = self.text(node, what)?;
        let mut chars = name.chars();
        let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if valid && name.len() <= 200 {
            Some(name)
        } else {
            self.error(
                Code::InvalidName,
                node.pos,
                format!(
                    "{what} '{}' is not a valid name; start with a letter and use letters, digits, '_', '-' or '.' (at most 200)",
                    truncate(&name)
                ),
            );
            None
        }
    }

    /// A topic name as Kafka allows it: 1 to 249 of `[A-Za-z0-9._-]`, not `.` or `..`.
    fn topic(&mut self, node: &Node) -> Option<String> {
        let topic = self.text(node, "'topic'")?;
        let valid = !topic.is_empty()
            && topic.len() <= 249
            && topic != "."
            && topic != ".."
            && topic
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if valid {
            Some(topic)
        } else {
            self.error(
                Code::InvalidName,
                node.pos,
                format!(
                    "topic '{}' is not a valid topic name; use 1 to 249 letters, digits, '.', '_' or '-'",
                    truncate(&topic)
                ),
            );
            None
        }
    }

    /// A reference to a declared event; unknown names get a suggestion.
    fn event_ref(&mut self, node: &Node, events: &IndexMap<String, Event>) -> Option<EventRef> {
        let name = self.text(node, "an event name")?;
        if events.contains_key(&name) {
            return Some(EventRef {
                name,
                pos: node.pos,
            });
        }
        if self.declared.contains(&name) {
            // Its declaration is already reported.
            return None;
        }
        let hint = match suggest(&name, self.declared.iter().map(String::as_str)) {
            Some(s) => format!(" — did you mean '{s}'?"),
            None => "; declare it under 'events'".to_owned(),
        };
        self.error(
            Code::UnknownEvent,
            node.pos,
            format!("unknown event '{}'{hint}", truncate(&name)),
        );
        None
    }

    /// A list of event names; a single name stands for a list of one.
    fn event_list(
        &mut self,
        node: &Node,
        what: &str,
        events: &IndexMap<String, Event>,
    ) -> Vec<EventRef> {
        match &node.kind {
            Kind::Seq(items) => items
                .iter()
                .filter_map(|item| self.event_ref(item, events))
                .collect(),
            Kind::Str(_) => self.event_ref(node, events).into_iter().collect(),
            Kind::Null => Vec::new(),
            other => {
                self.error(
                    Code::InvalidType,
                    node.pos,
                    format!(
                        "{what} must be a list of event names, not {}",
                        other.type_name()
                    ),
                );
                Vec::new()
            }
        }
    }

    fn duration(&mut self, node: &Node, what: &str) -> Option<Duration> {
        match &node.kind {
            Kind::Str(text) => match parse_duration(text) {
                Ok(d) => Some(d),
                Err(reason) => {
                    self.error(
                        Code::InvalidDuration,
                        node.pos,
                        format!("'within' of {what}: {reason}"),
                    );
                    None
                }
            },
            Kind::Int(n) => {
                self.error(
                    Code::InvalidDuration,
                    node.pos,
                    format!(
                        "'within' of {what} is a bare number; add a unit, like '{n}s' or '{n}ms'"
                    ),
                );
                None
            }
            other => {
                self.error(
                    Code::InvalidType,
                    node.pos,
                    format!(
                        "'within' of {what} must be a duration like '5s', not {}",
                        other.type_name()
                    ),
                );
                None
            }
        }
    }
}

/// The value of the first entry whose key is the string `key`.
fn get<'n>(entries: &'n Entries, key: &str) -> Option<&'n Node> {
    entries
        .iter()
        .find(|(k, _)| matches!(&k.kind, Kind::Str(s) if s == key))
        .map(|(_, v)| v)
}

/// Whether `node` is `[]` or nothing at all.
fn is_empty_list(node: &Node) -> bool {
    match &node.kind {
        Kind::Null => true,
        Kind::Seq(items) => items.is_empty(),
        _ => false,
    }
}

/// At most 60 characters of `s`, so one absurd value can't flood the output.
fn truncate(s: &str) -> String {
    if s.chars().count() <= 60 {
        s.to_owned()
    } else {
        let head: String = s.chars().take(57).collect();
        format!("{head}...")
    }
}

/// The parser's message, lowercased first letter, without the position it
/// repeats (the diagnostic already starts with it).
fn syntax_message(message: &str) -> String {
    let message = message.lines().next().unwrap_or_default();
    let message = match message.rfind(" at line ") {
        Some(i) => &message[..i],
        None => message,
    };
    lowercase_first(message.trim())
}

fn lowercase_first(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}
