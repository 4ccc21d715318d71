//! Two `stagely serve` replicas on one fresh PostgreSQL database (issue 17), for
//! tests/it/replicas.rs: the database made on the throwaway server `STAGELY_TEST_DATABASE_URL`
//! names (scripts/pg-test-server.sh), the second data dir holding copies of the first's
//! master.key and signing key.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use crate::common::{Api, ServerProcess};

/// A fresh database's URL; `None` (skipped loudly, failing under CI=true) without a server.
pub fn fresh_database(name: &str) -> Option<String> {
    let Ok(admin) = std::env::var("STAGELY_TEST_DATABASE_URL") else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "STAGELY_TEST_DATABASE_URL is not set: run scripts/test.sh (it starts PostgreSQL)"
        );
        eprintln!("!!! SKIPPED {name}: no STAGELY_TEST_DATABASE_URL (scripts/pg-test-server.sh start) !!!");
        return None;
    };
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let db = format!(
        "it_{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        name.chars()
            .filter(char::is_ascii_alphanumeric)
            .take(20)
            .collect::<String>()
    );
    // The blocking client runs its own runtime: off the test's.
    let (url, create) = (admin.clone(), format!("CREATE DATABASE {db}"));
    std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).expect("admin connection");
        c.batch_execute(&create).expect("create database");
    })
    .join()
    .unwrap();
    let (base, query) = admin
        .split_once('?')
        .map_or((admin.as_str(), None), |(b, q)| (b, Some(q)));
    let base = base.rsplit_once('/').map_or(base, |(b, _)| b);
    Some(match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    })
}

pub struct Replicas {
    pub dir: tempfile::TempDir,
    pub database_url: String,
    pub a: Option<ServerProcess>,
    pub b: Option<ServerProcess>,
    /// An admin API token (the same for both: tokens are in the database).
    pub token: String,
}

impl Replicas {
    pub fn data(&self, which: &str) -> PathBuf {
        self.dir.path().join(format!("data-{which}"))
    }

    pub fn log(&self, which: &str) -> PathBuf {
        self.dir.path().join(format!("{which}.log"))
    }

    /// A, then B with A's keys; `extra` goes to both.
    pub async fn start(name: &str, extra: &[(&str, &str)]) -> Option<Replicas> {
        let database_url = fresh_database(name)?;
        let dir = tempfile::tempdir().unwrap();
        let mut r = Replicas {
            dir,
            database_url,
            a: None,
            b: None,
            token: String::new(),
        };
        r.a = Some(r.spawn("a", extra).await);
        let (from, to) = (r.data("a"), r.data("b"));
        std::fs::create_dir_all(&to).unwrap();
        for file in ["master.key", "signing.key"] {
            std::fs::copy(from.join(file), to.join(file)).unwrap();
        }
        r.b = Some(r.spawn("b", extra).await);
        r.token = admin_token(&from, &r.database_url);
        Some(r)
    }

    pub async fn spawn(&self, which: &str, extra: &[(&str, &str)]) -> ServerProcess {
        let mut env = vec![("STAGELY_DATABASE_URL", self.database_url.as_str())];
        env.extend_from_slice(extra);
        ServerProcess::spawn(&self.data(which), "127.0.0.1:0", &env, &self.log(which)).await
    }

    pub fn api(&self, which: &str) -> Api {
        let server = match which {
            "a" => self.a.as_ref(),
            _ => self.b.as_ref(),
        };
        Api::new(&server.expect("replica running").url, &self.token)
    }
}

/// An admin API token made by the real CLI on the shared database.
pub fn admin_token(data_dir: &Path, database_url: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stagely"))
        .args([
            "admin",
            "create-token",
            "--name",
            "replicas-admin",
            "--role",
            "admin",
            "--data-dir",
        ])
        .arg(data_dir)
        .env("STAGELY_DATABASE_URL", database_url)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "create-token failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}
