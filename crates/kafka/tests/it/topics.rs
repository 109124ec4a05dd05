//! Missing topics: created with the configured partition count through the
//! admin API (tansu), by the broker's auto-creation where the admin API is
//! missing (the mock cluster), and a clear error where neither works or
//! creation is switched off.

use std::time::Duration;

use crate::common::*;
use choreo_core::{Bus, Envelope, SubscribeOptions, Subscription};
use choreo_kafka::KafkaBus;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaRespErr;

fn partitions(brokers: &str, topic: &str) -> usize {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    md.topics()
        .iter()
        .find(|t| t.name() == topic)
        .map_or(0, |t| t.partitions().len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_topics_are_created_with_the_configured_partitions() {
    let tansu = Tansu::start().await;
    let mut c = config(&tansu.brokers()).partitions(3);
    c.topic_partitions.insert("wide".into(), 6);
    let bus = KafkaBus::new(c).unwrap();
    bus.publish(Envelope::new("Created", "fresh", "{}"))
        .await
        .unwrap();
    assert_eq!(partitions(&tansu.brokers(), "fresh"), 3);
    let sub = bus
        .subscribe(SubscribeOptions::new("g", ["wide"]))
        .await
        .unwrap();
    assert_eq!(partitions(&tansu.brokers(), "wide"), 6);
    assert_eq!(sub.assignment().len(), 6);
    sub.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_creation_off_a_missing_topic_is_a_clear_error() {
    let tansu = Tansu::start().await;
    let c = config(&tansu.brokers()).create_topics(false);
    let bus = KafkaBus::new(c).unwrap();
    let err = bus
        .publish(Envelope::new("Lost", "nowhere", "{}"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("topic 'nowhere'") && err.contains("`create_topics` is off"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_admin_api_the_brokers_auto_creation_is_used() {
    // The mock cluster has no CreateTopics; it auto-creates on request.
    let mock = Mock::start(1);
    mock.bus
        .publish(Envelope::new("Created", "auto", "{}"))
        .await
        .unwrap();
    assert!(partitions(&mock.brokers(), "auto") > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_creates_no_topic_gives_a_clear_error() {
    let mock = Mock::start(1);
    mock.cluster
        .topic_error(
            "refused",
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
        )
        .unwrap();
    let err = mock
        .bus
        .publish(Envelope::new("Lost", "refused", "{}"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("topic 'refused'")
            && err.contains("refused to create it")
            && err.contains("create it with 4 partitions"),
        "{err}"
    );
}
