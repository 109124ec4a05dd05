//! Faults injected into librdkafka's mock cluster mid-flow: retriable errors
//! on produce and on offset commit, the broker taken down and brought back.
//! Every event of every flow is handled, and although deliveries may repeat
//! (at least once), the idempotency middleware keeps each flow's effect to one.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::*;
use rdkafka::types::RDKafkaApiKey;
use rdkafka::types::RDKafkaRespErr;

const FLOWS: u64 = 60;
const PATIENCE: Duration = Duration::from_secs(90);

async fn saga_on(mock: &Mock) -> (Saga, prometheus::Registry) {
    for (topic, partitions) in [("orders", 3), ("payments", 3), ("shipping", 3)] {
        mock.topic(topic, partitions).await;
    }
    let (registry, m) = metrics();
    mock.bus.register_metrics(&registry).unwrap();
    // Each service is its own client, as in its own process; they share
    // the metric families so the test sees all of them.
    let brokers = mock.brokers();
    let kafka_metrics = mock.bus.metrics().clone();
    let saga = Saga::start(
        |_| {
            choreo_kafka::KafkaBus::with_metrics(config(&brokers), kafka_metrics.clone())
                .expect("bus")
        },
        &m,
    )
    .await;
    (saga, registry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retriable_produce_errors_lose_and_duplicate_nothing() {
    let mock = Mock::start(1);
    let (saga, _registry) = saga_on(&mock).await;
    Saga::place(&mock.bus, 0..FLOWS / 2).await;
    // Mid-flow: the broker refuses the next produce requests with errors an
    // idempotent producer retries.
    let errors: Vec<RDKafkaRespErr> = [
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR__TRANSPORT,
    ]
    .into_iter()
    .cycle()
    .take(24)
    .collect();
    mock.cluster.request_errors(RDKafkaApiKey::Produce, &errors);
    Saga::place(&mock.bus, FLOWS / 2..FLOWS).await;
    saga.wait_all(FLOWS, PATIENCE).await;
    let runs = saga.finish(FLOWS).await;
    assert!(runs["payment"] >= FLOWS, "{runs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retriable_commit_errors_are_retried_and_lose_nothing() {
    let mock = Mock::start(1);
    let (saga, registry) = saga_on(&mock).await;
    Saga::place(&mock.bus, 0..FLOWS / 2).await;
    // librdkafka retries the first four itself; the last one reaches the
    // consumer, which sends the offsets again with its next commit.
    let errors: Vec<RDKafkaRespErr> = [
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_COORDINATOR,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS,
    ]
    .into_iter()
    .cycle()
    .take(40)
    .collect();
    mock.cluster
        .request_errors(RDKafkaApiKey::OffsetCommit, &errors);
    Saga::place(&mock.bus, FLOWS / 2..FLOWS).await;
    saga.wait_all(FLOWS, PATIENCE).await;
    choreo_testkit::wait_until("a commit failure to be counted", PATIENCE, || {
        metric(&registry, "choreo_kafka_commit_failures_total", &[]) > 0.0
    })
    .await;
    saga.finish(FLOWS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_down_and_back_mid_flow_loses_nothing() {
    let mock = Mock::start(1);
    let (saga, registry) = saga_on(&mock).await;
    Saga::place(&mock.bus, 0..FLOWS / 2).await;
    choreo_testkit::wait_until("some flows to complete", PATIENCE, || {
        saga.shipped() >= (FLOWS / 4) as usize
    })
    .await;
    mock.cluster.broker_down(-1).unwrap();
    // Publishing goes on while the broker is away: the producer holds the
    // records until it is back.
    let bus = mock.bus.clone();
    let late = tokio::spawn(async move { Saga::place(&bus, FLOWS / 2..FLOWS).await });
    choreo_testkit::wait_until("the consumers to notice the outage", PATIENCE, || {
        metric(&registry, "choreo_receive_errors_total", &[]) > 0.0
    })
    .await;
    mock.cluster.broker_up(-1).unwrap();
    late.await.unwrap();
    saga.wait_all(FLOWS, PATIENCE).await;
    saga.finish(FLOWS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_that_times_out_says_where_the_group_stood() {
    use choreo_core::{Bus, SubscribeOptions};
    let mock = Mock::start(1);
    mock.topic("orders", 1).await;
    // No coordinator to be found: the member can never join.
    let errors = vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE; 1_000];
    mock.cluster
        .request_errors(RDKafkaApiKey::FindCoordinator, &errors);
    let bus =
        choreo_kafka::KafkaBus::new(config(&mock.brokers()).join_timeout(Duration::from_secs(3)))
            .unwrap();
    let err = bus
        .subscribe(SubscribeOptions::new("stranded", ["orders"]))
        .await
        .expect_err("no coordinator, no assignment");
    let message = err.to_string();
    assert!(
        message.contains(
            "consumer group 'stranded' gave this member no partition assignment within 3s"
        ) && message.contains("last seen: group state '")
            && message.contains("0 partitions assigned"),
        "{message}"
    );
}

/// A producer queue of 4 records, lingering 200 ms, and 120 publishes
/// started at once: every publish past the fourth finds the queue full,
/// waits for room and is sent then. None fails, none is lost, none is
/// sent twice, and each keeps its own headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_that_find_the_producer_queue_full_wait_and_are_all_sent() {
    use choreo_core::{Bus, Envelope, StartFrom, SubscribeOptions};
    use futures_util::future::join_all;

    const N: usize = 120;
    let mock = Mock::start(1);
    mock.topic("queued", 2).await;
    let bus = choreo_kafka::KafkaBus::new(
        config(&mock.brokers())
            .linger(Duration::from_millis(200))
            .set("queue.buffering.max.messages", "4"),
    )
    .expect("bus");
    let sent: Vec<Envelope> = (0..N)
        .map(|i| {
            let mut env = Envelope::new(
                "Queued",
                "queued",
                bytes::Bytes::from(format!("{{\"n\":{i}}}")),
            )
            .with_source("faults");
            env.headers.insert("x-n", i.to_string());
            env
        })
        .collect();
    let published = tokio::time::timeout(
        PATIENCE,
        join_all(sent.iter().cloned().map(|env| bus.publish(env))),
    )
    .await
    .expect("the publishes finished");
    for (i, r) in published.into_iter().enumerate() {
        r.unwrap_or_else(|e| panic!("publish {i} failed: {e}"));
    }
    let mut sub = bus
        .subscribe(SubscribeOptions::new("queued-g", ["queued"]).start_from(StartFrom::Earliest))
        .await
        .expect("subscribe");
    let got = collect(&mut sub, N, "the queued events").await;
    let mut by_id: HashMap<String, &Envelope> = HashMap::new();
    for env in &got {
        assert!(
            by_id.insert(env.id.to_string(), env).is_none(),
            "{} delivered twice",
            env.id
        );
    }
    for (i, env) in sent.iter().enumerate() {
        let back = by_id
            .get(&env.id.to_string())
            .unwrap_or_else(|| panic!("event {i} ({}) was lost", env.id));
        assert_eq!(back.data, env.data, "event {i}'s payload");
        assert_eq!(back.correlation_id, env.correlation_id, "event {i}");
        assert_eq!(back.headers.get_str("x-n"), Some(i.to_string().as_str()));
    }
}

/// An extra header that takes a name the record mapping owns is refused
/// before anything is handed to the producer: nothing reaches the topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_with_a_reserved_extra_header_is_refused_and_sends_nothing() {
    use choreo_core::{Bus, Envelope, Error, StartFrom, SubscribeOptions};

    let mock = Mock::start(1);
    mock.topic("reserved", 1).await;
    let mut env = Envelope::new("Bad", "reserved", bytes::Bytes::from_static(b"{}"));
    env.headers.insert("ce_type", "Other");
    match mock.bus.publish(env).await {
        Err(Error::Refused { reason, .. }) => {
            assert!(reason.contains("'ce_type' is reserved"), "{reason}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let good = Envelope::new("Good", "reserved", bytes::Bytes::from_static(b"{}"));
    mock.bus.publish(good.clone()).await.expect("publish");
    let mut sub = mock
        .bus
        .subscribe(
            SubscribeOptions::new("reserved-g", ["reserved"]).start_from(StartFrom::Earliest),
        )
        .await
        .expect("subscribe");
    let got = collect(&mut sub, 1, "the good event").await;
    assert_eq!(got[0].id, good.id, "the refused event reached the topic");
}
