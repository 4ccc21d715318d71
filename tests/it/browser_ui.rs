//! The UI papercuts of issue 15 (dashboard header, no-agent message, tabs, paging, …): steps of the real-browser flow in `web_browser` (see `Flow` there for the state
//! they start from).
//!
//! The flow's own agent (`web-1`) is never stopped: the header and the disconnected note are
//! shown with a second, scripted agent of a second project (`papers`), which these steps
//! delete again before they end.

use std::time::Duration;

use fantoccini::Locator;
use serde_json::json;

use crate::browser_support::{click, html, shot, text_of, wait_text};
use crate::common::{Api, TestAgent, cli_token};
use crate::web_browser::Flow;

pub async fn steps(f: &Flow<'_>) {
    tabs(f).await;
    scripted(f).await;
}

/// Each tab of project 1, through the tab bar; on a phone's width the bar wraps.
async fn tabs(f: &Flow<'_>) {
    let (b, url) = (f.b, &f.server.url);
    b.goto(&format!("{url}/projects/1")).await.unwrap();
    wait_text(b, "nav.tabs a[aria-current=page]", "Overview").await;
    wait_text(b, "#env-staging", "deploy staging").await;
    shot(b, "20-tab-overview").await;
    for (tab, part, text, name) in [
        ("deployments", "#history", "#1", "21-tab-deployments"),
        ("secrets", "#secrets", "DB_PASSWORD", "22-tab-secrets"),
        ("agents", "#agents", "web-1", "23-tab-agents"),
        ("settings", "#settings", "Save settings", "24-tab-settings"),
    ] {
        click(b, &format!("nav.tabs a[data-testid=tab-{tab}]")).await;
        wait_text(b, part, text).await;
        let current = text_of(b, "nav.tabs a[aria-current=page]").await;
        assert!(current.eq_ignore_ascii_case(tab), "{tab}: {current}");
        assert!(
            b.current_url()
                .await
                .unwrap()
                .path()
                .ends_with(&format!("/{tab}")),
            "{tab}"
        );
        html(b).await;
        shot(b, name).await;
    }
    // The agents tab shows the flow's agent online.
    b.goto(&format!("{url}/projects/1/agents")).await.unwrap();
    wait_text(b, "#agents-staging", "online").await;
    // One deployment: no Older/Newer links; the Overview links to the whole history.
    b.goto(&format!("{url}/projects/1/deployments")).await.unwrap();
    let page = html(b).await;
    assert!(!page.contains("history-older") && !page.contains("history-newer"));
    b.goto(&format!("{url}/projects/1")).await.unwrap();
    click(b, "a[data-testid=all-deployments]").await;
    wait_text(b, "#history", "#1").await;

    b.set_window_size(390, 844).await.unwrap();
    for (path, name) in [
        ("/projects/1/settings", "25-phone-tabs"),
        ("/projects/1/deployments", ""),
    ] {
        b.goto(&format!("{url}{path}")).await.unwrap();
        wait_text(b, "nav.tabs", "Settings").await;
        let wide = b
            .execute(
                "return document.documentElement.scrollWidth - document.documentElement.clientWidth",
                vec![],
            )
            .await
            .unwrap();
        assert!(
            wide.as_i64().unwrap_or(1) <= 0,
            "{path} scrolls sideways by {wide} px"
        );
        if !name.is_empty() {
            shot(b, name).await;
        }
    }
    b.set_window_size(1280, 1000).await.unwrap();
}

/// With a second project and a scripted agent: the live header, paging, the disconnected note,
/// the no-agent message; then the project is deleted again.
async fn scripted(f: &Flow<'_>) {
    let (b, url) = (f.b, &f.server.url);
    let api = Api::new(url, &cli_token(&f.server.data_dir(), "ui-steps", "admin"));
    let (pid, envs) = api.project("papers", &["qa", "empty"]).await;
    let (agent_id, token) = api.agent(envs[0], "scripted-1").await;

    // The dashboard's header follows the second agent coming online, without a reload.
    b.goto(&format!("{url}/")).await.unwrap();
    wait_text(b, "#dashboard-summary", "1 of 2 agents online").await;
    let mut agent = TestAgent::connect(url, &token, Some(vec![])).await;
    api.wait_online(agent_id).await;
    wait_text(b, "#dashboard-summary", "2 of 2 agents online").await;

    // More than a page of history, made quickly through the API.
    let mut last = 0;
    for _ in 0..21 {
        let (status, body) = api
            .post(&format!("/api/deploy/{pid}"), json!({"environment": "qa"}))
            .await;
        assert_eq!(status, 202, "{body}");
        last = crate::papercuts_ui::next_deploy(&mut agent).await;
        agent.status(last, "SUCCESS").await;
        api.wait_finished(last, Duration::from_secs(10)).await;
    }
    b.goto(&format!("{url}/projects/{pid}/deployments"))
        .await
        .unwrap();
    wait_text(b, "#history", &format!("#{last}")).await;
    click(b, "a[data-testid=history-older]").await;
    wait_text(b, "a[data-testid=history-newer]", "Newer").await;
    let older = html(b).await;
    assert!(
        !older.contains(&format!("/deployments/{last}\"")),
        "page 2 starts older"
    );
    assert!(!older.contains("history-older"), "two pages only");
    shot(b, "26-history-page-2").await;
    b.refresh().await.unwrap();
    click(b, "a[data-testid=history-newer]").await;
    wait_text(b, "#history", &format!("#{last}")).await;

    // An agent whose socket drops mid-deploy: the page says so at once, and clears it.
    let (status, body) = api
        .post(&format!("/api/deploy/{pid}"), json!({"environment": "qa"}))
        .await;
    assert_eq!(status, 202, "{body}");
    let id = crate::papercuts_ui::next_deploy(&mut agent).await;
    agent.log(id, 1, "pulling").await;
    b.goto(&format!("{url}/deployments/{id}")).await.unwrap();
    wait_text(b, "#log", "pulling").await;
    drop(agent);
    api.wait_offline(agent_id).await;
    wait_text(b, "#agent-hint", "agent disconnected, waiting up to 600 s").await;
    shot(b, "27-agent-disconnected").await;
    let mut agent = TestAgent::connect(url, &token, Some(vec![id])).await;
    api.wait_online(agent_id).await;
    crate::common::wait_for("the note to clear", Duration::from_secs(10), || async {
        text_of(b, "#agent-hint").await.trim().is_empty().then_some(())
    })
    .await;
    agent.status(id, "SUCCESS").await;
    wait_text(b, "#live-indicator", "log complete").await;

    // The header moves when the scripted agent stops (the flow's agent stays up).
    b.goto(&format!("{url}/")).await.unwrap();
    wait_text(b, "#dashboard-summary", "2 of 2 agents online").await;
    drop(agent);
    wait_text(b, "#dashboard-summary", "1 of 2 agents online").await;
    shot(b, "28-dashboard-header-live").await;

    // Deploying where there is no agent: said in the UI's words, with a link that preselects.
    b.goto(&format!("{url}/projects/{pid}")).await.unwrap();
    click(b, "button[data-testid='deploy-empty']").await;
    wait_text(b, "#no-agent", "has no agent yet").await;
    assert!(!html(b).await.contains("/api/environments/"));
    shot(b, "29-no-agent").await;
    click(b, "#no-agent a[data-testid=create-agent]").await;
    wait_text(b, "h1", "Agents").await;
    let chosen = b
        .find(Locator::Css("#new-agent select[name=environment_id]"))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap();
    assert_eq!(chosen.as_deref(), Some(envs[1].to_string().as_str()));

    // Back to the state the steps found.
    let (status, body) = api.delete(&format!("/api/projects/{pid}?force=true")).await;
    assert_eq!(status, 204, "{body}");
    b.goto(&format!("{url}/")).await.unwrap();
    wait_text(b, "#dashboard-summary", "1 of 1 agent online").await;
}
