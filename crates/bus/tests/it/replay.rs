//! Replaying dead letters: same id, flow and causation, a replay count;
//! services that handled the event before skip it; a replay that fails again
//! goes back to the dead-letter topic, and replays are bounded.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::common::*;
use choreo_bus::dlq::{self, Filter, ReplayOptions, Replayed};
use choreo_bus::{Context, HandlerError, InProcessBus, Publisher, Retry, Service};
use choreo_core::{Event, Outcome, dlq_headers};
use choreo_testkit::wait_until;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn a_fixed_service_handles_replayed_events_and_others_skip_them() {
    let bus = InProcessBus::new();
    let (_r, m) = metrics();
    let broken = Arc::new(AtomicBool::new(true));
    let stop = CancellationToken::new();
    let b = broken.clone();
    let payment = Service::new("payment")
        .on(move |o: OrderPlaced, ctx: Context| {
            let broken = b.load(Ordering::SeqCst);
            async move {
                if broken && o.order_id.is_multiple_of(2) {
                    return Err(HandlerError::msg("card processor unreachable"));
                }
                ctx.emit(&PaymentCaptured {
                    order_id: o.order_id,
                })?;
                Ok(())
            }
        })
        .retry(Retry::none())
        .metrics(m.clone())
        .start(&bus, stop.clone())
        .await
        .unwrap();
    // A second consumer of the same topic that never fails.
    let audit = Service::new("audit")
        .on(|_o: OrderPlaced, _ctx: Context| async { Ok::<(), HandlerError>(()) })
        .metrics(m.clone())
        .start(&bus, stop.clone())
        .await
        .unwrap();
    let p = Publisher::new(&bus, "checkout").metrics(m.clone());
    for i in 0..6 {
        p.start_flow(&OrderPlaced { order_id: i }).await.unwrap();
    }
    wait_until("12 receipts", PATIENCE, || receipts(&bus).len() == 12).await;

    let dead = dlq::in_process(&bus, &[]);
    assert_eq!(dead.len(), 3);
    assert!(
        dead.iter()
            .all(|d| d.service == "payment" && d.topic == "orders" && d.replays == 0)
    );
    assert_eq!(
        dlq::by_reason(&dead),
        vec![("handler failed: card processor unreachable".to_owned(), 3)]
    );

    // Dry run: nothing published.
    let plan = dlq::replay(
        &bus,
        &dead,
        ReplayOptions {
            dry_run: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(plan.len(), 3);
    assert_eq!(bus.retained(OrderPlaced::TOPIC).len(), 6);

    broken.store(false, Ordering::SeqCst);
    let done = dlq::replay(&bus, &dead, ReplayOptions::default())
        .await
        .unwrap();
    assert!(
        done.iter()
            .all(|r| matches!(r, Replayed::Published { replay: 1, .. }))
    );
    wait_until("three more payments", PATIENCE, || {
        events(&bus, PaymentCaptured::TOPIC).len() == 6
    })
    .await;
    wait_until("the audit duplicates", PATIENCE, || {
        receipts(&bus)
            .iter()
            .filter(|r| r.service == "audit" && r.outcome == Outcome::Duplicate)
            .count()
            == 3
    })
    .await;
    stop.cancel();
    payment.await.unwrap();
    audit.await.unwrap();

    // The replays kept the ids and flows; the captured payments are caused by them.
    let replayed: Vec<_> = bus
        .retained(OrderPlaced::TOPIC)
        .into_iter()
        .filter(|e| e.headers.get(dlq_headers::REPLAYS).is_some())
        .collect();
    assert_eq!(replayed.len(), 3);
    for d in &dead {
        let r = replayed
            .iter()
            .find(|r| r.id == d.id)
            .expect("replayed with its id");
        assert_eq!(r.correlation_id, d.correlation_id);
        assert_eq!(r.causation_id, d.envelope.causation_id);
        assert_eq!(r.headers.get_str(dlq_headers::REPLAYS), Some("1"));
    }
    for d in &dead {
        assert!(
            events(&bus, PaymentCaptured::TOPIC)
                .iter()
                .any(|e| e.causation_id.as_ref() == Some(&d.id))
        );
    }
}

#[tokio::test]
async fn a_replay_that_fails_again_goes_back_with_its_count_and_replays_are_bounded() {
    let bus = InProcessBus::new();
    let (_r, m) = metrics();
    let stop = CancellationToken::new();
    let svc = Service::new("payment")
        .on(|_o: OrderPlaced, _ctx: Context| async {
            Err::<(), _>(HandlerError::msg("still broken"))
        })
        .retry(Retry::none())
        .metrics(m.clone())
        .start(&bus, stop.clone())
        .await
        .unwrap();
    let id = Publisher::new(&bus, "checkout")
        .metrics(m)
        .start_flow(&OrderPlaced { order_id: 1 })
        .await
        .unwrap();
    let options = ReplayOptions {
        max_replays: 2,
        ..Default::default()
    };
    for round in 1..=2u32 {
        wait_until("a dead letter", PATIENCE, || {
            dlq::in_process(&bus, &[]).len() == round as usize
        })
        .await;
        let latest: Vec<_> = dlq::in_process(&bus, &[])
            .into_iter()
            .filter(|d| d.replays == round - 1)
            .collect();
        let done = dlq::replay(&bus, &latest, options).await.unwrap();
        assert_eq!(
            done,
            vec![Replayed::Published {
                id: id.clone(),
                topic: "orders".into(),
                replay: round
            }]
        );
    }
    wait_until("the third dead letter", PATIENCE, || {
        dlq::in_process(&bus, &[]).len() == 3
    })
    .await;
    stop.cancel();
    svc.await.unwrap();
    let all = dlq::in_process(&bus, &[]);
    assert_eq!(
        all.iter().map(|d| d.replays).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    let last = Filter {
        ids: vec![id.clone()],
        ..Default::default()
    };
    let newest: Vec<_> = all
        .into_iter()
        .filter(|d| last.matches(d) && d.replays == 2)
        .collect();
    let done = dlq::replay(&bus, &newest, options).await.unwrap();
    assert!(
        matches!(&done[0], Replayed::Refused { reason, .. } if reason.contains("already replayed 2 times"))
    );
    // Given every copy, replay judges the event by its newest one.
    let every_copy: Vec<_> = dlq::in_process(&bus, &[])
        .into_iter()
        .filter(|d| last.matches(d))
        .collect();
    assert_eq!(every_copy.len(), 3);
    let dry = ReplayOptions {
        dry_run: true,
        ..options
    };
    let done = dlq::replay(&bus, &every_copy, dry).await.unwrap();
    assert_eq!(done.len(), 1);
    assert!(
        matches!(&done[0], Replayed::Refused { reason, .. } if reason.contains("already replayed 2 times"))
    );
}
