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
