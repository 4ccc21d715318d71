//! Container logs in the browser (issue 15): masked, followed live: steps of the real-browser
//! flow in `web_browser` (see `Flow` there for the state they start from).

use crate::browser_support::{CANARY, click, html, shot, wait_text};
use crate::common::{WAIT, wait_for};
use crate::web_browser::Flow;

/// Write a line into the running `web` container's own log (PID 1's stdout).
fn print_in_container(line: &str) {
    let out = std::process::Command::new("docker")
        .args(["exec", "shop-staging-web-1", "sh", "-c"])
        .arg(format!("echo {line} > /proc/1/fd/1"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker exec: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub async fn steps(f: &Flow<'_>) {
    let (b, url) = (f.b, &f.server.url);
    // From the runtime table of the Overview to the service's logs.
    b.goto(&format!("{url}/projects/1")).await.unwrap();
    wait_text(b, "#env-staging", "web").await;
    click(b, "a[data-testid=logs-1-web]").await;
    wait_text(b, "h1", "Logs of").await;
    // The service printed `db=<canary>`: the page shows it masked (html() fails on the canary).
    let log = wait_text(b, "#container-log", "db=").await;
    assert!(log.contains("db=***"), "masked: {log}");
    assert!(log.contains("started"), "{log}");
    html(b).await;
    shot(b, "40-container-logs").await;

    // Follow: a line the container prints after the page opened arrives live, masked too.
    click(b, "a[data-testid=logs-follow]").await;
    wait_text(b, "#follow-status", "follow").await;
    let b2 = b.clone();
    wait_for("the follow socket to show the tail", WAIT, || {
        let b = b2.clone();
        async move {
            crate::browser_support::text_of(&b, "#container-log")
                .await
                .contains("db=")
                .then_some(())
        }
    })
    .await;
    print_in_container("followed-line-1");
    print_in_container(&format!("leak={CANARY}"));
    wait_text(b, "#container-log", "followed-line-1").await;
    let log = wait_text(b, "#container-log", "leak=").await;
    assert!(log.contains("leak=***"), "masked while following: {log}");
    html(b).await;
    shot(b, "41-container-logs-follow").await;
    click(b, "a[data-testid=logs-unfollow]").await;
    wait_text(b, "a[data-testid=logs-follow]", "Follow").await;
}
