//! The questions the tracer and the simulator ask, answered on the order saga.

use std::path::Path;
use std::time::Duration;

use choreo_topology::{Emit, Topology};

fn saga() -> Topology {
    Topology::from_path(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../topologies/order-fulfillment.yaml"),
    )
    .unwrap()
}

#[test]
fn topics() {
    let t = saga();
    assert_eq!(t.topic_of("PaymentFailed"), Some("payments"));
    assert_eq!(t.topic_of("Nope"), None);
    assert_eq!(t.topics(), ["orders", "payments", "inventory", "shipping"]);
    let on_payments: Vec<&str> = t.events_on("payments").map(|e| e.name.as_str()).collect();
    assert_eq!(
        on_payments,
        ["PaymentCaptured", "PaymentFailed", "PaymentRefunded"]
    );
}

#[test]
fn consumers_and_reactions() {
    let t = saga();
    let consumers: Vec<&str> = t
        .consumers_of("OrderPlaced")
        .map(|(s, _)| s.name.as_str())
        .collect();
    assert_eq!(consumers, ["payment"]);
    let r = t.reaction("payment", "OrderPlaced").unwrap();
    assert!(matches!(&r.emit, Emit::OneOf(list) if list.len() == 2));
    assert!(r.emit.may_emit("PaymentFailed"));
    assert_eq!(r.within, Some(Duration::from_secs(5)));
    assert_eq!(
        t.reaction_within("checkout", "PaymentFailed"),
        Some(Duration::from_secs(2))
    );
    assert!(matches!(
        t.reaction("notifications", "OrderShipped").unwrap().emit,
        Emit::Nothing
    ));
    assert!(t.reaction("shipping", "OrderPlaced").is_none());
    assert_eq!(t.consumers_of("Nope").count(), 0);
}

#[test]
fn emitters() {
    let t = saga();
    let starts: Vec<_> = t.emitters_of("OrderPlaced").collect();
    assert_eq!(starts.len(), 1);
    assert_eq!(starts[0].service.name, "checkout");
    assert!(starts[0].reaction.is_none(), "emitted on its own");
    let cancel: Vec<(&str, &str)> = t
        .emitters_of("OrderCancelled")
        .map(|e| (e.service.name.as_str(), e.reaction.unwrap().on.as_str()))
        .collect();
    assert_eq!(
        cancel,
        [
            ("checkout", "PaymentFailed"),
            ("checkout", "PaymentRefunded")
        ]
    );
    assert!(t.may_emit("inventory", "OutOfStock"));
    assert!(!t.may_emit("shipping", "OutOfStock"));
}

#[test]
fn flows() {
    let t = saga();
    let starting: Vec<&str> = t
        .flows_starting_with("OrderPlaced")
        .map(|f| f.name.as_str())
        .collect();
    assert_eq!(starting, ["checkout"]);
    assert_eq!(t.flows_starting_with("OrderShipped").count(), 0);
    assert!(t.ends_flow("checkout", "OrderCancelled"));
    assert!(!t.ends_flow("checkout", "PaymentFailed"));
    assert!(!t.ends_flow("nope", "OrderCancelled"));
    assert_eq!(t.flow_within("checkout"), Some(Duration::from_secs(60)));
    for event in t.events() {
        let flows: Vec<&str> = t.flows_of(&event.name).map(|f| f.name.as_str()).collect();
        assert_eq!(flows, ["checkout"], "{}", event.name);
    }
    assert_eq!(
        t.reachable_from("OutOfStock"),
        ["OutOfStock", "PaymentRefunded", "OrderCancelled"]
    );
}
