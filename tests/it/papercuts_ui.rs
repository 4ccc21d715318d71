//! The walkthrough's UI papercuts (issue 15), over real HTTP and real WebSockets: the project
//! tabs (who may open them), history paging, the dashboard header kept live, the no-agent
//! message and its link, and the deployment page's "agent disconnected" note.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::common::{Api, TestAgent, cli_token};
use crate::web_support::{WebClient, WebServer, between};

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A browser socket: the session cookie and a same-origin handshake.
async fn browser_socket(server: &WebServer, web: &WebClient, path: &str) -> Socket {
    let url = format!("{}{path}", server.url.replacen("http", "ws", 1));
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("cookie", web.cookie_header().parse().unwrap());
    req.headers_mut().insert("origin", server.url.parse().unwrap());
    tokio_tungstenite::connect_async(req).await.unwrap().0
}

/// The first text frame containing `needle` (within 10 s), or a panic naming what came.
async fn frame_with(ws: &mut Socket, needle: &str) -> String {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) if t.contains(needle) => return t.to_string(),
                Some(Ok(Message::Text(t))) => seen.push(t.to_string()),
                Some(Ok(_)) => continue,
                other => panic!("socket ended waiting for {needle:?}: {other:?}"),
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("no frame with {needle:?}; got {seen:?}"))
}

/// The next DEPLOY's deployment id (skipping the ACKs of earlier STATUS frames).
pub async fn next_deploy(agent: &mut TestAgent) -> i64 {
    loop {
        let frame = agent.recv().await;
        if frame["type"] == "DEPLOY" {
            return frame["deployment_id"].as_i64().unwrap();
        }
        assert_eq!(frame["type"], "ACK", "{frame}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_header_follows_agents_going_online_and_offline() {
    let server = WebServer::start().await;
    let mut admin = server.admin("root").await;
    let api = Api::new(&server.url, &cli_token(&server.data_dir(), "ops", "admin"));
    let (_, envs) = api.project("shop", &["staging"]).await;
    let (agent_id, token) = api.agent(envs[0], "a1").await;
    let (_, page) = admin.get("/").await;
    assert!(page.contains("0 of 1 agent online"), "{page}");
    assert!(page.contains("id=\"dashboard-summary\""), "{page}");

    let mut ws = browser_socket(&server, &admin, "/ws/dashboard").await;
    let agent = TestAgent::connect(&server.url, &token, Some(vec![])).await;
    api.wait_online(agent_id).await;
    let online = frame_with(&mut ws, "1 of 1 agent online").await;
    // The header is swapped out of band, beside the table.
    assert!(
        online.contains(r#"id="dashboard-summary" hx-swap-oob="true""#),
        "{online}"
    );
    assert!(online.contains("id=\"dashboard-table\""), "{online}");
    drop(agent);
    api.wait_offline(agent_id).await;
    let offline = frame_with(&mut ws, "0 of 1 agent online").await;
    assert!(offline.contains("id=\"dashboard-summary\""), "{offline}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deployment_page_says_when_its_agent_disconnects_and_when_it_is_back() {
    let server = WebServer::start_with(|c| c.deploys.agent_lost_timeout_secs = 77).await;
    let mut admin = server.admin("root").await;
    let api = Api::new(&server.url, &cli_token(&server.data_dir(), "ops", "admin"));
    let (pid, envs) = api.project("shop", &["staging"]).await;
    let (agent_id, token) = api.agent(envs[0], "a1").await;
    let mut agent = TestAgent::connect(&server.url, &token, Some(vec![])).await;
    api.wait_online(agent_id).await;
    let (status, body) = api.post(&format!("/api/deploy/{pid}"), json!({})).await;
    assert_eq!(status, 202, "{body}");
    let id = next_deploy(&mut agent).await;
    agent.log(id, 1, "pulling").await;

    let (_, page) = admin.get(&format!("/deployments/{id}")).await;
    assert!(page.contains("id=\"agent-hint\""), "a place for the note: {page}");
    assert!(!page.contains("Agent disconnected"), "{page}");
    let mut ws = browser_socket(&server, &admin, &format!("/ws/deployments/{id}")).await;
    frame_with(&mut ws, "pulling").await;

    // The agent's socket drops: the note comes at once, naming the configured timeout.
    drop(agent);
    api.wait_offline(agent_id).await;
    let note = frame_with(&mut ws, "Agent disconnected").await;
    assert!(note.contains("waiting up to 77 s"), "{note}");
    assert!(note.contains(r#"id="agent-hint" hx-swap-oob="true""#), "{note}");
    // A reload meanwhile shows it too.
    let (_, page) = admin.get(&format!("/deployments/{id}")).await;
    assert!(page.contains("Agent disconnected, waiting up to 77 s"), "{page}");

    // It comes back still holding the deployment: the note is cleared.
    let mut agent = TestAgent::connect(&server.url, &token, Some(vec![id])).await;
    api.wait_online(agent_id).await;
    let cleared = frame_with(&mut ws, r#"<div id="agent-hint" hx-swap-oob="true"></div>"#).await;
    assert!(!cleared.contains("Agent disconnected"), "{cleared}");
    agent.log(id, 2, "started").await;
    frame_with(&mut ws, "started").await;
    agent.status(id, "SUCCESS").await;
    frame_with(&mut ws, "log complete").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_without_an_agent_says_so_and_links_to_the_preselected_agent_form() {
    let server = WebServer::start().await;
    let mut admin = server.admin("root").await;
    let mut member = server.user(&mut admin, "mia", "member").await;
    let api = Api::new(&server.url, &cli_token(&server.data_dir(), "ops", "admin"));
    let (pid, envs) = api.project("shop", &["staging", "qa"]).await;
    let qa = envs[1];

    // The API names the real route, with the environment's id.
    let (status, body) = api
        .post(&format!("/api/deploy/{pid}"), json!({"environment": "qa"}))
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "no_agent", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("POST /api/environments/{qa}/agents")),
        "{message}"
    );
    assert!(!message.contains("{id}"), "{message}");

    // The page says it in its own words, with a link to the Agents page's form.
    let (status, page) = admin
        .post_form(&format!("/projects/{pid}/deploy"), &[("environment", "qa")])
        .await;
    assert_eq!(status, 422, "{page}");
    let hint = between(&page, "id=\"no-agent\"", "</p>").expect("the no-agent note");
    assert!(hint.contains("has no agent yet"), "{hint}");
    let link = format!("/agents?environment={qa}#new-agent");
    assert!(hint.contains(&format!("href=\"{link}\"")), "{hint}");
    assert!(
        !page.contains("/api/environments/"),
        "no API route in the page: {page}"
    );
    assert!(!page.contains("{id}"), "{page}");
    // On the Overview, beside the deploy buttons.
    assert!(page.contains("id=\"environments\""), "{page}");
    assert!(page.contains("aria-current=\"page\">Overview<"), "{page}");

    // A member cannot create agents: told who can.
    let (status, page) = member
        .post_form(&format!("/projects/{pid}/deploy"), &[("environment", "qa")])
        .await;
    assert_eq!(status, 422);
    assert!(page.contains("An admin can create one"), "{page}");

    // The link opens the form with that environment chosen.
    let (status, page) = admin.get(&link).await;
    assert_eq!(status, 200);
    assert!(
        page.contains(&format!("<option value=\"{qa}\" selected>")),
        "{page}"
    );
    assert!(
        !page.contains(&format!("<option value=\"{}\" selected>", envs[0])),
        "{page}"
    );
    server.stop().await;
}

const TABS: &[(&str, &str, &str)] = &[
    ("", "Overview", "id=\"environments\""),
    ("/deployments", "Deployments", "id=\"history\""),
    ("/secrets", "Secrets", "id=\"new-secret\""),
    ("/agents", "Agents", "id=\"agents\""),
    ("/settings", "Settings", "id=\"settings\""),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tab_opens_for_members_shows_its_part_and_is_closed_to_anonymous_users() {
    let server = WebServer::start().await;
    let mut admin = server.admin("root").await;
    let mut member = server.user(&mut admin, "mia", "member").await;
    let api = Api::new(&server.url, &cli_token(&server.data_dir(), "ops", "admin"));
    let (pid, envs) = api.project("shop", &["staging", "qa"]).await;
    api.agent(envs[0], "web-1").await;
    for (suffix, label, part) in TABS {
        let path = format!("/projects/{pid}{suffix}");
        let (status, page) = member.get(&path).await;
        assert_eq!(status, 200, "{path}");
        assert!(page.contains(part), "{path}: {page}");
        // The tab bar, this tab marked current and only this one.
        assert!(
            page.contains("<nav class=\"tabs\" aria-label=\"Project\">"),
            "{path}"
        );
        assert!(
            page.contains(&format!("aria-current=\"page\">{label}<")),
            "{path}: {page}"
        );
        assert_eq!(
            page.matches("aria-current=\"page\"").count(),
            2,
            "{path}: Projects and this tab"
        );
        // The other tabs' parts are not on this one.
        for (_, other, other_part) in TABS {
            if other != label {
                assert!(!page.contains(other_part), "{path} shows {other}'s {other_part}");
            }
        }
        let (status, body) = WebClient::new(&server.url).get(&path).await;
        assert_eq!(status, 401, "{path} for anonymous users");
        assert!(
            body.contains("action=\"/login\"") && !body.contains("shop"),
            "{path}"
        );
        let (status, _) = member.get(&format!("/projects/999{suffix}")).await;
        assert_eq!(status, 404, "{path} of a missing project");
    }
    // The Agents tab: each environment, with where to create the missing agent (for admins).
    let (_, page) = admin.get(&format!("/projects/{pid}/agents")).await;
    assert!(
        page.contains("web-1") && page.contains("id=\"agents-qa\""),
        "{page}"
    );
    assert!(
        page.contains(&format!("href=\"/agents?environment={}#new-agent\"", envs[1])),
        "{page}"
    );
    // Forms send their visitors back to their tab.
    let (_, _, headers) = admin
        .post_form_headers(
            &format!("/projects/{pid}/secrets"),
            &[
                ("key", "API_KEY"),
                ("value", "v"),
                ("scope", "global"),
                ("environment", ""),
            ],
        )
        .await;
    assert_eq!(
        crate::web_support::location(&headers),
        format!("/projects/{pid}/secrets?done=secret-added#secrets")
    );
    let (_, _, headers) = admin
        .post_form_headers(
            &format!("/environments/{}/retention", envs[0]),
            &[("log_keep_deployments", "12"), ("log_keep_days", "")],
        )
        .await;
    assert_eq!(
        crate::web_support::location(&headers),
        format!("/projects/{pid}/settings?done=retention-saved#settings-staging")
    );
    // A form with errors comes back on its tab.
    let (status, page) = admin
        .post_form(
            &format!("/projects/{pid}/secrets"),
            &[
                ("key", "1BAD"),
                ("value", "v"),
                ("scope", "global"),
                ("environment", ""),
            ],
        )
        .await;
    assert_eq!(status, 422);
    assert!(page.contains("aria-current=\"page\">Secrets<"), "{page}");
    server.stop().await;
}

/// The ids shown in the Deployments tab's table, in order.
fn shown(page: &str) -> Vec<i64> {
    let history = between(page, "id=\"history\"", "</section>").expect("the history section");
    history
        .split("<td><a href=\"/deployments/")
        .skip(1)
        .map(|s| s.split('"').next().unwrap().parse().unwrap())
        .collect()
}

fn link(page: &str, testid: &str) -> Option<String> {
    let at = page.find(&format!("data-testid=\"{testid}\""))?;
    let start = page[..at].rfind("href=\"")? + 6;
    Some(page[start..].split('"').next()?.replace("&amp;", "&"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_pages_older_and_newer_at_its_boundaries() {
    let server = WebServer::start().await;
    let mut admin = server.admin("root").await;
    let api = Api::new(&server.url, &cli_token(&server.data_dir(), "ops", "admin"));
    let (pid, envs) = api.project("shop", &["staging"]).await;
    let (agent_id, token) = api.agent(envs[0], "a1").await;
    let mut agent = TestAgent::connect(&server.url, &token, Some(vec![])).await;
    api.wait_online(agent_id).await;
    let mut deploy = async |n: usize| {
        for _ in 0..n {
            let (status, body) = api.post(&format!("/api/deploy/{pid}"), json!({})).await;
            assert_eq!(status, 202, "{body}");
            let id = next_deploy(&mut agent).await;
            agent.status(id, "SUCCESS").await;
            api.wait_finished(id, Duration::from_secs(10)).await;
        }
    };
    let tab = format!("/projects/{pid}/deployments");

    let (_, page) = admin.get(&tab).await;
    assert!(page.contains("No deployments yet."), "{page}");
    assert!(link(&page, "history-older").is_none() && link(&page, "history-newer").is_none());

    // Exactly one page: no Older link; the Overview shows the latest few and links here.
    deploy(20).await;
    let (_, page) = admin.get(&tab).await;
    assert_eq!(shown(&page), (1..=20).rev().collect::<Vec<_>>());
    assert!(link(&page, "history-older").is_none(), "{page}");
    let (_, overview) = admin.get(&format!("/projects/{pid}")).await;
    assert_eq!(
        overview.matches("<td><a href=\"/deployments/").count(),
        5,
        "{overview}"
    );
    assert_eq!(link(&overview, "all-deployments").as_deref(), Some(tab.as_str()));

    // One more: a second page with the oldest, and back.
    deploy(1).await;
    let (_, page) = admin.get(&tab).await;
    assert_eq!(shown(&page), (2..=21).rev().collect::<Vec<_>>());
    let older = link(&page, "history-older").expect("an Older link");
    assert_eq!(older, format!("{tab}?before=2"));
    let (_, page) = admin.get(&older).await;
    assert_eq!(shown(&page), vec![1]);
    assert!(link(&page, "history-older").is_none());
    assert_eq!(link(&page, "history-newer").as_deref(), Some(tab.as_str()));

    // Three pages: Older and Newer walk the same pages both ways.
    deploy(24).await;
    let (_, page) = admin.get(&tab).await;
    assert_eq!(shown(&page), (26..=45).rev().collect::<Vec<_>>());
    let middle = link(&page, "history-older").unwrap();
    assert_eq!(middle, format!("{tab}?before=26"));
    let (_, page) = admin.get(&middle).await;
    assert_eq!(shown(&page), (6..=25).rev().collect::<Vec<_>>());
    assert_eq!(link(&page, "history-newer").as_deref(), Some(tab.as_str()));
    let last = link(&page, "history-older").unwrap();
    let (_, page) = admin.get(&last).await;
    assert_eq!(shown(&page), (1..=5).rev().collect::<Vec<_>>());
    assert_eq!(link(&page, "history-newer"), Some(middle.clone()));
    assert!(link(&page, "history-older").is_none());
    // Past the end, and a bad cursor.
    let (status, page) = admin.get(&format!("{tab}?before=1")).await;
    assert_eq!(status, 200);
    assert!(page.contains("No older deployments."), "{page}");
    assert_eq!(
        link(&page, "history-newer").as_deref(),
        Some(format!("{tab}?before=21").as_str())
    );
    let (status, _) = admin.get(&format!("{tab}?before=x")).await;
    assert_eq!(status, 400);
    server.stop().await;
}
