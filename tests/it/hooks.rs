//! Push webhooks over real HTTP to a real appliance: bodies signed exactly as GitHub, GitLab
//! and Gitea/Forgejo sign them (HMAC-SHA256 over the raw bytes, computed here independently of
//! the appliance's code), a protocol-level agent receiving the DEPLOY.

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::common::{Api, ServerProcess, TestAgent, TestServer, admin_token, cli_token};

const A: &str = "1111111111111111111111111111111111111111";
const B: &str = "2222222222222222222222222222222222222222";
const C: &str = "3333333333333333333333333333333333333333";
const ZERO: &str = "0000000000000000000000000000000000000000";
const QUIET: Duration = Duration::from_millis(400);

fn hmac_hex(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// A hook sender for one project.
struct Hook {
    url: String,
    project_id: i64,
    http: reqwest::Client,
}

impl Hook {
    fn new(url: &str, project_id: i64) -> Hook {
        Hook {
            url: url.to_owned(),
            project_id,
            http: reqwest::Client::new(),
        }
    }

    async fn send(&self, provider: &str, headers: &[(&str, String)], body: &[u8]) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}/api/hooks/{provider}/{}", self.url, self.project_id))
            .header("content-type", "application/json")
            .body(body.to_vec());
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// As GitHub sends it: `X-Hub-Signature-256: sha256=<hex>`.
    async fn github(&self, secret: &str, event: &str, delivery: &str, body: &Value) -> (u16, Value) {
        let raw = body.to_string().into_bytes();
        let sig = format!("sha256={}", hmac_hex(secret, &raw));
        self.send(
            "github",
            &[
                ("x-github-event", event.into()),
                ("x-github-delivery", delivery.into()),
                ("x-hub-signature-256", sig),
            ],
            &raw,
        )
        .await
    }
}

fn push(git_ref: &str, after: &str, pusher: &str) -> Value {
    json!({"ref": git_ref, "before": ZERO, "after": after, "deleted": false, "created": false,
           "pusher": {"name": pusher, "email": "x@example.com"}, "sender": {"login": pusher},
           "repository": {"full_name": "acme/shop"}, "commits": []})
}

async fn rotate(api: &Api, pid: i64) -> String {
    let v = api
        .ok(&format!("/api/projects/{pid}/webhook"), json!({}), 201)
        .await;
    assert!(
        v["url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/api/hooks/github/{pid}")),
        "{v}"
    );
    assert!(
        v["urls"]["gitlab"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/api/hooks/gitlab/{pid}"))
    );
    assert!(
        v["urls"]["gitea"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/api/hooks/gitea/{pid}"))
    );
    let secret = v["secret"].as_str().unwrap().to_owned();
    assert_eq!(secret.len(), 64, "32 random bytes, hex");
    secret
}

async fn audit_actions(data: &std::path::Path) -> Vec<(String, String, String)> {
    let db = crate::common::open_db(data);
    db.read_blocking(|c| {
        let mut stmt = c.prepare("SELECT actor, action, detail FROM audit_log ORDER BY id")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok::<_, stagely::db::DbError>(rows)
    })
    .unwrap()
}

async fn deployments(api: &Api) -> Vec<Value> {
    let (_, v) = api.get("/api/deployments").await;
    v.as_array().unwrap().clone()
}

/// Finish a deployment as the agent would (so the environment may deploy again).
async fn succeed(agent: &mut TestAgent, id: i64) {
    agent.status(id, "SUCCESS").await;
    let ack = agent.recv().await;
    assert_eq!(ack, json!({"type": "ACK", "deployment_id": id}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_github_push_deploys_exactly_the_pushed_commit_once() {
    let server = TestServer::start().await;
    let api = &server.api;
    let (pid, envs) = api.project("shop", &["staging", "production", "manual"]).await;
    let (other_pid, _) = api.project("other", &["x"]).await;
    let (_, env) = api
        .patch(
            &format!("/api/environments/{}", envs[0]),
            json!({"deploy_on_push": true}),
        )
        .await;
    assert_eq!(
        (env["deploy_on_push"].clone(), env["deploy_on_tag"].clone()),
        (json!(true), Value::Null)
    );
    let (s, env) = api
        .patch(
            &format!("/api/environments/{}", envs[1]),
            json!({"deploy_on_tag": "v*"}),
        )
        .await;
    assert_eq!((s, env["deploy_on_tag"].clone()), (200, json!("v*")), "{env}");
    let mut agents = Vec::new();
    for (i, env_id) in envs.iter().enumerate() {
        let (agent_id, token) = api.agent(*env_id, &format!("a{i}")).await;
        let agent = TestAgent::connect(&api.url, &token, Some(vec![])).await;
        api.wait_online(agent_id).await;
        agents.push(agent);
    }
    let (_, info) = api.get(&format!("/api/projects/{pid}/webhook")).await;
    assert_eq!(info["configured"], false, "{info}");
    let secret = rotate(api, pid).await;
    let hook = Hook::new(&api.url, pid);

    // A push to main (the staging environment's branch): staging deploys A, nothing else does.
    let (s, v) = hook
        .github(&secret, "push", "d-1", &push("refs/heads/main", A, "octo-cat"))
        .await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(v["result"], "deployed");
    assert_eq!(v["deployments"][0]["environment"], "staging");
    let id = v["deployments"][0]["deployment_id"].as_i64().unwrap();
    let deploy = agents[0].recv().await;
    assert_eq!(deploy["type"], "DEPLOY");
    assert_eq!(deploy["deployment_id"], id);
    assert_eq!(
        deploy["project"]["git_ref"], A,
        "the agent checks out the pushed sha"
    );
    agents[0].secrets(&deploy);
    let (_, d) = api.get(&format!("/api/deployments/{id}")).await;
    assert_eq!(d["triggered_by"], "github:octo-cat", "{d}");
    assert_eq!(d["commit"], A, "{d}");
    assert_eq!(d["git_ref"], "main", "{d}");
    for other in &mut agents[1..] {
        assert!(other.recv_within(QUIET).await.is_none());
    }

    // While it runs, another push waits in the environment's queue and runs once A ends.
    let (s, v) = hook
        .github(&secret, "push", "d-busy", &push("refs/heads/main", B, "octo-cat"))
        .await;
    assert_eq!((s, v["result"].clone()), (202, json!("deployed")), "{v}");
    assert_eq!(v["deployments"][0]["status"], "waiting", "{v}");
    let waiting = v["deployments"][0]["deployment_id"].as_i64().unwrap();
    agents[0].status(id, "SUCCESS").await;
    // A's ACK and B's DEPLOY, in either order.
    let (first, second) = (agents[0].recv().await, agents[0].recv().await);
    let (ack, next) = if first["type"] == "ACK" {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(ack, json!({"type": "ACK", "deployment_id": id}));
    assert_eq!(
        (next["type"].clone(), next["deployment_id"].clone()),
        (json!("DEPLOY"), json!(waiting))
    );
    assert_eq!(
        next["project"]["git_ref"], B,
        "the queued push deploys its own sha"
    );
    succeed(&mut agents[0], waiting).await;

    // The same delivery again (GitHub's "Redeliver", or a replay): nothing.
    let (s, v) = hook
        .github(&secret, "push", "d-1", &push("refs/heads/main", A, "octo-cat"))
        .await;
    assert_eq!((s, v["result"].clone()), (200, json!("duplicate")), "{v}");
    assert!(
        agents[0].recv_within(QUIET).await.is_none(),
        "a replay deploys nothing"
    );

    // ping, another branch, a delete: 200 and nothing.
    let (s, v) = hook
        .github(
            &secret,
            "ping",
            "d-ping",
            &json!({"zen": "Keep it logically awesome."}),
        )
        .await;
    assert_eq!((s, v["result"].clone()), (200, json!("ignored")), "{v}");
    let (s, v) = hook
        .github(&secret, "push", "d-2", &push("refs/heads/feature", B, "x"))
        .await;
    assert_eq!((s, v["result"].clone()), (200, json!("ignored")), "{v}");
    let mut deleted = push("refs/heads/main", ZERO, "x");
    deleted["deleted"] = json!(true);
    let (s, v) = hook.github(&secret, "push", "d-3", &deleted).await;
    assert_eq!((s, v["result"].clone()), (200, json!("ignored")), "{v}");
    assert!(agents[0].recv_within(QUIET).await.is_none());

    // A tag matching production's glob deploys the tag's commit (head_commit for an annotated
    // tag, whose `after` is the tag object); a tag that does not match does nothing.
    let mut tag = push("refs/tags/v1.2.0", C, "releaser");
    tag["head_commit"] = json!({"id": B});
    let (s, v) = hook.github(&secret, "push", "d-4", &tag).await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(v["deployments"][0]["environment"], "production", "{v}");
    let deploy = agents[1].recv().await;
    assert_eq!(deploy["project"]["git_ref"], B);
    let tag_id = deploy["deployment_id"].as_i64().unwrap();
    succeed(&mut agents[1], tag_id).await;
    let (_, d) = api.get(&format!("/api/deployments/{tag_id}")).await;
    assert_eq!(
        (d["git_ref"].clone(), d["triggered_by"].clone()),
        (json!("v1.2.0"), json!("github:releaser"))
    );
    let (s, v) = hook
        .github(&secret, "push", "d-5", &push("refs/tags/release-1", C, "x"))
        .await;
    assert_eq!((s, v["result"].clone()), (200, json!("ignored")), "{v}");
    assert!(agents[1].recv_within(QUIET).await.is_none());
    assert!(
        agents[2].recv_within(QUIET).await.is_none(),
        "deploy_on_push false: nothing"
    );

    // Bad, missing or wrong-project signatures: 401 bad_signature, no deployment.
    let before = deployments(api).await.len();
    let raw = push("refs/heads/main", C, "mallory").to_string();
    for headers in [
        vec![(
            "x-hub-signature-256",
            format!("sha256={}", hmac_hex("wrong", raw.as_bytes())),
        )],
        vec![("x-hub-signature-256", "sha256=zz".to_owned())],
        vec![("x-hub-signature-256", hmac_hex(&secret, raw.as_bytes()))],
        vec![],
    ] {
        let mut h = headers.clone();
        h.push(("x-github-event", "push".into()));
        h.push(("x-github-delivery", "d-evil".into()));
        let (s, v) = hook.send("github", &h, raw.as_bytes()).await;
        assert_eq!(
            (s, v["error"]["code"].clone()),
            (401, json!("bad_signature")),
            "{v}"
        );
    }
    // Another project (with no webhook) and a project that does not exist answer the same.
    let good = format!("sha256={}", hmac_hex(&secret, raw.as_bytes()));
    let h = [
        ("x-github-event", "push".to_owned()),
        ("x-hub-signature-256", good),
    ];
    for project in [other_pid, 999_999] {
        let (s, v) = Hook::new(&api.url, project)
            .send("github", &h, raw.as_bytes())
            .await;
        assert_eq!(
            (s, v["error"]["code"].clone()),
            (401, json!("bad_signature")),
            "{v}"
        );
    }
    // A delivery id first seen on a rejected request is not poisoned: the real one still runs.
    let (s, v) = hook
        .github(&secret, "push", "d-evil", &push("refs/heads/main", C, "octo-cat"))
        .await;
    assert_eq!(s, 202, "{v}");
    let id = v["deployments"][0]["deployment_id"].as_i64().unwrap();
    assert_eq!(agents[0].recv().await["project"]["git_ref"], C);
    succeed(&mut agents[0], id).await;
    assert_eq!(deployments(api).await.len(), before + 1);

    // Oversized: 413 before anything else.
    let big = format!(
        "{{\"ref\":\"refs/heads/main\",\"pad\":\"{}\"}}",
        "x".repeat(1024 * 1024)
    );
    let sig = format!("sha256={}", hmac_hex(&secret, big.as_bytes()));
    let (s, v) = hook
        .send(
            "github",
            &[("x-github-event", "push".into()), ("x-hub-signature-256", sig)],
            big.as_bytes(),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].clone()),
        (413, json!("payload_too_large")),
        "{v}"
    );

    // The audit log names the rejections (provider, reason), never the body or the header.
    let audit = audit_actions(&server.data_dir()).await;
    let rejected: Vec<_> = audit.iter().filter(|(_, a, _)| a == "webhook.rejected").collect();
    assert_eq!(
        rejected.len(),
        1,
        "one entry per minute per project: {rejected:?}"
    );
    assert!(
        rejected[0].2.contains("github") && rejected[0].2.contains("signature"),
        "{rejected:?}"
    );
    assert!(
        audit
            .iter()
            .any(|(a, act, _)| a == "token:test-admin" && act == "webhook.rotate")
    );
    let audit_text = format!("{audit:?}");
    assert!(!audit_text.contains("mallory") && !audit_text.contains(&secret));

    // The delivery log: newest first, results, no body, no secret.
    let (_, info) = api.get(&format!("/api/projects/{pid}/webhook")).await;
    assert_eq!(info["configured"], true);
    assert!(info.get("secret").is_none());
    let results: Vec<&str> = info["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["result"].as_str().unwrap())
        .collect();
    // 13: the two answered for other projects and the oversized one are not this project's.
    assert_eq!(results.len(), 13, "{info}");
    assert_eq!(results[0], "deployed");
    for r in ["duplicate", "ignored", "rejected"] {
        assert!(results.contains(&r), "{r} in {results:?}");
    }
    let text = info.to_string();
    assert!(!text.contains(&secret) && !text.contains("mallory") && !text.contains("acme/shop"));

    // Rotation invalidates the old secret at once.
    let new_secret = rotate(api, pid).await;
    assert_ne!(new_secret, secret);
    let (s, _) = hook
        .github(&secret, "push", "d-6", &push("refs/heads/main", A, "x"))
        .await;
    assert_eq!(s, 401);
    let (s, v) = hook
        .github(&new_secret, "ping", "d-7", &json!({"zen": "z"}))
        .await;
    assert_eq!(s, 200, "{v}");

    // A viewer sees the webhook but cannot rotate it.
    let viewer = api.with_token(&cli_token(&server.data_dir(), "viewer", "viewer"));
    let (s, _) = viewer
        .post(&format!("/api/projects/{pid}/webhook"), json!({}))
        .await;
    assert_eq!(s, 403);
    let (s, v) = viewer.get(&format!("/api/projects/{pid}/webhook")).await;
    assert_eq!((s, v["configured"].clone()), (200, json!(true)));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_and_gitea_forgejo_deliveries_verify_their_own_way() {
    let server = TestServer::start().await;
    let api = &server.api;
    let (pid, envs) = api.project("shop", &["staging"]).await;
    api.patch(
        &format!("/api/environments/{}", envs[0]),
        json!({"deploy_on_push": true, "deploy_on_tag": "v*"}),
    )
    .await;
    let (agent_id, token) = api.agent(envs[0], "a").await;
    let mut agent = TestAgent::connect(&api.url, &token, Some(vec![])).await;
    api.wait_online(agent_id).await;
    let secret = rotate(api, pid).await;
    let hook = Hook::new(&api.url, pid);

    // GitLab: the token header is the secret; a delete is an all-zero `after`.
    let gl = |after: &str| {
        json!({"object_kind": "push", "ref": "refs/heads/main", "before": ZERO, "after": after,
               "checkout_sha": after, "user_username": "gl-user", "user_name": "GL User"})
        .to_string()
    };
    let gl_headers = |token: &str, uuid: &str| {
        vec![
            ("x-gitlab-token", token.to_owned()),
            ("x-gitlab-event", "Push Hook".to_owned()),
            ("x-gitlab-event-uuid", uuid.to_owned()),
        ]
    };
    let (s, v) = hook
        .send("gitlab", &gl_headers("nope", "u-0"), gl(A).as_bytes())
        .await;
    assert_eq!((s, v["error"]["code"].clone()), (401, json!("bad_signature")));
    let (s, v) = hook
        .send("gitlab", &gl_headers(&secret, "u-1"), gl(A).as_bytes())
        .await;
    assert_eq!(s, 202, "{v}");
    let deploy = agent.recv().await;
    assert_eq!(deploy["project"]["git_ref"], A);
    let id = deploy["deployment_id"].as_i64().unwrap();
    succeed(&mut agent, id).await;
    let (_, d) = api.get(&format!("/api/deployments/{id}")).await;
    assert_eq!(d["triggered_by"], "gitlab:gl-user");
    let (s, v) = hook
        .send("gitlab", &gl_headers(&secret, "u-1"), gl(A).as_bytes())
        .await;
    assert_eq!((s, v["result"].clone()), (200, json!("duplicate")));
    let (s, v) = hook
        .send("gitlab", &gl_headers(&secret, "u-2"), gl(ZERO).as_bytes())
        .await;
    assert_eq!(
        (s, v["result"].clone()),
        (200, json!("ignored")),
        "a GitLab delete: {v}"
    );
    // GitLab's tag push: `checkout_sha` is the commit.
    let tag = json!({"object_kind": "tag_push", "ref": "refs/tags/v2", "before": ZERO, "after": C,
                     "checkout_sha": B, "user_username": "gl-user"})
    .to_string();
    let mut h = gl_headers(&secret, "u-3");
    h[1].1 = "Tag Push Hook".into();
    let (s, v) = hook.send("gitlab", &h, tag.as_bytes()).await;
    assert_eq!(s, 202, "{v}");
    let deploy = agent.recv().await;
    assert_eq!(deploy["project"]["git_ref"], B);
    succeed(&mut agent, deploy["deployment_id"].as_i64().unwrap()).await;

    // Gitea (and Forgejo's own header names): a bare hex HMAC-SHA256.
    for (sig_h, event_h, delivery_h, after, who) in [
        (
            "x-gitea-signature",
            "x-gitea-event",
            "x-gitea-delivery",
            A,
            "gitea-user",
        ),
        (
            "x-forgejo-signature",
            "x-forgejo-event",
            "x-forgejo-delivery",
            C,
            "forgejo-user",
        ),
    ] {
        let body = json!({"ref": "refs/heads/main", "before": ZERO, "after": after,
                          "pusher": {"login": who, "username": who}, "sender": {"login": who}})
        .to_string();
        let bad = [
            (sig_h, hmac_hex("wrong", body.as_bytes())),
            (event_h, "push".to_owned()),
            (delivery_h, format!("g-{who}")),
        ];
        let (s, _) = hook.send("gitea", &bad, body.as_bytes()).await;
        assert_eq!(s, 401);
        let good = [
            (sig_h, hmac_hex(&secret, body.as_bytes())),
            (event_h, "push".to_owned()),
            (delivery_h, format!("g-{who}")),
        ];
        let (s, v) = hook.send("gitea", &good, body.as_bytes()).await;
        assert_eq!(s, 202, "{v}");
        let deploy = agent.recv().await;
        assert_eq!(deploy["project"]["git_ref"], after);
        let id = deploy["deployment_id"].as_i64().unwrap();
        succeed(&mut agent, id).await;
        let (_, d) = api.get(&format!("/api/deployments/{id}")).await;
        assert_eq!(d["triggered_by"], format!("gitea:{who}"));
        let (s, v) = hook.send("gitea", &good, body.as_bytes()).await;
        assert_eq!((s, v["result"].clone()), (200, json!("duplicate")));
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_triggers_are_validated_and_a_flood_stays_bounded() {
    let server = TestServer::start_with(|c| c.hooks.keep_deliveries = 20).await;
    let api = &server.api;
    let (pid, envs) = api.project("shop", &["staging"]).await;
    let path = format!("/api/environments/{}", envs[0]);
    for (body, field) in [
        (json!({"deploy_on_push": "yes"}), "deploy_on_push"),
        (json!({"deploy_on_tag": "v 1"}), "deploy_on_tag"),
        (json!({"deploy_on_tag": "v1\u{7}"}), "deploy_on_tag"),
        (json!({"deploy_on_tag": "x".repeat(101)}), "deploy_on_tag"),
        (json!({"deploy_on_tag": "-v*"}), "deploy_on_tag"),
        (json!({"deploy_on_tag": 5}), "deploy_on_tag"),
    ] {
        let (s, v) = api.patch(&path, body.clone()).await;
        assert_eq!(s, 422, "{body}: {v}");
        assert_eq!(
            (v["error"]["code"].clone(), v["error"]["field"].clone()),
            (json!("invalid_field"), json!(field))
        );
    }
    let (s, v) = api
        .patch(
            &path,
            json!({"deploy_on_tag": "release-?.*", "deploy_on_push": true}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (_, v) = api.get(&path).await;
    assert_eq!(
        (v["deploy_on_push"].clone(), v["deploy_on_tag"].clone()),
        (json!(true), json!("release-?.*"))
    );
    let (_, p) = api.get(&format!("/api/projects/{pid}")).await;
    assert_eq!(p["environments"][0]["deploy_on_tag"], "release-?.*");
    let (_, v) = api.patch(&path, json!({"deploy_on_tag": null})).await;
    assert_eq!(v["deploy_on_tag"], Value::Null);

    let secret = rotate(api, pid).await;
    let hook = Hook::new(&api.url, pid);
    // Verified deliveries first, then a flood of bad ones: the log keeps 20 of each kind, so
    // the flood cannot push the verified delivery ids out (and let one be replayed).
    for i in 0..5 {
        let (s, _) = hook
            .github(&secret, "ping", &format!("ok-{i}"), &json!({"zen": i}))
            .await;
        assert_eq!(s, 200);
    }
    for i in 0..60 {
        let (s, _) = hook
            .send(
                "github",
                &[
                    ("x-hub-signature-256", format!("sha256={}", "0".repeat(64))),
                    ("x-github-delivery", format!("ok-{i}")),
                ],
                b"{}",
            )
            .await;
        assert_eq!(s, 401);
    }
    let db = crate::common::open_db(&server.data_dir());
    let (rejected, other, audited): (i64, i64, i64) = db
        .read_blocking(|c| {
            Ok::<_, stagely::db::DbError>(c.query_row(
                "SELECT (SELECT count(*) FROM webhook_deliveries WHERE result = 'rejected'),
                        (SELECT count(*) FROM webhook_deliveries WHERE result <> 'rejected'),
                        (SELECT count(*) FROM audit_log WHERE action = 'webhook.rejected')",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?)
        })
        .unwrap();
    assert_eq!((rejected, other, audited), (20, 5, 1));
    let (s, v) = hook.github(&secret, "ping", "ok-0", &json!({"zen": 0})).await;
    assert_eq!(
        (s, v["result"].clone()),
        (200, json!("duplicate")),
        "still remembered: {v}"
    );
    server.stop().await;
}

/// The webhook secret as a canary: never in a response after the first, the log (debug level)
/// or the database file in clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_secret_is_shown_once_and_stored_encrypted() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    let server = ServerProcess::spawn(&data, "127.0.0.1:0", &[], &log).await;
    let api = Api::new(&server.url, &admin_token(&data));
    let (pid, envs) = api.project("canary", &["staging"]).await;
    api.patch(
        &format!("/api/environments/{}", envs[0]),
        json!({"deploy_on_push": true}),
    )
    .await;
    let secret = rotate(&api, pid).await;
    let hook = Hook::new(&api.url, pid);
    let mut seen = String::new();
    for (event, body) in [
        ("push", push("refs/heads/main", A, "x")),
        (
            "ping",
            json!({"zen": "z", "hook": {"config": {"secret": "********"}}}),
        ),
    ] {
        let (_, v) = hook.github(&secret, event, event, &body).await;
        seen.push_str(&v.to_string());
        let (_, v) = hook.github("wrong", event, "w", &body).await;
        seen.push_str(&v.to_string());
    }
    for path in [
        format!("/api/projects/{pid}/webhook"),
        format!("/api/projects/{pid}"),
        "/api/deployments".to_owned(),
    ] {
        let (_, v) = api.get(&path).await;
        seen.push_str(&v.to_string());
    }
    assert!(
        seen.contains("no agent"),
        "the trigger's answer is recorded: {seen}"
    );
    assert!(!seen.contains(&secret), "secret in a response: {seen}");
    server.terminate().await;
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(log_text.contains("webhook refused"), "the rejection is logged");
    assert!(!log_text.contains(&secret), "secret in the log");
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "secret in clear in {}",
                path.display()
            );
        }
    }
}

/// A sender still writing an oversized body when the 413 is decided gets the 413, not a broken
/// pipe: the appliance reads (and drops) a body a little over the cap before answering. Found
/// by CI as a flaky `BrokenPipe` in the 1 MiB + 1 test above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_written_slowly_still_gets_its_413() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    let server = ServerProcess::spawn(&data, "127.0.0.1:0", &[], &log).await;
    let api = Api::new(&server.url, &admin_token(&data));
    let (pid, _) = api.project("big", &["staging"]).await;
    rotate(&api, pid).await;
    let addr = server.url.trim_start_matches("http://").to_owned();
    // 2 MiB declared (the default cap is 1 MiB), written in 64 KiB pieces after the headers.
    let len = 2 * 1024 * 1024;
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /api/hooks/github/{pid} HTTP/1.1\r\nHost: {addr}\r\ncontent-type: application/json\r\n\
         x-github-event: push\r\nx-hub-signature-256: sha256=00\r\ncontent-length: {len}\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let piece = vec![b'x'; 64 * 1024];
    for i in 0..len / piece.len() {
        tcp.write_all(&piece)
            .await
            .unwrap_or_else(|e| panic!("piece {i} of the body: {e}"));
        if i % 8 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        while let Ok(n) = tcp.read(&mut buf).await {
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
            if answer.windows(17).any(|w| w == b"payload_too_large") {
                break;
            }
        }
    })
    .await
    .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
}

/// Issue 16: a push is no person, so on a protected environment its triggers are set only by
/// someone who may deploy it; a push then deploys as they say, and waits for a person's
/// approval when the environment requires one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_to_a_protected_environment_deploys_as_its_triggers_say_and_waits_for_approval_when_required()
{
    let server = TestServer::start().await;
    let api = &server.api;
    let member = api.with_token(&cli_token(&server.data_dir(), "m", "member"));
    let (pid, envs) = api.project("shop", &["production"]).await;
    let env = format!("/api/environments/{}", envs[0]);
    let (_, e) = api.get(&env).await;
    assert_eq!(
        e["protected"], true,
        "a production-like name starts protected: {e}"
    );
    // Its deployers are maintainers: a member (maintainer everywhere) may set its push trigger.
    let (s, e) = member.patch(&env, json!({"deploy_on_tag": "v*"})).await;
    assert_eq!((s, e["deploy_on_tag"].clone()), (200, json!("v*")), "{e}");
    // Only admins may deploy it now: a member may no longer change what deploys it on a push.
    let (s, e) = api.patch(&env, json!({"deployers": []})).await;
    assert_eq!(s, 200, "{e}");
    let (s, v) = member.patch(&env, json!({"deploy_on_tag": "*"})).await;
    assert_eq!(s, 403, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("only admins"),
        "{v}"
    );
    let (_, e) = api.get(&env).await;
    assert_eq!(e["deploy_on_tag"], "v*", "nothing changed: {e}");

    let (agent_id, token) = api.agent(envs[0], "a0").await;
    let mut agent = TestAgent::connect(&api.url, &token, Some(vec![])).await;
    api.wait_online(agent_id).await;
    let secret = rotate(api, pid).await;
    let hook = Hook::new(&api.url, pid);

    // The trigger an admin allowed deploys the tag's commit.
    let (s, v) = hook
        .github(&secret, "push", "p-1", &push("refs/tags/v1", A, "octo"))
        .await;
    assert_eq!((s, v["result"].clone()), (202, json!("deployed")), "{v}");
    let id = v["deployments"][0]["deployment_id"].as_i64().unwrap();
    let deploy = agent.recv().await;
    assert_eq!(
        (deploy["type"].clone(), deploy["deployment_id"].clone()),
        (json!("DEPLOY"), json!(id))
    );
    succeed(&mut agent, id).await;

    // With approvals required, the push waits for a person; nothing reaches the agent until then.
    let (s, e) = api.patch(&env, json!({"require_approval": true})).await;
    assert_eq!(s, 200, "{e}");
    let (s, v) = hook
        .github(&secret, "push", "p-2", &push("refs/tags/v2", B, "octo"))
        .await;
    assert_eq!(s, 202, "{v}");
    let id = v["deployments"][0]["deployment_id"].as_i64().unwrap();
    let (_, d) = api.get(&format!("/api/deployments/{id}")).await;
    assert_eq!(d["status"], "awaiting_approval", "{d}");
    assert!(agent.recv_within(QUIET).await.is_none());
    // A member may not approve it (only admins may deploy it); an admin may (the pusher is no
    // person of this appliance, so it is nobody's own deploy).
    let (s, v) = member
        .post(&format!("/api/deployments/{id}/approve"), json!({}))
        .await;
    assert_eq!(s, 403, "{v}");
    let (s, v) = api
        .post(&format!("/api/deployments/{id}/approve"), json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    let deploy = agent.recv().await;
    assert_eq!(
        (deploy["type"].clone(), deploy["deployment_id"].clone()),
        (json!("DEPLOY"), json!(id))
    );
    assert_eq!(deploy["project"]["git_ref"], B);
}
