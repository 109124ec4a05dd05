//! Publish + consume throughput of the choreo Kafka backend against bare
//! rdkafka, in one run, ratio printed. Not a test.
//!
//! ```text
//! cargo bench -p choreo-kafka --bench throughput
//! CHOREO_BENCH_BROKERS=tansu-memory CHOREO_BENCH_EVENTS=100000 cargo bench -p choreo-kafka --bench throughput
//! CHOREO_BENCH_PARTS=consumers CHOREO_BENCH_BROKERS=mock cargo bench -p choreo-kafka --bench throughput
//! ```
//!
//! Three parts (`CHOREO_BENCH_PARTS`: `limits`, `end-to-end`, `consumers`,
//! comma-separated; all by default), on the brokers `CHOREO_BENCH_BROKERS`
//! names (`mock`, `tansu-memory`, `tansu-sqlite`; all by default),
//! `CHOREO_BENCH_ROUNDS` rounds each (default 4).
//!
//! **The brokers' own limits.** Which broker can a benchmark of the clients
//! trust? One whose own limit is well above what the clients do. For each
//! broker — librdkafka's mock cluster (in this process), tansu with its
//! in-memory storage and tansu with sqlite (separate processes) — bare
//! rdkafka produces N records as fast as it can (batched: `linger.ms`,
//! `batch.num.messages`), then a consumer reads them back; both rates are
//! printed. A broker whose rates stay near the end-to-end rates below is the
//! bottleneck, and a ratio measured on it says nothing about choreo.
//!
//! **choreo against bare rdkafka, end to end**, on each broker fast enough
//! for it (not tansu on sqlite, whose limits are the clients' rates): publish
//! N events and consume them in a consumer group that joined before the
//! clock starts, from the first publish to the last event consumed. Both
//! sides: an idempotent producer (`acks=all`, `murmur2_random`, the same
//! linger) with up to `CHOREO_BENCH_IN_FLIGHT` publishes outstanding; a
//! consumer that commits only what it processed (offsets stored after
//! processing, committed every 200 ms), with the same fetch settings
//! (`fetch.wait.max.ms` short: tansu holds each fetch for the whole wait).
//! Both send the same bytes: bare rdkafka's records carry the same
//! CloudEvents headers as choreo's. Rounds alternate which side goes first,
//! each on fresh topics; the best and the median of each side are printed,
//! with the time at which the last publish was acknowledged (where the time
//! goes: producing or consuming), and the CPU time the whole process used
//! per event, from the first publish to the last event consumed (before
//! the final commit). It moves from run to run as much as the rates do:
//! read it across alternating runs, as the rates.
//!
//! **The consumers alone**: N records with choreo's headers produced once,
//! then read from the start by a new group of each consumer in turn — choreo's
//! subscription (an envelope per record, settled), bare rdkafka reading key
//! and payload, and bare rdkafka also checking every header is text — with
//! the CPU time the whole process used meanwhile per record, and by thread
//! (from `/proc/self/task`): where choreo's time goes.
//!
//! The mock cluster keeps 5 MB a partition and drops older records: with 4
//! partitions and these records, N above about 35 000 loses records, and the
//! consumers stall (the run fails, saying so).
//!
//! tansu's memory storage can report a partition's high watermark below
//! what it stored, so a reader may not see the newest records until more
//! arrive: on tansu, once a side has published everything, a filler record
//! goes to every partition every 20 ms until its consumer has seen all N
//! (the same for both sides; the consumers skip fillers). The mock cluster
//! gets none: there they would only cost, and unevenly (each filler is a
//! message set of its own, fetched by whichever consumer reads ahead). A consumer that reads no
//! record other than fillers for 30 s fails the run with what it got and on
//! which broker.

// Only the broker helpers: the rest serve the tests.
#[allow(dead_code)]
#[path = "../tests/it/common/mod.rs"]
mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use choreo_core::{Bus, Envelope, StartFrom, SubscribeOptions, Subscription};
use choreo_kafka::{KafkaBus, KafkaConfig};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

const PAYLOAD: usize = 256;
/// Publishes outstanding at once (`CHOREO_BENCH_IN_FLIGHT`, default 1 000).
/// With 1 000, tansu's acknowledgement latency (~30 ms) holds both sides at
/// ~35 000/s however fast they are; with 10 000, tansu in memory slowed to a
/// crawl as it filled.
fn in_flight() -> usize {
    std::env::var("CHOREO_BENCH_IN_FLIGHT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

/// Waits for the next of `pending`, failing the run with `what` if the
/// broker acknowledges nothing for [`STALL`].
async fn next_ack<S: futures_util::Stream + Unpin>(pending: &mut S, what: &str) -> Option<S::Item> {
    match tokio::time::timeout(STALL, pending.next()).await {
        Ok(item) => item,
        Err(_) => panic!("{what}: the broker acknowledged nothing for {STALL:?}"),
    }
}
const PARTITIONS: u32 = 4;
/// How long a consumer may see nothing new before the run fails.
const STALL: Duration = Duration::from_secs(30);
/// The key of the records that push tansu's high watermarks up.
const FILLER: &str = "filler";

/// The batching and fetch settings both sides use.
const LINGER_MS: &str = "5";
const BATCH_MESSAGES: &str = "10000";
const FETCH_WAIT_MS: &str = "10";

fn bench_config(brokers: &str) -> KafkaConfig {
    KafkaConfig::new(brokers)
        .session_timeout(Duration::from_secs(6))
        .commit_interval(Duration::from_millis(200))
        .linger(Duration::from_millis(LINGER_MS.parse().unwrap()))
        .lag_interval(None)
        .set("batch.num.messages", BATCH_MESSAGES)
        .set("fetch.wait.max.ms", FETCH_WAIT_MS)
}

/// The librdkafka options the choreo backend sets, for the bare clients.
fn bare(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("client.id", "choreo")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", LINGER_MS)
        .set("batch.num.messages", BATCH_MESSAGES);
    c
}

fn bare_consumer(brokers: &str, topic: &str, group: &str) -> BaseConsumer {
    let consumer: BaseConsumer = bare(brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("auto.commit.interval.ms", "200")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "2000")
        .set("fetch.wait.max.ms", FETCH_WAIT_MS)
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    // Join before the clock starts, as choreo's subscribe does.
    let joined = Instant::now();
    while consumer.assignment().map_or(0, |a| a.count()) == 0 {
        consumer.poll(Duration::from_millis(50));
        assert!(
            joined.elapsed() < Duration::from_secs(60),
            "bare consumer did not join {topic} within 60 s"
        );
    }
    consumer
}

/// Reads `n` records other than fillers, then commits. Returns when the
/// last of them was read (before the final commit, as for choreo's side).
///
/// Only records other than fillers count as progress: fillers keep
/// arriving whatever happens to the records under test (a broker that
/// dropped some, as the mock cluster does past 5 MB a partition), so a
/// consumer seeing only fillers for [`STALL`] fails the run.
fn bare_consume(consumer: &BaseConsumer, n: usize, broker: &str, topic: &str) -> Finished {
    bare_consume_with(consumer, n, broker, topic, |_| {})
}

/// [`bare_consume`], calling `read` with each record other than fillers.
fn bare_consume_with(
    consumer: &BaseConsumer,
    n: usize,
    broker: &str,
    topic: &str,
    read: impl Fn(&rdkafka::message::BorrowedMessage<'_>),
) -> Finished {
    let mut got = 0;
    let mut last = Instant::now();
    while got < n {
        assert!(
            last.elapsed() < STALL,
            "{broker}: the bare consumer of {topic} read nothing new for {STALL:?}, at {got} of {n} records"
        );
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                if m.key() == Some(FILLER.as_bytes()) {
                    filler_seen(m.partition());
                    continue;
                }
                last = Instant::now();
                std::hint::black_box(m.payload().map(<[u8]>::len));
                read(&m);
                let _ = consumer.store_offset(m.topic(), m.partition(), m.offset() + 1);
                got += 1;
            }
            Some(Err(e)) => eprintln!("bare receive error: {e}"),
            None => {}
        }
    }
    let cpu = thread_cpu();
    let _ = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync);
    Finished { last, cpu }
}

fn payload() -> Bytes {
    Bytes::from(vec![b'x'; PAYLOAD])
}

/// The CloudEvents headers choreo writes, for bare rdkafka's records.
fn headers(id: &str, time: &str) -> OwnedHeaders {
    [
        ("ce_specversion", "1.0"),
        ("ce_id", id),
        ("ce_source", "bench"),
        ("ce_type", "Tick"),
        ("ce_time", time),
        ("content-type", "application/json"),
        ("ce_correlationid", id),
    ]
    .into_iter()
    .fold(OwnedHeaders::new_with_capacity(8), |h, (key, value)| {
        h.insert(Header {
            key,
            value: Some(value),
        })
    })
}

/// Filler records (see the module docs): one to every partition of a
/// topic every 20 ms, from a producer of its own, until stopped — on the
/// brokers that need them (tansu in memory) only. Elsewhere they would only
/// cost: each is a message set of its own, and a consumer that reads ahead
/// (as choreo's does) fetches them one by one.
struct Fillers {
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Fillers {
    fn start(brokers: &str, topic: &str, needed: bool) -> Fillers {
        let done = Arc::new(AtomicBool::new(false));
        if !needed {
            return Fillers { done, thread: None };
        }
        let producer: rdkafka::producer::BaseProducer = bare(brokers).create().expect("producer");
        let topic = topic.to_owned();
        let stop = done.clone();
        let thread = std::thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                for p in 0..PARTITIONS as i32 {
                    let record = rdkafka::producer::BaseRecord::to(&topic)
                        .partition(p)
                        .key(FILLER)
                        .payload("");
                    let _ = producer.send(record);
                }
                // Paced by a sleep, not by `poll(20 ms)`: rdkafka's poll spins
                // through the last millisecond of its wait, which would add a
                // twentieth of a core to the CPU time the consumers are measured by.
                std::thread::sleep(Duration::from_millis(20));
                producer.poll(Duration::ZERO);
            }
            let _ = producer.flush(Duration::from_secs(5));
        });
        Fillers {
            done,
            thread: Some(thread),
        }
    }

    fn stop(self) {
        self.done.store(true, Ordering::Release);
        if let Some(t) = self.thread {
            t.join().expect("fillers");
        }
    }
}

/// Fillers each partition's consumer has seen, for [`warm_up`].
static FILLERS_SEEN: [AtomicUsize; PARTITIONS as usize] =
    [const { AtomicUsize::new(0) }; PARTITIONS as usize];

fn filler_seen(partition: i32) {
    if let Some(seen) = FILLERS_SEEN.get(partition as usize) {
        seen.fetch_add(1, Ordering::Relaxed);
    }
}

/// Waits, before a side's clock starts, until its consumer has read a
/// filler from every partition of `topic`: it is then fetching from all of
/// them. A consumer that has just joined starts fetching only about 100 ms
/// later on the mock cluster; with the clock started at the join, that
/// wait and then a drain of the backlog it left were most of what the end
/// to end part measured, rather than publishing and consuming side by side.
async fn warm_up(brokers: &str, topic: &str, side: &str, broker: &str) {
    for seen in &FILLERS_SEEN {
        seen.store(0, Ordering::Relaxed);
    }
    // Resent every 20 ms: tansu in memory may not show one until more come.
    let fillers = Fillers::start(brokers, topic, true);
    // Half of `STALL`: the consumer's own stall clock is already running
    // (fillers do not reset it), and must keep time for the first event.
    let (started, limit) = (Instant::now(), STALL / 2);
    while FILLERS_SEEN.iter().any(|s| s.load(Ordering::Relaxed) == 0) {
        assert!(
            started.elapsed() < limit,
            "{broker}: {side}'s consumer of {topic} saw no filler on some partition within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    fillers.stop();
}

/// When a side's publishing ended and when its consumer saw the last event.
#[derive(Debug, Clone, Copy)]
struct Run {
    published: Duration,
    consumed: Duration,
    /// The CPU time the whole process used from the start to the last
    /// event consumed.
    cpu: Duration,
}

/// When a consumer took its last record, and the CPU time each thread of
/// the process had used by then (before any final commit or close).
struct Finished {
    last: Instant,
    cpu: HashMap<u64, (String, u64)>,
}

/// Takes `n` events other than fillers from `sub`, acknowledging each (and
/// the fillers); returns when the last was taken. Fails the run if none
/// comes for [`STALL`] (fillers do not count, as in [`bare_consume`]).
async fn choreo_consume<S: Subscription>(
    sub: &mut S,
    n: usize,
    broker: &str,
    topic: &str,
) -> Finished {
    let mut got = 0;
    let mut last = Instant::now();
    while got < n {
        let wait = STALL.saturating_sub(last.elapsed());
        let Ok(next) = tokio::time::timeout(wait, sub.next()).await else {
            panic!(
                "{broker}: choreo's consumer of {topic} took nothing new for {STALL:?}, at {got} of {n} events"
            );
        };
        match next {
            Some(Ok(d)) => {
                let filler = d.envelope().key.as_deref() == Some(FILLER.as_bytes());
                if filler {
                    filler_seen(d.partition() as i32);
                } else {
                    last = Instant::now();
                    std::hint::black_box(d.envelope().data.len());
                    got += 1;
                }
                d.ack();
            }
            Some(Err(e)) => eprintln!("receive error: {e}"),
            None => {
                panic!("{broker}: choreo's subscription to {topic} ended at {got} of {n} events")
            }
        }
    }
    Finished {
        last,
        cpu: thread_cpu(),
    }
}

async fn choreo_run(broker: &str, brokers: &str, topic: &str, n: usize, fill: bool) -> Run {
    let bus = KafkaBus::new(bench_config(brokers)).expect("bus");
    let mut sub = bus
        .subscribe(SubscribeOptions::new(format!("{topic}-g"), [topic]))
        .await
        .expect("subscribe");
    let (broker_name, topic_name) = (broker.to_owned(), topic.to_owned());
    let consumer = tokio::spawn(async move {
        let finished = choreo_consume(&mut sub, n, &broker_name, &topic_name).await;
        let _ = sub.close().await;
        finished
    });
    warm_up(brokers, topic, "choreo", broker).await;
    let data = payload();
    let (start, cpu) = (Instant::now(), thread_cpu());
    let mut pending = FuturesUnordered::new();
    let window = in_flight();
    let stalled = format!("{broker}: choreo's publisher of {topic}");
    for i in 0..n {
        let mut env = Envelope::new("Tick", topic.to_owned(), data.clone()).with_source("bench");
        env.key = Some(Bytes::from(format!("k{}", i % 1024)));
        // Poll once now, so the record is handed to the producer here as
        // bare rdkafka's `send_result` does (a future sitting in the set
        // would only be polled at the next `next()`).
        let mut publish = Box::pin(bus.publish(env));
        match (&mut publish).now_or_never() {
            Some(r) => r.expect("published"),
            None => pending.push(publish),
        }
        if pending.len() >= window {
            next_ack(&mut pending, &stalled)
                .await
                .expect("a publish")
                .expect("published");
        }
    }
    while let Some(r) = next_ack(&mut pending, &stalled).await {
        r.expect("published");
    }
    let published = start.elapsed();
    let filling = Fillers::start(brokers, topic, fill);
    let finished = consumer.await.expect("consumer");
    filling.stop();
    Run {
        published,
        consumed: finished.last - start,
        cpu: cpu_between(&cpu, &finished.cpu).0,
    }
}

/// Bare rdkafka producing `n` records of [`PAYLOAD`] bytes with choreo's
/// headers to `topic`, up to [`in_flight`] outstanding; returns once every
/// one is acknowledged (`stalled` names the side if the broker stops).
async fn bare_produce(producer: &FutureProducer, topic: &str, n: usize, stalled: &str) {
    let data = payload();
    let time = choreo_core::Timestamp::now().to_rfc3339();
    let window = in_flight();
    let mut pending = FuturesUnordered::new();
    for i in 0..n {
        let key = format!("k{}", i % 1024);
        let id = format!("{i:08x}-0000-7000-8000-{i:012x}");
        let record = FutureRecord::to(topic)
            .key(&key)
            .payload(&data[..])
            .headers(headers(&id, &time));
        pending.push(
            producer
                .send_result(record)
                .map_err(|(e, _)| e)
                .expect("enqueued"),
        );
        if pending.len() >= window {
            next_ack(&mut pending, stalled)
                .await
                .expect("a send")
                .expect("delivered")
                .expect("sent");
        }
    }
    while let Some(r) = next_ack(&mut pending, stalled).await {
        r.expect("delivered").expect("sent");
    }
}

async fn bare_run(broker: &str, brokers: &str, topic: &str, n: usize, fill: bool) -> Run {
    let producer: FutureProducer = bare(brokers).create().expect("producer");
    let consumer = bare_consumer(brokers, topic, &format!("{topic}-g"));
    let (broker_name, topic_name) = (broker.to_owned(), topic.to_owned());
    let reader = std::thread::spawn(move || bare_consume(&consumer, n, &broker_name, &topic_name));
    warm_up(brokers, topic, "the bare side", broker).await;
    let (start, cpu) = (Instant::now(), thread_cpu());
    bare_produce(
        &producer,
        topic,
        n,
        &format!("{broker}: the bare producer of {topic}"),
    )
    .await;
    let published = start.elapsed();
    let filling = Fillers::start(brokers, topic, fill);
    let finished = tokio::task::spawn_blocking(move || reader.join().expect("reader"))
        .await
        .expect("join");
    filling.stop();
    Run {
        published,
        consumed: finished.last - start,
        cpu: cpu_between(&cpu, &finished.cpu).0,
    }
}

/// Part one: bare rdkafka producing `n` records as fast as it can, then a
/// consumer reading them back. Returns (produced/s, consumed/s).
async fn broker_limit(
    broker: &str,
    brokers: &str,
    topic: &str,
    n: usize,
    fill: bool,
) -> (f64, f64) {
    let producer: FutureProducer = bare(brokers).create().expect("producer");
    // Warm: the idempotent producer's id and the topic's metadata are
    // fetched before the clock starts (the consumers skip the filler).
    producer
        .send(
            FutureRecord::<str, str>::to(topic).key(FILLER).payload(""),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("warm-up record");
    let start = Instant::now();
    let stalled = format!("{broker}: the bare producer (limits) of {topic}");
    bare_produce(&producer, topic, n, &stalled).await;
    let produced = n as f64 / start.elapsed().as_secs_f64();
    let consumer = bare_consumer(brokers, topic, &format!("{topic}-g"));
    let filling = Fillers::start(brokers, topic, fill);
    let (broker_name, topic_name) = (broker.to_owned(), topic.to_owned());
    let start = Instant::now();
    let finished =
        tokio::task::spawn_blocking(move || bare_consume(&consumer, n, &broker_name, &topic_name))
            .await
            .expect("reader");
    let consumed = n as f64 / (finished.last - start).as_secs_f64();
    filling.stop();
    (produced, consumed)
}

/// The CPU time each thread of this process has used so far, by thread id,
/// with the thread's name (from `/proc/self/task/*/schedstat` and `comm`,
/// in nanoseconds).
fn thread_cpu() -> HashMap<u64, (String, u64)> {
    let mut times = HashMap::new();
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let Ok(task) = task else { continue };
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        // A thread that ended meanwhile has no files any more.
        if let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat"))
            && let Some(ns) = stat.split_whitespace().next().and_then(|n| n.parse().ok())
        {
            let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            times.insert(tid, (name.trim().to_owned(), ns));
        }
    }
    times
}

/// What a thread is, from its id and name, for the CPU breakdown.
fn thread_group(tid: u64, name: &str) -> &'static str {
    if tid == u64::from(std::process::id()) {
        return "the main thread (choreo's next and ack)";
    }
    match name {
        n if n.starts_with("choreo-kafka") => "choreo's polling thread",
        "bare-reader" => "the bare consumer's thread",
        "rdk:mock" => "the mock broker",
        n if n.starts_with("rdk:") => "librdkafka's threads",
        "producer pollin" => "idle producers' polling threads",
        "tokio-rt-worker" | "tokio-runtime-w" => "tokio workers",
        _ => "other",
    }
}

/// The CPU time the process used between two [`thread_cpu`] readings, in
/// all and by [`thread_group`]: a thread that started meanwhile counts
/// whole. (One that ended meanwhile is lost; the consumers measured keep
/// theirs until after the reading.)
fn cpu_between(
    before: &HashMap<u64, (String, u64)>,
    after: &HashMap<u64, (String, u64)>,
) -> (Duration, BTreeMap<&'static str, Duration>) {
    let mut groups = BTreeMap::new();
    let mut total = Duration::ZERO;
    for (tid, (name, ns)) in after {
        let used = ns.saturating_sub(before.get(tid).map_or(0, |(_, ns)| *ns));
        let used = Duration::from_nanos(used);
        total += used;
        *groups.entry(thread_group(*tid, name)).or_default() += used;
    }
    (total, groups)
}

/// One consumer reading a topic that is already full: its wall time and
/// the CPU time the process used meanwhile, in all and by thread.
#[derive(Debug, Clone)]
struct Read {
    wall: Duration,
    cpu: Duration,
    threads: BTreeMap<&'static str, Duration>,
}

/// Part three: the consumers alone, on `topic` holding `n` records with
/// choreo's headers. Each reads all of it from the start in a new group,
/// from when it joined to the last record. Bare rdkafka reads each record's
/// key and payload, and with `headers` also checks every header value is
/// text (what any reader of CloudEvents headers does first); choreo
/// delivers each as an envelope and settles it.
async fn bare_read(
    broker: &str,
    brokers: &str,
    topic: &str,
    group: &str,
    n: usize,
    headers: bool,
) -> Read {
    let consumer = bare_consumer(brokers, topic, group);
    let (broker_name, topic_name) = (broker.to_owned(), topic.to_owned());
    let (start, cpu) = (Instant::now(), thread_cpu());
    let (tx, rx) = tokio::sync::oneshot::channel();
    // The reader sends its CPU reading before it drops the consumer (whose
    // threads end with it).
    let reader = std::thread::Builder::new()
        .name("bare-reader".into())
        .spawn(move || {
            let finished = if headers {
                bare_consume_with(&consumer, n, &broker_name, &topic_name, read_headers)
            } else {
                bare_consume(&consumer, n, &broker_name, &topic_name)
            };
            let _ = tx.send(finished);
            drop(consumer);
        })
        .expect("reader thread");
    let finished = rx.await.expect("the bare reader finished");
    reader.join().expect("reader");
    let (cpu, threads) = cpu_between(&cpu, &finished.cpu);
    Read {
        wall: finished.last - start,
        cpu,
        threads,
    }
}

/// Checks every header value of `m` is text, as a reader of CloudEvents
/// headers would before using them.
fn read_headers(m: &rdkafka::message::BorrowedMessage<'_>) {
    use rdkafka::message::Headers;
    if let Some(hs) = m.headers() {
        for h in hs.iter() {
            std::hint::black_box(h.value.map(std::str::from_utf8));
        }
    }
}

/// [`bare_read`] for choreo's subscription.
async fn choreo_read(broker: &str, brokers: &str, topic: &str, group: &str, n: usize) -> Read {
    let bus = KafkaBus::new(bench_config(brokers)).expect("bus");
    let mut sub = bus
        .subscribe(SubscribeOptions::new(group, [topic]).start_from(StartFrom::Earliest))
        .await
        .expect("subscribe");
    let (start, cpu) = (Instant::now(), thread_cpu());
    let finished = choreo_consume(&mut sub, n, broker, topic).await;
    let _ = sub.close().await;
    let (cpu, threads) = cpu_between(&cpu, &finished.cpu);
    Read {
        wall: finished.last - start,
        cpu,
        threads,
    }
}

/// Part three for one broker: `n` records produced once, then read by
/// each consumer in turn (the order rotating), `rounds` times each; prints
/// the medians, and where each one's CPU time went.
async fn consumers_alone(broker: &Broker<'_>, rounds: usize) {
    let n = broker.events;
    let topic = "consumers-alone";
    (broker.create)(topic.to_owned()).await;
    let producer: FutureProducer = bare(&broker.brokers).create().expect("producer");
    bare_produce(
        &producer,
        topic,
        n,
        &format!("{}: the bare producer of {topic}", broker.name),
    )
    .await;
    drop(producer);
    let filling = Fillers::start(&broker.brokers, topic, broker.fillers);
    const SIDES: [&str; 3] = ["choreo", "bare", "bare, reading the headers"];
    let mut reads: [Vec<Read>; 3] = Default::default();
    for round in 0..rounds {
        for i in 0..SIDES.len() {
            let side = (round + i) % SIDES.len();
            let group = format!("alone-{side}-{round}");
            let (name, brokers) = (broker.name, broker.brokers.as_str());
            let read = match side {
                0 => choreo_read(name, brokers, topic, &group, n).await,
                1 => bare_read(name, brokers, topic, &group, n, false).await,
                _ => bare_read(name, brokers, topic, &group, n, true).await,
            };
            reads[side].push(read);
        }
    }
    filling.stop();
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    let per = |d: Duration| d.as_nanos() as f64 / n as f64 / 1000.0;
    let summary: Vec<(Duration, Duration)> = reads
        .iter()
        .map(|runs| {
            (
                median(runs.iter().map(|r| r.wall).collect()),
                median(runs.iter().map(|r| r.cpu).collect()),
            )
        })
        .collect();
    println!(
        "{:<13} consumers alone, {n} records already there, medians of {rounds}:",
        broker.name
    );
    for (i, side) in SIDES.iter().enumerate() {
        let (wall, cpu) = summary[i];
        println!(
            "{:<13}   {side:<26} {:>9.0}/s  {:>5.2} µs CPU a record  choreo's rate / this {:.2}, CPU {:.2}×",
            "",
            rate(wall),
            per(cpu),
            rate(summary[0].0) / rate(wall),
            per(summary[0].1) / per(cpu),
        );
        let groups: std::collections::BTreeSet<&str> = reads[i]
            .iter()
            .flat_map(|r| r.threads.keys().copied())
            .collect();
        let parts: Vec<String> = groups
            .into_iter()
            .map(|g| {
                let used = median(
                    reads[i]
                        .iter()
                        .map(|r| r.threads.get(g).copied().unwrap_or_default())
                        .collect(),
                );
                (g, per(used))
            })
            .filter(|(_, us)| *us >= 0.01)
            .map(|(g, us)| format!("{g} {us:.2}"))
            .collect();
        println!("{:<13}     µs a record by thread: {}", "", parts.join(", "));
    }
}

/// A broker under test: its name, its address, and how to create a topic.
struct Broker<'a> {
    name: &'static str,
    brokers: String,
    create: Box<dyn Fn(String) -> futures_util::future::BoxFuture<'a, ()> + 'a>,
    /// Events per run (sqlite storage is two orders of magnitude slower).
    events: usize,
    /// Whether to run choreo against bare rdkafka on it, or only measure its
    /// limits (a broker slower than the clients measures itself).
    end_to_end: bool,
    /// Whether readers need [`Fillers`] to see the last records.
    fillers: bool,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Runs both parts on one broker.
/// Which parts to run (`CHOREO_BENCH_PARTS`, default all three).
#[derive(Debug, Clone, Copy)]
struct Parts {
    limits: bool,
    end_to_end: bool,
    consumers: bool,
}

impl Parts {
    fn from_env() -> Parts {
        let only = std::env::var("CHOREO_BENCH_PARTS").unwrap_or_default();
        let run = |name: &str| only.is_empty() || only.split(',').any(|p| p == name);
        let parts = Parts {
            limits: run("limits"),
            end_to_end: run("end-to-end"),
            consumers: run("consumers"),
        };
        assert!(
            parts.limits || parts.end_to_end || parts.consumers,
            "CHOREO_BENCH_PARTS={only:?} names no part: use limits, end-to-end and/or consumers, comma-separated"
        );
        parts
    }
}

async fn bench(broker: &Broker<'_>, rounds: usize, parts: Parts) {
    if parts.limits {
        limits(broker).await;
    }
    if !broker.end_to_end {
        println!(
            "{:<13} choreo against bare: not run — the broker's own limits are the clients' rates, so a ratio would measure the broker",
            broker.name
        );
        return;
    }
    if parts.end_to_end {
        end_to_end(broker, rounds).await;
    }
    if parts.consumers {
        consumers_alone(broker, rounds).await;
    }
}

/// Part one for one broker.
async fn limits(broker: &Broker<'_>) {
    let n = broker.events;
    let limit_topic = "limit".to_owned();
    (broker.create)(limit_topic.clone()).await;
    let (produced, consumed) = broker_limit(
        broker.name,
        &broker.brokers,
        &limit_topic,
        n,
        broker.fillers,
    )
    .await;
    println!(
        "{:<13} limits, bare rdkafka alone: produce {produced:>9.0}/s, then consume {consumed:>9.0}/s ({n} records)",
        broker.name
    );
}

/// Part two for one broker.
async fn end_to_end(broker: &Broker<'_>, rounds: usize) {
    let n = broker.events;
    let (mut choreo, mut plain) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let (c, b) = (format!("choreo-{round}"), format!("bare-{round}"));
        (broker.create)(c.clone()).await;
        (broker.create)(b.clone()).await;
        // Alternate who goes first: a broker may slow down as it fills up.
        if round % 2 == 0 {
            plain.push(bare_run(broker.name, &broker.brokers, &b, n, broker.fillers).await);
            choreo.push(choreo_run(broker.name, &broker.brokers, &c, n, broker.fillers).await);
        } else {
            choreo.push(choreo_run(broker.name, &broker.brokers, &c, n, broker.fillers).await);
            plain.push(bare_run(broker.name, &broker.brokers, &b, n, broker.fillers).await);
        }
    }
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    let best = |runs: &[Run]| runs.iter().map(|r| r.consumed).min().unwrap();
    let med = |runs: &[Run]| median(runs.iter().map(|r| r.consumed).collect());
    let med_published = |runs: &[Run]| median(runs.iter().map(|r| r.published).collect());
    let cpu_per = |runs: &[Run]| {
        median(runs.iter().map(|r| r.cpu).collect()).as_nanos() as f64 / n as f64 / 1000.0
    };
    println!(
        "{:<13} end to end:  choreo best {:>9.0}/s median {:>9.0}/s (published by {:>7.1?})  bare best {:>9.0}/s median {:>9.0}/s (published by {:>7.1?})  ratio best {:.2} median {:.2}",
        broker.name,
        rate(best(&choreo)),
        rate(med(&choreo)),
        med_published(&choreo),
        rate(best(&plain)),
        rate(med(&plain)),
        med_published(&plain),
        rate(best(&choreo)) / rate(best(&plain)),
        rate(med(&choreo)) / rate(med(&plain)),
    );
    // Every thread of the process counts (the broker, librdkafka's, the
    // idle producers'), the same for both sides.
    let (c, b) = (cpu_per(&choreo), cpu_per(&plain));
    println!(
        "{:<13}   CPU an event, every thread of the process, medians: choreo {c:.2} µs, bare {b:.2} µs, bare / choreo {:.2}",
        "",
        b / c
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let events = |default: usize| -> usize {
        std::env::var("CHOREO_BENCH_EVENTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let rounds = std::env::var("CHOREO_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    println!(
        "publish + consume, {PAYLOAD}-byte payloads, {PARTITIONS} partitions, linger {LINGER_MS} ms, fetch.wait.max.ms {FETCH_WAIT_MS}, {rounds} alternating rounds"
    );
    let parts = Parts::from_env();
    let only = std::env::var("CHOREO_BENCH_BROKERS").unwrap_or_default();
    let run = |name: &str| only.is_empty() || only.split(',').any(|b| b == name);
    if run("mock") {
        runtime.block_on(async {
            let mock = common::Mock::start(1);
            let cluster = &mock.cluster;
            let broker = Broker {
                name: "mock",
                brokers: mock.brokers(),
                create: Box::new(move |t: String| {
                    cluster
                        .create_topic(&t, PARTITIONS as i32, 1)
                        .expect("mock topic");
                    Box::pin(async {})
                }),
                events: events(20_000),
                end_to_end: true,
                fillers: false,
            };
            bench(&broker, rounds, parts).await;
        });
    }
    // sqlite: its limits only (it can also stall fetching a backlog of
    // records with many headers, which is tansu's, not the clients').
    for (name, storage, default, end_to_end) in [
        ("tansu-memory", common::Storage::Memory, 50_000, true),
        ("tansu-sqlite", common::Storage::Sqlite, 1_000, false),
    ] {
        if !run(name) {
            continue;
        }
        runtime.block_on(async {
            let tansu = common::Tansu::start_with(storage).await;
            let tansu_ref = &tansu;
            let broker = Broker {
                name,
                brokers: tansu.brokers(),
                create: Box::new(move |t: String| {
                    Box::pin(async move { tansu_ref.topic(&t, PARTITIONS).await })
                }),
                events: events(default),
                end_to_end,
                fillers: true,
            };
            bench(&broker, rounds, parts).await;
        });
    }
}
