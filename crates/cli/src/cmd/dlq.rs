//! `choreo dlq`: see why events were dead-lettered, and replay them.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use choreo_bus::dlq::{self, DeadLettered, Filter, ReplayOptions, Replayed};
use choreo_core::{Codecs, ContentType, EventId, PayloadMeta, Timestamp, dlq_headers};
use choreo_kafka::dlq::replay_record;
use choreo_kafka::{KafkaBus, RawRecord, ReaderOptions, RecordReader, Topics};
use choreo_trace::Source as _;
use choreo_trace::capture::Reader;

use super::kafka::KafkaArgs;
use crate::{EXIT_FINDINGS, EXIT_OK};

/// Dead letters: list them (counts grouped by reason), show one, replay them.
///
/// Reads the dead-letter topics (`*.dlq`, or --topic) on Kafka (--brokers or
/// $CHOREO_KAFKA_BROKERS), or from capture files (--capture, list and show
/// only). On Kafka a dead letter is the record as it was received, byte for
/// byte, with choreo's `choreo-dlq-*` headers after its own; `show` prints
/// both, and a replay publishes the original again to its topic — same key,
/// value and headers, so same id, flow and causation — with a
/// `choreo-replay-count` header; if it fails again it is dead-lettered
/// again — nothing replays automatically.
///
/// Exit codes: 0 ok (list: no dead letters); 1 list found dead letters, or a
/// replay refused some; 2 usage or input error.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Dlq {
    /// List dead letters, with counts grouped by reason.
    List(ListArgs),
    /// Show one dead letter: reason, attempts, service, the envelope, the
    /// record's headers as received and choreo's, and the payload.
    Show(ShowArgs),
    /// Publish dead letters back to their original topics.
    Replay(ReplayArgs),
}

/// Where dead letters are read from.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Source {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Read from capture files instead of Kafka.
    #[arg(long, value_name = "FILE", num_args = 1.., conflicts_with = "brokers")]
    capture: Vec<PathBuf>,
    /// Dead-letter topics to read (default: every topic ending in .dlq).
    #[arg(long = "topic", value_name = "TOPIC")]
    topics: Vec<String>,
}

/// Which dead letters.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct FilterArgs {
    /// Dead-lettered by this service.
    #[arg(long)]
    service: Option<String>,
    /// Of this event type.
    #[arg(long)]
    event_type: Option<String>,
    /// Whose reason contains this text.
    #[arg(long)]
    reason: Option<String>,
    /// Dead-lettered at or after this time (RFC 3339).
    #[arg(long, value_name = "RFC3339")]
    since: Option<String>,
    /// Dead-lettered before this time (RFC 3339).
    #[arg(long, value_name = "RFC3339")]
    until: Option<String>,
}

impl FilterArgs {
    fn filter(&self, ids: Vec<EventId>) -> anyhow::Result<Filter> {
        let time = |flag: &str, v: &Option<String>| -> anyhow::Result<Option<Timestamp>> {
            v.as_deref()
                .map(|t| {
                    Timestamp::parse_rfc3339(t).with_context(|| {
                        format!("--{flag} '{t}' is not RFC 3339 time; write it like 2026-01-31T12:00:00Z")
                    })
                })
                .transpose()
        };
        Ok(Filter {
            service: self.service.clone(),
            event_type: self.event_type.clone(),
            reason: self.reason.clone(),
            since: time("since", &self.since)?,
            until: time("until", &self.until)?,
            ids,
        })
    }
}

/// What to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// For people.
    Human,
    /// JSON.
    Json,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    source: Source,
    #[command(flatten)]
    filter: FilterArgs,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Format::Human)]
    format: Format,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ShowArgs {
    /// The event id.
    id: String,
    #[command(flatten)]
    source: Source,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Format::Human)]
    format: Format,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ReplayArgs {
    /// Event ids to replay (or use the filters, or --all).
    ids: Vec<String>,
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Dead-letter topics to read (default: every topic ending in .dlq).
    #[arg(long = "topic", value_name = "TOPIC")]
    topics: Vec<String>,
    #[command(flatten)]
    filter: FilterArgs,
    /// Replay every dead letter that matches (required when no id and no filter is given).
    #[arg(long)]
    all: bool,
    /// Only say what would be replayed.
    #[arg(long)]
    dry_run: bool,
    /// Refuse events already replayed this many times.
    #[arg(long, default_value_t = 3)]
    max_replays: u32,
}

fn parse_ids(ids: &[String]) -> anyhow::Result<Vec<EventId>> {
    ids.iter()
        .map(|s| EventId::parse(s.trim()).context("an event id must not be empty"))
        .collect()
}

/// A dead letter, and on Kafka the record as it is on the dead-letter topic.
struct Found {
    dead: DeadLettered,
    record: Option<Arc<RawRecord>>,
}

/// Every dead letter the source holds.
fn read(source: &Source) -> anyhow::Result<Vec<Found>> {
    let wanted = |topic: &str| {
        if source.topics.is_empty() {
            topic.ends_with(".dlq")
        } else {
            source.topics.iter().any(|t| t == topic)
        }
    };
    let mut out = Vec::new();
    if !source.capture.is_empty() {
        for path in &source.capture {
            let mut reader = Reader::open(path)?;
            while let Some(r) = reader.next_record() {
                let r = r.with_context(|| format!("reading '{}'", path.display()))?;
                if wanted(&r.envelope.topic)
                    && let Some(dead) = DeadLettered::from_envelope(r.envelope)
                {
                    out.push(Found { dead, record: None });
                }
            }
        }
        return Ok(out);
    }
    if !source.kafka.wanted() {
        bail!(
            "say where the dead letters are: --brokers host:port (or $CHOREO_KAFKA_BROKERS), or --capture FILE"
        );
    }
    let config = source.kafka.config()?;
    let topics = if source.topics.is_empty() {
        Topics::pattern(r".*\.dlq")
    } else {
        Topics::names(source.topics.clone())
    };
    let rt = super::runtime()?;
    rt.block_on(async {
        let mut reader = RecordReader::open(&config, ReaderOptions::new(topics)).await?;
        while let Some(r) = reader.next().await {
            let r = r?;
            if let Some(dead) = DeadLettered::from_envelope(r.envelope) {
                out.push(Found {
                    dead,
                    record: Some(r.original),
                });
            }
        }
        Ok::<(), anyhow::Error>(())
    })?;
    Ok(out)
}

fn when(t: Option<Timestamp>) -> String {
    t.map(|t| t.to_rfc3339())
        .unwrap_or_else(|| "unknown time".to_owned())
}

fn list(args: ListArgs) -> anyhow::Result<u8> {
    let filter = args.filter.filter(Vec::new())?;
    let items: Vec<DeadLettered> = read(&args.source)?
        .into_iter()
        .map(|f| f.dead)
        .filter(|d| filter.matches(d))
        .collect();
    let text = match args.format {
        Format::Json => {
            let doc = serde_json::json!({
                "count": items.len(),
                "by_reason": dlq::by_reason(&items).into_iter().map(|(r, n)| serde_json::json!({"reason": r, "count": n})).collect::<Vec<_>>(),
                "dead_letters": items,
            });
            format!("{}\n", serde_json::to_string_pretty(&doc)?)
        }
        Format::Human => {
            let mut s = String::new();
            if items.is_empty() {
                s.push_str("no dead letters\n");
            } else {
                let _ = writeln!(s, "{} dead letters, by reason:", items.len());
                for (reason, n) in dlq::by_reason(&items) {
                    let _ = writeln!(s, "  {n:>6}  {reason}");
                }
                let _ = writeln!(s);
                for d in &items {
                    let _ = writeln!(
                        s,
                        "{}  {:<20} {:<24} from {}/{}@{}  by {}  ({} attempts{})",
                        d.id,
                        d.event_type,
                        when(d.dead_lettered_at),
                        d.topic,
                        d.partition.map_or("?".into(), |p| p.to_string()),
                        d.offset.map_or("?".into(), |o| o.to_string()),
                        if d.service.is_empty() {
                            "?"
                        } else {
                            &d.service
                        },
                        d.attempts,
                        if d.replays > 0 {
                            format!(", replayed {} times", d.replays)
                        } else {
                            String::new()
                        },
                    );
                    let _ = writeln!(s, "    {}", d.reason);
                }
            }
            s
        }
    };
    super::emit(super::output(None)?, &text)?;
    Ok(if items.is_empty() {
        EXIT_OK
    } else {
        EXIT_FINDINGS
    })
}

fn show(args: ShowArgs) -> anyhow::Result<u8> {
    let id = EventId::parse(args.id.trim()).context("an event id must not be empty")?;
    let mut matches: Vec<Found> = read(&args.source)?
        .into_iter()
        .filter(|f| f.dead.id == id)
        .collect();
    let Some(Found { dead: d, record }) = matches.pop() else {
        bail!("no dead letter has id {id} (list them with `choreo dlq list`)");
    };
    let env = &d.envelope;
    // The record's own headers, and choreo's (on Kafka: as they are on the
    // topic, in order; from a capture: the envelope's extra headers).
    let (received, ours) = split_headers(record.as_deref(), env);
    let payload = Codecs::json().decode_value(
        &env.content_type,
        &env.data,
        PayloadMeta {
            event_type: &env.event_type,
            topic: &d.topic,
        },
    );
    let text = match args.format {
        Format::Json => {
            let headers = |hs: &[(String, Option<Vec<u8>>)]| {
                hs.iter()
                    .map(|(n, v)| serde_json::json!({"name": n, "value": v.as_deref().map(shown)}))
                    .collect::<Vec<_>>()
            };
            let doc = serde_json::json!({
                "dead_letter": d,
                "envelope": env,
                "record": {
                    "key": record.as_ref().and_then(|r| r.key()).map(|k| shown(k)),
                    "timestamp_ms": record.as_ref().and_then(|r| r.timestamp_ms()),
                    "headers": headers(&received),
                    "choreo_headers": headers(&ours),
                },
                "payload": payload.as_ref().ok(),
                "copies": matches.len() + 1,
            });
            format!("{}\n", serde_json::to_string_pretty(&doc)?)
        }
        Format::Human => {
            let mut s = String::new();
            let _ = writeln!(s, "dead letter {} ({})", d.id, d.event_type);
            let _ = writeln!(s, "  reason        {}", d.reason);
            let _ = writeln!(s, "  attempts      {}", d.attempts);
            let _ = writeln!(
                s,
                "  service       {}",
                if d.service.is_empty() {
                    "?"
                } else {
                    &d.service
                }
            );
            let _ = writeln!(
                s,
                "  from          {}/{}@{}",
                d.topic,
                d.partition.map_or("?".into(), |p| p.to_string()),
                d.offset.map_or("?".into(), |o| o.to_string())
            );
            let _ = writeln!(
                s,
                "  dead-lettered {} on {}",
                when(d.dead_lettered_at),
                d.dlq_topic
            );
            let _ = writeln!(s, "  replays       {}", d.replays);
            if !matches.is_empty() {
                let _ = writeln!(
                    s,
                    "  copies        {} (the newest is shown)",
                    matches.len() + 1
                );
            }
            let _ = writeln!(s, "envelope");
            let _ = writeln!(s, "  id            {}", env.id);
            let _ = writeln!(s, "  source        {}", env.source);
            let _ = writeln!(s, "  flow          {}", env.correlation_id);
            let _ = writeln!(
                s,
                "  caused by     {}",
                env.causation_id
                    .as_ref()
                    .map_or("(starts its flow)".to_owned(), |c| c.to_string())
            );
            let _ = writeln!(s, "  time          {}", env.time);
            if let Some(k) = &env.key {
                let _ = writeln!(s, "  key           {}", String::from_utf8_lossy(k));
            }
            if let Some(tp) = &env.traceparent {
                let _ = writeln!(s, "  traceparent   {tp}");
            }
            let _ = writeln!(s, "  content type  {}", env.content_type);
            let _ = writeln!(
                s,
                "{}",
                if record.is_some() {
                    "headers as received"
                } else {
                    "headers"
                }
            );
            for (n, v) in &received {
                let _ = writeln!(s, "  {n}: {}", v.as_deref().map_or("(null)".into(), shown));
            }
            let _ = writeln!(s, "choreo's headers");
            for (n, v) in &ours {
                let _ = writeln!(s, "  {n}: {}", v.as_deref().map_or("(null)".into(), shown));
            }
            let _ = writeln!(s, "payload ({} bytes)", env.data.len());
            match (&payload, &env.content_type) {
                (Ok(v), _) => {
                    for line in serde_json::to_string_pretty(v)?.lines() {
                        let _ = writeln!(s, "  {line}");
                    }
                }
                (Err(_), ContentType::Avro) => {
                    let _ = writeln!(
                        s,
                        "  Avro (Confluent wire format), not decoded here: {}",
                        hex_preview(&env.data)
                    );
                }
                (Err(e), _) => {
                    let _ = writeln!(s, "  not decodable ({e}): {}", hex_preview(&env.data));
                }
            }
            s
        }
    };
    super::emit(super::output(None)?, &text)?;
    Ok(EXIT_OK)
}

/// A header's name and value (`None`: null).
type HeaderPair = (String, Option<Vec<u8>>);

/// The headers of a dead letter: the record's own, and the ones choreo added
/// (`choreo-dlq-*`, `choreo-replay-count`).
fn split_headers(
    record: Option<&RawRecord>,
    env: &choreo_core::Envelope,
) -> (Vec<HeaderPair>, Vec<HeaderPair>) {
    let is_ours = |n: &str| dlq_headers::ALL.contains(&n) || n == dlq_headers::REPLAYS;
    let all: Vec<HeaderPair> = match record {
        Some(r) => r
            .headers()
            .map(|h| (h.name.to_owned(), h.value.map(<[u8]>::to_vec)))
            .collect(),
        None => env
            .headers
            .iter()
            .map(|(n, v)| (n.to_owned(), Some(v.to_vec())))
            .collect(),
    };
    all.into_iter().partition(|(n, _)| !is_ours(n))
}

/// Bytes as text: as they are when they are UTF-8, else with the other
/// bytes escaped (`\xff`), so a broken header shows as it arrived.
fn shown(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => bytes.escape_ascii().to_string(),
    }
}

fn hex_preview(data: &[u8]) -> String {
    let mut s: String = data.iter().take(48).map(|b| format!("{b:02x}")).collect();
    if data.len() > 48 {
        s.push('…');
    }
    s
}

fn replay(args: ReplayArgs) -> anyhow::Result<u8> {
    let ids = parse_ids(&args.ids)?;
    let filter = args.filter.filter(ids)?;
    if filter == Filter::default() && !args.all {
        bail!(
            "say what to replay: event ids, a filter (--service, --event-type, --reason, --since, --until), or --all"
        );
    }
    let source = Source {
        kafka: args.kafka.clone(),
        capture: Vec::new(),
        topics: args.topics.clone(),
    };
    let found: Vec<Found> = read(&source)?
        .into_iter()
        .filter(|f| filter.matches(&f.dead))
        .collect();
    if found.is_empty() {
        bail!("nothing to replay: no dead letter matches");
    }
    // The record of each copy, by event and replay count: the copy a replay
    // chooses (the newest; the later one of equal counts) is the one left.
    let records: HashMap<(EventId, u32), Arc<RawRecord>> = found
        .iter()
        .filter_map(|f| Some(((f.dead.id.clone(), f.dead.replays), f.record.clone()?)))
        .collect();
    let items: Vec<DeadLettered> = found.into_iter().map(|f| f.dead).collect();
    let config = args.kafka.config()?;
    let rt = super::runtime()?;
    let options = ReplayOptions {
        dry_run: args.dry_run,
        max_replays: args.max_replays,
    };
    let done = rt.block_on(async {
        let bus = KafkaBus::new(config)?;
        // The original as it was received, again; a dead letter read
        // without its record (none here: all come from Kafka) as an envelope.
        let replay = |d: &DeadLettered| {
            let bus = bus.clone();
            let (topic, partition) = (d.topic.clone(), d.partition.unwrap_or(0));
            let again = records
                .get(&(d.id.clone(), d.replays))
                .map(|r| replay_record(r, d.replays));
            let envelope = d.replay_envelope();
            async move {
                match again {
                    Some(r) => Ok(bus.publish_record(&topic, &r, partition).await?),
                    None => choreo_core::Bus::publish(&bus, envelope).await,
                }
            }
        };
        Ok::<_, anyhow::Error>(dlq::replay_with(&items, options, replay).await?)
    })?;
    let mut s = String::new();
    let mut refused = 0;
    for r in &done {
        match r {
            Replayed::Published { id, topic, replay } => {
                let verb = if args.dry_run {
                    "would replay"
                } else {
                    "replayed"
                };
                let _ = writeln!(s, "{verb} {id} to {topic} (replay {replay})");
            }
            Replayed::Refused { id, reason } => {
                refused += 1;
                let _ = writeln!(s, "refused {id}: {reason}");
            }
        }
    }
    super::emit(super::output(None)?, &s)?;
    Ok(if refused > 0 { EXIT_FINDINGS } else { EXIT_OK })
}

pub(crate) fn run(cmd: Dlq) -> anyhow::Result<u8> {
    match cmd {
        Dlq::List(a) => list(a),
        Dlq::Show(a) => show(a),
        Dlq::Replay(a) => replay(a),
    }
}
