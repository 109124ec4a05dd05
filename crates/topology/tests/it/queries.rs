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

#[test]
fn a_service_is_found_by_its_foreign_sources() {
    let text = "name: t\nevents:\n  A: {topic: a}\nservices:\n  shop:\n    emits: [A]\n    sources:\n      - https://shop.example.com/checkout\n      - \"/legacy/checkout\"\nflows:\n  f: {starts_with: A, ends_with: [A]}\n";
    let t = Topology::parse(text, "t.yaml").unwrap();
    let shop = t.service("shop").unwrap();
    assert_eq!(
        shop.sources,
        ["https://shop.example.com/checkout", "/legacy/checkout"]
    );
    for source in [
        "shop",
        "https://shop.example.com/checkout",
        "/legacy/checkout",
    ] {
        assert_eq!(
            t.service_of_source(source).map(|s| s.name.as_str()),
            Some("shop"),
            "{source}"
        );
    }
    assert!(t.service_of_source("https://shop.example.com").is_none());
}

#[test]
fn sources_that_are_not_one_services_are_refused_at_their_position() {
    let text = "name: t\nevents:\n  A: {topic: a}\nservices:\n  shop:\n    emits: [A]\n    sources: [\"urn:shop\", \"urn:shop\", \"\"]\n  legacy:\n    sources: [\"urn:shop\", shop]\n  other:\n    sources: {a: b}\nflows:\n  f: {starts_with: A, ends_with: [A]}\n";
    let err = Topology::parse(text, "t.yaml").unwrap_err();
    let choreo_topology::Error::Invalid { diagnostics, .. } = err else {
        panic!("{err}")
    };
    let found: Vec<(u32, u32, &str)> = diagnostics
        .iter()
        .map(|d| (d.pos.line, d.pos.column, d.code.as_str()))
        .collect();
    assert_eq!(
        found,
        [
            (7, 27, "duplicate-key"),
            (7, 39, "invalid-value"),
            (9, 15, "duplicate-key"),
            (9, 27, "invalid-value"),
            (11, 14, "invalid-type"),
        ],
        "{diagnostics:#?}"
    );
    assert!(
        diagnostics[2]
            .message
            .contains("services 'shop' and 'legacy'"),
        "{}",
        diagnostics[2].message
    );
    assert!(
        diagnostics[3]
            .message
            .contains("the name of service 'shop'"),
        "{}",
        diagnostics[3].message
    );
}
