//! Per-project roles (issue 16): the members API and its rules, the Settings tab's Members
//! section and its forms (with CSRF), the audit rows, tokens acting with their owner's project
//! roles, and a maintainer's grudge — all over real HTTP against a real appliance.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{Api, TestAgent, cli_token};
use crate::web_support::{WebClient, WebServer, between};

const CANARY: &str = "canary-5d1e7a-project-roles";

/// Mint an API token of `role` from `c`'s browser session; `None` when refused (the status).
async fn mint(c: &mut WebClient, name: &str, role: &str) -> Result<String, (u16, String)> {
    let (status, body) = c.post_form("/tokens", &[("name", name), ("role", role)]).await;
    if status != 201 {
        return Err((status, body));
    }
    Ok(between(&body, "id=\"new-token\">", "<").unwrap())
}

struct World {
    server: WebServer,
    admin: WebClient,
    api: Api,
    shop: i64,
    other: i64,
    staging: i64,
}

/// root (user 1, admin); shop and other with a staging environment each; a secret on shop.
async fn world() -> World {
    let server = WebServer::start().await;
    let admin = server.admin("root").await;
    let api = Api::new(&server.url, &cli_token(&server.data_dir(), "ops", "admin"));
    let (shop, envs) = api.project("shop", &["staging"]).await;
    let (other, _) = api.project("other", &["staging"]).await;
    api.ok(
        &format!("/api/projects/{shop}/secrets"),
        json!({"key": "DB_PASSWORD", "value": CANARY, "scope": "global"}),
        201,
    )
    .await;
    World {
        server,
        admin,
        api,
        shop,
        other,
        staging: envs[0],
    }
}

fn members(v: &Value) -> Vec<(String, String, String)> {
    v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["username"].as_str().unwrap().to_owned(),
                m["role"].as_str().unwrap().to_owned(),
                m["source"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_members_api_grants_changes_and_removes_with_its_rules_and_audit() {
    let mut w = world().await;
    let (shop, other) = (w.shop, w.other);
    let mut mae = w.server.user(&mut w.admin, "mae", "viewer").await; // 2
    let mut dee = w.server.user(&mut w.admin, "dee", "viewer").await; // 3
    let _vic = w.server.user(&mut w.admin, "vic", "viewer").await; // 4
    let _dis = w.server.user(&mut w.admin, "dis", "viewer").await; // 5
    let api = &w.api;

    // An admin grants; the answer is the membership.
    let (status, m) = api
        .put(
            &format!("/api/projects/{shop}/members/2"),
            json!({"role": "maintainer"}),
        )
        .await;
    assert_eq!(status, 200, "{m}");
    assert_eq!(
        (
            m["user_id"].clone(),
            m["username"].clone(),
            m["role"].clone(),
            m["source"].clone()
        ),
        (json!(2), json!("mae"), json!("maintainer"), json!("manual"))
    );
    assert_eq!(m["granted_by"], "token:ops");
    // Unknown role: 422 naming the field and the allowed values; nothing stored.
    let (status, e) = api
        .put(
            &format!("/api/projects/{shop}/members/3"),
            json!({"role": "admin"}),
        )
        .await;
    assert_eq!(status, 422, "{e}");
    assert_eq!(e["error"]["field"], "role");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("viewer, deployer, maintainer"),
        "{e}"
    );
    // Unknown user, unknown project: 404.
    let (status, e) = api
        .put(
            &format!("/api/projects/{shop}/members/999"),
            json!({"role": "viewer"}),
        )
        .await;
    assert_eq!(
        (status, e["error"]["message"].clone()),
        (404, json!("user not found"))
    );
    let (status, _) = api
        .put("/api/projects/999/members/3", json!({"role": "viewer"}))
        .await;
    assert_eq!(status, 404);
    // A disabled person may be granted (documented): it holds once they are enabled again.
    let (status, _) = w
        .admin
        .post_form("/users/5/disable", &[("disabled", "true")])
        .await;
    assert_eq!(status, 303);
    let (status, m) = api
        .put(
            &format!("/api/projects/{shop}/members/5"),
            json!({"role": "deployer"}),
        )
        .await;
    assert_eq!((status, m["role"].clone()), (200, json!("deployer")));

    // The list: each grant with the person's effective role; readable by any viewer.
    let (status, list) = api.get(&format!("/api/projects/{shop}/members")).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(
        members(&list),
        vec![
            ("dis".to_owned(), "deployer".to_owned(), "manual".to_owned()),
            ("mae".to_owned(), "maintainer".to_owned(), "manual".to_owned()),
        ]
    );
    assert_eq!(list["members"][1]["effective_role"], "maintainer");

    // mae (a global viewer, maintainer of shop) acts through a member token.
    let mae_token = mint(&mut mae, "mae-ci", "member").await.unwrap();
    let mae_api = api.with_token(&mae_token);
    let (status, m) = mae_api
        .put(
            &format!("/api/projects/{shop}/members/3"),
            json!({"role": "deployer"}),
        )
        .await;
    assert_eq!(status, 200, "{m}");
    assert_eq!(m["granted_by"], "user:mae (token mae-ci)");
    let (status, list) = mae_api.get(&format!("/api/projects/{shop}/members")).await;
    assert_eq!((status, list["your_role"].clone()), (200, json!("maintainer")));

    // The grudge: mae cannot change her own membership (not even down), act on another
    // project, or read a secret's value.
    for body in [json!({"role": "maintainer"}), json!({"role": "viewer"})] {
        let (status, e) = mae_api
            .put(&format!("/api/projects/{shop}/members/2"), body)
            .await;
        assert_eq!(status, 403, "{e}");
        assert!(
            e["error"]["message"]
                .as_str()
                .unwrap()
                .contains("your own membership"),
            "{e}"
        );
    }
    assert_eq!(
        mae_api.delete(&format!("/api/projects/{shop}/members/2")).await.0,
        403
    );
    let (status, _) = mae_api
        .put(
            &format!("/api/projects/{other}/members/2"),
            json!({"role": "maintainer"}),
        )
        .await;
    assert_eq!(status, 403, "no role on other: no self-grant there either");
    let (status, _) = mae_api
        .put(
            &format!("/api/projects/{other}/members/3"),
            json!({"role": "maintainer"}),
        )
        .await;
    assert_eq!(status, 403);
    assert_eq!(
        mae_api
            .patch(&format!("/api/projects/{other}"), json!({"name": "mine"}))
            .await
            .0,
        403
    );
    let (status, secrets) = mae_api.get(&format!("/api/projects/{shop}/secrets")).await;
    assert_eq!(status, 200);
    assert!(!secrets.to_string().contains(CANARY), "{secrets}");
    let (status, versions) = mae_api.get("/api/secrets/1/versions").await;
    assert_eq!(status, 200);
    assert!(!versions.to_string().contains(CANARY));
    // A deployer is no maintainer: dee may not grant.
    let dee_api = api.with_token(&mint(&mut dee, "dee-ci", "member").await.unwrap());
    let (status, _) = dee_api
        .put(
            &format!("/api/projects/{shop}/members/4"),
            json!({"role": "viewer"}),
        )
        .await;
    assert_eq!(status, 403);

    // Remove: 204, then 404 (no manual grant left).
    assert_eq!(
        mae_api.delete(&format!("/api/projects/{shop}/members/3")).await.0,
        204
    );
    assert_eq!(
        mae_api.delete(&format!("/api/projects/{shop}/members/3")).await.0,
        404
    );

    // The audit log names the person and the project.
    let (_, audit) = api.get("/api/audit?limit=100").await;
    let rows: Vec<&Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"].as_str().unwrap().starts_with("project.member."))
        .collect();
    let put = rows
        .iter()
        .find(|e| e["action"] == "project.member.put" && e["actor"] == "user:mae (token mae-ci)")
        .expect("mae's grant is audited");
    assert_eq!(
        (
            put["target_name"].clone(),
            put["project_id"].clone(),
            put["detail"].clone()
        ),
        (json!("dee"), json!(shop), json!("deployer on shop"))
    );
    let del = rows
        .iter()
        .find(|e| e["action"] == "project.member.delete")
        .expect("the removal is audited");
    assert_eq!(
        (del["target_name"].clone(), del["project_id"].clone()),
        (json!("dee"), json!(shop))
    );
    assert!(!audit.to_string().contains(CANARY));
    w.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_acts_with_its_owners_project_roles_capped_by_its_own() {
    let mut w = world().await;
    let (shop, other) = (w.shop, w.other);
    let mut dee = w.server.user(&mut w.admin, "dee", "viewer").await; // 2
    let mut vic = w.server.user(&mut w.admin, "vic", "viewer").await; // 3
    let api = &w.api;
    let (agent_id, agent_token) = api.agent(w.staging, "shop-1").await;
    let mut agent = TestAgent::connect(&api.url, &agent_token, Some(vec![])).await;
    api.wait_online(agent_id).await;

    // A plain viewer may mint only viewer tokens; one who deploys a project, member tokens.
    let (status, body) = mint(&mut vic, "ci", "member").await.unwrap_err();
    assert_eq!(status, 422);
    assert!(body.contains("higher role"));
    assert_eq!(
        api.put(
            &format!("/api/projects/{shop}/members/2"),
            json!({"role": "deployer"})
        )
        .await
        .0,
        200
    );
    assert_eq!(mint(&mut dee, "ci", "admin").await.unwrap_err().0, 422);
    let member = api.with_token(&mint(&mut dee, "ci", "member").await.unwrap());
    let viewer = api.with_token(&mint(&mut dee, "ci-read", "viewer").await.unwrap());

    // The member token deploys shop (dee's project role), not other (viewer there).
    let (status, body) = member
        .post(&format!("/api/deploy/{shop}"), json!({"environment": "staging"}))
        .await;
    assert_eq!(status, 202, "{body}");
    let id = body["deployment_id"].as_i64().unwrap();
    assert_eq!(agent.recv().await["type"], "DEPLOY");
    agent.status(id, "SUCCESS").await;
    api.wait_finished(id, Duration::from_secs(10)).await;
    let (status, body) = member
        .post(&format!("/api/deploy/{other}"), json!({"environment": "staging"}))
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("deployer"),
        "{body}"
    );
    // Deployer, not maintainer: no settings, no secrets, no webhook rotation on shop.
    assert_eq!(
        member
            .patch(&format!("/api/projects/{shop}"), json!({"name": "renamed"}))
            .await
            .0,
        403
    );
    assert_eq!(
        member
            .post(
                &format!("/api/projects/{shop}/secrets"),
                json!({"key": "X", "value": CANARY, "scope": "global"})
            )
            .await
            .0,
        403
    );
    assert_eq!(
        member
            .post(&format!("/api/projects/{shop}/webhook"), json!({}))
            .await
            .0,
        403
    );
    // Global things stay global: a member token of a viewer creates no project.
    assert_eq!(
        member
            .post("/api/projects", json!({"name": "new", "compose_path": "/x"}))
            .await
            .0,
        403
    );
    // A viewer token of a deployer reads, never deploys.
    assert_eq!(viewer.get(&format!("/api/projects/{shop}")).await.0, 200);
    let (status, _) = viewer
        .post(&format!("/api/deploy/{shop}"), json!({"environment": "staging"}))
        .await;
    assert_eq!(status, 403);
    // Redeploy and cancel are deployments of shop: the same rule.
    assert_eq!(
        viewer
            .post(&format!("/api/deployments/{id}/redeploy"), json!({}))
            .await
            .0,
        403
    );

    // Removing the membership takes effect on the token's next request.
    assert_eq!(
        api.delete(&format!("/api/projects/{shop}/members/2")).await.0,
        204
    );
    let (status, _) = member
        .post(&format!("/api/deploy/{shop}"), json!({"environment": "staging"}))
        .await;
    assert_eq!(status, 403);
    assert_eq!(
        member.get(&format!("/api/projects/{shop}")).await.0,
        200,
        "still reads"
    );
    // An object that does not exist: 403 to whoever could not act on one anyway, 404 to a member.
    assert_eq!(member.post("/api/deployments/999/cancel", json!({})).await.0, 403);
    assert_eq!(api.post("/api/deployments/999/cancel", json!({})).await.0, 404);
    w.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_settings_tab_lists_members_and_shows_forms_by_project_role() {
    let mut w = world().await;
    let shop = w.shop;
    let mut mae = w.server.user(&mut w.admin, "mae", "viewer").await; // 2
    let mut dee = w.server.user(&mut w.admin, "dee", "viewer").await; // 3
    let mut vic = w.server.user(&mut w.admin, "vic", "viewer").await; // 4
    w.api
        .put(
            &format!("/api/projects/{shop}/members/2"),
            json!({"role": "maintainer"}),
        )
        .await;
    let settings = format!("/projects/{shop}/settings");

    // The maintainer sees the add form; a form without the CSRF token is refused.
    let (status, page) = mae.get(&settings).await;
    assert_eq!(status, 200);
    assert!(
        page.contains("Add a member") && page.contains("Save settings"),
        "{page}"
    );
    let add = format!("/projects/{shop}/members");
    let (status, _, _) = mae
        .post_form_raw(&add, &[("username", "dee"), ("role", "deployer")])
        .await;
    assert_eq!(status, 403, "no CSRF token");
    // Errors come back next to their field, the form keeping what was typed.
    let (status, body) = mae
        .post_form(&add, &[("username", "nobody"), ("role", "deployer")])
        .await;
    assert_eq!(status, 422);
    assert!(
        body.contains("id=\"username-error\"") && body.contains("value=\"nobody\""),
        "{body}"
    );
    let (status, body) = mae
        .post_form(&add, &[("username", "dee"), ("role", "owner")])
        .await;
    assert_eq!(status, 422);
    assert!(body.contains("id=\"role-error\""), "{body}");
    let (status, _) = mae
        .post_form(&add, &[("username", "dee"), ("role", "deployer")])
        .await;
    assert_eq!(status, 303);
    let (_, page) = mae.get(&format!("{settings}?done=member-saved")).await;
    assert!(page.contains("Project role saved."));
    assert!(page.contains("id=\"member-3-manual\""), "dee is listed: {page}");
    // Her own row has no forms; dee's has.
    assert!(page.contains(&format!("action=\"/projects/{shop}/members/3\"")));
    assert!(!page.contains(&format!("action=\"/projects/{shop}/members/2\"")));
    let (status, body) = mae
        .post_form(&format!("/projects/{shop}/members/2"), &[("role", "viewer")])
        .await;
    assert_eq!(status, 403, "{body:.300}");

    // dee (deployer) sees the deploy button but no settings forms; vic (viewer) neither.
    let (_, overview) = dee.get(&format!("/projects/{shop}")).await;
    assert!(overview.contains("data-testid=\"deploy-staging\""), "{overview}");
    let (_, page) = dee.get(&settings).await;
    assert!(page.contains("id=\"member-3-manual\"") && !page.contains("Add a member"));
    assert!(!page.contains("Save settings"));
    let (_, overview) = vic.get(&format!("/projects/{shop}")).await;
    assert!(!overview.contains("data-testid=\"deploy-staging\""));
    let (status, _) = vic
        .post_form(&format!("/projects/{shop}/deploy"), &[("environment", "staging")])
        .await;
    assert_eq!(status, 403);
    let (_, page) = vic.get(&settings).await;
    assert!(page.contains("id=\"members\"") && !page.contains("Add a member"));
    assert!(!page.contains(&format!("action=\"/projects/{shop}/members/3/delete\"")));
    let (status, _) = vic
        .post_form(&add, &[("username", "vic"), ("role", "maintainer")])
        .await;
    assert_eq!(status, 403, "a viewer cannot grant herself");

    // Where people see their roles: /users (admin) and /account.
    let (_, users) = w.admin.get("/users").await;
    assert!(
        users.contains("shop</a>: maintainer") && users.contains("shop</a>: deployer"),
        "{users}"
    );
    let (_, account) = dee.get("/account").await;
    assert!(account.contains("shop</a>: deployer"), "{account}");

    // Remove through the page.
    let (status, _) = mae
        .post_form(&format!("/projects/{shop}/members/3/delete"), &[])
        .await;
    assert_eq!(status, 303);
    let (_, overview) = dee.get(&format!("/projects/{shop}")).await;
    assert!(
        !overview.contains("data-testid=\"deploy-staging\""),
        "the role is gone"
    );
    w.server.stop().await;
}
