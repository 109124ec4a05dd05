//! The viewer in a real browser: headless Chromium driven through WebDriver
//! (chromedriver, with fantoccini) does what a person on call would — finds
//! the stuck flow in the list, searches its order id, opens it, reads who
//! owes the event, sees the graph drawn, and sees a new flow arrive without
//! reloading; markup in event names shows as text and never runs.
//!
//! Needs Debian's `chromium` and `chromium-driver` (scripts/test.sh installs
//! them). Without them the test says so and passes, unless
//! `CHOREO_REQUIRE_BROWSER` is set (scripts/test.sh sets it): then it fails.
//! With `CHOREO_UI_SCREENSHOTS=DIR` it saves the three pages there as PNG.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::fixture::{HOSTILE_PAYLOAD, HOSTILE_TYPE, PATIENCE, Scenario};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// Polls `check` every 100 ms until it gives a value; panics naming `what`
/// once [`PATIENCE`] has passed.
async fn until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "waited {PATIENCE:?} for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// chromedriver and Chromium, or why not.
fn browser() -> Option<(PathBuf, PathBuf)> {
    let driver = std::env::var_os("CHOREO_CHROMEDRIVER").map_or(CHROMEDRIVER.into(), PathBuf::from);
    let chromium = std::env::var_os("CHOREO_CHROMIUM").map_or(CHROMIUM.into(), PathBuf::from);
    let missing: Vec<String> = [&driver, &chromium]
        .iter()
        .filter(|p| !p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if missing.is_empty() {
        return Some((driver, chromium));
    }
    assert!(
        std::env::var_os("CHOREO_REQUIRE_BROWSER").is_none(),
        "CHOREO_REQUIRE_BROWSER is set but {} is missing: install Debian's chromium and chromium-driver (scripts/test.sh does)",
        missing.join(" and ")
    );
    eprintln!(
        "skipped: {} missing (install chromium and chromium-driver, or run scripts/test.sh)",
        missing.join(" and ")
    );
    None
}

/// A free loopback port (bound, read, let go).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// chromedriver on a free port, once it accepts connections; killed when dropped.
async fn chromedriver(path: &PathBuf) -> (Child, u16) {
    let port = free_port();
    let child = Command::new(path)
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", path.display()));
    until("chromedriver to listen", || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    (child, port)
}

async fn headless(port: u16, chromium: &std::path::Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".to_owned(),
        json!({
            "binary": chromium.display().to_string(),
            // As root in a container: no sandbox, no /dev/shm.
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,1000"],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a WebDriver session in headless Chromium")
}

async fn run(client: &Client, script: &str) -> Value {
    client
        .execute(script, Vec::new())
        .await
        .unwrap_or_else(|e| panic!("running {script}: {e}"))
}

/// The correlation ids the flows table lists, in order.
async fn listed(client: &Client) -> Vec<String> {
    let v = run(
        client,
        "return [...document.querySelectorAll('#flows tbody tr[data-id]')].map(r => r.dataset.id);",
    )
    .await;
    serde_json::from_value(v).unwrap_or_default()
}

async fn text_of(client: &Client, css: &str) -> String {
    match client.find(Locator::Css(css)).await {
        Ok(e) => e.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

async fn image_drawn(client: &Client, id: &str) -> bool {
    run(
        client,
        &format!(
            "const g = document.getElementById('{id}'); return !!(g && g.complete && g.naturalWidth > 0);"
        ),
    )
    .await
        == json!(true)
}

async fn screenshot(client: &Client, name: &str) {
    let Some(dir) = std::env::var_os("CHOREO_UI_SCREENSHOTS") else {
        return;
    };
    let png = client.screenshot().await.expect("a screenshot");
    let path = PathBuf::from(dir).join(name);
    std::fs::write(&path, png).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_finds_the_stuck_order_sees_who_owes_and_watches_a_new_flow_arrive() {
    let Some((driver, chromium)) = browser() else {
        return;
    };
    let s = Scenario::new();
    // Payloads shown: the hostile one must show as text too.
    let (addr, _stop) = s.serve_showing_payloads().await;
    let (_driver, port) = chromedriver(&driver).await;
    let client = headless(port, &chromium).await;
    // On its own task, so that the browser is closed whatever happens.
    let walked = tokio::spawn({
        let client = client.clone();
        async move { walk(&client, &s, addr).await }
    })
    .await;
    client.close().await.ok();
    if let Err(e) = walked {
        match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("the walk through the pages was cancelled: {e}"),
        }
    }
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
    let q = client.find(Locator::Id("q")).await.expect("the search box");
    q.send_keys("order_id=42").await.expect("typing");
    client
        .find(Locator::Css("#filters button"))
        .await
        .expect("the apply button")
        .click()
        .await
        .expect("clicking");
    until("the search to list order 42's flow alone", || async {
        (listed(client).await == vec![stuck.clone()]).then_some(())
    })
    .await;

    // Its page says who owes, and draws the graph.
    client
        .find(Locator::Css(&format!("{row} a.flow-link")))
        .await
        .expect("the flow's link")
        .click()
        .await
        .expect("opening the flow");
    let owing = until("the flow page to name who owes", || async {
        let t = text_of(client, "#owing").await;
        (!t.is_empty()).then_some(t)
    })
    .await;
    assert_eq!(owing, "shipping");
    let url = client.current_url().await.expect("the url");
    assert!(url.path().ends_with(&format!("/flows/{stuck}")), "{url}");
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
    run(client, "window.__sameDocument = 'yes';").await;
    let new = s.start_order(4711).to_string();
    until("the new flow to appear", || async {
        listed(client).await.contains(&new).then_some(())
    })
    .await;
    assert_eq!(
        run(client, "return window.__sameDocument;").await,
        json!("yes"),
        "the page was reloaded"
    );

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
