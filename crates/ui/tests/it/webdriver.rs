//! Headless Chromium driven through WebDriver (chromedriver, with
//! fantoccini), and what the browser tests ask of a page.
//!
//! Needs Debian's `chromium` and `chromium-driver` (scripts/test.sh installs
//! them). Without them a test says so and passes, unless
//! `CHOREO_REQUIRE_BROWSER` is set (scripts/test.sh sets it): then it fails.
//! `CHOREO_CHROMEDRIVER` and `CHOREO_CHROMIUM` point elsewhere.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::fixture::PATIENCE;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// Polls `check` every 100 ms until it gives a value; panics naming `what`
/// once [`PATIENCE`] has passed.
pub(crate) async fn until<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    until_within(what, PATIENCE, check).await
}

/// [`until`] with its own patience.
pub(crate) async fn until_within<T, F, Fut>(what: &str, patience: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + patience;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "waited {patience:?} for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// chromedriver and Chromium, found on this machine.
pub(crate) struct Browser {
    driver: PathBuf,
    chromium: PathBuf,
}

impl Browser {
    /// chromedriver and Chromium, or `None` (having said why) when one is
    /// missing; panics instead when `CHOREO_REQUIRE_BROWSER` is set.
    pub(crate) fn find() -> Option<Browser> {
        let driver =
            std::env::var_os("CHOREO_CHROMEDRIVER").map_or(CHROMEDRIVER.into(), PathBuf::from);
        let chromium = std::env::var_os("CHOREO_CHROMIUM").map_or(CHROMIUM.into(), PathBuf::from);
        let missing: Vec<String> = [&driver, &chromium]
            .iter()
            .filter(|p| !p.exists())
            .map(|p| p.display().to_string())
            .collect();
        if missing.is_empty() {
            return Some(Browser { driver, chromium });
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

    /// Opens a headless Chromium, hands it to `walk`, and closes it however
    /// the walk ends (a failed assertion in it fails the test).
    pub(crate) async fn walk<F, Fut>(&self, walk: F)
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (_driver, port) = chromedriver(&self.driver).await;
        let client = headless(port, &self.chromium).await;
        // On its own task, so that the browser is closed whatever happens.
        let walked = tokio::spawn(walk(client.clone())).await;
        client.close().await.ok();
        if let Err(e) = walked {
            match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(e) => panic!("the walk through the pages was cancelled: {e}"),
            }
        }
    }
}

/// A free loopback port (bound, read, let go).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// chromedriver on a free port, once it accepts connections; killed when dropped.
async fn chromedriver(path: &Path) -> (Child, u16) {
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

async fn headless(port: u16, chromium: &Path) -> Client {
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

/// Runs `script` in the page and gives what it returns.
pub(crate) async fn run(client: &Client, script: &str) -> Value {
    client
        .execute(script, Vec::new())
        .await
        .unwrap_or_else(|e| panic!("running {script}: {e}"))
}

/// The correlation ids the flows table lists, in order.
pub(crate) async fn listed(client: &Client) -> Vec<String> {
    let v = run(
        client,
        "return [...document.querySelectorAll('#flows tbody tr[data-id]')].map(r => r.dataset.id);",
    )
    .await;
    serde_json::from_value(v).unwrap_or_default()
}

/// The text of the first element `css` selects, or "" when there is none.
pub(crate) async fn text_of(client: &Client, css: &str) -> String {
    match client.find(Locator::Css(css)).await {
        Ok(e) => e.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Whether the image with this id has loaded and has a size.
pub(crate) async fn image_drawn(client: &Client, id: &str) -> bool {
    run(
        client,
        &format!(
            "const g = document.getElementById('{id}'); return !!(g && g.complete && g.naturalWidth > 0);"
        ),
    )
    .await
        == json!(true)
}

/// Opens the listed flow `id` through the link in its `row`, waits for its
/// page to name who owes, checks the address, and returns who owes.
pub(crate) async fn open_flow(client: &Client, row: &str, id: &str) -> String {
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
    let url = client.current_url().await.expect("the url");
    assert!(url.path().ends_with(&format!("/flows/{id}")), "{url}");
    owing
}

/// On the flows page: types `text` into the search box and applies it.
pub(crate) async fn search(client: &Client, text: &str) {
    let q = client.find(Locator::Id("q")).await.expect("the search box");
    q.clear().await.expect("clearing the search box");
    q.send_keys(text).await.expect("typing");
    client
        .find(Locator::Css("#filters button"))
        .await
        .expect("the apply button")
        .click()
        .await
        .expect("clicking");
}

/// Marks the document, to tell later whether the page was reloaded.
pub(crate) async fn mark_document(client: &Client) {
    run(client, "window.__sameDocument = 'yes';").await;
}

/// Whether the document marked by [`mark_document`] is still the one shown.
pub(crate) async fn same_document(client: &Client) -> bool {
    run(client, "return window.__sameDocument;").await == json!("yes")
}

/// Saves a screenshot as `name` in `CHOREO_UI_SCREENSHOTS`, when that is set.
pub(crate) async fn screenshot(client: &Client, name: &str) {
    let Some(dir) = std::env::var_os("CHOREO_UI_SCREENSHOTS") else {
        return;
    };
    let png = client.screenshot().await.expect("a screenshot");
    let path = PathBuf::from(dir).join(name);
    std::fs::write(&path, png).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}
