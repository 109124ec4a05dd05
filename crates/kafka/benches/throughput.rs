//! Publish + consume throughput of the choreo Kafka backend against bare
//! rdkafka with the same configuration and payload size, on tansu and on
//! librdkafka's mock cluster, in one run. Not a test: it prints the rates and
//! their ratio.
//!
//! ```text
//! cargo bench -p choreo-kafka --bench throughput
//! CHOREO_BENCH_EVENTS=50000 CHOREO_BENCH_BROKERS=mock cargo bench -p choreo-kafka --bench throughput
//! ```
//!
//! Both sides: an idempotent producer (`acks=all`, `murmur2_random`) with up
//! to `IN_FLIGHT` publishes outstanding, a consumer-group member that joined
//! before the clock starts, committing only what it has processed (offsets
//! stored after processing, committed by librdkafka every 200 ms). The clock
//! runs from the first publish to the last record consumed. Both send the
//! same bytes: bare rdkafka's records carry the same CloudEvents headers as
//! choreo's (the broker's cost of storing headers is not choreo's overhead).

// Only the tansu broker helpers: the rest serve the tests.
#[allow(dead_code)]
#[path = "../tests/it/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use choreo_core::{Bus, Envelope, SubscribeOptions, Subscription};
use choreo_kafka::{KafkaBus, KafkaConfig};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

const PAYLOAD: usize = 256;
const IN_FLIGHT: usize = 1000;
const PARTITIONS: u32 = 4;

fn bench_config(brokers: &str) -> KafkaConfig {
    KafkaConfig::new(brokers)
        .session_timeout(Duration::from_secs(6))
        .lag_interval(None)
}

/// The librdkafka options the choreo backend sets, for the bare clients.
fn bare(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("client.id", "choreo")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random");
    c
}

fn payload() -> Bytes {
    Bytes::from(vec![b'x'; PAYLOAD])
}

async fn choreo_run(brokers: &str, topic: &str, n: usize) -> Duration {
    let bus = KafkaBus::new(bench_config(brokers)).expect("bus");
    let mut sub = bus
        .subscribe(SubscribeOptions::new(format!("{topic}-g"), [topic]))
        .await
        .expect("subscribe");
    let consumer = tokio::spawn(async move {
        let mut got = 0;
        while got < n {
            let next = tokio::time::timeout(Duration::from_secs(30), sub.next()).await;
            let Ok(next) = next else {
                panic!("choreo consumer stalled at {got} of {n}");
            };
            match next {
                Some(Ok(d)) => {
                    std::hint::black_box(d.envelope().data.len());
                    d.ack();
                    got += 1;
                }
                Some(Err(e)) => eprintln!("receive error: {e}"),
                None => break,
            }
        }
        let _ = sub.close().await;
        got
    });
    let data = payload();
    let start = Instant::now();
    let mut pending = FuturesUnordered::new();
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
        if pending.len() >= IN_FLIGHT {
            pending.next().await.expect("a publish").expect("published");
        }
    }
    while let Some(r) = pending.next().await {
        r.expect("published");
    }
    let published = start.elapsed();
    let got = consumer.await.expect("consumer");
    if std::env::var_os("CHOREO_BENCH_VERBOSE").is_some() {
        eprintln!(
            "  choreo {topic}: published in {published:?}, consumed in {:?}",
            start.elapsed()
        );
    }
    assert_eq!(got, n, "choreo consumed everything");
    start.elapsed()
}

async fn bare_run(brokers: &str, topic: &str, n: usize) -> Duration {
    let producer: FutureProducer = bare(brokers).create().expect("producer");
    let consumer: BaseConsumer = bare(brokers)
        .set("group.id", format!("{topic}-g"))
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.commit.interval.ms", "200")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "2000")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    // Join before the clock starts, as choreo's subscribe does.
    let joined = Instant::now();
    while consumer.assignment().map_or(0, |a| a.count()) == 0 {
        consumer.poll(Duration::from_millis(50));
        assert!(
            joined.elapsed() < Duration::from_secs(60),
            "bare consumer did not join"
        );
    }
    let reader = std::thread::spawn(move || {
        let mut got = 0;
        let mut last = Instant::now();
        while got < n {
            assert!(
                last.elapsed() < Duration::from_secs(30),
                "bare consumer stalled at {got} of {n}"
            );
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    std::hint::black_box(m.payload().map(<[u8]>::len));
                    let _ = consumer.store_offset(m.topic(), m.partition(), m.offset() + 1);
                    got += 1;
                    last = Instant::now();
                }
                Some(Err(e)) => eprintln!("bare receive error: {e}"),
                None => {}
            }
        }
        let _ = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync);
        got
    });
    let data = payload();
    let start = Instant::now();
    let mut pending = FuturesUnordered::new();
    let time = choreo_core::Timestamp::now().to_rfc3339();
    for i in 0..n {
        let key = format!("k{}", i % 1024);
        // The same headers as choreo's records, so both sides send the same bytes.
        let id = format!("{i:08x}-0000-7000-8000-{i:012x}");
        let headers = OwnedHeaders::new_with_capacity(8)
            .insert(Header {
                key: "ce_specversion",
                value: Some("1.0"),
            })
            .insert(Header {
                key: "ce_id",
                value: Some(&id),
            })
            .insert(Header {
                key: "ce_source",
                value: Some("bench"),
            })
            .insert(Header {
                key: "ce_type",
                value: Some("Tick"),
            })
            .insert(Header {
                key: "ce_time",
                value: Some(&time),
            })
            .insert(Header {
                key: "content-type",
                value: Some("application/json"),
            })
            .insert(Header {
                key: "ce_correlationid",
                value: Some(&id),
            });
        let record = FutureRecord::to(topic)
            .key(&key)
            .payload(&data[..])
            .headers(headers);
        pending.push(
            producer
                .send_result(record)
                .map_err(|(e, _)| e)
                .expect("enqueued"),
        );
        if pending.len() >= IN_FLIGHT {
            pending
                .next()
                .await
                .expect("a send")
                .expect("delivered")
                .expect("sent");
        }
    }
    while let Some(r) = pending.next().await {
        r.expect("delivered").expect("sent");
    }
    let published = start.elapsed();
    let got = tokio::task::spawn_blocking(move || reader.join().expect("reader"))
        .await
        .expect("join");
    assert_eq!(got, n, "bare consumed everything");
    if std::env::var_os("CHOREO_BENCH_VERBOSE").is_some() {
        eprintln!(
            "  bare {topic}: published in {published:?}, consumed in {:?}",
            start.elapsed()
        );
    }
    start.elapsed()
}

fn report(broker: &str, n: usize, choreo: Duration, bare: Duration) {
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    println!(
        "{broker:<13} {n:>7} events  choreo {:>9.0}/s  bare rdkafka {:>9.0}/s  ratio {:.2}",
        rate(choreo),
        rate(bare),
        rate(choreo) / rate(bare)
    );
}

/// Runs the two sides `rounds` times, alternating which goes first, and
/// keeps each side's best.
async fn compare<F, Fut>(broker: &str, brokers: &str, n: usize, rounds: usize, create: F)
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (mut best_choreo, mut best_bare) = (Duration::MAX, Duration::MAX);
    for round in 0..rounds {
        let (c, b) = (format!("choreo-{round}"), format!("bare-{round}"));
        create(c.clone()).await;
        create(b.clone()).await;
        // Alternate who goes first: a broker may slow down as it fills up.
        if round % 2 == 0 {
            best_bare = best_bare.min(bare_run(brokers, &b, n).await);
            best_choreo = best_choreo.min(choreo_run(brokers, &c, n).await);
        } else {
            best_choreo = best_choreo.min(choreo_run(brokers, &c, n).await);
            best_bare = best_bare.min(bare_run(brokers, &b, n).await);
        }
    }
    report(broker, n, best_choreo, best_bare);
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // tansu (sqlite storage) is two orders of magnitude slower than the mock.
    let events = |default: usize| -> usize {
        std::env::var("CHOREO_BENCH_EVENTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let rounds = 4;
    println!(
        "publish + consume, {PAYLOAD}-byte payloads, {PARTITIONS} partitions, best of {rounds}"
    );
    let only = std::env::var("CHOREO_BENCH_BROKERS").unwrap_or_default();
    let run = |name: &str| only.is_empty() || only.split(',').any(|b| b == name);
    runtime.block_on(async {
        if !run("mock") {
            return;
        }
        let mock = common::Mock::start(1);
        let brokers = mock.brokers();
        let cluster = &mock.cluster;
        compare("mock cluster", &brokers, events(20_000), rounds, |t| {
            cluster
                .create_topic(&t, PARTITIONS as i32, 1)
                .expect("mock topic");
            async {}
        })
        .await;
        drop(mock);
    });
    runtime.block_on(async {
        if !run("tansu") {
            return;
        }
        let tansu = common::Tansu::start().await;
        let brokers = tansu.brokers();
        let tansu_ref = &tansu;
        compare("tansu", &brokers, events(1_000), rounds, |t| async move {
            tansu_ref.topic(&t, PARTITIONS).await
        })
        .await;
    });
}
