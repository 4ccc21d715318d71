//! Service and environment actions, deleting (issue 15): restart, stop/start, down with
//! confirmation, delete: steps of the real-browser flow in `web_browser` (see `Flow` there for the
//! state they start from). They run last: they take down and delete what the flow deployed.

use std::process::Command;

use crate::browser_support::{click, fill, html, shot, wait_text};
use crate::common::{WAIT, wait_for};
use crate::web_browser::Flow;

fn started_at() -> String {
    let out = Command::new("docker")
        .args(["inspect", "-f", "{{.State.StartedAt}}", "shop-staging-web-1"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn containers() -> usize {
    let out = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            "label=com.docker.compose.project=shop-staging",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

pub async fn steps(f: &Flow<'_>) {
    let (b, url) = (f.b, &f.server.url);
    b.goto(&format!("{url}/projects/1")).await.unwrap();
    wait_text(b, "#runtime-1", "running").await;

    // Restart `web` from its row in the runtime table: the container really restarted.
    let before = started_at();
    click(b, "button[data-testid='restart-1-web']").await;
    wait_text(b, ".notice.ok", "runtime table shows what runs now").await;
    assert_ne!(started_at(), before, "restarted");
    html(b).await;
    shot(b, "50-service-restarted").await;

    // Stop, then start: the table follows (live, from the agent's RUNTIME).
    click(b, "button[data-testid='stop-1-web']").await;
    wait_text(b, ".notice.ok", "Done").await;
    wait_text(b, "#runtime-1", "exited").await;
    shot(b, "51-service-stopped").await;
    click(b, "button[data-testid='start-1-web']").await;
    wait_text(b, ".notice.ok", "Done").await;
    wait_text(b, "#runtime-1", "running").await;

    // A production environment's "Take down" wants its name typed: a wrong one sends nothing.
    b.execute(
        "document.querySelectorAll('details').forEach(d => d.open = true)",
        vec![],
    )
    .await
    .unwrap();
    fill(
        b,
        "form[action='/projects/1/environments'] input[name=name]",
        "production",
    )
    .await;
    click(b, "form[action='/projects/1/environments'] button[type=submit]").await;
    wait_text(b, ".notice.ok", "Environment added").await;
    b.execute(
        "document.querySelectorAll('details').forEach(d => d.open = true)",
        vec![],
    )
    .await
    .unwrap();
    fill(
        b,
        "#env-production input[name=confirm][data-testid^=down-confirm]",
        "prod",
    )
    .await;
    shot(b, "52-production-take-down").await;
    click(b, "#env-production button[data-testid^=down-]").await;
    wait_text(b, "[data-testid=action-error]", "The name did not match").await;
    wait_text(b, "[data-testid=action-error]", "Nothing was sent").await;
    shot(b, "53-confirmation-refused").await;

    // Take `staging` down: its containers are gone from `docker ps`.
    b.goto(&format!("{url}/projects/1")).await.unwrap();
    b.execute(
        "document.querySelectorAll('details').forEach(d => d.open = true)",
        vec![],
    )
    .await
    .unwrap();
    click(b, "#env-staging button[data-testid='down-1']").await;
    wait_text(b, ".notice.ok", "Environment taken down").await;
    assert_eq!(containers(), 0, "staging's containers are removed");
    wait_text(b, "#runtime-1", "missing").await;
    shot(b, "54-staging-down").await;

    // Bring it back, then delete the project with its name typed: the stack is taken down first.
    click(b, "button[data-testid='deploy-staging']").await;
    wait_text(b, "h1", "Deployment #").await;
    wait_text(b, "#deploy-status", "success").await;
    wait_for("shop-staging running again", WAIT, || async {
        (containers() == 1).then_some(())
    })
    .await;
    // Deleting lives on the Settings tab.
    b.goto(&format!("{url}/projects/1/settings")).await.unwrap();
    b.execute(
        "document.querySelectorAll('details').forEach(d => d.open = true)",
        vec![],
    )
    .await
    .unwrap();
    fill(b, "input[data-testid='delete-project-confirm']", "shop").await;
    shot(b, "55-delete-project").await;
    click(b, "button[data-testid='delete-project']").await;
    wait_text(b, ".notice.ok", "Project deleted").await;
    assert_eq!(containers(), 0, "the stack is gone from docker ps");
    assert!(
        !html(b).await.contains("/projects/1\""),
        "the project is gone from the list"
    );
    shot(b, "56-project-deleted").await;
}
