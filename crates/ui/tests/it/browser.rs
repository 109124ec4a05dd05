//! The viewer in a real browser, over a hand-built tracer (crate::fixture)
//! holding a flow of every kind: headless Chromium driven through WebDriver
//! (crate::webdriver) does what a person on call would — finds the stuck
//! flow in the list, searches its order id, opens it, reads who owes the
//! event, sees the graph drawn, reads the dead letter's replay command, and
//! sees a new flow arrive without reloading; markup in event names and
//! payloads shows as text and never runs. (crate::simulated_run walks a
//! simulated run with faults the same way.)
//!
//! With `CHOREO_UI_SCREENSHOTS=DIR` it saves the three pages there as PNG.

use std::net::SocketAddr;

use fantoccini::Client;
use serde_json::json;

use crate::fixture::{HOSTILE_PAYLOAD, HOSTILE_TYPE, Scenario};
use crate::webdriver::{
    Browser, image_drawn, listed, mark_document, open_flow, run, same_document, screenshot, search,
    text_of, until,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_finds_the_stuck_order_sees_who_owes_and_watches_a_new_flow_arrive() {
    let Some(browser) = Browser::find() else {
        return;
    };
    let s = Scenario::new();
    // Payloads shown: the hostile one must show as text too.
    let (addr, _stop) = s.serve_showing_payloads().await;
    browser
        .walk(move |client| async move { walk(&client, &s, addr).await })
        .await;
}

async fn walk(client: &Client, s: &Scenario, addr: SocketAddr) {
    let base = format!("http://{addr}");
    let stuck = s.stuck.to_string();

    // The stuck flow is in the list, marked stuck, with the service that owes.
    client
        .goto(&format!("{base}/"))
        .await
        .expect("the flows page");
    let row = format!("#flows tr[data-id='{stuck}']");
    until("the stuck flow in the list", || async {
        (!text_of(client, &row).await.is_empty()).then_some(())
    })
    .await;
    let text = text_of(client, &row).await;
    assert!(
        text.contains("stuck") && text.contains("shipping"),
        "{text}"
    );
    screenshot(client, "flows.png").await;

    // Searching its order id leaves it alone in the list.
    search(client, "order_id=42").await;
    until("the search to list order 42's flow alone", || async {
        (listed(client).await == vec![stuck.clone()]).then_some(())
    })
    .await;

    // Its page says who owes, and draws the graph.
    let owing = open_flow(client, &row, &stuck).await;
    assert_eq!(owing, "shipping");
    let owed = text_of(client, "#owed").await;
    assert!(owed.contains("shipping owes OrderShipped"), "{owed}");
    until("the causal graph to be drawn", || async {
        image_drawn(client, "graph").await.then_some(())
    })
    .await;
    assert!(
        text_of(client, "#timeline")
            .await
            .contains("StockReserved by inventory")
    );
    screenshot(client, "flow.png").await;

    // The failed flow's page gives the dead letter and the replay command.
    client
        .goto(&format!("{base}/flows/{}", s.failed))
        .await
        .expect("the failed flow");
    let replay = format!("choreo dlq replay {} --topic payments.dlq", s.dead_event);
    until("the replay command", || async {
        text_of(client, "#dead-letters")
            .await
            .contains(&replay)
            .then_some(())
    })
    .await;

    // A flow that starts while the list is open appears without a reload.
    client
        .goto(&format!("{base}/"))
        .await
        .expect("the flows page");
    until("the list", || async {
        (!listed(client).await.is_empty()).then_some(())
    })
    .await;
    mark_document(client).await;
    let new = s.start_order(4711).to_string();
    until("the new flow to appear", || async {
        listed(client).await.contains(&new).then_some(())
    })
    .await;
    assert!(same_document(client).await, "the page was reloaded");

    // Markup in an event's type and source is shown as text and never runs.
    client
        .goto(&format!("{base}/flows/{}", s.hostile))
        .await
        .expect("the hostile flow");
    until("the hostile event's type shown as text", || async {
        text_of(client, "#timeline")
            .await
            .contains(HOSTILE_TYPE)
            .then_some(())
    })
    .await;
    let payloads = text_of(client, "#payloads").await;
    assert!(payloads.contains(HOSTILE_PAYLOAD), "{payloads}");
    assert_eq!(
        run(client, "return typeof window.__pwned;").await,
        json!("undefined"),
        "markup from an event ran"
    );
    until("the hostile flow's graph to be drawn", || async {
        image_drawn(client, "graph").await.then_some(())
    })
    .await;

    // The service graph, with its numbers and its drawing.
    client
        .goto(&format!("{base}/services"))
        .await
        .expect("the services page");
    until("the edges table", || async {
        text_of(client, "#edges tbody")
            .await
            .contains("inventory")
            .then_some(())
    })
    .await;
    until("the service graph to be drawn", || async {
        image_drawn(client, "service-graph").await.then_some(())
    })
    .await;
    screenshot(client, "services.png").await;
}
