//! Several replicas on one PostgreSQL (issue 17): two real `stagely serve` processes sharing one
//! fresh database, and a protocol-level agent. A deploy triggered on A reaches the agent
//! connected to B, its logs and outcome read through A; a CANCEL through A reaches it; SIGKILL
//! of B mid-deploy: the deployment ends `agent_lost` on the survivor, the agent moves to A, the
//! next deploy runs; exactly one replica leads the background work, and the other takes over
//! when the leader is killed.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{Api, TestAgent, WAIT, file_contains, wait_for};
use crate::replica_support::Replicas;

const LEADS: &str = "this replica leads the background work now";

async fn trigger(api: &Api, pid: i64) -> i64 {
    let body = api.ok(&format!("/api/deploy/{pid}"), json!({}), 202).await;
    body["deployment_id"].as_i64().unwrap()
}

async fn deployment(api: &Api, id: i64) -> Value {
    let (status, d) = api.get(&format!("/api/deployments/{id}")).await;
    assert_eq!(status, 200, "{d}");
    d
}

async fn next_deploy(agent: &mut TestAgent) -> i64 {
    let frame = agent.recv().await;
    assert_eq!(frame["type"], "DEPLOY", "{frame}");
    frame["deployment_id"].as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_triggered_on_a_reaches_the_agent_on_b_and_its_logs_and_cancel_go_through_a() {
    let Some(mut r) = Replicas::start("route", &[]).await else {
        return;
    };
    let (a, b) = (r.api("a"), r.api("b"));
    let (pid, envs) = a.project("routed", &["prod"]).await;
    let (agent_id, token) = a.agent(envs[0], "web").await;
    let mut agent = TestAgent::connect(&b.url, &token, Some(vec![])).await;
    // Online everywhere: B holds the connection, A reads the live lease.
    b.wait_online(agent_id).await;
    a.wait_online(agent_id).await;

    let id = trigger(&a, pid).await;
    assert_eq!(
        next_deploy(&mut agent).await,
        id,
        "routed from A to the agent on B"
    );
    agent.log(id, 0, "pulling through B").await;
    agent.log(id, 1, "started").await;
    agent.status(id, "SUCCESS").await;
    let ack = agent.recv().await;
    assert_eq!(ack, json!({"type": "ACK", "deployment_id": id}));
    let done = a.wait_finished(id, WAIT).await;
    assert_eq!(done["status"], "success", "{done}");
    let logs = wait_for("both lines through A", WAIT, || {
        let a = a.clone();
        async move {
            let (_, logs) = a.get(&format!("/api/deployments/{id}/logs")).await;
            let text = logs.to_string();
            (text.contains("pulling through B") && text.contains("started")).then_some(text)
        }
    })
    .await;
    assert!(logs.contains("pulling through B"), "{logs}");

    // Cancel through A of a deployment running on B: the CANCEL goes through the outbox.
    let id2 = trigger(&a, pid).await;
    assert_eq!(next_deploy(&mut agent).await, id2);
    agent.log(id2, 0, "working").await;
    let (status, body) = a.post(&format!("/api/deployments/{id2}/cancel"), json!({})).await;
    assert!(status == 200 || status == 202, "{status} {body}");
    let cancel = agent.recv().await;
    assert_eq!(cancel, json!({"type": "CANCEL", "deployment_id": id2}));
    agent.status(id2, "CANCELLED").await;
    let ack = agent.recv().await;
    assert_eq!(ack, json!({"type": "ACK", "deployment_id": id2}));
    let done = a.wait_finished(id2, WAIT).await;
    assert_eq!(done["status"], "cancelled", "{done}");

    // Container logs are not routed between replicas: a 409 naming the replica holding the agent.
    let (status, body) = a
        .get(&format!("/api/environments/{}/services/web/logs", envs[0]))
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "agent_elsewhere", "{body}");
    assert!(body.to_string().contains("replica r-"), "{body}");
    // Nor are service actions.
    let (status, body) = a
        .post(
            &format!("/api/environments/{}/services/web/restart", envs[0]),
            json!({}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "agent_elsewhere", "{body}");
    assert!(body.to_string().contains("replica r-"), "{body}");
    // Deleting through A cannot take the stack down: refused, naming the replica (not "offline"),
    // and the environment stays.
    let (status, body) = a.delete(&format!("/api/environments/{}", envs[0])).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "agent_elsewhere", "{body}");
    assert!(body.to_string().contains("replica r-"), "{body}");
    assert_eq!(a.get(&format!("/api/projects/{pid}")).await.0, 200);
    assert!(
        a.get(&format!("/api/projects/{pid}"))
            .await
            .1
            .to_string()
            .contains("\"prod\""),
        "the environment was deleted"
    );

    // The API token (made once, in the database) works on both.
    assert_eq!(b.get("/api/agents").await.0, 200);

    // Revoked through A: B closes the agent's connection (at its next sweep), with the reason.
    let (status, _) = a.delete(&format!("/api/agents/{agent_id}")).await;
    assert_eq!(status, 204);
    assert_eq!(agent.closed_reason().await, stagely_protocol::CLOSE_REVOKED);
    r.b.take().unwrap().terminate().await;
    r.a.take().unwrap().terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_agents_replica_mid_deploy_ends_it_agent_lost_and_the_agent_moves_to_the_other() {
    let env = [("STAGELY_DEPLOYS__AGENT_LOST_TIMEOUT_SECS", "2")];
    let Some(mut r) = Replicas::start("killed", &env).await else {
        return;
    };
    let (a, b) = (r.api("a"), r.api("b"));
    let (pid, envs) = a.project("killed", &["prod"]).await;
    let (agent_id, token) = a.agent(envs[0], "web").await;
    let mut agent = TestAgent::connect(&b.url, &token, Some(vec![])).await;
    a.wait_online(agent_id).await;
    let id = trigger(&a, pid).await;
    assert_eq!(next_deploy(&mut agent).await, id);
    agent.log(id, 0, "half way").await;
    wait_for("the line stored", WAIT, || {
        let a = a.clone();
        async move {
            let (_, logs) = a.get(&format!("/api/deployments/{id}/logs")).await;
            logs.to_string().contains("half way").then_some(())
        }
    })
    .await;

    r.b.take().unwrap().kill().await;
    // The agent's lease runs out (10 s), then the agent-lost timeout: A (leading by now, B's
    // session ended with it) ends the deployment, explained.
    a.wait_offline(agent_id).await;
    let done = a.wait_finished(id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"], "agent_lost", "{done}");

    // The agent comes back, to A: it is online and the next deploy runs.
    drop(agent);
    let mut agent = TestAgent::connect(&a.url, &token, Some(vec![])).await;
    a.wait_online(agent_id).await;
    let next = trigger(&a, pid).await;
    assert_eq!(next_deploy(&mut agent).await, next);
    agent.status(next, "SUCCESS").await;
    let done = a.wait_finished(next, WAIT).await;
    assert_eq!(done["status"], "success", "{done}");
    assert_eq!(deployment(&a, id).await["status"], "failed");
    r.a.take().unwrap().terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_replica_leads_and_the_other_takes_over_when_it_is_killed() {
    let Some(mut r) = Replicas::start("leads", &[]).await else {
        return;
    };
    let (log_a, log_b) = (r.log("a"), r.log("b"));
    let leader = wait_for("a leader", WAIT, || {
        let (la, lb) = (log_a.clone(), log_b.clone());
        async move {
            match (file_contains(&la, LEADS), file_contains(&lb, LEADS)) {
                (true, false) => Some("a"),
                (false, true) => Some("b"),
                (true, true) => panic!("both replicas lead"),
                (false, false) => None,
            }
        }
    })
    .await;
    // A few retry periods later it is still one.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        file_contains(&log_a, LEADS) != file_contains(&log_b, LEADS),
        "exactly one replica leads"
    );
    let (killed, survivor_log) = if leader == "a" {
        (r.a.take().unwrap(), log_b)
    } else {
        (r.b.take().unwrap(), log_a)
    };
    killed.kill().await;
    wait_for("the survivor to take over", WAIT, || {
        let l = survivor_log.clone();
        async move { file_contains(&l, LEADS).then_some(()) }
    })
    .await;
    for s in [r.a.take(), r.b.take()].into_iter().flatten() {
        s.terminate().await;
    }
}
