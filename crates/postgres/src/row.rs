//! An envelope as an outbox row, and back.

use bytes::Bytes;
use choreo_core::{ContentType, Envelope, EventId, Headers, Name, Timestamp};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use crate::config::Tables;

/// The row format this version writes and reads (the `format` column).
pub(crate) const FORMAT: i16 = 1;

/// The columns of an outbox row, in the order [`Insert::params`] binds them.
const COLUMNS: &str = "lane, id, event_type, source, topic, key, correlation_id, causation_id, \
     time_us, traceparent, tracestate, content_type, data, header_names, header_values, format";

/// `INSERT` of one row.
pub(crate) fn insert_sql(tables: &Tables) -> String {
    format!(
        "INSERT INTO {} ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
        tables.q_outbox()
    )
}

/// What the relay reads of a pending row (`age`: seconds since its insert,
/// by the database's clock).
pub(crate) fn select_columns() -> String {
    format!("seq, {COLUMNS}, extract(epoch FROM clock_timestamp() - created_at)::float8 AS age")
}

/// The parameters of [`insert_sql`] for one envelope, owned.
pub(crate) struct Insert {
    lane: i32,
    id: String,
    event_type: String,
    source: String,
    topic: String,
    key: Option<Vec<u8>>,
    correlation_id: String,
    causation_id: Option<String>,
    time_us: i64,
    traceparent: Option<String>,
    tracestate: Option<String>,
    content_type: String,
    data: Vec<u8>,
    header_names: Vec<String>,
    header_values: Vec<Vec<u8>>,
    format: i16,
}

impl Insert {
    /// The row of `env` in an outbox of `lanes` lanes.
    pub(crate) fn new(env: &Envelope, lanes: u32) -> Self {
        Insert {
            lane: env.partition_key().partition(lanes.max(1)) as i32,
            id: env.id.to_string(),
            event_type: env.event_type.to_string(),
            source: env.source.to_string(),
            topic: env.topic.to_string(),
            key: env.key.as_ref().map(|k| k.to_vec()),
            correlation_id: env.correlation_id.to_string(),
            causation_id: env.causation_id.as_ref().map(ToString::to_string),
            time_us: env.time.as_micros(),
            traceparent: env.traceparent.clone(),
            tracestate: env.tracestate.clone(),
            content_type: env.content_type.as_str().to_owned(),
            data: env.data.to_vec(),
            header_names: env.headers.iter().map(|(n, _)| n.to_owned()).collect(),
            header_values: env.headers.iter().map(|(_, v)| v.to_vec()).collect(),
            format: FORMAT,
        }
    }

    pub(crate) fn params(&self) -> [&(dyn ToSql + Sync); 16] {
        [
            &self.lane,
            &self.id,
            &self.event_type,
            &self.source,
            &self.topic,
            &self.key,
            &self.correlation_id,
            &self.causation_id,
            &self.time_us,
            &self.traceparent,
            &self.tracestate,
            &self.content_type,
            &self.data,
            &self.header_names,
            &self.header_values,
            &self.format,
        ]
    }
}

/// A pending row as the relay read it.
pub(crate) struct Pending {
    pub(crate) seq: i64,
    pub(crate) lane: i32,
    /// Seconds since the row was inserted, when it was read.
    pub(crate) age: f64,
    /// The envelope, or why the row does not decode.
    pub(crate) envelope: Result<Envelope, String>,
}

impl Pending {
    pub(crate) fn from_row(row: &Row) -> Pending {
        Pending {
            seq: row.get("seq"),
            lane: row.get("lane"),
            age: row
                .try_get::<_, Option<f64>>("age")
                .ok()
                .flatten()
                .unwrap_or(0.0)
                .max(0.0),
            envelope: decode(row),
        }
    }
}

/// The envelope of a row, or why it does not decode.
fn decode(row: &Row) -> Result<Envelope, String> {
    fn col<'a, T: tokio_postgres::types::FromSql<'a>>(
        row: &'a Row,
        name: &str,
    ) -> Result<T, String> {
        row.try_get(name).map_err(|e| format!("column {name}: {e}"))
    }
    fn id(row: &Row, name: &str) -> Result<EventId, String> {
        let text: String = col(row, name)?;
        EventId::parse(&text).ok_or_else(|| format!("column {name} is empty"))
    }
    fn name(row: &Row, column: &str) -> Result<Name, String> {
        let text: String = col(row, column)?;
        if text.is_empty() {
            return Err(format!("column {column} is empty"));
        }
        Ok(Name::from(text))
    }
    let format: i16 = col(row, "format")?;
    if format != FORMAT {
        return Err(format!(
            "the row is in format {format}, and this relay reads format {FORMAT} (written by another version of choreo-postgres?)"
        ));
    }
    let causation_id = match col::<Option<String>>(row, "causation_id")? {
        None => None,
        Some(text) => Some(
            EventId::parse(&text)
                .ok_or_else(|| "column causation_id is empty (use NULL for none)".to_owned())?,
        ),
    };
    let names: Vec<String> = col(row, "header_names")?;
    let values: Vec<Vec<u8>> = col(row, "header_values")?;
    if names.len() != values.len() {
        return Err(format!(
            "{} header names but {} header values",
            names.len(),
            values.len()
        ));
    }
    let mut headers = Headers::new();
    for (n, v) in names.into_iter().zip(values) {
        headers.insert(n, Bytes::from(v));
    }
    Ok(Envelope {
        id: id(row, "id")?,
        event_type: name(row, "event_type")?,
        source: Name::from(col::<String>(row, "source")?),
        topic: name(row, "topic")?,
        key: col::<Option<Vec<u8>>>(row, "key")?.map(Bytes::from),
        correlation_id: id(row, "correlation_id")?,
        causation_id,
        time: Timestamp::from_micros(col(row, "time_us")?),
        traceparent: col(row, "traceparent")?,
        tracestate: col(row, "tracestate")?,
        content_type: ContentType::parse(&col::<String>(row, "content_type")?),
        data: Bytes::from(col::<Vec<u8>>(row, "data")?),
        headers,
    })
}
