//! `RecordReader`: reads Kafka topics record by record, for tools such as
//! `choreo trace --brokers` and `choreo capture`.
//!
//! ```no_run
//! use choreo_kafka::{KafkaConfig, ReadFrom, ReaderOptions, RecordReader, Topics};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = KafkaConfig::new("localhost:9092");
//! // Every topic matching the pattern, from the beginning to the end as of now.
//! let options = ReaderOptions::new(Topics::pattern("^(orders|payments)$"));
//! let mut reader = RecordReader::open(&config, options).await?;
//! while let Some(record) = reader.next().await {
//!     let record = record?;
//!     println!("{}/{}@{}: {}", record.envelope.topic, record.partition, record.offset, record.envelope.event_type);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Without a group (the default) the reader assigns itself every partition of
//! the topics, commits nothing and leaves no trace on the cluster; with
//! `follow` off it stops at the end of each partition as of `open`. In a
//! group ([`ReaderOptions::group`]) several readers split the partitions, the
//! offsets of records read are committed (a record counts as read once the
//! next one is asked for), and the reader always follows.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use choreo_core::{Delivery, Envelope, StartFrom, SubscribeOptions, Subscription};
use rdkafka::Message;
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::KafkaBus;
use crate::client::LogContext;
use crate::config::{KafkaConfig, Role};
use crate::consumer::KafkaSubscription;
use crate::consumer::envelope_of;
use crate::dlq::RawRecord;
use crate::metrics::KafkaMetrics;
use crate::watch::Watch;
use crate::{Error, Result};

/// Which topics to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topics {
    /// These topics; each must exist.
    Names(Vec<String>),
    /// These topics, those that exist: topics that come into being with use
    /// (dead-letter topics appear with the first dead letter,
    /// `choreo.receipts` with the first receipt). One missing at `open` is
    /// left out ([`RecordReader::absent`] names it); a following reader
    /// looks for it every `refresh` (in a group, through librdkafka's
    /// `topic.metadata.refresh.interval.ms`, unless the configuration sets
    /// that) and reads it from its beginning once it exists.
    Optional(Vec<String>),
    /// Every topic whose whole name matches this regular expression (topics
    /// starting with `__`, Kafka's internal ones, excluded). When following,
    /// topics created later are picked up within `refresh`.
    Pattern(String),
}

impl Topics {
    /// These topics.
    pub fn names<I, T>(names: I) -> Topics
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        Topics::Names(names.into_iter().map(Into::into).collect())
    }

    /// These topics, those that exist ([`Topics::Optional`]).
    pub fn optional<I, T>(names: I) -> Topics
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        Topics::Optional(names.into_iter().map(Into::into).collect())
    }

    /// Topics matching a regular expression.
    pub fn pattern(regex: impl Into<String>) -> Topics {
        Topics::Pattern(regex.into())
    }

    /// What a group member subscribes to: the names, or for topics that may
    /// appear later a regex, which librdkafka matches again at each metadata
    /// refresh.
    pub(crate) fn subscription(&self) -> Vec<String> {
        match self {
            Topics::Names(n) => n.clone(),
            Topics::Optional(n) => vec![format!(
                "^({})$",
                n.iter()
                    // Topic names are letters, digits, `.`, `_` and
                    // `-`: only the dot means something to a regex.
                    .map(|t| t.replace('.', "\\."))
                    .collect::<Vec<_>>()
                    .join("|")
            )],
            // librdkafka reads a subscription starting with ^ as a regex.
            Topics::Pattern(p) if p.starts_with('^') => vec![p.clone()],
            Topics::Pattern(p) => vec![format!("^{p}")],
        }
    }

    /// Whether topics created after `open` are looked for.
    pub(crate) fn grows(&self) -> bool {
        matches!(self, Topics::Optional(_) | Topics::Pattern(_))
    }
}

/// Where reading starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadFrom {
    /// At the oldest retained record (a group: where it left off, else there).
    #[default]
    Beginning,
    /// At the end: only records published after `open`.
    End,
}

/// What a [`RecordReader`] reads.
#[derive(Debug, Clone)]
pub struct ReaderOptions {
    /// The topics.
    pub topics: Topics,
    /// Where to start. Default [`ReadFrom::Beginning`].
    pub from: ReadFrom,
    /// Keep reading new records (true) or stop at the end of each partition
    /// as of `open` (false, the default).
    pub follow: bool,
    /// Read as a member of this consumer group (with `group_prefix`),
    /// committing what was read. Default none: no group, nothing committed.
    pub group: Option<String>,
    /// How often a following reader looks for new topics: matching a
    /// pattern, or [`Topics::Optional`] ones that did not exist. Default 5 s.
    pub refresh: Duration,
    /// In a group: where the member's metrics go (its consumer lag among
    /// them). Default: metrics nobody registered.
    pub metrics: Option<KafkaMetrics>,
}

impl ReaderOptions {
    /// Reads `topics` from the beginning to the end, without a group.
    pub fn new(topics: Topics) -> Self {
        ReaderOptions {
            topics,
            from: ReadFrom::Beginning,
            follow: false,
            group: None,
            refresh: Duration::from_secs(5),
            metrics: None,
        }
    }

    /// In a group, reports the member's metrics (consumer lag, rebalances,
    /// commit failures) to `metrics`, to be registered where they are served.
    pub fn metrics(mut self, metrics: KafkaMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Sets where reading starts.
    pub fn from(mut self, from: ReadFrom) -> Self {
        self.from = from;
        self
    }

    /// Keeps reading new records.
    pub fn follow(mut self) -> Self {
        self.follow = true;
        self
    }

    /// Reads as a member of `group`, committing what was read (and following).
    /// The member is the bus's own consumer: a record counts as read, and is
    /// committed, once the next one is asked for.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self.follow = true;
        self
    }
}

/// One record read.
#[derive(Debug, Clone)]
pub struct ReadRecord {
    /// Its envelope (`envelope.topic` is the topic). A record that is not a
    /// choreo event is read like the bus reads it: derived fields, and the
    /// `choreo-malformed` header when its CloudEvents headers are broken.
    pub envelope: Envelope,
    /// The record as it was received: key, value, timestamp and headers
    /// byte for byte (what `choreo dlq` shows and replays).
    pub original: Arc<RawRecord>,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
}

/// Reads records of some topics; see the [module docs](self).
pub struct RecordReader {
    options: ReaderOptions,
    source: ReadSource,
}

/// Where a reader's records come from.
enum ReadSource {
    /// Without a group: partitions assigned by hand.
    Assigned(Box<Assigned>),
    /// In a group: the member, and the delivery handed out last, settled
    /// (and so committed) when the next record is asked for.
    Member {
        sub: KafkaSubscription,
        last: Option<Delivery>,
    },
}

/// A reader's own consumer, with partitions assigned by hand.
struct Assigned {
    /// For looking up partitions (a pattern's new topics).
    config: KafkaConfig,
    consumer: StreamConsumer<LogContext>,
    /// Not following: the end offset of each partition still to be read to
    /// its end.
    remaining: HashMap<(String, i32), i64>,
    /// Partitions assigned.
    assigned: HashSet<(String, i32)>,
    /// Topics asked for ([`Topics::Optional`]) that do not exist (yet).
    absent: Vec<String>,
    last_refresh: Instant,
    /// Transient errors met while following.
    outage: Outage,
}

impl std::fmt::Debug for RecordReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("RecordReader");
        d.field("options", &self.options);
        if let ReadSource::Assigned(a) = &self.source {
            d.field("remaining", &a.remaining.len());
        }
        d.finish_non_exhaustive()
    }
}

impl RecordReader {
    /// The partitions this reader reads now, as `(topic, partition)`, sorted:
    /// in a group, what the group assigned to it (it changes with rebalances).
    pub fn assignment(&self) -> Vec<(String, i32)> {
        match &self.source {
            ReadSource::Member { sub, .. } => sub.assignment(),
            ReadSource::Assigned(a) => {
                let mut v: Vec<(String, i32)> = a.assigned.iter().cloned().collect();
                v.sort();
                v
            }
        }
    }

    /// The topics asked for as [`Topics::Optional`] that did not exist when
    /// last looked for (at `open`, then every `refresh` while following);
    /// sorted. Always empty in a group (librdkafka picks them up itself).
    pub fn absent(&self) -> Vec<String> {
        match &self.source {
            ReadSource::Assigned(a) => {
                let mut v = a.absent.clone();
                v.sort();
                v
            }
            ReadSource::Member { .. } => Vec::new(),
        }
    }

    /// Connects and positions the reader.
    pub async fn open(config: &KafkaConfig, options: ReaderOptions) -> Result<RecordReader> {
        config.validate()?;
        if options.group.is_some() && !options.follow {
            return Err(Error::Invalid {
                field: "follow",
                reason: "a reader in a consumer group always follows: set `follow` (or read without a group)".into(),
            });
        }
        let source = match &options.group {
            // In a group: the bus's own consumer, with its rebalance handling
            // and settled-offset commits.
            Some(group) => {
                let mut config = config.clone();
                // librdkafka matches a regex subscription against the topics
                // at each metadata refresh (every 5 minutes by default):
                // every `refresh` instead, unless the configuration says.
                const REFRESH: &str = "topic.metadata.refresh.interval.ms";
                if options.topics.grows() && !config.librdkafka.contains_key(REFRESH) {
                    let ms = options.refresh.as_millis().max(1).to_string();
                    config = config.set(REFRESH, ms);
                }
                let bus = match &options.metrics {
                    Some(m) => KafkaBus::with_metrics(config.clone(), m.clone())?,
                    None => KafkaBus::new(config.clone())?,
                };
                let topics = match &options.topics {
                    Topics::Names(n) => {
                        for t in n {
                            if bus.inner().lookup(t, false).await?.is_none() {
                                return Err(Error::Topic {
                                    topic: t.clone(),
                                    reason: format!(
                                        "does not exist on brokers '{}': check the name",
                                        config.brokers
                                    ),
                                });
                            }
                        }
                        n.clone()
                    }
                    other => other.subscription(),
                };
                let start = match options.from {
                    ReadFrom::Beginning => StartFrom::Earliest,
                    ReadFrom::End => StartFrom::Latest,
                };
                let sub = KafkaSubscription::start(
                    bus.inner().clone(),
                    SubscribeOptions::new(group.clone(), topics).start_from(start),
                )
                .await?;
                ReadSource::Member { sub, last: None }
            }
            None => {
                let mut a = Box::new(Assigned::new(config)?);
                a.assign_new(&options, true).await?;
                ReadSource::Assigned(a)
            }
        };
        Ok(RecordReader { options, source })
    }

    /// The next record; `None` once every partition was read to its end (not following).
    pub async fn next(&mut self) -> Option<Result<ReadRecord>> {
        let options = &self.options;
        let a = match &mut self.source {
            ReadSource::Assigned(a) => a,
            ReadSource::Member { sub, last } => {
                // The caller asked for the next record: the last one is read.
                if let Some(d) = last.take() {
                    d.ack();
                }
                return match sub.next().await? {
                    Ok(d) => {
                        let original = d.original::<RawRecord>().unwrap_or_default();
                        let record = ReadRecord {
                            envelope: (**d.envelope()).clone(),
                            original,
                            partition: d.partition() as i32,
                            offset: d.offset() as i64,
                        };
                        *last = Some(d);
                        Some(Ok(record))
                    }
                    Err(e) => Some(Err(Error::Topic {
                        topic: format!("{:?}", options.topics),
                        reason: e.to_string(),
                    })),
                };
            }
        };
        loop {
            if !options.follow && a.remaining.is_empty() {
                return None;
            }
            if options.follow
                && options.topics.grows()
                && a.last_refresh.elapsed() >= options.refresh
                && let Err(e) = a.assign_new(options, false).await
            {
                return Some(Err(e));
            }
            let wait = if options.follow {
                options.refresh
            } else {
                Duration::from_millis(500)
            };
            let m = match tokio::time::timeout(wait, a.consumer.recv()).await {
                Err(_) => {
                    a.drop_finished();
                    continue;
                }
                Ok(Err(e)) if options.follow && transient(&e) => {
                    a.outage.note("follow", &e);
                    continue;
                }
                Ok(Err(e)) => return Some(Err(reader_error(e))),
                Ok(Ok(m)) => m,
            };
            a.outage.over("follow");
            let (topic, partition, offset) = (m.topic().to_owned(), m.partition(), m.offset());
            let (envelope, original) = envelope_of(&m);
            drop(m);
            if let Some(end) = a.remaining.get(&(topic.clone(), partition)) {
                if offset + 1 >= *end {
                    a.remaining.remove(&(topic.clone(), partition));
                }
            } else if !options.follow {
                // Past the end as of `open`.
                continue;
            }
            return Some(Ok(ReadRecord {
                envelope,
                original: Arc::new(original),
                partition,
                offset,
            }));
        }
    }

    /// Stops reading. In a group, the last record handed out counts as read,
    /// what was read is committed, and the member leaves the group.
    pub async fn close(self) -> Result<()> {
        if let ReadSource::Member { sub, last } = self.source {
            if let Some(d) = last {
                d.ack();
            }
            sub.close().await.map_err(|e| Error::Topic {
                topic: format!("{:?}", self.options.topics),
                reason: e.to_string(),
            })?;
        }
        Ok(())
    }
}

impl Assigned {
    /// A consumer that is assigned partitions by hand, nothing yet.
    fn new(config: &KafkaConfig) -> Result<Assigned> {
        let mut client_config = config.client_config(Role::Consumer, None)?;
        // librdkafka wants a group id even to assign partitions by hand;
        // this one never joins, and nothing is committed.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        client_config
            .set(
                "group.id",
                format!("choreo-reader-{}-{nanos}", std::process::id()),
            )
            .set("enable.auto.commit", "false");
        let watch = Arc::new(Watch::new(config));
        let context = LogContext {
            watch: watch.clone(),
        };
        let consumer =
            StreamConsumer::from_config_and_context(&client_config, context).map_err(|source| {
                Error::Client {
                    role: "reader",
                    brokers: config.brokers.clone(),
                    source: watch.redact(source),
                }
            })?;
        Ok(Assigned {
            config: config.clone(),
            consumer,
            remaining: HashMap::new(),
            assigned: HashSet::new(),
            absent: Vec::new(),
            last_refresh: Instant::now(),
            outage: Outage::default(),
        })
    }

    /// Assigns partitions of matching topics not assigned yet: at the
    /// configured start on `first`, from the beginning for topics found later.
    async fn assign_new(&mut self, options: &ReaderOptions, first: bool) -> Result<()> {
        let watch = self.consumer.context().watch.clone();
        let topics = options.topics.clone();
        let need_ends = !options.follow || (first && options.from == ReadFrom::End);
        let timeout = self.config.admin_timeout;
        let lookup = self.config.clone();
        let (found, absent) = tokio::task::spawn_blocking(move || {
            discover(&lookup, &watch, &topics, need_ends, timeout)
        })
        .await
        .map_err(|_| Error::Topic {
            topic: format!("{:?}", options.topics),
            reason: "the metadata lookup was cancelled".into(),
        })??;
        // `assign` replaces the whole assignment: keep the partitions already
        // assigned at their current positions.
        let mut tpl = TopicPartitionList::new();
        if !first {
            let positions = self.consumer.position().unwrap_or_default();
            for (topic, partition) in &self.assigned {
                let offset = positions
                    .find_partition(topic, *partition)
                    .map(|e| e.offset())
                    .filter(|o| matches!(o, Offset::Offset(_)))
                    .unwrap_or(Offset::Stored);
                let _ = tpl.add_partition_offset(topic, *partition, offset);
            }
        }
        self.absent = absent;
        let before = tpl.count();
        for p in found {
            let key = (p.topic.clone(), p.partition);
            if self.assigned.contains(&key) {
                continue;
            }
            // The end as read now, not as librdkafka resolves it later: a
            // record published right after `open` must be read.
            let offset = match (first, options.from) {
                (true, ReadFrom::End) => Offset::Offset(p.high),
                _ => Offset::Beginning,
            };
            tpl.add_partition_offset(&p.topic, p.partition, offset)
                .map_err(|source| Error::Kafka {
                    context: format!("assigning {}/{}", p.topic, p.partition),
                    source,
                })?;
            if !options.follow && options.from == ReadFrom::Beginning && p.high > p.low {
                self.remaining.insert(key.clone(), p.high);
            }
            self.assigned.insert(key);
        }
        if tpl.count() > before {
            self.consumer.assign(&tpl).map_err(|source| Error::Kafka {
                context: "assigning the reader's partitions".into(),
                source,
            })?;
        }
        self.last_refresh = Instant::now();
        Ok(())
    }

    /// Drops partitions whose position reached their end without a record at
    /// the end offset (compacted records, transaction markers).
    fn drop_finished(&mut self) {
        let Ok(positions) = self.consumer.position() else {
            return;
        };
        for e in positions.elements() {
            if let Offset::Offset(pos) = e.offset() {
                let key = (e.topic().to_owned(), e.partition());
                if self.remaining.get(&key).is_some_and(|end| pos >= *end) {
                    self.remaining.remove(&key);
                }
            }
        }
    }
}

/// Whether a consumption error is one librdkafka recovers from by itself:
/// the broker's connection lost or refused (a broker restarting), a leader
/// or coordinator moving. A reader that follows waits through them (see
/// [`Outage`]); any other error ends the read.
pub(crate) fn transient(e: &KafkaError) -> bool {
    use rdkafka::error::RDKafkaErrorCode as C;
    matches!(e, KafkaError::MessageConsumption(_))
        && matches!(
            e.rdkafka_error_code(),
            Some(
                C::BrokerTransportFailure
                    | C::AllBrokersDown
                    | C::NetworkException
                    | C::RequestTimedOut
                    | C::OperationTimedOut
                    | C::LeaderNotAvailable
                    | C::NotLeaderForPartition
                    | C::NotCoordinator
                    | C::CoordinatorNotAvailable
                    | C::CoordinatorLoadInProgress
            )
        )
}

/// A following reader's view of transient errors: the first of an outage
/// is logged as a warning, then at most one every 30 s while they go on, so
/// that a broker restarting shows in the log without flooding it.
#[derive(Debug, Default)]
pub(crate) struct Outage {
    warned: Option<Instant>,
    count: u64,
}

impl Outage {
    /// Notes a transient error `e` met by `who`.
    pub(crate) fn note(&mut self, who: &str, e: &KafkaError) {
        self.count += 1;
        if self
            .warned
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(30))
        {
            tracing::warn!(
                reader = who,
                error = %e,
                errors = self.count,
                "kafka unreachable for now; librdkafka reconnects, the reader waits"
            );
            self.warned = Some(Instant::now());
        }
    }

    /// A record arrived: the outage, if any, is over.
    pub(crate) fn over(&mut self, who: &str) {
        if self.warned.take().is_some() {
            tracing::warn!(reader = who, errors = self.count, "kafka reachable again");
            self.count = 0;
        }
    }
}

pub(crate) fn reader_error(e: KafkaError) -> Error {
    Error::Kafka {
        context: "reading records".into(),
        source: e,
    }
}

pub(crate) struct FoundPartition {
    topic: String,
    partition: i32,
    low: i64,
    high: i64,
}

/// The partitions of the matching topics, with their watermarks when
/// `ends`; and the optional topics that do not exist.
pub(crate) fn discover(
    config: &KafkaConfig,
    watch: &Arc<Watch>,
    topics: &Topics,
    ends: bool,
    timeout: Duration,
) -> Result<(Vec<FoundPartition>, Vec<String>)> {
    let started = Instant::now();
    let client_config = config.client_config(Role::Consumer, None)?;
    let context = LogContext {
        watch: watch.clone(),
    };
    let client: BaseConsumer<LogContext> =
        BaseConsumer::from_config_and_context(&client_config, context).map_err(|source| {
            Error::Client {
                role: "metadata client",
                brokers: config.brokers.clone(),
                source: watch.redact(source),
            }
        })?;
    let md = client.fetch_metadata(None, timeout).map_err(|source| {
        watch.explain(
            started,
            Error::Kafka {
                context: format!("listing the topics on brokers '{}'", config.brokers),
                source,
            },
        )
    })?;
    let matcher = match topics {
        Topics::Names(_) | Topics::Optional(_) => None,
        Topics::Pattern(p) => {
            let anchored = format!("^(?:{})$", p.trim_start_matches('^').trim_end_matches('$'));
            Some(regex::Regex::new(&anchored).map_err(|e| Error::Invalid {
                field: "topics",
                reason: format!("'{p}' is not a valid regular expression: {e}"),
            })?)
        }
    };
    let exists = |n: &str| {
        md.topics()
            .iter()
            .any(|t| t.name() == n && t.error().is_none() && !t.partitions().is_empty())
    };
    let mut absent = Vec::new();
    if let Topics::Optional(names) = topics {
        absent = names.iter().filter(|n| !exists(n)).cloned().collect();
    }
    if let Topics::Names(names) = topics {
        for n in names {
            if !exists(n) {
                return Err(Error::Topic {
                    topic: n.clone(),
                    reason: format!(
                        "does not exist on brokers '{}': check the name",
                        config.brokers
                    ),
                });
            }
        }
    }
    let mut out = Vec::new();
    for t in md.topics() {
        let wanted = match (topics, &matcher) {
            (Topics::Names(names) | Topics::Optional(names), _) => {
                names.iter().any(|n| n == t.name())
            }
            (Topics::Pattern(_), Some(re)) => !t.name().starts_with("__") && re.is_match(t.name()),
            (Topics::Pattern(_), None) => false,
        };
        if !wanted || t.error().is_some() {
            continue;
        }
        for p in t.partitions() {
            let (low, high) = if ends {
                client
                    .fetch_watermarks(t.name(), p.id(), timeout)
                    .map_err(|source| Error::Kafka {
                        context: format!("reading the end of {}/{}", t.name(), p.id()),
                        source,
                    })?
            } else {
                (0, 0)
            };
            out.push(FoundPartition {
                topic: t.name().to_owned(),
                partition: p.id(),
                low,
                high,
            });
        }
    }
    Ok((out, absent))
}
