//! A rebalance mid-flow: the member that loses partitions commits what it
//! settled (so nobody handles it again) and gives up what it had not settled
//! (delivered again, to whichever member owns the partition now); settling a
//! revoked delivery late changes nothing.

use std::collections::HashSet;
use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use choreo_core::{Bus, Delivery, Envelope, SubscribeOptions, Subscription};
use choreo_kafka::{KafkaBus, KafkaSubscription};
use choreo_testkit::{recv, try_recv};

const EVENTS: u64 = 40;

fn n(d: &Delivery) -> u64 {
    serde_json::from_slice::<serde_json::Value>(&d.envelope().data).unwrap()["n"]
        .as_u64()
        .unwrap()
}

async fn drain(sub: &mut KafkaSubscription, seen: &mut Vec<u64>) {
    while let Some(d) = try_recv(sub, Duration::from_secs(3)).await {
        seen.push(n(&d));
        d.ack();
    }
}

async fn rebalance_mid_flow(bus: KafkaBus, other: KafkaBus) {
    for i in 0..EVENTS {
        let mut env = Envelope::new("Tick", "work", format!("{{\"n\":{i}}}"));
        env.key = Some(Bytes::from(format!("k{i}")));
        bus.publish(env).await.unwrap();
    }
    let mut a = bus
        .subscribe(SubscribeOptions::new("workers", ["work"]))
        .await
        .unwrap();
    let mut first = Vec::new();
    for _ in 0..20 {
        first.push(recv(&mut a, "the first member's events", Duration::from_secs(30)).await);
    }
    // Settle the first 15 handed out; hold the last 5 (each partition's
    // settled records come before its held ones).
    let held = first.split_off(15);
    let acked: HashSet<u64> = first.iter().map(n).collect();
    for d in first {
        d.ack();
    }
    let held_ns: HashSet<u64> = held.iter().map(n).collect();

    // A second member joins: the partitions are split anew.
    let mut b = other
        .subscribe(SubscribeOptions::new("workers", ["work"]))
        .await
        .unwrap();
    // Settling the held deliveries now is too late: they were given up.
    for d in held {
        d.ack();
    }
    let mut later = Vec::new();
    drain(&mut a, &mut later).await;
    drain(&mut b, &mut later).await;
    drain(&mut a, &mut later).await;

    let later_set: HashSet<u64> = later.iter().copied().collect();
    assert!(
        held_ns.is_subset(&later_set),
        "what was not settled before the rebalance is delivered again: {held_ns:?} in {later:?}"
    );
    assert!(
        acked.is_disjoint(&later_set),
        "what was settled before the rebalance was committed: {:?} came again",
        acked.intersection(&later_set).collect::<Vec<_>>()
    );
    let all: HashSet<u64> = acked.union(&later_set).copied().collect();
    assert_eq!(all.len(), EVENTS as usize, "nothing lost");
    assert!(bus.metrics().stale_settlements("workers") >= 5);
    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_tansu() {
    let tansu = Tansu::start().await;
    tansu.topic("work", 2).await;
    rebalance_mid_flow(tansu.bus.clone(), tansu.another_bus()).await;
}
