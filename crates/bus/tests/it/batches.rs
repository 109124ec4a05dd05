//! `Subscription::next_batch` on the in-process bus: what is ready at once, up
//! to the bound, and never a partition the member no longer owns.

use crate::common::PATIENCE;
use bytes::Bytes;
use choreo_bus::{InProcessBus, InProcessConfig};
use choreo_core::{Bus, Envelope, SubscribeOptions, Subscription};

fn bus(partitions: u32) -> InProcessBus {
    InProcessBus::with_config(InProcessConfig::default().partitions(partitions))
}

fn ev(n: u32) -> Envelope {
    let mut env = Envelope::new("Tick", "t", format!("{{\"n\":{n}}}"));
    env.key = Some(Bytes::from(format!("key-{n}")));
    env
}

/// The next batch, or a panic naming what did not come in time.
async fn batch<S: Subscription>(sub: &mut S, max: usize) -> Vec<choreo_core::Delivery> {
    let mut out = Vec::new();
    let open = tokio::time::timeout(PATIENCE, sub.next_batch(&mut out, max))
        .await
        .expect("a batch in time");
    assert!(open, "the subscription is open");
    out.into_iter().map(|d| d.expect("a delivery")).collect()
}

#[tokio::test]
async fn a_batch_holds_what_is_ready_up_to_the_bound_in_offset_order() {
    let bus = bus(1);
    let mut sub = bus
        .subscribe(SubscribeOptions::new("g", ["t"]))
        .await
        .unwrap();
    for n in 0..5 {
        bus.publish(ev(n)).await.unwrap();
    }
    let first = batch(&mut sub, 3).await;
    let second = batch(&mut sub, 3).await;
    let offsets = |b: &[choreo_core::Delivery]| b.iter().map(|d| d.offset()).collect::<Vec<_>>();
    assert_eq!(offsets(&first), [0, 1, 2]);
    assert_eq!(
        offsets(&second),
        [3, 4],
        "the rest, not a wait for a full batch"
    );
    for d in first.into_iter().chain(second) {
        d.ack();
    }
    // Nothing ready: the call waits for the next event.
    let mut out = Vec::new();
    let waited = tokio::time::timeout(
        std::time::Duration::from_millis(50),
        sub.next_batch(&mut out, 8),
    )
    .await;
    assert!(waited.is_err() && out.is_empty(), "{out:?}");
    bus.publish(ev(5)).await.unwrap();
    assert_eq!(offsets(&batch(&mut sub, 8).await), [5]);
}

#[tokio::test]
async fn a_batch_after_a_rebalance_holds_only_the_partitions_still_owned() {
    let bus = bus(2);
    let mut a = bus
        .subscribe(SubscribeOptions::new("g", ["t"]))
        .await
        .unwrap();
    for n in 0..40 {
        bus.publish(ev(n)).await.unwrap();
    }
    // One delivery out; the member has fetched more from both partitions.
    let taken = batch(&mut a, 1).await;
    assert_eq!(
        a.assignment().len(),
        2,
        "alone, the member owns both partitions"
    );
    // A second member joins: each member now owns one partition.
    let _b = bus
        .subscribe(SubscribeOptions::new("g", ["t"]))
        .await
        .unwrap();
    let owned: Vec<u32> = a.assignment().into_iter().map(|(_, p)| p).collect();
    assert_eq!(owned.len(), 1, "{owned:?}");
    let after = batch(&mut a, 100).await;
    assert!(!after.is_empty());
    assert!(
        after.iter().all(|d| d.partition() == owned[0]),
        "prefetched deliveries of the partition given away were handed out: {:?}",
        after.iter().map(|d| d.partition()).collect::<Vec<_>>()
    );
    drop(taken);
}
