//! `stagely migrate-store` (issue 17), as the real binary: a populated appliance's SQLite file
//! copied to a fresh PostgreSQL database and back to a new SQLite file, every row equal; an
//! appliance on the migrated PostgreSQL serves the old token and opens the vault with the old
//! key, and does not give a deleted project's id again; a non-empty target, a wrong key and an
//! existing file are refused with nothing written; no secret value in any output line.

use std::path::Path;
use std::process::Output;

use serde_json::json;

use crate::common::{Api, ServerProcess, TestServer};
use crate::releases::{connect, deploy, next_deploy, report};

const CANARY: &str = "canary-migrate-7c41e9";

/// A fresh database on the throwaway PostgreSQL (scripts/pg-test-server.sh); `None` skips loudly,
/// and fails under CI=true.
fn fresh_database(name: &str) -> Option<String> {
    let Ok(admin) = std::env::var("STAGELY_TEST_DATABASE_URL") else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "STAGELY_TEST_DATABASE_URL is not set: run scripts/test.sh (it starts PostgreSQL)"
        );
        eprintln!("!!! SKIPPED {name}: no STAGELY_TEST_DATABASE_URL (scripts/pg-test-server.sh start) !!!");
        return None;
    };
    let db = format!("it_{}_{name}", std::process::id());
    let create = format!("CREATE DATABASE {db}");
    let admin2 = admin.clone();
    // The blocking client starts a runtime of its own: not on the test's.
    std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&admin2, postgres::NoTls).unwrap();
        c.batch_execute(&create).unwrap();
    })
    .join()
    .unwrap();
    let base = admin.rsplit_once('/').unwrap().0;
    Some(format!("{base}/{db}"))
}

fn migrate(data_dir: &Path, env: &[(&str, &str)], to: &str) -> Output {
    migrate_with(data_dir, env, &["--to", to])
}

/// `stagely migrate-store ARGS`: the target given however `args` and `env` say.
fn migrate_with(data_dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_stagely"));
    cmd.arg("migrate-store")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("RUST_LOG")
        .env_remove("STAGELY_MIGRATE_TO");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    for stream in [&out.stdout, &out.stderr] {
        assert!(
            !String::from_utf8_lossy(stream).contains(CANARY),
            "a secret value in the output"
        );
    }
    out
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every row of every table (and the AUTOINCREMENT high-water marks) as text, sorted.
fn dump(path: &Path) -> Vec<(String, Vec<String>)> {
    let c = rusqlite::Connection::open(path).unwrap();
    let tables: Vec<String> = c
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name != 'refinery_schema_history' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    tables
        .into_iter()
        .map(|t| {
            let rowid = if t == "deployment_secrets" { "rowid, " } else { "" };
            let mut stmt = c.prepare(&format!("SELECT {rowid}* FROM {t}")).unwrap();
            let n = stmt.column_count();
            let mut rows: Vec<String> = stmt
                .query_map([], |r| {
                    let mut row = Vec::new();
                    for i in 0..n {
                        row.push(format!("{:?}", r.get::<_, rusqlite::types::Value>(i)?));
                    }
                    Ok(row.join("|"))
                })
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            // A sequence at 0 is the same as none (a migration wrote it for an empty table).
            if t == "sqlite_sequence" {
                rows.retain(|r| !r.ends_with("|Integer(0)"));
            }
            rows.sort();
            (t, rows)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_store_round_trip() {
    if crate::common::store::postgres() {
        // Not a missing part: the source of this test is the SQLite file of its appliance, and
        // the suite's SQLite pass runs it.
        eprintln!("migrate_store_round_trip runs in the SQLite pass (its source is the SQLite file)");
        return;
    }
    let Some(pg) = fresh_database("roundtrip") else {
        return;
    };
    let mut server = TestServer::start().await;
    let api = server.api.clone();
    let (pid, envs) = api.project("shop", &["prod"]).await;
    let (gone, _) = api.project("gone", &[]).await;
    let secret = api
        .ok(
            &format!("/api/projects/{pid}/secrets"),
            json!({"key": "S", "value": CANARY, "scope": "global"}),
            201,
        )
        .await;
    let sid = secret["id"].as_i64().unwrap();
    let (status, _) = api
        .put(
            &format!("/api/secrets/{sid}"),
            json!({"value": format!("{CANARY}-2")}),
        )
        .await;
    assert_eq!(status, 200);
    api.ok(
        &format!("/api/projects/{pid}/notifications"),
        json!({"kind": "webhook", "name": "hook", "events": ["deploy.failed"], "url": "https://example.invalid/hook"}),
        201,
    )
    .await;
    let (agent_id, agent_token) = api.agent(envs[0], "prod-1").await;
    let mut agent = connect(&api, &agent_token, &["releases"]).await;
    api.wait_online(agent_id).await;
    let d = deploy(&api, pid).await;
    let (sent, _) = next_deploy(&mut agent).await;
    assert_eq!(sent, d);
    agent.log(d, 1, "hello from the deploy").await;
    report(&mut agent, d, "FAIL", json!({})).await;
    let (status, _) = api.delete(&format!("/api/projects/{gone}")).await;
    assert!(status == 200 || status == 204, "{status}");
    drop(agent);
    let data = server.data_dir();
    // Keep the data dir past the server's stop.
    let _dir = std::mem::replace(&mut server.dir, tempfile::tempdir().unwrap());
    let token = api.token.clone();
    server.stop().await;
    let original = data.join("stagely.db");

    // Wrong key: refused before the target exists.
    let wrong = data.join("wrong.key");
    {
        use age::secrecy::ExposeSecret;
        let id = age::x25519::Identity::generate();
        std::fs::write(&wrong, format!("{}\n", id.to_string().expose_secret())).unwrap();
    }
    let untouched = data.join("never.db");
    let out = migrate(
        &data,
        &[("STAGELY_KEY_FILE", wrong.to_str().unwrap())],
        &format!("sqlite:{}", untouched.display()),
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("does not match"), "{}", text(&out));
    assert!(!untouched.exists(), "the target was touched");

    // An existing non-empty file: refused, unchanged.
    let occupied = data.join("occupied.db");
    std::fs::write(&occupied, b"keep me").unwrap();
    let out = migrate(&data, &[], &format!("sqlite:{}", occupied.display()));
    assert!(!out.status.success());
    assert!(text(&out).contains("not empty"), "{}", text(&out));
    assert_eq!(std::fs::read(&occupied).unwrap(), b"keep me");

    // SQLite → PostgreSQL, the URL out of argv (where every local user could read a password).
    let out = migrate_with(&data, &[("STAGELY_MIGRATE_TO", pg.as_str())], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(stdout.lines().any(|l| l == "projects 1 rows"), "{stdout}");
    assert!(stdout.lines().last().unwrap().starts_with("copied "), "{stdout}");

    // Again, from a file: the target now holds rows, so it is refused and nothing changes.
    let to_file = data.join("target-url");
    std::fs::write(&to_file, format!("{pg}\n")).unwrap();
    let out = migrate_with(&data, &[], &["--to-file", to_file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("the target is not empty"), "{}", text(&out));

    // PostgreSQL → a new SQLite file: every row as it was.
    let back = data.join("back.db");
    let out = migrate(
        &data,
        &[("STAGELY_DATABASE_URL", pg.as_str())],
        &format!("sqlite:{}", back.display()),
    );
    assert!(out.status.success(), "{}", text(&out));
    let (a, b) = (dump(&original), dump(&back));
    assert_eq!(a.len(), b.len());
    for ((ta, ra), (tb, rb)) in a.iter().zip(&b) {
        assert_eq!(ta, tb);
        assert_eq!(ra, rb, "table {ta} differs after the round trip");
    }

    // An appliance on the migrated PostgreSQL (the same data dir: its master.key and signing.key):
    // the old token signs in, the old key opens the vault, the agent keeps its pinned identity,
    // and the deleted project's id is not given again.
    let log = data.join("serve-on-postgres.log");
    let served = ServerProcess::spawn(
        &data,
        "127.0.0.1:0",
        &[("STAGELY_DATABASE_URL", pg.as_str())],
        &log,
    )
    .await;
    let api = Api::new(&served.url, &token);
    let (status, projects) = api.get("/api/projects").await;
    assert_eq!(status, 200, "{projects}");
    assert!(projects.to_string().contains("\"shop\""), "{projects}");
    let mut agent = connect(&api, &agent_token, &["releases"]).await;
    api.wait_online(agent_id).await;
    let again = deploy(&api, pid).await;
    assert!(again > d, "deployment id {again} given again (was {d})");
    let (sent, frame) = next_deploy(&mut agent).await;
    assert_eq!(sent, again);
    assert_eq!(agent.secrets(&frame)[0]["value"], format!("{CANARY}-2"));
    report(&mut agent, again, "SUCCESS", json!({})).await;
    let (fresh, _) = api.project("fresh", &[]).await;
    assert!(fresh > gone, "project id {fresh} given again (deleted: {gone})");
    drop(agent);
    assert!(served.terminate().await.success());
    assert!(
        !std::fs::read_to_string(&log).unwrap().contains(CANARY),
        "a secret value in the PostgreSQL appliance's log"
    );
}

/// A password on the command line is warned about and never echoed; an empty `--to-file` and
/// both ways at once are refused, naming the problem. No database is needed: nothing connects.
#[test]
fn migrate_store_target_from_argv_env_or_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let secret = "pw-canary-5f1e";
    // Port 1 refuses: the copy fails after the warning, and the error keeps the password out.
    let out = migrate(
        data,
        &[],
        &format!("postgres://stagely:{secret}@127.0.0.1:1/stagely"),
    );
    assert!(!out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("STAGELY_MIGRATE_TO or --to-file"), "{said}");
    assert!(!said.contains(secret), "the password was echoed: {said}");

    // The same URL through the environment: no warning, the password still never echoed.
    let url = format!("postgres://stagely:{secret}@127.0.0.1:1/stagely");
    let out = migrate_with(data, &[("STAGELY_MIGRATE_TO", url.as_str())], &[]);
    assert!(!out.status.success());
    let said = text(&out);
    assert!(!said.contains("visible to every user"), "{said}");
    assert!(!said.contains(secret), "the password was echoed: {said}");

    let empty = data.join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let out = migrate_with(data, &[], &["--to-file", empty.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("is empty"), "{}", text(&out));

    let out = migrate_with(
        data,
        &[],
        &["--to", "sqlite:/tmp/x.db", "--to-file", empty.to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("cannot be used with"), "{}", text(&out));

    let out = migrate_with(data, &[], &[]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("required arguments were not provided"),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("--to <TARGET>"), "{}", text(&out));
}
