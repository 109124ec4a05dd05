//! In-process retention: the bound, and what happens when it is hit.

use std::time::Duration;

use crate::common::*;
use choreo_bus::{InProcessBus, InProcessConfig, Retention, WhenFull};
use choreo_core::{Bus, Envelope, SubscribeOptions, Subscription};
use choreo_testkit::recv;

fn bus(when_full: WhenFull) -> (InProcessBus, prometheus::Registry) {
    let retention = Retention::default()
        .max_events_per_partition(3)
        .when_full(when_full);
    let bus = InProcessBus::with_config(
        InProcessConfig::default()
            .partitions(1)
            .retention(retention),
    );
    let registry = prometheus::Registry::new();
    bus.register_metrics(&registry).unwrap();
    (bus, registry)
}

fn ev(n: u32) -> Envelope {
    Envelope::new("Tick", "t", format!("{{\"n\":{n}}}"))
}

#[tokio::test]
async fn consumed_events_are_evicted_to_make_room() {
    let (bus, registry) = bus(WhenFull::Block);
    let mut sub = bus
        .subscribe(SubscribeOptions::new("g", ["t"]))
        .await
        .unwrap();
    for n in 0..3 {
        bus.publish(ev(n)).await.unwrap();
    }
    for _ in 0..3 {
        recv(&mut sub, "an event", PATIENCE).await.ack();
    }
    bus.publish(ev(3)).await.unwrap();
    assert_eq!(bus.retained("t").len(), 3);
    assert_eq!(
        metric(
            &registry,
            "choreo_bus_retention_evicted_total",
            &[("topic", "t")]
        ),
        1.0
    );
    assert_eq!(
        metric(&registry, "choreo_bus_unread_evicted_total", &[]),
        0.0
    );
    assert_eq!(
        metric(&registry, "choreo_bus_appended_total", &[("topic", "t")]),
        4.0
    );
}

#[tokio::test]
async fn a_full_partition_makes_the_publisher_wait_for_the_slowest_group() {
    let (bus, registry) = bus(WhenFull::Block);
    let mut sub = bus
        .subscribe(SubscribeOptions::new("slow", ["t"]))
        .await
        .unwrap();
    for n in 0..3 {
        bus.publish(ev(n)).await.unwrap();
    }
    let b = bus.clone();
    let blocked = tokio::spawn(async move { b.publish(ev(3)).await });
    // The publish cannot complete until the oldest event is settled.
    let d = recv(&mut sub, "the oldest event", PATIENCE).await;
    choreo_testkit::wait_until("the publisher to wait", PATIENCE, || {
        metric(
            &registry,
            "choreo_bus_publish_waits_total",
            &[("topic", "t")],
        ) == 1.0
    })
    .await;
    assert!(!blocked.is_finished());
    d.ack();
    tokio::time::timeout(PATIENCE, blocked)
        .await
        .expect("publisher woken")
        .unwrap()
        .unwrap();
    // Nothing was lost: the group reads all four.
    let mut seen = 1;
    while seen < 4 {
        recv(&mut sub, "the rest", PATIENCE).await.ack();
        seen += 1;
    }
    assert_eq!(
        metric(&registry, "choreo_bus_unread_evicted_total", &[]),
        0.0
    );
}

#[tokio::test]
async fn drop_oldest_evicts_unread_events_and_counts_them_per_group() {
    let (bus, registry) = bus(WhenFull::DropOldest);
    let mut sub = bus
        .subscribe(SubscribeOptions::new("laggard", ["t"]))
        .await
        .unwrap();
    for n in 0..5 {
        bus.publish(ev(n)).await.unwrap();
    }
    assert_eq!(
        metric(
            &registry,
            "choreo_bus_unread_evicted_total",
            &[("topic", "t"), ("group", "laggard")]
        ),
        2.0
    );
    assert_eq!(
        metric(&registry, "choreo_bus_retention_evicted_total", &[]),
        0.0,
        "evicted unread: not counted as evicted once settled"
    );
    assert_eq!(metric(&registry, "choreo_bus_appended_total", &[]), 5.0);
    let d = recv(&mut sub, "the oldest retained event", PATIENCE).await;
    assert_eq!(
        &d.envelope().data[..],
        b"{\"n\":2}",
        "the group skips what was evicted"
    );
    d.ack();
}

#[tokio::test]
async fn a_group_without_members_does_not_block_publishers_but_its_losses_are_counted() {
    let (bus, registry) = bus(WhenFull::Block);
    let sub = bus
        .subscribe(SubscribeOptions::new("gone", ["t"]))
        .await
        .unwrap();
    sub.close().await.unwrap();
    for n in 0..4 {
        tokio::time::timeout(Duration::from_secs(5), bus.publish(ev(n)))
            .await
            .expect("not blocked")
            .unwrap();
    }
    assert_eq!(
        metric(
            &registry,
            "choreo_bus_unread_evicted_total",
            &[("group", "gone")]
        ),
        1.0
    );
    let text = choreo_bus::render(&[registry]);
    assert!(
        text.contains("choreo_bus_consumer_lag{group=\"gone\",partition=\"0\",topic=\"t\"} 3"),
        "{text}"
    );
}

#[tokio::test]
async fn every_exported_metric_is_in_the_documented_list() {
    let (bus, registry) = bus(WhenFull::Block);
    let metrics = choreo_bus::Metrics::new(&registry).unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let svc = choreo_bus::Service::new("svc")
        .on(|_t: OrderPlaced, _c: choreo_bus::Context| async {
            Ok::<(), choreo_bus::HandlerError>(())
        })
        .metrics(metrics.clone())
        .start(&bus, stop.clone())
        .await
        .unwrap();
    choreo_bus::Publisher::new(&bus, "p")
        .metrics(metrics)
        .start_flow(&OrderPlaced { order_id: 1 })
        .await
        .unwrap();
    choreo_testkit::wait_until("handled", PATIENCE, || {
        metric(
            &registry,
            "choreo_events_handled_total",
            &[("outcome", "acked")],
        ) == 1.0
    })
    .await;
    stop.cancel();
    svc.await.unwrap();
    let documented: Vec<&str> = choreo_bus::METRICS.iter().map(|m| m.0).collect();
    let exported: Vec<String> = registry
        .gather()
        .iter()
        .map(|f| f.name().to_owned())
        .collect();
    for name in &exported {
        assert!(
            documented.contains(&name.as_str()),
            "{name} is exported but not documented in METRICS"
        );
    }
    // Families without samples yet are not gathered; those that are must have the documented type.
    for f in registry.gather() {
        let (_, kind, _, _) = choreo_bus::METRICS
            .iter()
            .find(|m| m.0 == f.name())
            .unwrap();
        let actual = format!("{:?}", f.get_field_type()).to_lowercase();
        assert_eq!(actual, *kind, "{}", f.name());
    }
    assert!(exported.len() >= 10, "{exported:?}");
}
