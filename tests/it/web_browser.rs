//! The whole web flow in a real headless Chromium driven over WebDriver (fantoccini +
//! chromedriver): setup link → first admin → sign in → project, environment, secrets → agent →
//! the real `stagely-agent` on this machine's Docker engine → Deploy → live log lines in the
//! page before the deploy finishes → SUCCESS. Screenshots of each main page go to
//! `$STAGELY_TEST_ARTIFACTS` (default `artifacts/`).
//!
//! Without Chromium or Docker this test prints a loud SKIP, except with `CI=true`, where it fails.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use fantoccini::{Client, Locator};
use serde_json::json;

use crate::browser_support::{
    CANARY, artifacts, browser, click, fill, html, shot, start_driver, text_of, wait_text, which,
};
use futures_util::FutureExt;

use crate::web_support::{PASSWORD, WebServer};

/// A compose project on this machine, ready for the real agent (absolute `compose_path`).
fn compose_project(dir: &Path) -> PathBuf {
    let path = dir.join("compose.yaml");
    std::fs::write(
        &path,
        // `web` prints the secret into its own log (which the logs view must show masked).
        "services:\n  web:\n    image: stagely-test-busybox:latest\n    stop_grace_period: 1s\n    command: [\"sh\", \"-c\", \"echo started; echo db=$$DB_PASSWORD; sleep 3600\"]\n",
    )
    .unwrap();
    path
}

/// The real agent binary against this appliance. It waits 3 s between `up` and verifying, so
/// compose's output reaches the page while the deployment is still running.
fn start_real_agent(url: &str, token: &str, dir: &Path) -> tokio::process::Child {
    let token_file = dir.join("agent.token");
    std::fs::write(&token_file, token).unwrap();
    std::fs::set_permissions(&token_file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let log = std::fs::File::create(artifacts().join("web-agent.log")).unwrap();
    tokio::process::Command::new(crate::bins::agent())
        .args(["run", "--server", url, "--verify-wait-secs", "3", "--token-file"])
        .arg(&token_file)
        .arg("--work-dir")
        .arg(dir.join("agent-work"))
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Remove the compose project the deploy started (name: `<project>-<environment>`).
fn compose_down(compose: &Path) {
    let _ = std::process::Command::new("docker")
        .args(["compose", "-p", "shop-staging", "-f"])
        .arg(compose)
        .args(["down", "-t", "0", "--remove-orphans"])
        .output();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_sign_in_configure_and_deploy_in_a_real_browser() {
    let (Some(chromium), Some(chromedriver)) = (
        which("chromium").or_else(|| which("chromium-browser")),
        which("chromedriver"),
    ) else {
        crate::prereq::missing("Chromium and chromedriver");
        return;
    };
    if !crate::prereq::docker() {
        return;
    }
    let server = WebServer::start().await;
    let work = tempfile::tempdir().unwrap();
    let compose = compose_project(work.path());
    compose_down(&compose);
    let driver = start_driver(&chromedriver).await;
    let b = browser(&driver, &chromium).await;
    // Close the browser even when the flow fails, then report the failure.
    let result = AssertUnwindSafe(flow(&server, &b, work.path(), &compose))
        .catch_unwind()
        .await;
    if result.is_err() {
        // What the browser showed when it went wrong.
        let _ = b
            .screenshot()
            .await
            .map(|png| std::fs::write(artifacts().join("failure.png"), png));
        if let Ok(source) = b.source().await {
            let _ = std::fs::write(artifacts().join("failure.html"), source);
        }
    }
    let _ = b.close().await;
    drop(driver);
    compose_down(&compose);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
    server.stop().await;
}

/// What the flow has set up when each area's steps run: signed in as the admin `ada`; project 1
/// `shop` with environment `staging`, secrets `DB_PASSWORD` (the canary, staging) and `GREETING`;
/// agent `web-1` online (the real agent); deployment #1 succeeded, so compose project
/// `shop-staging` runs service `web`, which printed `db=<canary>` into its own log.
#[allow(dead_code)] // until every area's steps read it
pub struct Flow<'a> {
    pub server: &'a WebServer,
    pub b: &'a Client,
    pub work: &'a Path,
    pub compose: &'a Path,
}

async fn flow(server: &WebServer, b: &Client, work: &Path, compose: &Path) {
    let url = &server.url;
    // 0. Before anyone exists, the sign-in page says where the setup link is.
    b.goto(&format!("{url}/login")).await.unwrap();
    wait_text(b, "main", "No admin yet").await;
    wait_text(b, "main", "setup link is in the appliance's log").await;
    shot(b, "00-sign-in-no-admin").await;

    // 1. The setup link from the log makes the first admin and signs them in.
    let link = server.setup_link.clone().unwrap();
    b.goto(&link).await.unwrap();
    shot(b, "01-setup").await;
    fill(b, "input[name=username]", "ada").await;
    fill(b, "input[name=password]", PASSWORD).await;
    fill(b, "input[name=confirm]", PASSWORD).await;
    click(b, "button[type=submit]").await;
    wait_text(b, "h1", "Dashboard").await;

    // 2. Sign out and in again with the password.
    click(b, "form[action='/logout'] button").await;
    wait_text(b, "h2", "Sign in").await;
    fill(b, "input[name=username]", "ada").await;
    fill(b, "input[name=password]", "not the password").await;
    click(b, "button[type=submit]").await;
    wait_text(b, ".notice.error", "Wrong username or password").await;
    shot(b, "02-sign-in-error").await;
    fill(b, "input[name=username]", "ada").await;
    fill(b, "input[name=password]", PASSWORD).await;
    click(b, "form[action='/login'] button[type=submit]").await;
    wait_text(b, "h1", "Dashboard").await;
    shot(b, "03-dashboard-empty").await;

    // 3. A project (first with a mistake, shown next to the field), an environment, secrets.
    b.goto(&format!("{url}/projects")).await.unwrap();
    fill(b, "#new-project input[name=name]", "Shop!").await;
    fill(
        b,
        "#new-project input[name=compose_path]",
        &compose.display().to_string(),
    )
    .await;
    b.execute(
        "document.querySelector('#new-project form').noValidate = true",
        vec![],
    )
    .await
    .unwrap();
    click(b, "#new-project button[type=submit]").await;
    wait_text(b, "#name-error", "lowercase letters").await;
    shot(b, "04-project-form-error").await;
    fill(b, "#new-project input[name=name]", "shop").await;
    // No registry here: the image is local.
    b.find(Locator::Css("#new-project select[name=pull]"))
        .await
        .unwrap()
        .select_by_value("never")
        .await
        .unwrap();
    click(b, "#new-project button[type=submit]").await;
    wait_text(b, ".notice.ok", "Project created").await;
    click(b, "#environments summary").await;
    fill(b, "#environments input[name=name]", "staging").await;
    click(b, "#environments form.grid-form button[type=submit]").await;
    wait_text(b, ".notice.ok", "Environment added").await;
    // Secrets have their own tab (the project page is tabs).
    click(b, "nav.tabs a[data-testid=tab-secrets]").await;
    wait_text(b, "#secrets", "No secrets yet").await;
    for (key, value, env) in [("DB_PASSWORD", CANARY, "staging"), ("GREETING", "hello", "")] {
        fill(b, "#new-secret input[name=key]", key).await;
        fill(b, "#new-secret textarea[name=value]", value).await;
        b.find(Locator::Css("#new-secret select[name=environment]"))
            .await
            .unwrap()
            .select_by_value(env)
            .await
            .unwrap();
        click(b, "#new-secret button[type=submit]").await;
        wait_text(b, ".notice.ok", "Secret added").await;
    }
    let page = html(b).await;
    assert!(page.contains("DB_PASSWORD") && page.contains("GREETING"));
    shot(b, "05-project").await;

    // 4. An agent for shop/staging; its token is shown once.
    b.goto(&format!("{url}/agents")).await.unwrap();
    fill(b, "#new-agent input[name=name]", "web-1").await;
    click(b, "#new-agent button[type=submit]").await;
    let token = wait_text(b, "#agent-token", "stga_").await.trim().to_owned();
    // The main path is the install.sh one-liner (the token read from the terminal).
    assert!(
        html(b).await.contains("/agent/install.sh"),
        "the install.sh one-liner"
    );
    shot(b, "06-agent-created").await;
    // POST → redirect → GET: a reload shows no token and creates no second agent.
    b.refresh().await.unwrap();
    wait_text(b, ".notice", "shown once").await;
    assert!(!html(b).await.contains(&token), "a reload shows the token again");
    let agents = html(b).await.matches("/agents/").count();
    assert!(agents >= 1);

    // 5. The agent connects; the dashboard shows it online without a reload.
    b.goto(&format!("{url}/")).await.unwrap();
    wait_text(b, "#dashboard-table", "offline").await;
    let _agent = start_real_agent(url, &token, work);
    wait_text(b, "#dashboard-table", "online").await;
    shot(b, "07-dashboard-agent-online").await;

    // 6. Deploy from the project page; the browser lands on the live deployment page.
    b.goto(&format!("{url}/projects/1")).await.unwrap();
    click(b, "button[data-testid='deploy-staging']").await;
    wait_text(b, "h1", "Deployment #1").await;
    // Compose's output streams in over the WebSocket while the deployment is still running
    // (the agent waits 3 s before it verifies and reports).
    wait_text(b, "#log", "shop-staging").await;
    // The status block is swapped in beside the first lines: an element found just before the
    // swap goes stale (read as empty), so read it again.
    let mut status = String::new();
    for _ in 0..40 {
        status = text_of(b, "#deploy-status").await.to_lowercase();
        if !status.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        status.contains("running") || status.contains("queued"),
        "lines must arrive before the end: {status}"
    );
    shot(b, "08-deployment-live").await;
    wait_text(b, "#deploy-status", "success").await;
    wait_text(b, "#deploy-status", "web").await;
    wait_text(b, "#live-indicator", "log complete").await;
    html(b).await;
    // The secret typed into the form reached the container (and no page).
    let env = std::process::Command::new("docker")
        .args([
            "inspect",
            "--format",
            "{{json .Config.Env}}",
            "shop-staging-web-1",
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&env.stdout).contains(&format!("DB_PASSWORD={CANARY}")),
        "the container got the secret"
    );
    // A running service shows no exit code (Docker reports 0 for it): "–" in its column.
    let cells = b
        .execute(
            "const h = [...document.querySelectorAll('h3')].find(e => e.textContent === 'Services'); \
             return [...h.nextElementSibling.querySelectorAll('tbody tr')].map(r => \
               [r.cells[1].textContent.trim(), r.cells[3].textContent.trim()]);",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(cells, json!([["running", "–"]]), "the services table");
    shot(b, "09-deployment-success").await;

    // 7. Each area's steps, in this order, from this state (see `Flow`).
    let f = Flow {
        server,
        b,
        work,
        compose,
    };
    crate::browser_ui::steps(&f).await;
    crate::browser_input::steps(&f).await;
    crate::browser_logs::steps(&f).await;

    // 8. The other main pages, for the record (and the canary).
    for (path, name) in [
        ("/", "10-dashboard"),
        ("/projects", "11-projects"),
        ("/projects/1/deployments", "12-project-history"),
        ("/users", "13-users"),
        ("/audit", "14-audit"),
        ("/tokens", "15-tokens"),
        ("/no/such/page", "16-not-found"),
    ] {
        b.goto(&format!("{url}{path}")).await.unwrap();
        html(b).await;
        shot(b, name).await;
    }

    // 9. On a phone's width no page scrolls sideways (the navigation wraps).
    b.set_window_size(390, 844).await.unwrap();
    for (path, name) in [
        ("/", "17-phone-dashboard"),
        ("/projects/1", "18-phone-project"),
        ("/agents", "19-phone-agents"),
    ] {
        b.goto(&format!("{url}{path}")).await.unwrap();
        html(b).await;
        let wide = b
            .execute(
                "return document.documentElement.scrollWidth - document.documentElement.clientWidth",
                vec![],
            )
            .await
            .unwrap();
        assert!(
            wide.as_i64().unwrap_or(1) <= 0,
            "{path} scrolls sideways by {wide} px on a phone"
        );
        shot(b, name).await;
    }
    b.set_window_size(1280, 900).await.unwrap();

    crate::browser_identity::steps(&f).await;

    // The actions last (after the phone pages, which show project 1): they stop, take down and
    // delete what the flow deployed.
    crate::browser_actions::steps(&f).await;
}
