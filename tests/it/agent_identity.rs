//! The agent's identity on the wire, against a real appliance over real sockets: the recipient a
//! HELLO offers is pinned; DEPLOY secrets are sealed to it (a frame holds no value in clear); a
//! different identity is refused, recorded and audited, and an admin (only) can reset the pin; a
//! token used from a second connection is recorded; an agent too old to offer a recipient is sent
//! no DEPLOY. (The real agent on a real engine through a frame-capturing proxy is in e2e_engine.)

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{Api, TestAgent, WAIT, cli_token, wait_for};
use crate::web_support::WebServer;
use stagely::agents::{CLOSE_IDENTITY_MISMATCH, CLOSE_IDENTITY_RESET};
use stagely_agent::identity::{AgentIdentity, OpenError};

const CANARY: &str = "identity-canary-3f9a1c";

/// A web server, an admin API, a project `shop` with environment `prod`, a secret and an agent.
async fn setup() -> (WebServer, Api, i64, i64, String) {
    let server = WebServer::start().await;
    let api = Api::new(&server.url, &cli_token(&server.data_dir(), "root", "admin"));
    let (pid, envs) = api.project("shop", &["prod"]).await;
    api.ok(
        &format!("/api/projects/{pid}/secrets"),
        json!({"key": "CANARY", "value": CANARY, "scope": "global"}),
        201,
    )
    .await;
    let (agent_id, token) = api.agent(envs[0], "a").await;
    (server, api, pid, agent_id, token)
}

async fn agent_json(api: &Api, id: i64) -> Value {
    let (_, agents) = api.get("/api/agents").await;
    agents
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == id)
        .cloned()
        .unwrap()
}

/// `(action, detail)` of every audit entry about agents, oldest first.
fn audit(server: &WebServer) -> Vec<(String, String)> {
    let db = crate::common::open_db(&server.data_dir());
    db.read_blocking(|c| {
        let mut stmt =
            c.prepare("SELECT action, detail FROM audit_log WHERE action LIKE 'agent.%' ORDER BY id")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok::<_, stagely::db::DbError>(rows)
    })
    .unwrap()
}

fn count(audit: &[(String, String)], action: &str) -> usize {
    audit.iter().filter(|(a, _)| a == action).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_recipient_is_pinned_and_deploy_secrets_are_sealed_to_it() {
    let (server, api, pid, agent_id, token) = setup().await;
    let mut agent = TestAgent::connect(&api.url, &token, Some(vec![])).await;
    api.wait_online(agent_id).await;
    let a = agent_json(&api, agent_id).await;
    assert_eq!(a["recipient"], agent.identity.recipient(), "{a}");
    assert!(a["recipient_pinned_at"].is_string(), "{a}");
    assert_eq!(a["address"], "127.0.0.1", "{a}");

    let (status, body) = api.post(&format!("/api/deploy/{pid}"), json!({})).await;
    assert_eq!(status, 202, "{body}");
    // The frame as it came off the socket: no value in clear anywhere in it.
    let frame = agent.recv().await;
    let text = frame.to_string();
    assert!(!text.contains(CANARY), "a clear secret on the wire: {text}");
    assert!(frame.get("secrets").is_none());
    // Only this agent's identity opens it, and only for this deployment and project.
    assert_eq!(agent.secrets(&frame)[0]["value"], CANARY);
    let project: stagely_protocol::ProjectSpec = serde_json::from_value(frame["project"].clone()).unwrap();
    let sealed = frame["sealed_secrets"].as_str().unwrap();
    let id = frame["deployment_id"].as_i64().unwrap();
    assert_eq!(
        AgentIdentity::generate().open(sealed, id, &project),
        Err(OpenError::NotForThisAgent),
        "a captured frame is of no use without the agent's identity"
    );
    assert_eq!(
        agent.identity.open(sealed, id + 1, &project),
        Err(OpenError::Mismatch),
        "nor pasted into another deployment"
    );
    // The appliance still masks with its own copy.
    agent.log(id, 1, &format!("leak {CANARY}")).await;
    agent.status(id, "SUCCESS").await;
    assert_eq!(agent.recv().await["type"], "ACK");
    let (_, logs) = api.get(&format!("/api/deployments/{id}/logs")).await;
    assert!(!logs.to_string().contains(CANARY), "{logs}");

    let audit = audit(&server);
    assert_eq!(count(&audit, "agent.identity_pinned"), 1, "{audit:?}");
    assert_eq!(count(&audit, "agent.second_connection"), 0, "{audit:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_identity_is_refused_recorded_and_only_an_admin_resets_the_pin() {
    let (server, api, pid, agent_id, token) = setup().await;
    let mut genuine = TestAgent::connect(&api.url, &token, Some(vec![])).await;
    api.wait_online(agent_id).await;
    let pinned = genuine.identity.recipient().to_owned();

    // Someone with the token but not the identity file: refused before it can replace anything.
    let stranger = AgentIdentity::generate();
    let mut thief = TestAgent::raw(&api.url, &token).await;
    thief
        .hello(Some(vec![]), Some(stranger.recipient()), "elsewhere")
        .await;
    let err = thief.recv().await;
    assert_eq!(err["code"], "identity_mismatch", "{err}");
    assert!(err["message"].as_str().unwrap().contains("reset"), "{err}");
    assert_eq!(thief.closed_reason().await, CLOSE_IDENTITY_MISMATCH);
    // An old-style HELLO without a recipient is no way around the pin.
    let mut downgrade = TestAgent::raw(&api.url, &token).await;
    downgrade.hello(Some(vec![]), None, "elsewhere").await;
    assert_eq!(downgrade.recv().await["code"], "identity_mismatch");
    assert_eq!(downgrade.closed_reason().await, CLOSE_IDENTITY_MISMATCH);

    // The genuine agent is still the one connected, and still the one deploys go to.
    let a = agent_json(&api, agent_id).await;
    assert_eq!(
        (a["online"].as_bool(), a["recipient"].as_str()),
        (Some(true), Some(pinned.as_str()))
    );
    // The agent shows the last refusal (the downgrade); the audit has both.
    let mismatch = a["identity_mismatch"]["detail"].as_str().unwrap();
    assert!(
        mismatch.contains("no recipient") && mismatch.contains("elsewhere"),
        "{a}"
    );
    assert!(!mismatch.contains(&token), "never the token: {mismatch}");
    let (status, body) = api.post(&format!("/api/deploy/{pid}"), json!({})).await;
    assert_eq!(status, 202, "{body}");
    let deploy = genuine.recv().await;
    assert_eq!(genuine.secrets(&deploy)[0]["value"], CANARY);
    let id = deploy["deployment_id"].as_i64().unwrap();
    genuine.status(id, "SUCCESS").await;
    assert_eq!(genuine.recv().await["type"], "ACK");

    let audit_now = audit(&server);
    assert_eq!(count(&audit_now, "agent.identity_mismatch"), 2, "{audit_now:?}");
    assert!(
        audit_now.iter().any(|(a, d)| a == "agent.identity_mismatch"
            && d.contains(stranger.recipient())
            && d.contains(&pinned)),
        "{audit_now:?}"
    );
    assert!(audit_now.iter().all(|(_, d)| !d.contains(&token)));

    // The agent's page shows the pin and the refusal.
    let mut admin = server.admin("root").await;
    let (status, page) = admin.get(&format!("/agents/{agent_id}")).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains(&pinned), "pinned recipient shown");
    assert!(page.contains("identity-mismatch") && page.contains("no recipient (an old agent)"));
    assert!(
        page.contains(&format!("/agents/{agent_id}/identity/reset")),
        "reset button"
    );

    // A member may not reset it, by API or by the page's form.
    let mut member = server.user(&mut admin, "maria", "member").await;
    let member_api = api.with_token(&cli_token(&server.data_dir(), "m", "member"));
    let (status, _) = member_api
        .post(&format!("/api/agents/{agent_id}/identity/reset"), json!({}))
        .await;
    assert_eq!(status, 403);
    let (status, _) = member
        .post_form(&format!("/agents/{agent_id}/identity/reset"), &[])
        .await;
    assert_eq!(status, 403);
    let (status, page) = member.get(&format!("/agents/{agent_id}")).await;
    assert_eq!(status, 200);
    assert!(!page.contains("/identity/reset"), "no reset button for a member");
    assert_eq!(agent_json(&api, agent_id).await["recipient"], pinned.as_str());

    // The admin resets it (after reinstalling the target, say): the live connection is closed,
    // and the next connection pins whatever it offers.
    let (status, body) = api
        .post(&format!("/api/agents/{agent_id}/identity/reset"), json!({}))
        .await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(genuine.closed_reason().await, CLOSE_IDENTITY_RESET);
    let a = agent_json(&api, agent_id).await;
    assert!(
        a["recipient"].is_null() && a["identity_mismatch"].is_null(),
        "{a}"
    );
    let (status, body) = api
        .post(&format!("/api/agents/{agent_id}/identity/reset"), json!({}))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("not_pinned"))
    );

    let mut reinstalled = TestAgent::raw(&api.url, &token).await;
    reinstalled
        .hello(Some(vec![]), Some(stranger.recipient()), "reinstalled")
        .await;
    api.wait_online(agent_id).await;
    assert_eq!(
        agent_json(&api, agent_id).await["recipient"],
        stranger.recipient()
    );
    // The page's form does the same, with the session's CSRF token.
    let (status, _) = admin
        .post_form(&format!("/agents/{agent_id}/identity/reset"), &[])
        .await;
    assert_eq!(status, 303);
    assert_eq!(reinstalled.closed_reason().await, CLOSE_IDENTITY_RESET);

    let audit = audit(&server);
    assert_eq!(count(&audit, "agent.identity_reset"), 2, "{audit:?}");
    assert_eq!(count(&audit, "agent.identity_pinned"), 2, "{audit:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_with_the_same_token_is_recorded_and_shown() {
    let (server, api, _pid, agent_id, token) = setup().await;
    let mut first = TestAgent::connect(&api.url, &token, Some(vec![])).await;
    api.wait_online(agent_id).await;

    // A plain reconnect from the same host is not a second connection.
    drop(first);
    let api2 = api.clone();
    wait_for("agent offline", WAIT, || {
        let api = api2.clone();
        async move { (agent_json(&api, agent_id).await["online"] == false).then_some(()) }
    })
    .await;
    first = TestAgent::connect(&api.url, &token, Some(vec![])).await;
    api.wait_online(agent_id).await;
    assert_eq!(count(&audit(&server), "agent.second_connection"), 0);

    // The same token (and identity: a copied work dir) while the first is live: recorded, and
    // the newcomer replaces the old connection (as a reconnect after a network blip must).
    let mut second = TestAgent::raw(&api.url, &token).await;
    let recipient = second.identity.recipient().to_owned();
    second.hello(Some(vec![]), Some(&recipient), "copy-host").await;
    assert_eq!(first.closed_reason().await, stagely_protocol::CLOSE_REPLACED);
    api.wait_online(agent_id).await;
    let a = agent_json(&api, agent_id).await;
    let seen = a["second_connection"]["detail"].as_str().unwrap_or_default();
    assert!(
        seen.contains("copy-host") && seen.contains("test-host") && seen.contains("127.0.0.1"),
        "{a}"
    );
    assert!(seen.contains("replaced"), "{seen}");
    assert!(a["second_connection"]["at"].is_string());
    let audit_now = audit(&server);
    assert_eq!(count(&audit_now, "agent.second_connection"), 1, "{audit_now:?}");
    assert!(audit_now.iter().all(|(_, d)| !d.contains(&token)));

    // Another host within the offline window of the last connection: recorded too.
    drop(second);
    let api2 = api.clone();
    wait_for("agent offline", WAIT, || {
        let api = api2.clone();
        async move { (agent_json(&api, agent_id).await["online"] == false).then_some(()) }
    })
    .await;
    let mut third = TestAgent::raw(&api.url, &token).await;
    third.hello(Some(vec![]), Some(&recipient), "third-host").await;
    api.wait_online(agent_id).await;
    let detail = agent_json(&api, agent_id).await["second_connection"]["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        detail.contains("third-host") && detail.contains("after"),
        "{detail}"
    );
    assert_eq!(count(&audit(&server), "agent.second_connection"), 2);

    let mut admin = server.admin("root").await;
    let (_, page) = admin.get(&format!("/agents/{agent_id}")).await;
    assert!(
        page.contains("second-connection") && page.contains("third-host"),
        "{page:.300}"
    );
    drop(third);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_too_old_to_offer_a_recipient_is_sent_no_deploy() {
    let (server, api, pid, agent_id, token) = setup().await;
    let mut old = TestAgent::raw(&api.url, &token).await;
    old.hello(Some(vec![]), None, "old-host").await;
    api.wait_online(agent_id).await;
    let (status, body) = api.post(&format!("/api/deploy/{pid}"), json!({})).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "agent_too_old");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("agent too old: no age recipient"),
        "{body}"
    );
    assert!(
        old.recv_within(Duration::from_millis(500)).await.is_none(),
        "no DEPLOY (and so no secret) went to it"
    );
    let (_, deployments) = api.get("/api/deployments").await;
    assert_eq!(deployments.as_array().map(Vec::len), Some(0), "{deployments}");
    let mut admin = server.admin("root").await;
    let (_, page) = admin.get(&format!("/agents/{agent_id}")).await;
    assert!(page.contains("too old"), "the page says why");

    // Upgraded in place: it offers a recipient, which is pinned, and deploys work.
    drop(old);
    let mut upgraded = TestAgent::connect(&api.url, &token, Some(vec![])).await;
    let api2 = api.clone();
    wait_for("recipient pinned", WAIT, || {
        let api = api2.clone();
        async move { agent_json(&api, agent_id).await["recipient"].as_str().map(|_| ()) }
    })
    .await;
    let (status, _) = api.post(&format!("/api/deploy/{pid}"), json!({})).await;
    assert_eq!(status, 202);
    let deploy = upgraded.recv().await;
    assert_eq!(upgraded.secrets(&deploy)[0]["value"], CANARY);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_with_a_malformed_recipient_is_refused() {
    let (server, api, _pid, agent_id, token) = setup().await;
    let mut agent = TestAgent::raw(&api.url, &token).await;
    agent.hello(None, Some("age1notarecipient"), "h").await;
    assert_eq!(agent.recv().await["code"], "bad_message");
    assert_eq!(agent.closed_reason().await, "invalid HELLO recipient");
    assert!(agent_json(&api, agent_id).await["recipient"].is_null());
    server.stop().await;
}
