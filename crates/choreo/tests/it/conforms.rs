//! `choreo::testing::conforms`: services that do what the topology declares
//! pass; each kind of mismatch fails with a message in `choreo check`'s
//! shape, naming the file and line.

use choreo::testing::conforms;
use choreo::topology::Topology;
use choreo::{Context, HandlerError, Service};
use serde::{Deserialize, Serialize};

const TOPOLOGY: &str = "\
name: checkout
events:
  OrderPlaced: { topic: orders }
  PaymentCaptured: { topic: payments }
  Audited: { topic: audit }
services:
  checkout: { emits: [OrderPlaced] }
  payment:
    on:
      OrderPlaced: { emit: [PaymentCaptured] }
  ledger:
    on:
      PaymentCaptured: { emit: [Audited] }
      OrderPlaced: {}
flows:
  checkout: { starts_with: OrderPlaced, ends_with: [Audited] }
";

fn topology() -> Topology {
    Topology::parse(TOPOLOGY, "checkout.yaml").unwrap()
}

#[derive(Serialize, Deserialize)]
struct OrderPlaced {}
choreo::event!(OrderPlaced, topic = "orders");

#[derive(Serialize, Deserialize)]
struct PaymentCaptured {}
choreo::event!(PaymentCaptured, topic = "payments");

/// The same event type, on a topic the topology does not give it.
mod wrong {
    #[derive(serde::Serialize, serde::Deserialize)]
    pub(crate) struct OrderPlaced {}
    choreo::event!(OrderPlaced, topic = "order");
}

#[derive(Serialize, Deserialize)]
struct Refunded {}
choreo::event!(Refunded, topic = "payments");

async fn ok<E>(_: E, _: Context) -> Result<(), HandlerError> {
    Ok(())
}

fn payment() -> Service {
    Service::new("payment").on(ok::<OrderPlaced>)
}

fn ledger() -> Service {
    Service::new("ledger")
        .on(ok::<PaymentCaptured>)
        .on(ok::<OrderPlaced>)
}

fn lines(err: &choreo::testing::Nonconformance) -> Vec<String> {
    err.mismatches.iter().map(ToString::to_string).collect()
}

#[test]
fn services_that_do_what_the_topology_declares_conform() {
    conforms(&topology(), &[payment(), ledger()]).unwrap();
    // Only the services given are checked.
    conforms(&topology(), &[payment()]).unwrap();
}

#[test]
fn a_handler_reading_an_event_from_another_topic_than_the_topologys_fails() {
    let err = conforms(
        &topology(),
        &[Service::new("payment").on(ok::<wrong::OrderPlaced>)],
    )
    .unwrap_err();
    assert_eq!(
        lines(&err),
        [
            "checkout.yaml:3:3: error[wrong-topic]: service 'payment' reads 'OrderPlaced' from topic 'order', but the topology puts 'OrderPlaced' on 'orders': make event!(OrderPlaced, topic = …) and the topology say the same topic"
        ]
    );
    assert_eq!(err.mismatches[0].code, "wrong-topic");
}

#[test]
fn a_missing_handler_fails_at_the_reaction_it_leaves_unhandled() {
    let err = conforms(
        &topology(),
        &[Service::new("ledger").on(ok::<PaymentCaptured>)],
    )
    .unwrap_err();
    assert_eq!(
        lines(&err),
        [
            "checkout.yaml:14:7: error[missing-handler]: service 'ledger' has no handler for 'OrderPlaced', which the topology says it reacts to: add one with Service::on, or remove the reaction"
        ]
    );
}

#[test]
fn a_handler_the_topology_gives_the_service_no_reaction_for_fails() {
    let err = conforms(
        &topology(),
        &[Service::new("payment")
            .on(ok::<OrderPlaced>)
            .on(ok::<PaymentCaptured>)],
    )
    .unwrap_err();
    assert_eq!(
        lines(&err),
        [
            "checkout.yaml:8:3: error[undeclared-handler]: service 'payment' handles 'PaymentCaptured', but the topology gives it no reaction to 'PaymentCaptured': add `PaymentCaptured: { emit: … }` under `services: payment: on:`, or remove the handler"
        ]
    );
}

#[test]
fn unknown_services_and_events_fail_and_every_mismatch_is_listed_at_once() {
    let err = conforms(
        &topology(),
        &[
            Service::new("billing").on(ok::<OrderPlaced>),
            Service::new("payment")
                .on(ok::<wrong::OrderPlaced>)
                .on(ok::<Refunded>),
        ],
    )
    .unwrap_err();
    assert_eq!(
        lines(&err),
        [
            "checkout.yaml: error[unknown-service]: service 'billing' is not in topology 'checkout': declare it under `services:`, or pass the name the topology uses to Service::new",
            "checkout.yaml:3:3: error[wrong-topic]: service 'payment' reads 'OrderPlaced' from topic 'order', but the topology puts 'OrderPlaced' on 'orders': make event!(OrderPlaced, topic = …) and the topology say the same topic",
            "checkout.yaml: error[unknown-event]: service 'payment' handles 'Refunded', which topology 'checkout' does not declare: add `Refunded: { topic: payments }` under `events:`, or remove the handler",
        ]
    );
    // What a failing test prints: the header, then one line per mismatch.
    let shown = format!("{err:?}");
    assert!(
        shown.starts_with(
            "the services do not conform to topology 'checkout' (checkout.yaml): 3 mismatches\ncheckout.yaml: error[unknown-service]"
        ),
        "{shown}"
    );
}
