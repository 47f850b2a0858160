//! The dashboard in a real browser: headless Chromium driven over WebDriver (chromedriver)
//! against the real relay binary and real sinks. Needs Debian's `chromium` and
//! `chromium-driver`: a plain `cargo test` lists these as ignored, and `.ci/run` installs the
//! browser and runs them. Screenshots of each page go to `target/dashboard/`.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use reqwest::Method;
use serde_json::json;

use crate::harness::process::sqlite_env;
use crate::harness::{Conn, RelayProcess, Sink, SinkReply, eventually};

/// How long the page may take to show what a step waits for.
const PAGE_PATIENCE: Duration = Duration::from_secs(15);

/// A chromedriver on a port of its own; stopped when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver runs (Debian's chromium-driver)");
        Self { child, port }
    }

    /// A headless Chromium session, `width` pixels wide.
    async fn browser(&self, width: u32) -> Client {
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            json!({ "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                              format!("--window-size={width},900")] }),
        );
        let url = format!("http://127.0.0.1:{}", self.port);
        eventually("chromedriver to take a session", || async {
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(capabilities.clone())
                .connect(&url)
                .await
                .ok()
        })
        .await
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Saves a screenshot of the page as `target/dashboard/{name}.png`.
async fn screenshot(browser: &Client, name: &str) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dashboard");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.png")), browser.screenshot().await.unwrap()).unwrap();
}

/// Waits until the element at `css` shows `text`.
async fn until_text(browser: &Client, css: &str, text: &str) {
    let deadline = std::time::Instant::now() + PAGE_PATIENCE;
    loop {
        if let Ok(element) = browser.find(Locator::Css(css)).await
            && element.text().await.is_ok_and(|t| t.contains(text))
        {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{css} never showed {text:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn sign_in(browser: &Client, base: &str, credential: &str) {
    browser.goto(&format!("{base}/ui/")).await.unwrap();
    browser.find(Locator::Id("credential")).await.unwrap().send_keys(credential).await.unwrap();
    browser.find(Locator::Css("#sign-in-form button[type=submit]")).await.unwrap().click().await.unwrap();
}

async fn click(browser: &Client, css: &str) {
    browser.wait().at_most(PAGE_PATIENCE).for_element(Locator::Css(css)).await.unwrap().click().await.unwrap();
}

#[tokio::test]
#[ignore = "needs Chromium and chromedriver (Debian's chromium and chromium-driver): .ci/run installs them"]
async fn a_project_owner_and_an_operator_use_the_dashboard_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayProcess::spawn(&sqlite_env(dir.path()));
    let make = Sink::start().await;
    let failing = Sink::start_with(SinkReply::Status(400)).await;
    let conn: Conn = relay.connection("acme").await;
    relay.attach(&conn, &make.url, None).await;
    relay.attach(&conn, &format!("{}/zap", failing.url), None).await;
    let page = reqwest::get(format!("{}/ui/", relay.base)).await.unwrap();
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");

    let driver = Driver::start();
    let browser = driver.browser(1280).await;
    sign_in(&browser, &relay.base, &conn.api_key).await;
    until_text(&browser, "#hooks tbody", "127.0.0.1").await;
    until_text(&browser, "#connection-facts", "/v1/ingest/acme").await;
    let stored: serde_json::Value = browser.execute("return Object.keys(localStorage).length", vec![]).await.unwrap();
    assert_eq!(stored, 0, "nothing in local storage");
    assert!(browser.current_url().await.unwrap().query().is_none(), "no secret in the URL");

    // A test event goes through the real pipeline, and its attempt shows.
    click(&browser, "#send-test").await;
    let sent = make.recv().await;
    assert!(sent.header("webhook-id").starts_with("evt_test_"));
    until_text(&browser, "#events tbody", "evt_test_").await;
    click(&browser, "#events tbody button").await;
    until_text(&browser, "#event-payload", "\"status\": \"completed\"").await;
    eventually("the attempts to show", || async {
        click(&browser, "#events tbody button").await;
        let text = browser.find(Locator::Id("event-attempts")).await.ok()?.text().await.ok()?;
        text.contains("answered 200").then_some(())
    })
    .await;
    // The chart is redrawn every few seconds: the delivery shows once the page has read it.
    eventually("the chart to draw the test event's delivery", || async {
        let bars = browser.find_all(Locator::Css("#chart rect")).await.ok()?;
        let summary = browser.find(Locator::Id("chart-summary")).await.ok()?.text().await.ok()?;
        (!bars.is_empty() && summary.starts_with("1 delivered")).then_some(())
    })
    .await;
    screenshot(&browser, "connection").await;

    // A payload with markup is shown as text and runs nothing; its dead letter replays.
    let hostile = json!({ "id": "evt-xss", "type": "image.created", "status": "completed",
        "user_defined": { "note": "<img src=x onerror=\"window.__xss=1\">" } });
    relay.ingest(&conn, &serde_json::to_vec(&hostile).unwrap()).await;
    make.recv().await;
    failing.recv().await;
    until_text(&browser, "#dead-letters tbody", "evt-xss").await;
    browser.goto(&format!("{}/ui/", relay.base)).await.unwrap(); // a reload keeps the session
    until_text(&browser, "#events tbody", "evt-xss").await;
    click(&browser, "#events tbody tr:first-child button").await;
    until_text(&browser, "#event-payload", "<img src=x onerror").await;
    let ran: serde_json::Value = browser.execute("return window.__xss === undefined", vec![]).await.unwrap();
    assert_eq!(ran, true, "the payload's markup ran nothing");
    assert!(browser.find_all(Locator::Css("#event-payload img")).await.unwrap().is_empty());
    failing.answer(SinkReply::Status(200));
    failing.drain().await;
    click(&browser, "#dead-letters tbody button").await;
    assert_eq!(failing.recv().await.header("webhook-id"), "evt-xss", "replayed to its hook");

    // An event's outcome per hook, the filter by outcome, and a replay to one hook.
    until_text(&browser, "#event-deliveries", "delivered after 1 attempt").await;
    make.drain().await;
    click(&browser, "#event-deliveries li:first-child button").await;
    assert_eq!(make.recv().await.header("webhook-id"), "evt-xss", "sent again to that hook only");
    let dead_only = browser.find(Locator::Css("#filter-outcome option[value=dead]")).await.unwrap();
    dead_only.click().await.unwrap();
    until_text(&browser, "#events tbody", "evt_test_").await;
    eventually("the filter to keep only events with a dead letter", || async {
        let rows = browser.find_all(Locator::Css("#events tbody tr")).await.ok()?;
        let text = browser.find(Locator::Css("#events tbody")).await.ok()?.text().await.ok()?;
        (rows.len() == 1 && !text.contains("evt-xss")).then_some(())
    })
    .await;
    browser.find(Locator::Css("#filter-outcome option[value='']")).await.unwrap().click().await.unwrap();
    screenshot(&browser, "event").await;

    // Narrow screens get the same page.
    browser.set_window_size(375, 812).await.unwrap();
    screenshot(&browser, "connection-375px").await;
    browser.set_window_size(1280, 900).await.unwrap();

    click(&browser, "#sign-out").await;
    until_text(&browser, "#status", "Signed out").await;
    let left: serde_json::Value = browser.execute("return sessionStorage.length", vec![]).await.unwrap();
    assert_eq!(left, 0, "signing out forgets the key");

    // The operator sees the relay at a glance (a hook failing again is among those that fail
    // most) and creates a connection; its key is shown once.
    failing.answer(SinkReply::Status(400));
    relay.ingest(&conn, &serde_json::to_vec(&json!({ "id": "evt-refused", "type": "image.created" })).unwrap()).await;
    failing.recv().await;
    sign_in(&browser, &relay.base, crate::harness::client::ADMIN_TOKEN).await;
    until_text(&browser, "#connections tbody", "acme").await;
    until_text(&browser, "#overview", "Store size").await;
    until_text(&browser, "#failing tbody", "acme").await;
    browser.find(Locator::Id("new-name")).await.unwrap().send_keys("Browser Co").await.unwrap();
    browser.find(Locator::Id("new-id")).await.unwrap().send_keys("browser-co").await.unwrap();
    click(&browser, "#create-connection button[type=submit]").await;
    until_text(&browser, "#created-secrets", "sk_").await;
    until_text(&browser, "#connections tbody", "browser-co").await;
    screenshot(&browser, "operator").await;
    let created = relay.admin(Method::GET, "/connections/browser-co", None).await;
    assert_eq!(created.body["name"], "Browser Co");

    // …and manages one: how Stencil authenticates, and a new API key (the old one stops).
    click(&browser, "#connections tbody tr:first-child button").await;
    until_text(&browser, "#manage-title", "acme").await;
    browser.find(Locator::Css("#ingest-auth option[value=token]")).await.unwrap().click().await.unwrap();
    click(&browser, "#settings button[type=submit]").await;
    until_text(&browser, "#status", "Saved acme").await;
    let acme = relay.admin(Method::GET, "/connections/acme", None).await;
    assert_eq!(acme.body["ingest_auth"], "token");
    let accept: serde_json::Value = browser.execute("window.confirm = () => true; return true", vec![]).await.unwrap();
    assert_eq!(accept, true);
    click(&browser, "#rotate-key").await;
    until_text(&browser, "#rotated", "sk_").await;
    let old_key = relay.api(&conn, Method::GET, "/connection", None).await;
    assert_eq!(old_key.status, reqwest::StatusCode::UNAUTHORIZED, "the rotated-out key stops working");
    screenshot(&browser, "operator-manage").await;
    browser.close().await.unwrap();
}

/// WebDriver's key codes for Tab and Enter.
const TAB: &str = "\u{e004}";
const ENTER: &str = "\u{e007}";

#[tokio::test]
#[ignore = "needs Chromium and chromedriver (Debian's chromium and chromium-driver): .ci/run installs them"]
async fn the_dashboard_works_from_the_keyboard_and_every_control_has_a_label() {
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayProcess::spawn(&sqlite_env(dir.path()));
    let make = Sink::start().await;
    let conn: Conn = relay.connection("keys").await;
    relay.attach(&conn, &make.url, None).await;
    let driver = Driver::start();
    let browser = driver.browser(1024).await;
    browser.goto(&format!("{}/ui/", relay.base)).await.unwrap();

    // From the top of the page: Tab reaches the key field first, Enter signs in.
    let focused = |browser: &Client| {
        let browser = browser.clone();
        async move {
            browser.execute("return document.activeElement ? document.activeElement.id : ''", vec![]).await.unwrap()
        }
    };
    browser.active_element().await.unwrap().send_keys(TAB).await.unwrap();
    assert_eq!(focused(&browser).await, "credential");
    let field = browser.active_element().await.unwrap();
    field.send_keys(&conn.api_key).await.unwrap();
    field.send_keys(ENTER).await.unwrap();
    until_text(&browser, "#hooks tbody", "127.0.0.1").await;

    // Tab on until "Send a test event" has the focus, then Enter sends one.
    let mut presses = 0;
    while focused(&browser).await != "send-test" {
        browser.active_element().await.unwrap().send_keys(TAB).await.unwrap();
        presses += 1;
        assert!(presses < 40, "Tab never reached the test-event button");
    }
    browser.active_element().await.unwrap().send_keys(ENTER).await.unwrap();
    assert!(make.recv().await.header("webhook-id").starts_with("evt_test_"), "sent from the keyboard");

    let unlabelled: serde_json::Value = browser
        .execute(
            "return [...document.querySelectorAll('input, select')].filter((c) => c.labels.length === 0).map((c) => c.id)",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(unlabelled, json!([]), "every field has a label");
    let nameless: serde_json::Value = browser
        .execute(
            "return [...document.querySelectorAll('button')].filter((b) => !(b.getAttribute('aria-label') || b.textContent.trim())).length",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(nameless, 0, "every button says what it does");
    browser.close().await.unwrap();
}
