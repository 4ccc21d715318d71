//! Log limits and retention (issue 12) over a real WebSocket with a protocol-level agent: long
//! lines masked then cut, the per-deployment cap, bounded logs pages with a next cursor, and the
//! retention pruner that deletes old logs but keeps the deployments.

use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};

use crate::common::{Api, TestAgent, TestServer, wait_for};

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
    let stored = std::fs::read(server.data_dir().join("stagely.db")).unwrap();
    let wal = std::fs::read(server.data_dir().join("stagely.db-wal")).unwrap_or_default();
    for form in encodings_of_canary() {
        assert!(!all.contains(&form), "{form} shown");
        for bytes in [&stored, &wal] {
            assert!(
                !bytes.windows(form.len()).any(|w| w == form.as_bytes()),
                "{form} stored"
            );
        }
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
    let db = stagely::db::Db::open(&server.data_dir().join("stagely.db")).unwrap();
    let old = stagely::db::now_ms() - 30 * 86_400_000;
    let (a, b, c) = (ids[0], ids[1], ids[2]);
    db.write_blocking(move |tx| {
        tx.execute(
            "UPDATE deployments SET created_at = ?1 WHERE id IN (?2, ?3, ?4)",
            rusqlite::params![old, a, b, c],
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
