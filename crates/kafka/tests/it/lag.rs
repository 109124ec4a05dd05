//! Consumer lag per group, topic and partition: records after the group's
//! committed offset, as a Prometheus gauge.

use std::time::Duration;

use crate::common::*;
use choreo_core::{Bus, Envelope, StartFrom, SubscribeOptions, Subscription};
use choreo_testkit::wait_until;

const PATIENCE: Duration = Duration::from_secs(30);

/// Publishes `n` jobs to `topic`, one after the other.
async fn publish(bus: &choreo_kafka::KafkaBus, topic: &str, n: usize) {
    for _ in 0..n {
        bus.publish(Envelope::new("Job", topic, "{}"))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_counts_what_the_group_has_not_settled() {
    let mock = Mock::start(1);
    mock.topic("work", 1).await;
    let registry = prometheus::Registry::new();
    mock.bus.register_metrics(&registry).unwrap();
    let mut sub = mock
        .bus
        .subscribe(SubscribeOptions::new("slow", ["work"]))
        .await
        .unwrap();
    publish(&mock.bus, "work", 10).await;
    collect(&mut sub, 10, "the first ten").await;
    let lag = || mock.bus.metrics().lag("slow", "work", 0);
    wait_until("the lag to drop to 0", PATIENCE, || lag() == Some(0)).await;

    // Five more, fetched but not settled: they are lag.
    publish(&mock.bus, "work", 5).await;
    wait_until("the lag to show 5", PATIENCE, || lag() == Some(5)).await;
    assert_eq!(
        metric(
            &registry,
            "choreo_kafka_consumer_lag",
            &[("group", "slow"), ("topic", "work"), ("partition", "0")]
        ),
        5.0
    );
    collect(&mut sub, 5, "the next five").await;
    wait_until("the lag to drop to 0 again", PATIENCE, || lag() == Some(0)).await;

    sub.close().await.unwrap();
    assert_eq!(lag(), None, "a revoked partition's gauge is removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_that_has_settled_nothing_yet_shows_its_whole_backlog() {
    let mock = Mock::start(1);
    mock.topic("backlog", 1).await;
    publish(&mock.bus, "backlog", 7).await;
    // A new group behind the seven, whose first handling hangs: it never
    // commits, so librdkafka reports no lag for it.
    let mut sub = mock
        .bus
        .subscribe(SubscribeOptions::new("stuck", ["backlog"]))
        .await
        .unwrap();
    let held = choreo_testkit::recv(&mut sub, "the first record", PATIENCE).await;
    let lag = || mock.bus.metrics().lag("stuck", "backlog", 0);
    wait_until("the lag to show the backlog", PATIENCE, || lag() == Some(7)).await;
    // Settling the first (it is committed) counts from the commit on.
    held.ack();
    wait_until("the lag to show 6", PATIENCE, || lag() == Some(6)).await;
    sub.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_group_reading_from_the_end_counts_only_what_came_after_it() {
    let mock = Mock::start(1);
    mock.topic("later", 1).await;
    publish(&mock.bus, "later", 5).await;
    let mut sub = mock
        .bus
        .subscribe(SubscribeOptions::new("fresh", ["later"]).start_from(StartFrom::Latest))
        .await
        .unwrap();
    let lag = || mock.bus.metrics().lag("fresh", "later", 0);
    // Joined at the end: the five before it are not behind it.
    wait_until("a lag of 0", PATIENCE, || lag() == Some(0)).await;
    publish(&mock.bus, "later", 3).await;
    let held = choreo_testkit::recv(&mut sub, "the first new record", PATIENCE).await;
    wait_until("the lag to show the three", PATIENCE, || lag() == Some(3)).await;
    held.ack();
    wait_until("the lag to show 2", PATIENCE, || lag() == Some(2)).await;
    sub.close().await.unwrap();
}
