//! AsyncAPI 3.0 export: channels are topics, messages are event types,
//! operations are each service's sends and receives.
//!
//! ```
//! use choreo_topology::{Topology, asyncapi};
//! let t = Topology::parse(
//!     "name: t\nevents: {A: {topic: a}}\nservices: {s: {emits: [A]}, r: {on: {A: {}}}}\nflows: {f: {starts_with: A, ends_with: [A]}}\n",
//!     "t.yaml",
//! )?;
//! let doc = asyncapi::export(&t, |_event, _schema| unreachable!("no schema declared"))?;
//! assert_eq!(doc["asyncapi"], "3.0.0");
//! assert_eq!(doc["operations"]["s.send.A"]["action"], "send");
//! assert_eq!(doc["operations"]["r.receive.A"]["action"], "receive");
//! # Ok::<(), choreo_topology::Error>(())
//! ```

use std::path::Path;

use serde_json::{Map, Value, json};

use crate::duration::format_duration;
use crate::error::{Error, Result};
use crate::model::{Emit, Event, Topology};

/// The AsyncAPI version produced.
pub const VERSION: &str = "3.0.0";

/// Builds the AsyncAPI 3.0 document of `t`.
///
/// `schema` is asked for the payload schema of each event that declares one
/// (with the event and its `schema` reference) and returns it as JSON; events
/// without a schema get a permissive `{"type": "object"}`. Keys are the names
/// from the topology (which the loader restricts to `[A-Za-z0-9_.-]`, the
/// characters AsyncAPI allows in component keys).
///
/// # Errors
///
/// Whatever `schema` returns.
pub fn export(
    t: &Topology,
    mut schema: impl FnMut(&Event, &str) -> Result<Value>,
) -> Result<Value> {
    let mut messages = Map::new();
    let mut channels = Map::new();
    for topic in t.topics() {
        let mut refs = Map::new();
        for event in t.events_on(topic) {
            refs.insert(
                event.name.clone(),
                json!({ "$ref": format!("#/components/messages/{}", event.name) }),
            );
        }
        channels.insert(
            topic.clone(),
            json!({
                "address": topic,
                "title": topic,
                "messages": refs,
            }),
        );
    }
    for event in t.events() {
        let payload = match &event.schema {
            Some(reference) => schema(event, reference)?,
            None => json!({ "type": "object" }),
        };
        let mut message = Map::new();
        message.insert("name".into(), json!(event.name));
        message.insert("title".into(), json!(event.name));
        message.insert("contentType".into(), json!("application/json"));
        if let Some(d) = &event.description {
            message.insert("description".into(), json!(d));
        }
        message.insert("payload".into(), payload);
        messages.insert(event.name.clone(), Value::Object(message));
    }

    let mut operations = Map::new();
    let message_ref = |event: &str| {
        let topic = t.topic_of(event).unwrap_or_default();
        json!({ "$ref": format!("#/channels/{topic}/messages/{event}") })
    };
    let channel_ref = |event: &str| {
        let topic = t.topic_of(event).unwrap_or_default();
        json!({ "$ref": format!("#/channels/{topic}") })
    };
    for service in t.services() {
        for event in t.events() {
            let emitters: Vec<_> = t
                .emitters_of(&event.name)
                .filter(|e| e.service.name == service.name)
                .collect();
            if emitters.is_empty() {
                continue;
            }
            let how: Vec<String> = emitters
                .iter()
                .map(|e| match e.reaction {
                    None => "on its own, starting a flow".to_owned(),
                    Some(r) => format!(
                        "{} on '{}'",
                        if r.emit.is_choice() {
                            "as one of a choice"
                        } else {
                            ""
                        },
                        r.on
                    )
                    .trim_start()
                    .to_owned(),
                })
                .collect();
            operations.insert(
                format!("{}.send.{}", service.name, event.name),
                json!({
                    "action": "send",
                    "title": format!("{} sends {}", service.name, event.name),
                    "summary": format!("{} publishes {} ({})", service.name, event.name, how.join("; ")),
                    "channel": channel_ref(&event.name),
                    "messages": [message_ref(&event.name)],
                }),
            );
        }
        for reaction in service.reactions.values() {
            let emits = match &reaction.emit {
                Emit::All(list) => format!(
                    "emits {}",
                    list.iter()
                        .map(|e| e.name.as_str())
                        .collect::<Vec<_>>()
                        .join(" and ")
                ),
                Emit::OneOf(list) => format!(
                    "emits one of {}",
                    list.iter()
                        .map(|e| e.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Emit::Nothing => "emits nothing".to_owned(),
            };
            let within = reaction
                .within
                .map(|w| format!(" within {}", format_duration(w)))
                .unwrap_or_default();
            operations.insert(
                format!("{}.receive.{}", service.name, reaction.on),
                json!({
                    "action": "receive",
                    "title": format!("{} receives {}", service.name, reaction.on),
                    "summary": format!("{} reacts to {}: {emits}{within}", service.name, reaction.on),
                    "channel": channel_ref(&reaction.on),
                    "messages": [message_ref(&reaction.on)],
                }),
            );
        }
    }

    let mut description = t
        .description()
        .map(|d| format!("{}\n\n", d.trim_end()))
        .unwrap_or_default();
    description.push_str(&format!(
        "Generated by choreo from the topology '{}' ({}).",
        t.name(),
        t.file()
    ));
    Ok(json!({
        "asyncapi": VERSION,
        "info": {
            "title": t.name(),
            "version": "1.0.0",
            "description": description,
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": { "messages": messages },
    }))
}

/// Reads schema references as JSON files relative to the directory of the
/// topology file (`t.file()`): the loader [`export`] needs for topologies read
/// with [`Topology::from_path`].
///
/// # Errors
///
/// [`Error::Schema`] when a file can't be read, is not JSON, or is not a JSON object.
pub fn read_schema_files(t: &Topology) -> impl FnMut(&Event, &str) -> Result<Value> + '_ {
    let base = Path::new(t.file())
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    move |event: &Event, reference: &str| {
        let fail = |reason: String| Error::Schema {
            event: event.name.clone(),
            schema: reference.to_owned(),
            location: format!("{}:{}", t.file(), event.pos),
            reason,
        };
        let path = base.join(reference);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| fail(format!("cannot read '{}': {e}", path.display())))?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| fail(format!("'{}' is not JSON: {e}", path.display())))?;
        if !value.is_object() {
            return Err(fail(format!(
                "'{}' is not a JSON Schema object",
                path.display()
            )));
        }
        Ok(value)
    }
}
