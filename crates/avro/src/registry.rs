//! Schema registries: where Avro schemas get their ids.
//!
//! [`MemoryRegistry`] keeps them in the process (tests, single binaries, the
//! in-process bus); [`HttpRegistry`] talks to a Confluent-compatible schema
//! registry over HTTP.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use parking_lot::RwLock;

use crate::{Error, Result};

/// A store of Avro schemas by id, grouped in subjects (Confluent's model).
///
/// Calls are blocking and may do network I/O; [`AvroCodec`](crate::AvroCodec)
/// calls them only on cache misses — the first encode of an event type
/// (unless [`AvroCodec::register`](crate::AvroCodec::register) ran at start)
/// and the first decode of each schema id — and, inside a multi-threaded
/// tokio runtime, through `block_in_place` so other tasks keep running.
pub trait SchemaRegistry: Send + Sync + 'static {
    /// Registers `schema` (Avro schema JSON) under `subject` and returns its
    /// id. Registering a schema that is already registered returns its id.
    fn register(&self, subject: &str, schema: &str) -> Result<u32>;

    /// The schema (Avro schema JSON) with id `id`.
    fn schema(&self, id: u32) -> Result<String>;
}

/// A registry in memory: ids from 1, one id per distinct schema across all
/// subjects (as Confluent's registry does).
#[derive(Debug, Default)]
pub struct MemoryRegistry {
    // parking_lot RwLock: never held across an await.
    state: RwLock<MemoryState>,
}

#[derive(Debug, Default)]
struct MemoryState {
    by_schema: HashMap<String, u32>,
    by_id: Vec<String>,
    subjects: HashMap<String, Vec<u32>>,
}

impl MemoryRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        MemoryRegistry::default()
    }

    /// The schema ids registered under `subject`, oldest first.
    pub fn versions(&self, subject: &str) -> Vec<u32> {
        self.state
            .read()
            .subjects
            .get(subject)
            .cloned()
            .unwrap_or_default()
    }

    /// The subjects, sorted.
    pub fn subjects(&self) -> Vec<String> {
        let mut v: Vec<String> = self.state.read().subjects.keys().cloned().collect();
        v.sort();
        v
    }
}

impl SchemaRegistry for MemoryRegistry {
    fn register(&self, subject: &str, schema: &str) -> Result<u32> {
        let canonical = canonical(schema)?;
        let mut st = self.state.write();
        let id = match st.by_schema.get(&canonical) {
            Some(id) => *id,
            None => {
                st.by_id.push(schema.to_owned());
                let id = st.by_id.len() as u32;
                st.by_schema.insert(canonical, id);
                id
            }
        };
        let versions = st.subjects.entry(subject.to_owned()).or_default();
        if !versions.contains(&id) {
            versions.push(id);
        }
        Ok(id)
    }

    fn schema(&self, id: u32) -> Result<String> {
        let st = self.state.read();
        id.checked_sub(1)
            .and_then(|i| st.by_id.get(i as usize))
            .cloned()
            .ok_or(Error::UnknownSchema {
                id,
                registry: "in-memory registry".into(),
            })
    }
}

/// A schema in one normal JSON form, so formatting differences do not make
/// two ids (defaults and docs are kept: they make different schemas).
fn canonical(schema: &str) -> Result<String> {
    apache_avro::Schema::parse_str(schema)
        .map_err(|e| Error::Schema {
            reason: format!("not a valid Avro schema: {e}"),
        })
        .map(|s| serde_json::to_string(&s).unwrap_or_else(|_| s.canonical_form()))
}

/// A client of a Confluent-compatible schema registry, with caches: a
/// schema's id is asked once per subject, a schema by id once.
///
/// Uses `POST /subjects/{subject}/versions` to register and
/// `GET /schemas/ids/{id}` to fetch. `https` URLs need the `tls` feature.
pub struct HttpRegistry {
    base: String,
    agent: ureq::Agent,
    auth: Option<String>,
    ids: RwLock<HashMap<(String, String), u32>>,
    schemas: RwLock<HashMap<u32, String>>,
}

impl fmt::Debug for HttpRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpRegistry")
            .field("url", &self.base)
            .field("auth", &self.auth.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

const MEDIA_TYPE: &str = "application/vnd.schemaregistry.v1+json";

impl HttpRegistry {
    /// A client of the registry at `url` (e.g. `http://localhost:8081`),
    /// with a 10 s timeout per request.
    pub fn new(url: impl Into<String>) -> Self {
        HttpRegistry::with_timeout(url, Duration::from_secs(10))
    }

    /// A client with a timeout per request.
    pub fn with_timeout(url: impl Into<String>, timeout: Duration) -> Self {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build();
        HttpRegistry {
            base: url.into().trim_end_matches('/').to_owned(),
            agent: ureq::Agent::new_with_config(config),
            auth: None,
            ids: RwLock::new(HashMap::new()),
            schemas: RwLock::new(HashMap::new()),
        }
    }

    /// Authenticates with HTTP basic authentication (Confluent Cloud: API key and secret).
    pub fn basic_auth(mut self, user: &str, password: &str) -> Self {
        self.auth = Some(format!(
            "Basic {}",
            STANDARD.encode(format!("{user}:{password}"))
        ));
        self
    }

    /// The registry's URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    fn call(&self, method: &str, url: &str, body: Option<String>) -> Result<serde_json::Value> {
        let http = |reason: String| Error::Http {
            url: url.to_owned(),
            reason,
        };
        let response = match body {
            Some(body) => {
                let mut req = self
                    .agent
                    .post(url)
                    .header("Content-Type", MEDIA_TYPE)
                    .header("Accept", MEDIA_TYPE);
                if let Some(a) = &self.auth {
                    req = req.header("Authorization", a);
                }
                req.send(body)
            }
            None => {
                let mut req = self.agent.get(url).header("Accept", MEDIA_TYPE);
                if let Some(a) = &self.auth {
                    req = req.header("Authorization", a);
                }
                req.call()
            }
        };
        let mut response = response.map_err(|e| http(format!("{method} failed: {e}")))?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| http(format!("reading the response failed: {e}")))?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            http(format!(
                "the response (HTTP {status}) is not JSON: {e}: {}",
                text.chars().take(200).collect::<String>()
            ))
        })?;
        if !(200..300).contains(&status) {
            return Err(Error::Registry {
                url: url.to_owned(),
                status,
                code: json.get("error_code").and_then(|c| c.as_i64()),
                message: json
                    .get("message")
                    .and_then(|m| m.as_str())
                    .unwrap_or("")
                    .to_owned(),
            });
        }
        Ok(json)
    }
}

impl SchemaRegistry for HttpRegistry {
    fn register(&self, subject: &str, schema: &str) -> Result<u32> {
        let key = (subject.to_owned(), schema.to_owned());
        if let Some(id) = self.ids.read().get(&key) {
            return Ok(*id);
        }
        let url = format!("{}/subjects/{}/versions", self.base, encode_path(subject));
        let body = serde_json::json!({ "schema": schema }).to_string();
        let json = self.call("POST", &url, Some(body))?;
        let id = json
            .get("id")
            .and_then(|i| i.as_u64())
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| Error::Http {
                url: url.clone(),
                reason: format!("the response has no schema id: {json}"),
            })?;
        self.ids.write().insert(key, id);
        self.schemas.write().insert(id, schema.to_owned());
        Ok(id)
    }

    fn schema(&self, id: u32) -> Result<String> {
        if let Some(s) = self.schemas.read().get(&id) {
            return Ok(s.clone());
        }
        let url = format!("{}/schemas/ids/{id}", self.base);
        let json = match self.call("GET", &url, None) {
            Ok(json) => json,
            Err(Error::Registry { status: 404, .. }) => {
                return Err(Error::UnknownSchema {
                    id,
                    registry: self.base.clone(),
                });
            }
            Err(e) => return Err(e),
        };
        let schema = json
            .get("schema")
            .and_then(|s| s.as_str())
            .ok_or_else(|| Error::Http {
                url: url.clone(),
                reason: format!("the response has no schema: {json}"),
            })?
            .to_owned();
        self.schemas.write().insert(id, schema.clone());
        Ok(schema)
    }
}

/// Percent-encodes a path segment (subjects may hold any character).
fn encode_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str =
        r#"{"type":"record","name":"OrderPlaced","fields":[{"name":"order_id","type":"long"}]}"#;

    #[test]
    fn memory_registry_gives_one_id_per_schema() {
        let r = MemoryRegistry::new();
        let a = r.register("orders-value", V1).unwrap();
        let spaced = V1.replace(',', ", ");
        assert_eq!(r.register("orders-value", &spaced).unwrap(), a);
        assert_eq!(r.register("audit-value", V1).unwrap(), a, "ids are global");
        assert_eq!(r.schema(a).unwrap(), V1);
        assert_eq!(r.versions("orders-value"), vec![a]);
        assert_eq!(r.subjects(), vec!["audit-value", "orders-value"]);
        let err = r.schema(99).unwrap_err().to_string();
        assert!(err.contains("schema id 99"), "{err}");
        assert!(r.register("x", "{not a schema").is_err());
    }

    #[test]
    fn helpers_encode_paths() {
        assert_eq!(encode_path("orders-value"), "orders-value");
        assert_eq!(encode_path("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn basic_auth_sends_the_credentials_in_base64() {
        let r = HttpRegistry::new("http://localhost:8081").basic_auth("user", "pass");
        assert_eq!(r.auth.as_deref(), Some("Basic dXNlcjpwYXNz"));
    }

    #[test]
    fn debug_hides_the_credentials() {
        let r = HttpRegistry::new("http://localhost:8081/").basic_auth("key", "hunter2");
        let d = format!("{r:?}");
        assert!(!d.contains("hunter2") && !d.contains("a2V5"), "{d}");
        assert_eq!(r.url(), "http://localhost:8081");
    }
}
