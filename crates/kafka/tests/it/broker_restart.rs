//! The broker killed with `kill -9` mid-flow and started again on the same
//! storage (tansu with sqlite): producers and consumers ride it out, every
//! flow completes and nothing is lost.

use std::time::Duration;

use crate::common::*;
use choreo_testkit::wait_until;

const FLOWS: u64 = 40;
const PATIENCE: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_and_restarted_mid_flow_loses_nothing() {
    let mut tansu = Tansu::start().await;
    for t in ["orders", "payments", "shipping"] {
        tansu.topic(t, 2).await;
    }
    let (registry, m) = metrics();
    tansu.bus.register_metrics(&registry).unwrap();
    let brokers = tansu.brokers();
    let shared = tansu.bus.metrics().clone();
    let saga = Saga::start(
        |_| choreo_kafka::KafkaBus::with_metrics(config(&brokers), shared.clone()).expect("bus"),
        &m,
    )
    .await;
    Saga::place(&tansu.bus, 0..FLOWS / 2).await;
    wait_until("some flows to complete", PATIENCE, || {
        saga.shipped() >= (FLOWS / 4) as usize
    })
    .await;

    tansu.kill9();
    // Flows keep being started while the broker is gone.
    let bus = tansu.bus.clone();
    let late = tokio::spawn(async move { Saga::place(&bus, FLOWS / 2..FLOWS).await });
    wait_until(
        "the consumers to notice the broker is gone",
        PATIENCE,
        || metric(&registry, "choreo_receive_errors_total", &[]) > 0.0,
    )
    .await;
    tansu.restart();
    late.await.unwrap();

    saga.wait_all(FLOWS, PATIENCE).await;
    saga.finish(FLOWS).await;
}

/// Readers that follow — a live tracer's, in a group with a look-back, and a
/// plain follower — wait through the broker's `kill -9` and restart and read
/// what is published after it (they used to end with `AllBrokersDown`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_that_follow_wait_through_a_broker_restart() {
    use choreo_core::{Bus, Envelope};
    use choreo_kafka::{
        LookbackEvent, LookbackOptions, LookbackReader, ReadFrom, ReaderOptions, RecordReader,
        Topics,
    };

    let mut tansu = Tansu::start().await;
    tansu.topic("live", 2).await;
    let config = config(&tansu.brokers());
    let mut follower = RecordReader::open(
        &config,
        ReaderOptions::new(Topics::names(["live"]))
            .from(ReadFrom::End)
            .follow(),
    )
    .await
    .unwrap();
    let mut group = LookbackReader::open(
        &config,
        LookbackOptions::new(Topics::names(["live"]), "tracers"),
    )
    .await
    .unwrap();
    let ready = tokio::time::timeout(PATIENCE, async {
        loop {
            match group.next().await {
                Some(Ok(LookbackEvent::Ready { .. })) => break,
                Some(Ok(_)) => {}
                other => panic!("before the restart: {other:?}"),
            }
        }
    })
    .await;
    assert!(ready.is_ok(), "the group reader was not ready");

    tansu.kill9();
    // While the broker is gone the readers see its connections fail: they
    // wait, and return nothing.
    let down = Duration::from_secs(5);
    if let Ok(r) = tokio::time::timeout(down, follower.next()).await {
        panic!("the follower returned while the broker was down: {r:?}");
    }
    if let Ok(r) = tokio::time::timeout(down, group.next()).await {
        panic!("the group reader returned while the broker was down: {r:?}");
    }
    tansu.restart();

    let after = Envelope::new("After", "live", "{}");
    let id = after.id.clone();
    let bus = tansu.bus.clone();
    tokio::spawn(async move { bus.publish(after).await.unwrap() });
    let r = tokio::time::timeout(PATIENCE, follower.next())
        .await
        .expect("the follower reads on after the restart")
        .expect("a follower does not end")
        .expect("no error");
    assert_eq!(r.envelope.id, id);
    let seen = tokio::time::timeout(PATIENCE, async {
        loop {
            match group.next().await {
                Some(Ok(LookbackEvent::Record { record, .. })) if record.envelope.id == id => {
                    break;
                }
                Some(Ok(_)) => {}
                other => panic!("after the restart: {other:?}"),
            }
        }
    })
    .await;
    assert!(
        seen.is_ok(),
        "the group reader read nothing after the restart"
    );
}
