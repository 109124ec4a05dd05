//! The conformance suite: the guarantees of the [`Bus`] contract, checked the
//! same way on every backend.
//!
//! A backend provides a [`Harness`] and instantiates the suite with
//! [`conformance_suite!`](crate::conformance_suite):
//!
//! ```ignore
//! choreo_testkit::conformance_suite!(|| async { MyHarness::start().await });
//! ```
//!
//! Each case gets a fresh harness. Topics come from [`Harness::topic`], so a
//! backend that shares one broker between cases can make them unique.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use choreo_bus::{Context, HandlerError, Idempotency, Metrics, Retry, Service};
use choreo_core::{
    Bus, ContentType, DeadLetter, Delivery, Envelope, EventId, Headers, Name, StartFrom,
    SubscribeOptions, Subscription, Timestamp, dlq_headers,
};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::{recv, wait_until};

/// What a backend may legitimately lack or do differently.
#[derive(Debug, Clone)]
pub struct Features {
    /// How long to wait for anything (Kafka group joins take seconds).
    pub patience: Duration,
    /// Whether a redelivery after [`Delivery::redeliver`](choreo_core::Delivery::redeliver)
    /// reports a higher attempt number.
    pub counts_attempts: bool,
    /// Headers the backend adds to what was published (an outbox relay's
    /// `choreo-relayed-at`): the round trip compares everything else.
    pub added_headers: &'static [&'static str],
}

impl Default for Features {
    fn default() -> Self {
        Features {
            patience: Duration::from_secs(10),
            counts_attempts: true,
            added_headers: &[],
        }
    }
}

/// A backend under test.
pub trait Harness {
    /// The backend.
    type Bus: Bus;

    /// A bus connected to the backend. Several calls may share one connection.
    fn bus(&self) -> Self::Bus;

    /// Creates `name` with `partitions` partitions if the backend needs topics
    /// created up front (a no-op otherwise).
    fn create_topic(&self, name: &str, partitions: u32) -> impl Future<Output = ()>;

    /// A topic name for this case based on `base`. The default is `base`
    /// itself, right for a harness that gives each case a fresh backend.
    fn unique(&self, base: &str) -> String {
        base.to_owned()
    }

    /// A created topic for this case, named after `base`.
    fn topic(&self, base: &str, partitions: u32) -> impl Future<Output = String> {
        async move {
            let name = self.unique(base);
            self.create_topic(&name, partitions).await;
            name
        }
    }

    /// What the backend lacks.
    fn features(&self) -> Features;
}

fn envelope(topic: &str, key: &str, n: u64) -> Envelope {
    let mut env = Envelope::new(
        "Tick",
        topic.to_owned(),
        serde_json::to_vec(&Tick { n }).expect("json"),
    )
    .with_source("conformance");
    env.key = Some(Bytes::from(key.to_owned()));
    env
}

fn tick(env: &Envelope) -> u64 {
    serde_json::from_slice::<Tick>(&env.data)
        .expect("a Tick payload")
        .n
}

/// The payload of the suite's events.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tick {
    /// Sequence number.
    pub n: u64,
}
choreo_core::event!(Tick, topic = "conformance.ticks");

/// The delivered envelope without the headers the backend says it adds
/// (each of which must be there).
fn without_added(d: &Delivery, f: &Features) -> Envelope {
    let mut got = (**d.envelope()).clone();
    for added in f.added_headers {
        assert!(
            got.headers.remove(added).is_some(),
            "the backend says it adds '{added}'"
        );
    }
    got
}

/// Every envelope field survives a publish/subscribe round trip.
pub async fn round_trip_keeps_every_field<H: Harness>(h: &H) {
    let f = h.features();
    let topic = h.topic("round-trip", 1).await;
    let bus = h.bus();
    let mut sub = bus
        .subscribe(SubscribeOptions::new("rt", [topic.as_str()]))
        .await
        .expect("subscribe");
    let cause = EventId::new();
    let sent = Envelope {
        id: EventId::new(),
        event_type: Name::from("OrderPlaced"),
        source: Name::from("checkout"),
        topic: Name::from(topic.as_str()),
        key: Some(Bytes::from_static(b"customer-7")),
        correlation_id: EventId::new(),
        causation_id: Some(cause),
        time: Timestamp::from_micros(Timestamp::now().as_micros()),
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        tracestate: Some("congo=t61rcWkgMzE".into()),
        content_type: ContentType::Other(Name::from("application/x-custom")),
        data: Bytes::from_static(b"\x00\x01binary\xffpayload"),
        headers: {
            let mut h = Headers::new();
            h.insert("x-tenant", "acme");
            h.insert("x-binary", Bytes::from_static(b"\x00\xff"));
            h
        },
    };
    bus.publish(sent.clone()).await.expect("publish");
    let d = recv(&mut sub, "the published event", f.patience).await;
    assert_eq!(
        without_added(&d, &f),
        sent,
        "every field must survive the round trip"
    );
    assert_eq!(d.attempt(), 1);
    d.ack();

    // A flow's first event: no causation, no trace context, JSON.
    let first =
        Envelope::new("OrderPlaced", topic.clone(), "{\"order\":1}").with_source("checkout");
    bus.publish(first.clone()).await.expect("publish");
    let d = recv(&mut sub, "the flow's first event", f.patience).await;
    assert_eq!(without_added(&d, &f), first);
    d.ack();
    sub.close().await.expect("close");
}

/// Two groups each receive every event.
pub async fn each_group_gets_every_event<H: Harness>(h: &H) {
    let f = h.features();
    let topic = h.topic("two-groups", 2).await;
    let bus = h.bus();
    let mut a = bus
        .subscribe(SubscribeOptions::new("group-a", [topic.as_str()]))
        .await
        .expect("subscribe");
    let mut b = bus
        .subscribe(SubscribeOptions::new("group-b", [topic.as_str()]))
        .await
        .expect("subscribe");
    const N: u64 = 20;
    for n in 0..N {
        bus.publish(envelope(&topic, &format!("k{n}"), n))
            .await
            .expect("publish");
    }
    for (name, sub) in [("group-a", &mut a), ("group-b", &mut b)] {
        let mut seen = HashSet::new();
        while seen.len() < N as usize {
            let d = recv(sub, &format!("events for {name}"), f.patience).await;
            seen.insert(tick(d.envelope()));
            d.ack();
        }
        assert_eq!(
            seen,
            (0..N).collect::<HashSet<_>>(),
            "{name} must get every event"
        );
    }
    a.close().await.expect("close");
    b.close().await.expect("close");
}

/// Members of one group split the partitions: every event goes to exactly one of them.
pub async fn members_of_a_group_split_partitions<H: Harness>(h: &H) {
    let f = h.features();
    let topic = h.topic("split", 4).await;
    let bus = h.bus();
    let mut a = bus
        .subscribe(SubscribeOptions::new("splitters", [topic.as_str()]))
        .await
        .expect("subscribe");
    let mut b = bus
        .subscribe(SubscribeOptions::new("splitters", [topic.as_str()]))
        .await
        .expect("subscribe");
    const N: u64 = 200;
    for n in 0..N {
        bus.publish(envelope(&topic, &format!("key-{n}"), n))
            .await
            .expect("publish");
    }
    let got: Arc<Mutex<Vec<(char, u64)>>> = Arc::default();
    let deadline = f.patience * 2;
    let run = |who: char,
               mut sub: <H::Bus as Bus>::Subscription,
               got: Arc<Mutex<Vec<(char, u64)>>>| async move {
        let stop = tokio::time::Instant::now() + deadline;
        loop {
            let total = got.lock().expect("lock").len();
            if total >= N as usize || tokio::time::Instant::now() > stop {
                break;
            }
            if let Ok(Some(Ok(d))) =
                tokio::time::timeout(Duration::from_millis(50), sub.next()).await
            {
                got.lock().expect("lock").push((who, tick(d.envelope())));
                d.ack();
            }
        }
        sub
    };
    let (a2, b2) = tokio::join!(run('a', a, got.clone()), run('b', b, got.clone()));
    a = a2;
    b = b2;
    let got = got.lock().expect("lock").clone();
    let mut count: HashMap<u64, usize> = HashMap::new();
    for (_, n) in &got {
        *count.entry(*n).or_default() += 1;
    }
    assert_eq!(
        count.len(),
        N as usize,
        "every event must be delivered to the group"
    );
    assert!(
        count.values().all(|&c| c == 1),
        "no event may reach two members of one group: {count:?}"
    );
    let by_a = got.iter().filter(|(w, _)| *w == 'a').count();
    assert!(
        by_a > 0 && by_a < N as usize,
        "both members must get a share (a got {by_a} of {N})"
    );
    a.close().await.expect("close");
    b.close().await.expect("close");
}

/// Within a partition (a key), events arrive in publication order.
pub async fn order_is_kept_per_key<H: Harness>(h: &H) {
    let f = h.features();
    let topic = h.topic("order", 3).await;
    let bus = h.bus();
    let mut sub = bus
        .subscribe(SubscribeOptions::new("orderly", [topic.as_str()]))
        .await
        .expect("subscribe");
    const KEYS: u64 = 5;
    const PER_KEY: u64 = 40;
    for i in 0..PER_KEY {
        for k in 0..KEYS {
            bus.publish(envelope(&topic, &format!("flow-{k}"), k * 1000 + i))
                .await
                .expect("publish");
        }
    }
    let mut last: BTreeMap<u64, u64> = BTreeMap::new();
    for _ in 0..KEYS * PER_KEY {
        let d = recv(&mut sub, "ordered events", f.patience).await;
        let n = tick(d.envelope());
        let (k, i) = (n / 1000, n % 1000);
        if let Some(prev) = last.insert(k, i) {
            assert_eq!(i, prev + 1, "key flow-{k}: event {i} arrived after {prev}");
        } else {
            assert_eq!(i, 0, "key flow-{k} must start with its first event");
        }
        d.ack();
    }
    sub.close().await.expect("close");
}

/// A delivery given back is delivered again; once acked, it is not.
pub async fn redelivers_what_was_given_back<H: Harness>(h: &H) {
    let f = h.features();
    let topic = h.topic("redeliver", 1).await;
    let bus = h.bus();
    let mut sub = bus
        .subscribe(SubscribeOptions::new("again", [topic.as_str()]))
        .await
        .expect("subscribe");
    bus.publish(envelope(&topic, "k", 1))
        .await
        .expect("publish");
    let d = recv(&mut sub, "the first delivery", f.patience).await;
    let id = d.envelope().id.clone();
    d.redeliver();
    let d = recv(&mut sub, "the redelivery", f.patience).await;
    assert_eq!(
        d.envelope().id,
        id,
        "the given-back event comes again first"
    );
    if f.counts_attempts {
        assert_eq!(d.attempt(), 2);
    }
    // Dropping without settling also gives it back.
    drop(d);
    let d = recv(&mut sub, "the redelivery after a drop", f.patience).await;
    assert_eq!(d.envelope().id, id);
    if f.counts_attempts {
        assert_eq!(d.attempt(), 3);
    }
    d.ack();
    // A sentinel on the same key: if the acked event came back, it would come first.
    bus.publish(envelope(&topic, "k", 2))
        .await
        .expect("publish");
    let d = recv(&mut sub, "the sentinel", f.patience).await;
    assert_eq!(
        tick(d.envelope()),
        2,
        "an acked event must not be delivered again"
    );
    d.ack();
    sub.close().await.expect("close");
}

/// Dead-lettering puts a copy with the reason on the dead-letter topic and acks the original.
pub async fn dead_letter_keeps_the_event_and_says_why<H: Harness>(h: &H) {
    let f = h.features();
    let topic = h.topic("dlq-source", 1).await;
    let dlq = h.topic("dlq-source.dlq", 1).await;
    let bus = h.bus();
    let mut sub = bus
        .subscribe(SubscribeOptions::new("dl", [topic.as_str()]))
        .await
        .expect("subscribe");
    let mut dead = bus
        .subscribe(SubscribeOptions::new("dl-reader", [dlq.as_str()]))
        .await
        .expect("subscribe");
    let sent = envelope(&topic, "k", 7);
    bus.publish(sent.clone()).await.expect("publish");
    let d = recv(&mut sub, "the poison event", f.patience).await;
    let (partition, offset) = (d.partition(), d.offset());
    bus.dead_letter(
        d,
        DeadLetter {
            topic: Name::from(dlq.as_str()),
            reason: "decode error: not a Tick".into(),
            attempts: 3,
            service: Name::from("billing"),
        },
    )
    .await
    .expect("dead-letter");
    let copy = recv(&mut dead, "the dead-letter copy", f.patience).await;
    let env = copy.envelope();
    assert_eq!(env.id, sent.id, "the copy keeps the event id");
    assert_eq!(env.correlation_id, sent.correlation_id);
    assert_eq!(env.data, sent.data);
    assert_eq!(env.event_type, sent.event_type);
    assert_eq!(
        env.headers.get_str(dlq_headers::REASON),
        Some("decode error: not a Tick")
    );
    assert_eq!(env.headers.get_str(dlq_headers::ATTEMPTS), Some("3"));
    assert_eq!(
        env.headers.get_str(dlq_headers::TOPIC),
        Some(topic.as_str())
    );
    assert_eq!(env.headers.get_str(dlq_headers::SERVICE), Some("billing"));
    assert_eq!(
        env.headers.get_str(dlq_headers::PARTITION),
        Some(partition.to_string().as_str())
    );
    assert_eq!(
        env.headers.get_str(dlq_headers::OFFSET),
        Some(offset.to_string().as_str())
    );
    assert!(
        env.headers
            .get_str(dlq_headers::TIME)
            .and_then(Timestamp::parse_rfc3339)
            .is_some()
    );
    copy.ack();
    bus.publish(envelope(&topic, "k", 8))
        .await
        .expect("publish");
    let d = recv(&mut sub, "the sentinel", f.patience).await;
    assert_eq!(
        tick(d.envelope()),
        8,
        "a dead-lettered event is settled, not redelivered"
    );
    d.ack();
    sub.close().await.expect("close");
    dead.close().await.expect("close");
}

/// A member that goes away with unsettled deliveries: another member gets them.
pub async fn unsettled_deliveries_go_to_the_next_member<H: Harness>(h: &H) {
    let f = h.features();
    let topic = h.topic("handover", 2).await;
    let bus = h.bus();
    let mut first = bus
        .subscribe(SubscribeOptions::new("handover", [topic.as_str()]))
        .await
        .expect("subscribe");
    const N: u64 = 10;
    for n in 0..N {
        bus.publish(envelope(&topic, &format!("k{n}"), n))
            .await
            .expect("publish");
    }
    // Settle half, hold the rest unsettled, then leave (like a crash: nothing settled later).
    let mut acked = HashSet::new();
    let mut held = Vec::new();
    for i in 0..N {
        let d = recv(&mut first, "events for the first member", f.patience).await;
        if i % 2 == 0 {
            acked.insert(tick(d.envelope()));
            d.ack();
        } else {
            held.push(d);
        }
    }
    first.close().await.expect("close");
    drop(held);
    let mut second = bus
        .subscribe(SubscribeOptions::new("handover", [topic.as_str()]))
        .await
        .expect("subscribe");
    let mut seen = acked.clone();
    while seen.len() < N as usize {
        let d = recv(
            &mut second,
            "the events the first member did not settle",
            f.patience,
        )
        .await;
        seen.insert(tick(d.envelope()));
        d.ack();
    }
    assert_eq!(seen, (0..N).collect::<HashSet<_>>());
    second.close().await.expect("close");
}

/// Several publishers and several consumers of one group at once: every event
/// is received, and none twice.
pub async fn concurrent_publishers_and_consumers_lose_nothing<H: Harness>(h: &H) {
    let f = h.features();
    let topic = h.topic("concurrent", 4).await;
    let bus = h.bus();
    const PUBLISHERS: u64 = 4;
    const PER: u64 = 250;
    const CONSUMERS: usize = 3;
    let mut subs = Vec::new();
    for _ in 0..CONSUMERS {
        subs.push(
            bus.subscribe(SubscribeOptions::new("crowd", [topic.as_str()]))
                .await
                .expect("subscribe"),
        );
    }
    let received: Arc<Mutex<Vec<u64>>> = Arc::default();
    let done = CancellationToken::new();
    let mut consumers = Vec::new();
    for mut sub in subs {
        let received = received.clone();
        let done = done.clone();
        consumers.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = done.cancelled() => break,
                    d = sub.next() => match d {
                        Some(Ok(d)) => {
                            received.lock().expect("lock").push(tick(d.envelope()));
                            d.ack();
                        }
                        Some(Err(e)) => panic!("receive failed: {e}"),
                        None => break,
                    }
                }
            }
            sub.close().await.expect("close");
        }));
    }
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let bus = bus.clone();
        let topic = topic.clone();
        publishers.push(tokio::spawn(async move {
            for i in 0..PER {
                let n = p * PER + i;
                bus.publish(envelope(&topic, &format!("flow-{}", n % 37), n))
                    .await
                    .expect("publish");
            }
        }));
    }
    for p in publishers {
        p.await.expect("publisher");
    }
    let total = (PUBLISHERS * PER) as usize;
    wait_until("every event to be received", f.patience * 3, || {
        received.lock().expect("lock").len() >= total
    })
    .await;
    done.cancel();
    for c in consumers {
        c.await.expect("consumer");
    }
    let got = received.lock().expect("lock").clone();
    let unique: HashSet<u64> = got.iter().copied().collect();
    assert_eq!(unique.len(), total, "lost events");
    assert_eq!(
        got.len(),
        total,
        "duplicates without any failure or rebalance"
    );
}

/// A service shut down gracefully mid-stream finishes what it started and loses
/// nothing: a second run of the same service handles the rest.
pub async fn graceful_shutdown_mid_stream_loses_nothing<H: Harness>(h: &H) {
    let f = h.features();
    // The handler's topic is the event type's, so it is not made unique.
    let topic = <Tick as choreo_core::Event>::TOPIC;
    h.create_topic(topic, 2).await;
    let bus = h.bus();
    const N: u64 = 300;
    let handled: Arc<Mutex<Vec<u64>>> = Arc::default();
    let registry = prometheus::Registry::new();
    let metrics = Metrics::new(&registry).expect("metrics");
    let service = |handled: Arc<Mutex<Vec<u64>>>, metrics: Metrics| {
        Service::new("graceful")
            .on(move |t: Tick, _ctx: Context| {
                let handled = handled.clone();
                async move {
                    // Slow enough that shutdown lands mid-stream.
                    tokio::time::sleep(Duration::from_micros(300)).await;
                    handled.lock().expect("lock").push(t.n);
                    Ok::<(), HandlerError>(())
                }
            })
            .receipts(None)
            .retry(Retry::none())
            .idempotency(Idempotency::off())
            .metrics(metrics)
    };
    for n in 0..N {
        bus.publish(envelope(topic, &format!("k{}", n % 11), n))
            .await
            .expect("publish");
    }
    let stop = CancellationToken::new();
    let first = service(handled.clone(), metrics.clone())
        .start(&bus, stop.clone())
        .await
        .unwrap();
    wait_until("the first run to handle some events", f.patience, || {
        handled.lock().expect("lock").len() >= 50
    })
    .await;
    stop.cancel();
    first.await.expect("first run");
    let after_first = handled.lock().expect("lock").len();
    assert!(
        after_first < N as usize,
        "shutdown should have landed mid-stream"
    );
    let stop = CancellationToken::new();
    let second = service(handled.clone(), metrics)
        .start(&bus, stop.clone())
        .await
        .unwrap();
    wait_until("the second run to handle the rest", f.patience * 3, || {
        handled
            .lock()
            .expect("lock")
            .iter()
            .collect::<HashSet<_>>()
            .len()
            >= N as usize
    })
    .await;
    stop.cancel();
    second.await.expect("second run");
    let got = handled.lock().expect("lock").clone();
    let unique: HashSet<u64> = got.iter().copied().collect();
    assert_eq!(
        unique.len(),
        N as usize,
        "events lost across a graceful shutdown"
    );
    assert_eq!(
        got.len(),
        N as usize,
        "a graceful shutdown must settle what it handled: no event twice"
    );
}

/// Subscribing from the latest position skips what was published before.
pub async fn latest_skips_earlier_events<H: Harness>(h: &H) {
    let f = h.features();
    let topic = h.topic("latest", 1).await;
    let bus = h.bus();
    bus.publish(envelope(&topic, "k", 1))
        .await
        .expect("publish");
    let mut sub = bus
        .subscribe(SubscribeOptions::new("late", [topic.as_str()]).start_from(StartFrom::Latest))
        .await
        .expect("subscribe");
    let mut early = bus
        .subscribe(SubscribeOptions::new("early", [topic.as_str()]))
        .await
        .expect("subscribe");
    let d = recv(&mut early, "the earliest event", f.patience).await;
    assert_eq!(tick(d.envelope()), 1);
    d.ack();
    bus.publish(envelope(&topic, "k", 2))
        .await
        .expect("publish");
    let d = recv(
        &mut sub,
        "the event published after subscribing",
        f.patience,
    )
    .await;
    assert_eq!(
        tick(d.envelope()),
        2,
        "a group starting at the latest position skips earlier events"
    );
    d.ack();
    sub.close().await.expect("close");
    early.close().await.expect("close");
}

/// Instantiates every case of the suite as a `#[tokio::test]`, each with a
/// fresh harness from `$make` (a closure returning a future of a [`Harness`]).
#[macro_export]
macro_rules! conformance_suite {
    ($make:expr) => {
        $crate::conformance_suite!(@cases $make;
            round_trip_keeps_every_field,
            each_group_gets_every_event,
            members_of_a_group_split_partitions,
            order_is_kept_per_key,
            redelivers_what_was_given_back,
            dead_letter_keeps_the_event_and_says_why,
            unsettled_deliveries_go_to_the_next_member,
            concurrent_publishers_and_consumers_lose_nothing,
            graceful_shutdown_mid_stream_loses_nothing,
            latest_skips_earlier_events
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let harness = ($make)().await;
                $crate::conformance::$case(&harness).await;
            }
        )*
    };
}
