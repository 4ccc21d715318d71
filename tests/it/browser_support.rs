//! The real-browser harness the browser tests share: chromedriver + headless Chromium over
//! WebDriver (fantoccini), screenshots into `$STAGELY_TEST_ARTIFACTS`, and the page helpers
//! (every page read is checked for the canary secret).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::common::{WAIT, wait_for};

pub const CANARY: &str = "canary-b64f0e-browser-secret";

pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

pub fn artifacts() -> PathBuf {
    let dir = std::env::var_os("STAGELY_TEST_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("artifacts"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// chromedriver on a free port, killed when dropped.
pub struct Driver {
    _child: tokio::process::Child,
    url: String,
    _profile: tempfile::TempDir,
}

pub async fn start_driver(chromedriver: &Path) -> Driver {
    // chromedriver picks no port by itself: take a free one from the kernel.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = artifacts().join("chromedriver.log");
    let child = tokio::process::Command::new(chromedriver)
        .arg(format!("--port={port}"))
        .arg(format!("--log-path={}", log.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    wait_for("chromedriver to answer", WAIT, || {
        let req = http.get(format!("{url}/status"));
        async move {
            req.send()
                .await
                .ok()
                .filter(|r| r.status().is_success())
                .map(|_| ())
        }
    })
    .await;
    Driver {
        _child: child,
        url,
        _profile: tempfile::tempdir().unwrap(),
    }
}

pub async fn browser(driver: &Driver, chromium: &Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                "--window-size=1280,1000",
                format!("--user-data-dir={}", driver._profile.path().display()),
            ]
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("WebDriver session")
}

pub async fn shot(b: &Client, name: &str) {
    let png = b.screenshot().await.unwrap();
    std::fs::write(artifacts().join(format!("{name}.png")), png).unwrap();
}

/// The page's HTML, checked for the canary every time it is read.
pub async fn html(b: &Client) -> String {
    let source = b.source().await.unwrap();
    assert!(
        !source.contains(CANARY),
        "a page shows a secret value: {}",
        b.current_url().await.unwrap()
    );
    source
}

pub async fn fill(b: &Client, css: &str, value: &str) {
    let el = b
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"));
    el.clear().await.unwrap();
    el.send_keys(value).await.unwrap();
}

pub async fn click(b: &Client, css: &str) {
    b.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap();
}

pub async fn text_of(b: &Client, css: &str) -> String {
    match b.find(Locator::Css(css)).await {
        Ok(el) => el.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Wait until the element's rendered text contains `needle` (ignoring case: badges are
/// upper-cased by CSS).
pub async fn wait_text(b: &Client, css: &str, needle: &str) -> String {
    let b = b.clone();
    wait_for(&format!("{css} to contain {needle:?}"), WAIT, || {
        let b = b.clone();
        async move {
            let t = text_of(&b, css).await;
            t.to_lowercase().contains(&needle.to_lowercase()).then_some(t)
        }
    })
    .await
}
