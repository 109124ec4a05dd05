//! Finding flows by what a user knows of them: an event id, a record key, a payload field.

use choreo_core::{ContentType, EventId, RECEIPT_TYPE};
use serde_json::Value;

use crate::{Error, Record, Result};

/// What `choreo trace --find` looks for, and whether a record has it.
///
/// - `TEXT` matches a record whose event id, correlation id or key is `TEXT`;
/// - `FIELD=VALUE` matches a record whose JSON payload has `FIELD` (a
///   top-level key, or a dotted path into nested objects: `customer.id`)
///   equal to `VALUE` — a string with that text, or a number or boolean
///   written that way — and, in case a key or id holds an `=`, also
///   whatever `TEXT` matches for the whole term.
///
/// ```
/// use choreo_core::Envelope;
/// use choreo_trace::{Query, Record};
///
/// let order = Record::new(Envelope::new("OrderPlaced", "orders", r#"{"order_id":42,"customer":{"id":"c-7"}}"#));
/// assert!(Query::parse("order_id=42").unwrap().matches(&order));
/// assert!(Query::parse("customer.id=c-7").unwrap().matches(&order));
/// assert!(!Query::parse("order_id=4").unwrap().matches(&order));
/// assert!(Query::parse(&order.envelope.id.to_string()).unwrap().matches(&order));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    text: String,
    id: Option<EventId>,
    field: Option<(Vec<String>, String)>,
}

impl Query {
    /// Reads a query (see the type's docs).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when it is empty, or a `FIELD=VALUE` has no field.
    pub fn parse(text: &str) -> Result<Query> {
        let text = text.trim();
        if text.is_empty() {
            return Err(Error::Config {
                setting: "--find",
                reason: "say what to find: an event id, a record key, or FIELD=VALUE (order_id=42)"
                    .into(),
            });
        }
        let field = match text.split_once('=') {
            Some((path, value)) => {
                let path: Vec<String> = path.trim().split('.').map(str::to_owned).collect();
                if path.iter().any(String::is_empty) {
                    return Err(Error::Config {
                        setting: "--find",
                        reason: format!(
                            "'{text}' has no field name before '=': write FIELD=VALUE, such as order_id=42 or customer.id=c-7"
                        ),
                    });
                }
                Some((path, value.trim().to_owned()))
            }
            None => None,
        };
        Ok(Query {
            text: text.to_owned(),
            id: EventId::parse(text),
            field,
        })
    }

    /// What was asked, as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `record` has what is looked for.
    pub fn matches(&self, record: &Record) -> bool {
        let env = &record.envelope;
        let json = (env.content_type == ContentType::Json && env.event_type != RECEIPT_TYPE)
            .then_some(&env.data[..]);
        self.matches_parts(
            &env.id,
            record.attributed.then_some(&env.correlation_id),
            env.key.as_deref(),
            json,
        )
    }

    /// Whether a record with these parts has what is looked for: its event
    /// id, its correlation id (when attributed), its key, and its payload
    /// when that is JSON.
    pub(crate) fn matches_parts(
        &self,
        event_id: &EventId,
        correlation_id: Option<&EventId>,
        key: Option<&[u8]>,
        json: Option<&[u8]>,
    ) -> bool {
        if let Some(id) = &self.id
            && (event_id == id || correlation_id == Some(id))
        {
            return true;
        }
        if key == Some(self.text.as_bytes()) {
            return true;
        }
        let (Some((path, value)), Some(data)) = (&self.field, json) else {
            return false;
        };
        // Cheap first: the value's text must be in the payload somewhere.
        if memchr::memmem::find(data, value.as_bytes()).is_none() {
            return false;
        }
        let Ok(doc) = serde_json::from_slice::<Value>(data) else {
            return false;
        };
        let mut at = &doc;
        for key in path {
            match at.get(key) {
                Some(v) => at = v,
                None => return false,
            }
        }
        match at {
            Value::String(s) => s == value,
            Value::Number(_) | Value::Bool(_) => at.to_string().as_str() == value.as_str(),
            _ => false,
        }
    }

    /// The id the query names, when it is one (an event or correlation id).
    pub(crate) fn id(&self) -> Option<&EventId> {
        self.id.as_ref()
    }
}
