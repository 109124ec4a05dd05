//! The viewer in a real browser over a simulated run with faults: choreo-sim
//! runs topologies/order-fulfillment.yaml on the in-process bus through the
//! real runtime (receipts, retries, dead letters), shipping goes down for
//! good part-way, and a live tracer taps the bus as `choreo trace --follow
//! --ui` does. Headless Chromium (crate::webdriver) then does what a person
//! on call would: watches a flow the run left stuck appear in the list,
//! searches it by the order number its payload carries, opens it, reads that
//! shipping owes, sees the graph drawn, and sees a flow started on the live
//! bus appear without reloading.
//!
//! The stuck flow is the one the tracer judges stuck first, not a known id;
//! its number comes from the payload of its `OrderPlaced` as the tap read
//! it. The simulator's payloads carry no `order_id`: each carries the
//! simulated order's number as `flow` (`{"flow":17,"hop":0}`), so the search
//! is `flow=17`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use choreo_bus::{InProcessBus, InProcessConfig, Metrics, Publisher};
use choreo_core::{Envelope, EventId, SubscribeOptions, Timestamp};
use choreo_sim::{Fault, Latency, SimConfig, Simulation, Truth};
use choreo_trace::{FlowStatus, Tracer, TracerConfig};
use choreo_ui::Viewer;
use fantoccini::{Client, Locator};
use tokio_util::sync::CancellationToken;

use crate::fixture::{PATIENCE, serve, topology};
use crate::webdriver::{
    Browser, image_drawn, listed, mark_document, open_flow, run, same_document, search, text_of,
    until, until_within,
};

/// Flows the run starts: a few hundred.
const FLOWS: u64 = 300;
/// The run's seed: the same branches, latencies and faults for each flow.
const SEED: u64 = 19;
/// Flows started per second: the run's flows start over 0.75 s.
const RATE: f64 = 400.0;
/// When shipping goes down, for good: the flows that reach it later are stuck.
const SHIPPING_DOWN: &str = "shipping=300ms..";

/// The orders' numbers, by flow, as the tap read them from each
/// `OrderPlaced`'s payload.
type Numbers = Arc<Mutex<HashMap<EventId, u64>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A live tracer tapping an in-process bus, ticked as `--follow` ticks it,
/// and its viewer served on loopback.
struct Live {
    bus: InProcessBus,
    tracer: Arc<Mutex<Tracer>>,
    numbers: Numbers,
    addr: SocketAddr,
    stop: CancellationToken,
    tap: tokio::task::JoinHandle<choreo_trace::Result<u64>>,
    ticker: tokio::task::JoinHandle<()>,
    viewer: CancellationToken,
}

impl Live {
    async fn start(sim: &Simulation) -> Live {
        let mut config = TracerConfig::live();
        Viewer::prepare(&mut config);
        let tracer = Arc::new(Mutex::new(Tracer::new(config, Some(sim.topology()))));
        let bus = InProcessBus::with_config(
            InProcessConfig::default().partitions(sim.config().partitions),
        );
        let numbers: Numbers = Arc::default();
        let stop = CancellationToken::new();
        let (feed, seen) = (tracer.clone(), numbers.clone());
        let tap = choreo_trace::tap(
            &bus,
            SubscribeOptions::new("choreo-tracer", sim.topics()),
            stop.clone(),
            move |record| {
                let e = &record.envelope;
                if e.event_type.as_str() == "OrderPlaced"
                    && let Ok(p) = serde_json::from_slice::<serde_json::Value>(&e.data)
                    && let Some(n) = p["flow"].as_u64()
                {
                    lock(&seen).insert(e.correlation_id.clone(), n);
                }
                lock(&feed).ingest(&record);
            },
        )
        .await
        .expect("the tracer taps the bus");
        // As `choreo trace --follow` does: the clock advances, flows that
        // settled are folded, flows past a deadline are judged stuck.
        let ticker = tokio::spawn({
            let (tracer, stop) = (tracer.clone(), stop.clone());
            async move {
                let mut every = tokio::time::interval(Duration::from_millis(200));
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = every.tick() => lock(&tracer).tick(Timestamp::now()),
                    }
                }
            }
        });
        let (addr, viewer) = serve(&tracer, false).await;
        Live {
            bus,
            tracer,
            numbers,
            addr,
            stop,
            tap,
            ticker,
            viewer,
        }
    }

    async fn stop(self) {
        self.viewer.cancel();
        self.stop.cancel();
        self.ticker.await.expect("the ticker stops");
        self.tap
            .await
            .expect("the tap stops")
            .expect("the tap read the bus");
    }
}

fn simulation() -> Simulation {
    let faults = [
        ("down", SHIPPING_DOWN),
        ("fail", "inventory=0.2"),
        ("drop", "shipping=0.05"),
        ("duplicate", "0.02"),
    ]
    .map(|(kind, arg)| Fault::parse(kind, arg).expect("a fault"))
    .to_vec();
    let config = SimConfig {
        flows: FLOWS,
        rate: Some(RATE),
        seed: SEED,
        latency: Latency::Uniform(Duration::from_millis(1), Duration::from_millis(8)),
        faults,
        ..SimConfig::default()
    };
    Simulation::new(topology(), config).expect("the simulation fits the topology")
}

/// The first flow the tracer judged stuck, once it has judged one.
fn first_stuck(tracer: &Mutex<Tracer>) -> Option<EventId> {
    lock(tracer)
        .recent()
        .find(|f| f.status == FlowStatus::Stuck)
        .map(|f| f.correlation_id.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_simulated_run_a_person_finds_a_stuck_order_sees_who_owes_and_a_new_flow_arrive() {
    let Some(browser) = Browser::find() else {
        return;
    };
    let sim = simulation();
    let live = Live::start(&sim).await;
    let metrics = Metrics::new(&prometheus::Registry::new()).expect("the runtime's metrics");
    let truth = sim
        .run(&live.bus, &metrics, &|_| {})
        .await
        .expect("the simulated run");
    check_truth(&truth);
    // How long after the run a flow waiting for shipping can take to be
    // judged stuck: shipping's bound on its reaction, on top of the patience.
    let shipping_within = sim
        .topology()
        .reaction_within("shipping", "StockReserved")
        .expect("shipping's reaction has a bound");
    let walk = Walk {
        base: format!("http://{}", live.addr),
        bus: live.bus.clone(),
        tracer: live.tracer.clone(),
        numbers: live.numbers.clone(),
        stuck_within: shipping_within + PATIENCE,
    };
    browser
        .walk(move |client| async move { walk.through(&client).await })
        .await;
    live.stop().await;
}

/// The run did what the test relies on: every flow started, and shipping
/// went down for good.
fn check_truth(truth: &Truth) {
    assert_eq!(truth.flows_started, FLOWS);
    let down: Vec<_> = truth.of_kind("down").collect();
    assert_eq!(down.len(), 1, "{down:?}");
    assert_eq!(down[0].service, "shipping");
    assert!(down[0].detail.contains("to the end of the run"), "{down:?}");
    assert!(
        truth.of_kind("fail").next().is_some(),
        "inventory failed some attempts"
    );
}

/// What the walk through the pages needs.
struct Walk {
    base: String,
    bus: InProcessBus,
    tracer: Arc<Mutex<Tracer>>,
    numbers: Numbers,
    /// How long a flow left waiting for shipping may take to show as stuck.
    stuck_within: Duration,
}

impl Walk {
    async fn through(&self, client: &Client) {
        let base = &self.base;

        // On call, a person lists the stuck flows; the run's show up as the
        // tracer judges them (shipping's deadline passing), without a reload.
        client
            .goto(&format!("{base}/"))
            .await
            .expect("the flows page");
        mark_document(client).await;
        client
            .find(Locator::Id("status"))
            .await
            .expect("the status filter")
            .select_by_value("stuck")
            .await
            .expect("choosing stuck");
        let stuck = until_within(
            "the tracer to judge a flow of the run stuck",
            self.stuck_within,
            || async { first_stuck(&self.tracer) },
        )
        .await;
        let order = *lock(&self.numbers)
            .get(&stuck)
            .unwrap_or_else(|| panic!("the tap read no OrderPlaced of the stuck flow {stuck}"));
        let stuck = stuck.to_string();
        let row = format!("#flows tr[data-id='{stuck}']");
        let text = until("the stuck flow in the list", || async {
            let t = text_of(client, &row).await;
            (!t.is_empty()).then_some(t)
        })
        .await;
        assert!(
            text.contains("stuck") && text.contains("shipping"),
            "{text}"
        );
        let all_stuck = run(
            client,
            "return [...document.querySelectorAll('#flows tbody tr[data-id]')].every(r => r.classList.contains('stuck'));",
        )
        .await;
        assert_eq!(
            all_stuck,
            serde_json::json!(true),
            "the filter lists stuck flows only"
        );
        assert!(same_document(client).await, "the page was reloaded");

        // Searching its order's number, with any status, finds it alone.
        client
            .find(Locator::Id("status"))
            .await
            .expect("the status filter")
            .select_by_value("")
            .await
            .expect("choosing any status");
        search(client, &format!("flow={order}")).await;
        until("the search to list the order's flow alone", || async {
            (listed(client).await == vec![stuck.clone()]).then_some(())
        })
        .await;

        // Its page says who owes, and draws the graph.
        let owing = open_flow(client, &row, &stuck).await;
        assert_eq!(owing, "shipping");
        let status = text_of(client, "#status").await;
        assert_eq!(status, "stuck");
        let owed = text_of(client, "#owed").await;
        assert!(
            owed.contains("shipping owes OrderShipped for StockReserved"),
            "{owed}"
        );
        until("the causal graph to be drawn", || async {
            image_drawn(client, "graph").await.then_some(())
        })
        .await;
        let timeline = text_of(client, "#timeline").await;
        assert!(
            timeline.contains("StockReserved by inventory"),
            "{timeline}"
        );

        // An order placed on the live bus while the list is open appears
        // without a reload, waiting for payment.
        client
            .goto(&format!("{base}/"))
            .await
            .expect("the flows page");
        until("the list", || async {
            (!listed(client).await.is_empty()).then_some(())
        })
        .await;
        mark_document(client).await;
        let placed = Envelope::new(
            "OrderPlaced",
            "orders",
            format!(r#"{{"flow":{FLOWS},"hop":0}}"#),
        )
        .with_source("checkout");
        let new = placed.correlation_id.to_string();
        Publisher::new(&self.bus, "checkout")
            .publish(placed)
            .await
            .expect("the new order is published");
        let row = format!("#flows tr[data-id='{new}']");
        let text = until("the new flow to appear", || async {
            let t = text_of(client, &row).await;
            (!t.is_empty()).then_some(t)
        })
        .await;
        assert!(
            text.contains("in progress") && text.contains("payment"),
            "{text}"
        );
        assert!(same_document(client).await, "the page was reloaded");
    }
}
