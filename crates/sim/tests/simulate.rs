//! The simulator drives real services through the runtime and records what it injected.

use std::time::Duration;

use choreo_bus::{InProcessBus, Metrics};
use choreo_core::{Outcome, RECEIPTS_TOPIC, Receipt};
use choreo_sim::{Fault, Latency, SimConfig, Simulation};
use choreo_topology::Topology;

fn topology() -> Topology {
    Topology::from_path(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../topologies/order-fulfillment.yaml"
    ))
    .expect("the example topology loads")
}

fn quick(flows: u64, faults: Vec<Fault>) -> SimConfig {
    SimConfig {
        flows,
        latency: Latency::Fixed(Duration::ZERO),
        faults,
        seed: 42,
        ..SimConfig::default()
    }
}

async fn run(config: SimConfig) -> (InProcessBus, choreo_sim::Truth) {
    let bus = InProcessBus::new();
    let metrics = Metrics::new(&prometheus::Registry::new()).unwrap();
    let truth = tokio::time::timeout(
        Duration::from_secs(60),
        Simulation::new(topology(), config)
            .unwrap()
            .run(&bus, &metrics, &|_| {}),
    )
    .await
    .expect("the simulation settles")
    .unwrap();
    (bus, truth)
}

fn count(bus: &InProcessBus, topic: &str, event_type: &str) -> usize {
    bus.retained(topic)
        .iter()
        .filter(|e| e.event_type == event_type)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_run_ends_every_flow_and_injects_nothing() {
    let (bus, truth) = run(quick(60, vec![])).await;
    assert!(truth.injected.is_empty());
    let ended = count(&bus, "shipping", "OrderShipped") + count(&bus, "orders", "OrderCancelled");
    assert_eq!(ended, 60, "every flow ends on a declared end");
    let receipts: Vec<Receipt> = bus
        .retained(RECEIPTS_TOPIC)
        .iter()
        .filter_map(|e| Receipt::from_envelope(e))
        .collect();
    // Every handling is acked; the rest are deliveries of types a service
    // has no handler for on a topic it reads (payment sees OrderCancelled
    // on orders), passed over with a receipt that says so.
    assert!(
        receipts
            .iter()
            .all(|r| matches!(r.outcome, Outcome::Acked | Outcome::Ignored))
    );
    assert!(receipts.iter().any(|r| r.outcome == Outcome::Ignored));
    // Every branch of both one_ofs is taken in 60 flows.
    for t in ["PaymentCaptured", "PaymentFailed"] {
        assert!(count(&bus, "payments", t) > 0, "{t}");
    }
    for t in ["StockReserved", "OutOfStock"] {
        assert!(count(&bus, "inventory", t) > 0, "{t}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_seed_makes_the_same_decisions() {
    let (a, _) = run(quick(40, vec![])).await;
    let (b, _) = run(quick(40, vec![])).await;
    for t in ["OrderShipped", "OrderCancelled"] {
        let topic = if t == "OrderShipped" {
            "shipping"
        } else {
            "orders"
        };
        assert_eq!(count(&a, topic, t), count(&b, topic, t), "{t}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_faults_happen_and_are_recorded() {
    let faults = vec![
        Fault::parse("drop", "shipping=1").unwrap(),
        Fault::parse("fail", "inventory=1").unwrap(),
        Fault::parse("extra", "checkout=1").unwrap(),
    ];
    let (bus, truth) = run(quick(30, faults)).await;
    // inventory always fails: every PaymentCaptured is dead-lettered after 3 attempts.
    let captured = count(&bus, "payments", "PaymentCaptured");
    assert!(captured > 0);
    let dead = bus.retained("payments.dlq");
    assert_eq!(dead.len(), captured);
    assert_eq!(
        truth.of_kind("fail").filter(|i| i.dead_lettered).count(),
        captured
    );
    assert_eq!(truth.of_kind("fail").count(), captured * 3);
    // Nothing reaches shipping, so the drop fault never fires; nothing is shipped.
    assert_eq!(count(&bus, "shipping", "OrderShipped"), 0);
    // checkout emits an undeclared event on every reaction.
    let extras = count(&bus, "payments", "CheckoutUndeclared");
    assert_eq!(extras, truth.of_kind("extra").count());
    assert!(extras > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_deliveries_are_removed_by_idempotency() {
    let (bus, truth) = run(quick(40, vec![Fault::parse("duplicate", "0.3").unwrap()])).await;
    let dups: Vec<_> = truth.of_kind("duplicate").collect();
    assert!(!dups.is_empty());
    let mut copies = std::collections::HashMap::new();
    for t in ["orders", "payments", "inventory", "shipping"] {
        for e in bus.retained(t) {
            *copies.entry(e.id.to_string()).or_insert(0) += 1;
        }
    }
    for d in &dups {
        assert_eq!(copies[&d.event_id], 2, "{} was published twice", d.event_id);
    }
    assert_eq!(copies.values().filter(|&&n| n == 2).count(), dups.len());
    // Each flow still ends exactly once.
    let ends: std::collections::HashSet<_> = bus
        .retained("shipping")
        .iter()
        .chain(bus.retained("orders").iter())
        .filter(|e| e.event_type == "OrderShipped" || e.event_type == "OrderCancelled")
        .map(|e| e.id.clone())
        .collect();
    assert_eq!(ends.len(), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reaction_can_have_its_own_latency() {
    let mut config = quick(20, vec![]);
    config.latencies.insert(
        "shipping:StockReserved".into(),
        Latency::Fixed(Duration::from_millis(120)),
    );
    let (bus, _) = run(config).await;
    let receipts: Vec<Receipt> = bus
        .retained(RECEIPTS_TOPIC)
        .iter()
        .filter_map(|e| Receipt::from_envelope(e))
        .collect();
    // The handlings' receipts, not the passed-over deliveries'.
    let receipts: Vec<Receipt> = receipts
        .into_iter()
        .filter(|r| r.outcome != Outcome::Ignored)
        .collect();
    let shipping: Vec<&Receipt> = receipts
        .iter()
        .filter(|r| r.service == "shipping")
        .collect();
    assert!(!shipping.is_empty());
    assert!(
        shipping.iter().all(|r| r.duration_us >= 120_000),
        "the configured latency applies"
    );
    assert!(
        receipts
            .iter()
            .filter(|r| r.service == "payment")
            .all(|r| r.duration_us < 120_000),
        "and only to that reaction"
    );
}

#[test]
fn a_latency_for_an_unknown_reaction_is_refused() {
    let mut config = quick(1, vec![]);
    config.latencies.insert(
        "shipping:OrderPlaced".into(),
        Latency::Fixed(Duration::ZERO),
    );
    let err = Simulation::new(topology(), config).unwrap_err().to_string();
    assert!(
        err.contains("has no reaction 'shipping:OrderPlaced'"),
        "{err}"
    );
}

/// signup-kyc loops (a rejected document is resubmitted, then checked
/// again): a flow that goes round draws its branch again each time, and takes
/// the way out once it has been round as often as the tracer's cycle bound
/// allows, so every flow ends. It used to make the same choice forever, and
/// the run never settled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_that_loops_draws_again_and_ends() {
    let topology = Topology::from_path(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../topologies/signup-kyc.yaml"
    ))
    .unwrap();
    let bus = InProcessBus::new();
    let metrics = Metrics::new(&prometheus::Registry::new()).unwrap();
    const FLOWS: u64 = 300;
    tokio::time::timeout(
        Duration::from_secs(60),
        Simulation::new(topology, quick(FLOWS, Vec::new()))
            .unwrap()
            .run(&bus, &metrics, &|_| {}),
    )
    .await
    .expect("every flow ends, loops included")
    .unwrap();
    let ended =
        count(&bus, "accounts", "AccountActivated") + count(&bus, "accounts", "AccountClosed");
    assert_eq!(ended as u64, FLOWS);
    let mut rounds = std::collections::HashMap::<String, usize>::new();
    for e in bus.retained("kyc") {
        if e.event_type == "KycRequested" {
            *rounds.entry(e.correlation_id.to_string()).or_default() += 1;
        }
    }
    // Round the loop up to the tracer's cycle bound (3 occurrences along a
    // causal path), never past it: a run without faults is judged clean.
    assert_eq!(
        rounds.values().max(),
        Some(&3),
        "some flow goes round to the bound"
    );
}
