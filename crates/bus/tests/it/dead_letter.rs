//! Dead-lettering: after the last attempt, on a permanent error, a panic or a
//! payload that does not decode. The consumer always goes on.

use std::time::Duration;

use crate::common::*;
use choreo_bus::{Context, HandlerError, InProcessBus, Publisher, Retry, Service};
use choreo_core::{Bus, Envelope, Event, Outcome, dlq_headers};
use choreo_testkit::wait_until;
use tokio_util::sync::CancellationToken;

async fn picky(o: OrderPlaced, ctx: Context) -> Result<(), HandlerError> {
    match o.order_id {
        1 => Err(HandlerError::msg("card declined")),
        2 => Err(HandlerError::permanent(std::io::Error::other(
            "order is malformed",
        ))),
        3 => panic!("bug in payment for order {}", o.order_id),
        _ => {
            ctx.emit(&PaymentCaptured {
                order_id: o.order_id,
            })?;
            Ok(())
        }
    }
}

fn dlq(bus: &InProcessBus) -> Vec<std::sync::Arc<Envelope>> {
    bus.retained("orders.dlq")
}

#[tokio::test]
async fn every_kind_of_failure_is_dead_lettered_with_its_reason_and_the_consumer_goes_on() {
    let bus = InProcessBus::with_config(choreo_bus::InProcessConfig::default().partitions(1));
    let (registry, m) = metrics();
    let stop = CancellationToken::new();
    let svc = Service::new("payment")
        .on(picky)
        .retry(
            Retry::default()
                .max_attempts(3)
                .backoff(Duration::from_millis(1), Duration::from_millis(2)),
        )
        .metrics(m)
        .start(&bus, stop.clone())
        .await
        .unwrap();
    let p = Publisher::new(&bus, "checkout");
    let ids = [
        p.start_flow(&OrderPlaced { order_id: 1 }).await.unwrap(),
        p.start_flow(&OrderPlaced { order_id: 2 }).await.unwrap(),
        p.start_flow(&OrderPlaced { order_id: 3 }).await.unwrap(),
    ];
    // Not an OrderPlaced payload at all.
    let garbage = Envelope::new(OrderPlaced::TYPE, OrderPlaced::TOPIC, "{\"order\":\"?\"")
        .with_source("checkout");
    bus.publish(garbage.clone()).await.unwrap();
    p.start_flow(&OrderPlaced { order_id: 4 }).await.unwrap();

    wait_until("five receipts", PATIENCE, || receipts(&bus).len() == 5).await;
    stop.cancel();
    svc.await.unwrap();

    let dead = dlq(&bus);
    assert_eq!(dead.len(), 4);
    let reason = |id| {
        let e = dead.iter().find(|e| &e.id == id).expect("dead-lettered");
        (
            e.headers.get_str(dlq_headers::REASON).unwrap().to_owned(),
            e.headers.get_str(dlq_headers::ATTEMPTS).unwrap().to_owned(),
        )
    };
    assert_eq!(
        reason(&ids[0]),
        (
            "handler failed after 3 attempts: card declined".into(),
            "3".into()
        )
    );
    assert_eq!(
        reason(&ids[1]),
        (
            "permanent error after 1 attempt: order is malformed".into(),
            "1".into()
        )
    );
    assert_eq!(
        reason(&ids[2]),
        (
            "handler panicked after 3 attempts: bug in payment for order 3".into(),
            "3".into()
        )
    );
    let (garbage_reason, garbage_attempts) = reason(&garbage.id);
    assert!(
        garbage_reason.starts_with("decode error: payload of 'OrderPlaced'"),
        "{garbage_reason}"
    );
    assert_eq!(
        garbage_attempts, "1",
        "a payload that does not decode is not retried"
    );
    for e in &dead {
        assert_eq!(e.headers.get_str(dlq_headers::SERVICE), Some("payment"));
        assert_eq!(e.headers.get_str(dlq_headers::TOPIC), Some("orders"));
        assert!(
            e.headers.get(dlq_headers::PARTITION).is_some()
                && e.headers.get(dlq_headers::OFFSET).is_some()
        );
    }
    // The healthy event after all the poison was handled.
    assert_eq!(events(&bus, PaymentCaptured::TOPIC).len(), 1);
    let dl = receipts_with(&bus, Outcome::DeadLettered);
    assert_eq!(dl.len(), 4);
    assert!(dl.iter().all(|r| r.reason.is_some()));
    assert_eq!(
        metric(
            &registry,
            "choreo_events_dead_lettered_total",
            &[("service", "payment")]
        ),
        4.0
    );
}

#[tokio::test]
async fn a_custom_dead_letter_topic_is_used() {
    let bus = InProcessBus::new();
    let (_r, m) = metrics();
    let stop = CancellationToken::new();
    let svc = Service::new("payment")
        .on(picky)
        .dead_letter_topic(|t: &str| format!("dead.{t}"))
        .retry(Retry::none())
        .metrics(m)
        .start(&bus, stop.clone())
        .await
        .unwrap();
    Publisher::new(&bus, "checkout")
        .start_flow(&OrderPlaced { order_id: 1 })
        .await
        .unwrap();
    wait_until("the dead letter", PATIENCE, || {
        bus.retained("dead.orders").len() == 1
    })
    .await;
    stop.cancel();
    svc.await.unwrap();
}

#[tokio::test]
async fn an_emitted_event_over_the_limits_is_dead_lettered_at_once() {
    let bus = InProcessBus::new();
    let (_r, m) = metrics();
    let stop = CancellationToken::new();
    let svc = Service::new("payment")
        .on(|o: OrderPlaced, ctx: Context| async move {
            // Another attempt would build the same 100-byte payload.
            ctx.emit_raw("Scan", "scans", vec![b'x'; 100 + o.order_id as usize])?;
            Ok::<(), HandlerError>(())
        })
        .limits(choreo_core::Limits::default().max_payload_bytes(64))
        .retry(
            Retry::default()
                .max_attempts(5)
                .backoff(Duration::from_millis(1), Duration::from_millis(2)),
        )
        .metrics(m)
        .start(&bus, stop.clone())
        .await
        .unwrap();
    Publisher::new(&bus, "checkout")
        .start_flow(&OrderPlaced { order_id: 0 })
        .await
        .unwrap();
    wait_until("the dead letter", PATIENCE, || dlq(&bus).len() == 1).await;
    stop.cancel();
    svc.await.unwrap();
    let dead = &dlq(&bus)[0];
    assert_eq!(dead.headers.get_str(dlq_headers::ATTEMPTS), Some("1"));
    assert_eq!(
        dead.headers.get_str(dlq_headers::REASON),
        Some(
            "permanent error after 1 attempt: event 'Scan' on 'scans' is refused: \
             payload of 100 bytes is over the limit of 64 bytes (Limits::max_payload_bytes)"
        )
    );
    assert!(bus.retained("scans").is_empty(), "nothing was emitted");
}

/// The in-process bus, except that it refuses anything published to `big`
/// (as the Kafka producer refuses a record over its `message.max.bytes`).
#[derive(Clone)]
struct Refusing(InProcessBus);

impl Bus for Refusing {
    type Subscription = choreo_bus::InProcessSubscription;

    async fn publish(&self, envelope: Envelope) -> choreo_core::Result<()> {
        if envelope.topic.as_str() == "big" {
            return Err(choreo_core::Error::Refused {
                event_type: envelope.event_type.to_string(),
                topic: "big".into(),
                reason: "too large for this backend".into(),
            });
        }
        self.0.publish(envelope).await
    }

    async fn subscribe(
        &self,
        options: choreo_core::SubscribeOptions,
    ) -> choreo_core::Result<Self::Subscription> {
        self.0.subscribe(options).await
    }

    fn backend_name(&self) -> &'static str {
        "refusing"
    }
}

#[tokio::test]
async fn emissions_the_backend_refuses_dead_letter_their_cause_and_say_what_went_out() {
    let inner = InProcessBus::new();
    let bus = Refusing(inner.clone());
    let (_r, m) = metrics();
    let stop = CancellationToken::new();
    let svc = Service::new("payment")
        .on(|_: OrderPlaced, ctx: Context| async move {
            ctx.emit_raw("Small", "fine", "{}")?;
            ctx.emit_raw("Large", "big", "{}")?;
            Ok::<(), HandlerError>(())
        })
        .receipts(None)
        .retry(Retry::default().max_attempts(3))
        .metrics(m)
        .start(&bus, stop.clone())
        .await
        .unwrap();
    Publisher::new(&inner, "checkout")
        .start_flow(&OrderPlaced { order_id: 1 })
        .await
        .unwrap();
    wait_until("the dead letter", PATIENCE, || dlq(&inner).len() == 1).await;
    stop.cancel();
    svc.await.unwrap();
    let dead = &dlq(&inner)[0];
    assert_eq!(
        dead.headers.get_str(dlq_headers::REASON),
        Some(
            "publishing the handler's events failed: event 'Large' on 'big' is refused: \
             too large for this backend (1 of the 2 events emitted with it were published)"
        )
    );
    assert_eq!(
        inner.retained("fine").len(),
        1,
        "delivered once, not again and again"
    );
}
