//! Log limits and retention (issue 12) over a real WebSocket with a protocol-level agent: long
//! lines masked then cut, the per-deployment cap, bounded logs pages with a next cursor, and the
//! retention pruner that deletes old logs but keeps the deployments.

use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};

use crate::common::{Api, TestAgent, TestServer, cli_token, wait_for};

const CANARY: &str = "canary-h9-Zq8/+Wn3-longer-than-a-line-cut";

/// A project with one environment holding the canary secret, an online agent, a deployment
/// dispatched to it: `(deployment id, agent, env id, project id)`.
async fn dispatched(api: &Api, project: &str) -> (i64, TestAgent, i64, i64) {
    let (pid, envs) = api.project(project, &["staging"]).await;
    api.ok(
        &format!("/api/projects/{pid}/secrets"),
        json!({"key": "CANARY", "value": CANARY, "scope": "global"}),
        201,
    )
    .await;
    let (agent_id, token) = api.agent(envs[0], "a1").await;
    let mut agent = TestAgent::connect(&api.url, &token, Some(vec![])).await;
    api.wait_online(agent_id).await;
    let id = deploy(api, pid, &mut agent).await;
    (id, agent, envs[0], pid)
}

async fn deploy(api: &Api, pid: i64, agent: &mut TestAgent) -> i64 {
    let (status, body) = api.post(&format!("/api/deploy/{pid}"), json!({})).await;
    assert_eq!(status, 202, "{body}");
    let id = body["deployment_id"].as_i64().unwrap();
    assert_eq!(agent.recv().await["type"], "DEPLOY");
    id
}

async fn finish(agent: &mut TestAgent, id: i64) {
    agent.status(id, "SUCCESS").await;
    assert_eq!(agent.recv().await, json!({"type": "ACK", "deployment_id": id}));
}

/// GET with the response's headers.
async fn get_page(api: &Api, path: &str) -> (reqwest::header::HeaderMap, Vec<Value>) {
    let resp = reqwest::Client::new()
        .get(format!("{}{path}", api.url))
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let headers = resp.headers().clone();
    let body: Value = resp.json().await.unwrap();
    (headers, body.as_array().unwrap().clone())
}

fn encodings_of_canary() -> Vec<String> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(CANARY);
    let url = "canary-h9-Zq8%2F%2BWn3-longer-than-a-line-cut".to_owned();
    vec![CANARY.to_owned(), b64, url]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_mib_line_is_masked_then_cut_and_the_cap_ends_the_log_not_the_deploy() {
    let server = TestServer::start_with(|c| c.deploys.log_max_lines = 20).await;
    let api = &server.api;
    let (id, mut agent, _, _) = dispatched(api, "limits").await;
    let cap = 16 * 1024;
    // A ~1 MiB line with the canary, base64-encoded, straddling the cut.
    let encoded = base64::engine::general_purpose::STANDARD.encode(CANARY);
    let long = format!("{}{encoded}{}", "a".repeat(cap - 40), "b".repeat(1_000_000));
    agent.log(id, 0, &long).await;
    // Then more lines than the cap allows; the deployment goes on and succeeds.
    for seq in 1..40u64 {
        agent
            .log(
                id,
                seq,
                &format!("line {seq} {}", encodings_of_canary()[seq as usize % 3]),
            )
            .await;
    }
    finish(&mut agent, id).await;
    let (_, d) = api.get(&format!("/api/deployments/{id}")).await;
    assert_eq!(d["status"], "success", "{d}");

    let (_, lines) = get_page(api, &format!("/api/deployments/{id}/logs")).await;
    assert_eq!(lines.len(), 20, "the cap: 19 lines and the note");
    let first = lines[0]["line"].as_str().unwrap();
    assert!(first.len() <= cap, "stored line of {} bytes", first.len());
    assert!(first.starts_with("aaaa"), "{:.40}", first);
    assert!(
        first.ends_with(&format!("[line cut: {} bytes]", long.len())),
        "{}",
        &first[first.len() - 60..]
    );
    let last = &lines[19];
    assert_eq!(last["stream"], "agent");
    assert!(
        last["line"].as_str().unwrap().starts_with("log truncated"),
        "{last}"
    );
    assert!(
        lines[1..19]
            .iter()
            .all(|l| l["line"].as_str().unwrap().contains("***"))
    );

    // The canary, in any of its encodings, is nowhere: not in the API, not in SQLite.
    let all = serde_json::to_string(&lines).unwrap();
    let stored = crate::common::store::store_bytes(&server.data_dir());
    for form in encodings_of_canary() {
        assert!(!all.contains(&form), "{form} shown");
        assert!(
            !stored.windows(form.len()).any(|w| w == form.as_bytes()),
            "{form} stored"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_pages_are_bounded_and_chain_with_a_next_cursor() {
    let server = TestServer::start().await;
    let api = &server.api;
    let (id, mut agent, _, _) = dispatched(api, "pages").await;
    for seq in 0..2500u64 {
        agent.log(id, seq, &format!("line {seq}")).await;
    }
    // 200 lines of ~16 KiB: more than one page's bytes.
    let wide = "w".repeat(16_000);
    for seq in 2500..2700u64 {
        agent.log(id, seq, &wide).await;
    }
    finish(&mut agent, id).await;

    // The old call still works: the first page, in order, now bounded (1,000 lines by default).
    let (headers, first) = get_page(api, &format!("/api/deployments/{id}/logs")).await;
    assert_eq!(first.len(), 1000);
    assert_eq!(first[0]["seq"], 0);
    let link = headers["link"].to_str().unwrap();
    assert_eq!(
        link,
        format!("</api/deployments/{id}/logs?after_seq=999&limit=1000>; rel=\"next\"")
    );
    assert_eq!(headers["stagely-next-after"], "999");

    // A limit beyond the maximum is clamped; pages stop at 2 MiB of lines.
    let (_, big) = get_page(api, &format!("/api/deployments/{id}/logs?after=-1&limit=100000")).await;
    assert!(big.len() <= 5000);
    let bytes: usize = big.iter().map(|l| l["line"].as_str().unwrap().len()).sum();
    assert!(bytes <= 2 * 1024 * 1024, "{bytes} bytes in one page");

    // Following `next` reads every line exactly once, in order, and ends without a `next`.
    let mut seqs = Vec::new();
    let mut path = format!("/api/deployments/{id}/logs?limit=5000");
    loop {
        let (headers, page) = get_page(api, &path).await;
        seqs.extend(page.iter().map(|l| l["seq"].as_i64().unwrap()));
        match headers.get("link") {
            Some(link) => {
                let link = link.to_str().unwrap();
                path = link[1..link.find('>').unwrap()].to_owned();
            }
            None => break,
        }
    }
    assert_eq!(seqs, (0..2700).collect::<Vec<i64>>());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_prunes_old_logs_and_keeps_the_deployments() {
    let server = TestServer::start_with(|c| {
        c.deploys.log_keep_deployments = 2;
        c.deploys.log_keep_days = 7;
        c.deploys.log_prune_every_secs = 1;
    })
    .await;
    let api = &server.api;
    let (first, mut agent, _, pid) = dispatched(api, "keep").await;
    let mut ids = vec![first];
    for n in 0..4 {
        if n > 0 {
            ids.push(deploy(api, pid, &mut agent).await);
        }
        let id = *ids.last().unwrap();
        for seq in 0..10u64 {
            agent.log(id, seq, &format!("deployment {id} line {seq}")).await;
        }
        finish(&mut agent, id).await;
    }
    // ids[0], ids[1] are 30 days old; ids[2] too but among the last two; ids[3] is new.
    let db = crate::common::open_db(&server.data_dir());
    let old = stagely::db::now_ms() - 30 * 86_400_000;
    let (a, b, c) = (ids[0], ids[1], ids[2]);
    db.write_blocking(move |tx| {
        tx.execute(
            "UPDATE deployments SET created_at = ?1 WHERE id IN (?2, ?3, ?4)",
            stagely::db::params![old, a, b, c],
        )?;
        Ok::<_, stagely::db::DbError>(())
    })
    .unwrap();
    for &id in &ids[..2] {
        wait_for("old logs pruned", Duration::from_secs(10), || async move {
            let (_, d) = api.get(&format!("/api/deployments/{id}")).await;
            d["log_pruned_at"].is_string().then_some(())
        })
        .await;
    }
    for (i, &id) in ids.iter().enumerate() {
        let (status, d) = api.get(&format!("/api/deployments/{id}")).await;
        assert_eq!(status, 200, "the row stays");
        assert_eq!(d["status"], "success");
        let (_, lines) = get_page(api, &format!("/api/deployments/{id}/logs")).await;
        if i < 2 {
            assert!(lines.is_empty(), "deployment {id} keeps {} lines", lines.len());
        } else {
            assert_eq!(lines.len(), 10, "deployment {id} lost its log");
            assert!(d["log_pruned_at"].is_null());
        }
    }
    // The page says so.
    let page = reqwest::Client::new()
        .get(format!("{}/deployments/{}", api.url, ids[0]))
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Log pruned"), "{page:.2000}");
    server.stop().await;
}

/// Age deployments by `days` in the real database file (the pruner judges by `created_at`).
fn age(server: &TestServer, ids: &[i64], days: i64) {
    let db = crate::common::open_db(&server.data_dir());
    let old = stagely::db::now_ms() - days * 86_400_000;
    let ids = ids.to_vec();
    db.write_blocking(move |tx| {
        for id in ids {
            tx.execute(
                "UPDATE deployments SET created_at = ?1 WHERE id = ?2",
                stagely::db::params![old, id],
            )?;
        }
        Ok::<_, stagely::db::DbError>(())
    })
    .unwrap();
}

/// Which of `ids` still have their log (10 lines) and which were pruned (none, `log_pruned_at`).
async fn kept(api: &Api, ids: &[i64]) -> Vec<bool> {
    let mut out = Vec::new();
    for &id in ids {
        let (_, d) = api.get(&format!("/api/deployments/{id}")).await;
        let (_, lines) = get_page(api, &format!("/api/deployments/{id}/logs")).await;
        let pruned = d["log_pruned_at"].is_string();
        assert_eq!(lines.is_empty(), pruned, "deployment {id}: {d}");
        assert!(lines.is_empty() || lines.len() == 10, "deployment {id}");
        out.push(!pruned);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_environment_override_keeps_more_or_fewer_logs_than_the_default() {
    let server = TestServer::start_with(|c| {
        c.deploys.log_keep_deployments = 2;
        c.deploys.log_keep_days = 7;
        c.deploys.log_prune_every_secs = 1;
    })
    .await;
    let api = &server.api;
    let names = ["more", "fewer", "days", "plain"];
    let (pid, envs) = api.project("override", &names).await;
    // Overrides through the API; the answer and the project show them, null = the default.
    for (env, body) in [
        (envs[0], json!({"log_keep_deployments": 3})),
        (envs[1], json!({"log_keep_deployments": 1})),
        (envs[2], json!({"log_keep_days": 60})),
    ] {
        let (status, e) = api.patch(&format!("/api/environments/{env}"), body.clone()).await;
        assert_eq!(status, 200, "{e}");
        for (k, v) in body.as_object().unwrap() {
            assert_eq!(&e[k], v, "{e}");
        }
    }
    let (_, p) = api.get(&format!("/api/projects/{pid}")).await;
    assert_eq!(p["environments"][0]["log_keep_deployments"], 3);
    assert_eq!(p["environments"][0]["log_keep_days"], Value::Null);
    assert_eq!(p["environments"][2]["log_keep_days"], 60);
    assert_eq!(p["environments"][3]["log_keep_deployments"], Value::Null);
    // Four finished deployments of 10 lines in each environment, all 30 days old.
    let mut ids: Vec<Vec<i64>> = Vec::new();
    for (i, env) in envs.iter().enumerate() {
        let (agent_id, token) = api.agent(*env, &format!("a{i}")).await;
        let mut agent = TestAgent::connect(&api.url, &token, Some(vec![])).await;
        api.wait_online(agent_id).await;
        let mut these = Vec::new();
        for _ in 0..4 {
            let (status, body) = api
                .post(&format!("/api/deploy/{pid}"), json!({"environment": names[i]}))
                .await;
            assert_eq!(status, 202, "{body}");
            let id = body["deployment_id"].as_i64().unwrap();
            assert_eq!(agent.recv().await["type"], "DEPLOY");
            for seq in 0..10u64 {
                agent.log(id, seq, &format!("deployment {id} line {seq}")).await;
            }
            finish(&mut agent, id).await;
            these.push(id);
        }
        ids.push(these);
    }
    let all: Vec<i64> = ids.iter().flatten().copied().collect();
    age(&server, &all, 30);
    // The oldest of "fewer" goes only with its own override (the default keeps the last two);
    // once it and the default's two are gone, give the pruner two more passes.
    for id in [ids[1][0], ids[1][1], ids[1][2], ids[3][0], ids[3][1]] {
        wait_for(
            "logs past retention pruned",
            Duration::from_secs(15),
            || async move {
                let (_, d) = api.get(&format!("/api/deployments/{id}")).await;
                d["log_pruned_at"].is_string().then_some(())
            },
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        kept(api, &ids[0]).await,
        [false, true, true, true],
        "more: last 3"
    );
    assert_eq!(
        kept(api, &ids[1]).await,
        [false, false, false, true],
        "fewer: last 1"
    );
    assert_eq!(kept(api, &ids[2]).await, [true; 4], "days: 60 days keep all");
    assert_eq!(
        kept(api, &ids[3]).await,
        [false, false, true, true],
        "plain: the default"
    );

    // Back to the default (null): "more" now keeps two.
    let (status, e) = api
        .patch(
            &format!("/api/environments/{}", envs[0]),
            json!({"log_keep_deployments": null}),
        )
        .await;
    assert_eq!(status, 200, "{e}");
    assert_eq!(e["log_keep_deployments"], Value::Null);
    let second = ids[0][1];
    wait_for(
        "the default applies again",
        Duration::from_secs(15),
        || async move {
            let (_, d) = api.get(&format!("/api/deployments/{second}")).await;
            d["log_pruned_at"].is_string().then_some(())
        },
    )
    .await;
    assert_eq!(kept(api, &ids[0]).await, [false, false, true, true]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_overrides_are_validated_audited_and_need_a_member() {
    let server = TestServer::start_with(|c| c.deploys.log_prune_every_secs = 0).await;
    let api = &server.api;
    let (pid, envs) = api.project("bounds", &["staging"]).await;
    let path = format!("/api/environments/{}", envs[0]);
    for (body, field) in [
        (json!({"log_keep_deployments": -1}), "log_keep_deployments"),
        (json!({"log_keep_deployments": 1_000_001}), "log_keep_deployments"),
        (json!({"log_keep_deployments": 2.5}), "log_keep_deployments"),
        (json!({"log_keep_deployments": "10"}), "log_keep_deployments"),
        (json!({"log_keep_days": 36_501}), "log_keep_days"),
        (json!({"log_keep_days": true}), "log_keep_days"),
        // The first bad field is named; nothing of the request is stored.
        (
            json!({"log_keep_days": 5, "log_keep_deployments": -3}),
            "log_keep_deployments",
        ),
    ] {
        let (status, e) = api.patch(&path, body.clone()).await;
        assert_eq!(status, 422, "{body}: {e}");
        assert_eq!(e["error"]["code"], "invalid_field", "{e}");
        assert_eq!(e["error"]["field"], field, "{body}: {e}");
    }
    // Also when the environment is made.
    let (status, e) = api
        .post(
            &format!("/api/projects/{pid}/environments"),
            json!({"name": "prod", "log_keep_days": -5}),
        )
        .await;
    assert_eq!(status, 422, "{e}");
    assert_eq!(e["error"]["field"], "log_keep_days", "{e}");
    let made = api
        .ok(
            &format!("/api/projects/{pid}/environments"),
            json!({"name": "prod", "log_keep_deployments": 500, "log_keep_days": 0}),
            201,
        )
        .await;
    assert_eq!(
        (
            made["log_keep_deployments"].as_u64(),
            made["log_keep_days"].as_u64()
        ),
        (Some(500), Some(0))
    );
    let (_, e) = api.get(&path).await;
    assert_eq!(
        e["log_keep_deployments"],
        Value::Null,
        "a refused patch stored nothing: {e}"
    );
    assert_eq!(e["log_keep_days"], Value::Null, "{e}");
    let (status, _) = api.patch(&path, json!({"log_keep_everything": 1})).await;
    assert_eq!(status, 422, "unknown fields are refused");

    // The bounds themselves are accepted; the change is audited with old and new values.
    let (status, e) = api
        .patch(
            &path,
            json!({"log_keep_deployments": 1_000_000, "log_keep_days": 36_500}),
        )
        .await;
    assert_eq!(status, 200, "{e}");
    // The Settings tab shows each environment's effective retention, the defaults marked.
    let page = reqwest::Client::new()
        .get(format!("{}/projects/{pid}/settings", api.url))
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("Logs kept: the last <strong>1000000</strong> deployments and those of the last <strong>36500</strong> days"),
        "{page}"
    );
    assert!(
        page.contains(
            "the last <strong>500</strong> deployments and those of the last <strong>0</strong> days"
        )
    );
    assert!(
        page.contains(r#"action="/environments/"#),
        "a member's form to change them"
    );
    let db = crate::common::open_db(&server.data_dir());
    let detail: String = db
        .read_blocking(|c| {
            Ok::<_, stagely::db::DbError>(c.query_row(
                "SELECT detail FROM audit_log WHERE action = 'environment.update' ORDER BY id DESC LIMIT 1",
                [],
                |r| r.get(0),
            )?)
        })
        .unwrap();
    assert_eq!(
        detail,
        "staging: log_keep_deployments 1000000, log_keep_days 36500 (was default, default)"
    );

    // Environment settings are a member's to change (docs/api.md: members edit environments);
    // a viewer reads them and cannot.
    let viewer = api.with_token(&cli_token(&server.data_dir(), "look", "viewer"));
    let (status, e) = viewer.get(&path).await;
    assert_eq!((status, e["log_keep_days"].as_u64()), (200, Some(36_500)));
    let (status, _) = viewer.patch(&path, json!({"log_keep_days": 0})).await;
    assert_eq!(status, 403);
    let member = api.with_token(&cli_token(&server.data_dir(), "m", "member"));
    let (status, e) = member.patch(&path, json!({"log_keep_days": null})).await;
    assert_eq!(status, 200, "{e}");
    assert_eq!(e["log_keep_days"], Value::Null);
    let (status, _) = api
        .patch("/api/environments/9999", json!({"log_keep_days": 1}))
        .await;
    assert_eq!(status, 404);
    server.stop().await;
}
