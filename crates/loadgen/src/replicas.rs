//! Dispatch across replicas (issue 17): the fixture copied into a fresh PostgreSQL database by the
//! real `stagely migrate-store`, two `stagely serve` replicas on it (sharing the fixture's keys),
//! the dispatch group's agents connected to replica B, and the same paced deploys POSTed first to
//! replica A (routed through the database: the outbox row and `NOTIFY`) and then to B itself (one
//! PostgreSQL replica, no routing). Compare with `dispatch_p50`: one appliance on SQLite.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::sync::mpsc;

use crate::bench::Bench;
use crate::deploys::{LocalAgents, Paced, paced_deploys};
use crate::fleet::wait_online;
use crate::http::Http;
use crate::report::{Results, quantile};
use crate::server::{Server, ServerSpec};

/// Where the PostgreSQL server to create a database on comes from, in this order.
const URL_VARIABLES: [&str; 2] = ["STAGELY_BENCH_DATABASE_URL", "STAGELY_TEST_DATABASE_URL"];

/// The admin URL of a PostgreSQL server to create the bench's database on, if one is given.
pub fn admin_url() -> Option<String> {
    URL_VARIABLES
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
}

/// Why the group cannot run here, if it cannot.
pub fn unavailable() -> Option<String> {
    admin_url().is_none().then(|| {
        format!(
            "no PostgreSQL: set {} (scripts/pg-test-server.sh start prints one; scripts/bench.sh starts it)",
            URL_VARIABLES[0]
        )
    })
}

pub async fn run(b: &Bench, res: &mut Results, run: usize) -> Result<()> {
    let admin = admin_url().context("no PostgreSQL admin URL")?;
    let name = format!("bench_replicas_{}_{run}", std::process::id());
    let url = create_database(&admin, &name).await?;
    let outcome = measure(b, res, &url).await;
    if let Err(e) = drop_database(&admin, &name).await {
        eprintln!("loadgen: cannot drop the bench database {name}: {e:#}");
    }
    outcome
}

async fn measure(b: &Bench, res: &mut Results, url: &str) -> Result<()> {
    let fixture = b.fixture()?;
    let n = b.sizes.dispatch_agents;
    let agents = fixture.agents.get(..n).context("fixture too small")?;
    let (a, replica_b) = start_pair(replica_specs(b, url, &[]).await?).await?;
    let (addr_a, addr_b) = (a.addr()?, replica_b.addr()?);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let local = LocalAgents::start(addr_b, agents, |_| Some(tx.clone()));
    drop(tx);
    let outcome = async {
        local.wait_connected(n, Duration::from_secs(120)).await?;
        // Online as replica A sees it: B's presence leases in the shared database.
        let mut http = Http::new(addr_a, Some(&fixture.admin_token));
        wait_online(&mut http, n, Duration::from_secs(120)).await?;
        let total = b.sizes.dispatch_deploys;
        let across = paced_deploys(b, &fixture.admin_token, agents, addr_a, &mut rx, total).await?;
        report(res, ("replicas_dispatch_p50", "replicas_dispatch_p99"), &across);
        let local_run = paced_deploys(b, &fixture.admin_token, agents, addr_b, &mut rx, total).await?;
        report(res, ("replicas_local_p50", "replicas_local_p99"), &local_run);
        res.note(
            "replicas_dispatch_p50",
            format!(
                "{n} agents on replica B, {total} deploys POSTed to replica A at {}/s; both replicas on one \
                 PostgreSQL database (the fixture copied there by `stagely migrate-store`)",
                b.sizes.dispatch_rate
            ),
        );
        Ok::<_, anyhow::Error>(())
    }
    .await;
    local.stop().await;
    a.stop().await?;
    replica_b.stop().await?;
    outcome
}

/// The fixture copied into the database at `url` by `stagely migrate-store`, and the specs of two
/// replicas on it (`replica-a`, `replica-b`: data dirs holding only the fixture's keys), with
/// `env` on top of the bench's.
pub async fn replica_specs(b: &Bench, url: &str, env: &[(&str, &str)]) -> Result<[ServerSpec; 2]> {
    let source = b.fixture_server().data_dir;
    migrate_store(&b.stagely, &source, url).await?;
    let spec = |which: &str| -> Result<ServerSpec> {
        let data_dir = b.work.join(which);
        if data_dir.exists() {
            std::fs::remove_dir_all(&data_dir)?;
        }
        std::fs::create_dir_all(&data_dir)?;
        for key in ["master.key", "signing.key"] {
            std::fs::copy(source.join(key), data_dir.join(key))
                .with_context(|| format!("copying the fixture's {key}"))?;
        }
        let mut spec = b.fixture_server().with_env("STAGELY_DATABASE_URL", url);
        for (k, v) in env {
            spec = spec.with_env(k, v);
        }
        spec.data_dir = data_dir;
        spec.log = b.work.join(format!("{which}.log"));
        Ok(spec)
    };
    Ok([spec("replica-a")?, spec("replica-b")?])
}

/// Both replicas started and ready (A stopped again when B cannot start).
pub async fn start_pair([spec_a, spec_b]: [ServerSpec; 2]) -> Result<(Server, Server)> {
    let a = spec_a.start().await?;
    let started = async {
        let replica_b = spec_b.start().await?;
        a.wait_ready().await?;
        replica_b.wait_ready().await?;
        Ok::<_, anyhow::Error>(replica_b)
    }
    .await;
    match started {
        Ok(replica_b) => Ok((a, replica_b)),
        Err(e) => {
            let _ = a.stop().await;
            Err(e)
        }
    }
}

/// `keys`: the p50's and the p99's.
fn report(res: &mut Results, keys: (&'static str, &'static str), paced: &Paced) {
    res.add(keys.0, quantile(&paced.lat, 0.5).unwrap_or(f64::NAN));
    res.add(keys.1, quantile(&paced.lat, 0.99).unwrap_or(f64::NAN));
    if paced.refused > 0 || paced.missing > 0 {
        res.note(
            keys.1,
            format!(
                "a run had {} refused POSTs and {} DEPLOYs never seen",
                paced.refused, paced.missing
            ),
        );
    }
}

async fn migrate_store(stagely: &Path, data_dir: &Path, url: &str) -> Result<()> {
    let out = tokio::process::Command::new(stagely)
        .arg("migrate-store")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--to")
        .arg(url)
        .env_remove("RUST_LOG")
        .env_remove("STAGELY_DATABASE_URL")
        .output()
        .await
        .context("running stagely migrate-store")?;
    if !out.status.success() {
        bail!(
            "stagely migrate-store failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `CREATE DATABASE name` on the server of `admin`; answers the new database's URL.
pub async fn create_database(admin: &str, name: &str) -> Result<String> {
    admin_sql(admin, format!("CREATE DATABASE {name}")).await?;
    let (base, query) = admin.split_once('?').map_or((admin, None), |(b, q)| (b, Some(q)));
    let base = base.rsplit_once('/').map_or(base, |(b, _)| b);
    Ok(match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    })
}

pub async fn drop_database(admin: &str, name: &str) -> Result<()> {
    admin_sql(admin, format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await
}

/// One statement on the admin connection.
async fn admin_sql(admin: &str, sql: String) -> Result<()> {
    on_admin(admin, move |c| c.batch_execute(&sql).with_context(|| sql.clone())).await
}

/// A setting of the server of `admin` (`SHOW name`).
pub async fn admin_setting(admin: &str, name: &'static str) -> Result<String> {
    on_admin(admin, move |c| {
        let row = c
            .query_one(&format!("SHOW {name}"), &[])
            .with_context(|| format!("SHOW {name}"))?;
        Ok(row.get::<_, String>(0))
    })
    .await
}

/// `f` on a new admin connection. The blocking client runs a runtime of its own: on a thread of
/// its own, off this one.
async fn on_admin<T, F>(admin: &str, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(&mut postgres::Client) -> Result<T> + Send + 'static,
{
    let admin = admin.to_owned();
    tokio::task::spawn_blocking(move || {
        std::thread::spawn(move || {
            let mut c =
                postgres::Client::connect(&admin, postgres::NoTls).context("connecting to PostgreSQL")?;
            f(&mut c)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the PostgreSQL admin thread panicked"))?
    })
    .await?
}
