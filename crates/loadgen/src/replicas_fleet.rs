//! Idle agents held by two replicas, and the reconnect storm when one of them dies (issue 17).
//!
//! The fixture is copied into a fresh PostgreSQL database, two `stagely serve` replicas run on
//! it, and each holds `n` idle swarm agents: A's dial `[A, B]`, B's dial `[B, A]`, as agents given
//! `--server` twice do. After the idle window, a quarter of A's agents leave (one process may hold
//! 20,000 open files here, so A could not take all of B's on top of all of its own), B is
//! SIGKILLed and not restarted, and B's agents are watched until each holds a connection made
//! after the kill (which can only be to A). Then, once B's leases have run out, replica A's own
//! API must count every agent still running as online: the presence moved, nothing is stuck.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::agent::epoch_ms;
use crate::bench::Bench;
use crate::fleet::{HealthzProbe, StormKeys, online_count, report_healthz, report_storm, wait_online};
use crate::http::Http;
use crate::replicas::{admin_setting, admin_url, create_database, drop_database, replica_specs, start_pair};
use crate::report::Results;
use crate::server::{Server, cpu_ticks};
use crate::swarm::{Group, Report, Swarm};

/// How long a replica's presence lease holds without renewal (src/cluster/mod.rs `LEASE_MS`).
const LEASE: Duration = Duration::from_secs(10);

pub async fn run(b: &Bench, res: &mut Results, run: usize) -> Result<()> {
    let admin = admin_url().context("no PostgreSQL admin URL")?;
    let name = format!("bench_fleet_{}_{run}", std::process::id());
    let url = create_database(&admin, &name).await?;
    let outcome = measure(b, res, &admin, &url).await;
    if let Err(e) = drop_database(&admin, &name).await {
        eprintln!("loadgen: cannot drop the bench database {name}: {e:#}");
    }
    outcome
}

async fn measure(b: &Bench, res: &mut Results, admin: &str, url: &str) -> Result<()> {
    let n = b.sizes.replicas_agents;
    let ping = b.sizes.ping_secs.to_string();
    let offline = (b.sizes.ping_secs * 3).to_string();
    let cap = b.storm_handshakes.map(|c| c.to_string());
    let mut env = vec![
        // Every simulated agent dials from 127.0.0.1, where real ones come from one address
        // each: the per-address cap on connections speaking HTTP would refuse the fill's
        // concurrent handshakes (it is not what is measured here).
        ("STAGELY_HTTP__MAX_CONNECTIONS_PER_IP", "65536"),
        ("STAGELY_AGENTS__PING_INTERVAL_SECS", ping.as_str()),
        ("STAGELY_AGENTS__OFFLINE_AFTER_SECS", offline.as_str()),
    ];
    if let Some(cap) = &cap {
        env.push(("STAGELY_AGENTS__MAX_HANDSHAKES_PER_SEC", cap.as_str()));
    }
    let (a, replica_b) = start_pair(replica_specs(b, url, &env).await?).await?;
    let postgres = Postgres::find(admin).await;
    // Let start-up work settle, then take the baselines.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_before = [a.rss_kb()?, replica_b.rss_kb()?];

    let (url_a, url_b) = (a.url.clone(), replica_b.url.clone());
    let spare = n / 4;
    let fixture = b.fixture_path();
    let a_urls = [url_a.as_str(), url_b.as_str()];
    let b_urls = [url_b.as_str(), url_a.as_str()];
    let swarm = |urls: &[&str], start: usize, count: usize| {
        let group = Group { urls, start, count };
        Swarm::start_groups(&b.exe, &[group], &fixture, 900, &[])
    };
    let filled = Instant::now();
    let kept = swarm(&a_urls, 0, n - spare)?;
    let leaving = swarm(&a_urls, n - spare, spare)?;
    let on_b = swarm(&b_urls, n, n)?;
    let mut fleet = Fleet {
        a,
        replica_b: Some(replica_b),
        kept,
        leaving: Some(leaving),
        on_b,
    };
    let outcome = async {
        fleet.fill(b, n, filled).await?;
        res.note(
            "replicas_idle_rss_per_agent",
            format!(
                "2 × {n} agents filled in {:.1} s; each replica at {}",
                filled.elapsed().as_secs_f64(),
                cap.as_deref().map_or_else(
                    || "its default handshake cap".to_owned(),
                    |c| format!("{c} handshakes/s")
                )
            ),
        );
        fleet.idle(b, res, postgres.as_ref(), rss_before).await?;
        fleet.storm(b, res, n, spare).await
    }
    .await;
    fleet.stop().await;
    outcome
}

/// How many agents each replica holds, and the reports it was read from.
struct Placement {
    on_a: usize,
    on_b: usize,
    kept: Report,
    b_group: Report,
}

/// Both replicas and the three swarms: A's agents that stay, A's that leave before the storm,
/// and B's.
struct Fleet {
    a: Server,
    replica_b: Option<Server>,
    kept: Swarm,
    leaving: Option<Swarm>,
    on_b: Swarm,
}

impl Fleet {
    fn b(&self) -> Result<&Server> {
        self.replica_b.as_ref().context("replica B is gone")
    }

    async fn fill(&self, b: &Bench, n: usize, since: Instant) -> Result<()> {
        let limit = Duration::from_secs(300);
        for s in [Some(&self.kept), self.leaving.as_ref(), Some(&self.on_b)]
            .into_iter()
            .flatten()
        {
            s.wait_connected(s.size as u64, limit).await?;
        }
        // Online as each replica sees it: its own agents and the other's leases.
        let token = &b.fixture()?.admin_token;
        for server in [&self.a, self.b()?] {
            let mut http = Http::new(server.addr()?, Some(token));
            let left = limit.saturating_sub(since.elapsed()).max(Duration::from_secs(30));
            wait_online(&mut http, 2 * n, left).await?;
        }
        Ok(())
    }

    async fn idle(
        &mut self,
        b: &Bench,
        res: &mut Results,
        postgres: Option<&Postgres>,
        rss_before: [u64; 2],
    ) -> Result<()> {
        let placed = self.placement().await?;
        let held = [placed.on_a, placed.on_b];
        let replicas = [&self.a, self.b()?];
        let window = Duration::from_secs(b.sizes.ping_secs * b.sizes.idle_rounds);
        let ticks0 = [cpu_ticks(replicas[0].pid)?, cpu_ticks(replicas[1].pid)?];
        let pg0 = postgres.map(Postgres::ticks).transpose()?;
        let t0 = Instant::now();
        tokio::time::sleep(window).await;
        let secs = t0.elapsed().as_secs_f64();
        let percent = |ticks: u64| ticks as f64 / b.clk_tck as f64 / secs * 100.0;
        let mut rss = Vec::new();
        let mut cpu = Vec::new();
        for (i, r) in replicas.iter().enumerate() {
            rss.push(r.rss_kb()?.saturating_sub(rss_before[i]) as f64 / held[i].max(1) as f64);
            cpu.push(percent(cpu_ticks(r.pid)? - ticks0[i]));
        }
        res.add("replicas_idle_rss_per_agent", mean(&rss));
        res.add("replicas_idle_cpu", mean(&cpu));
        res.note(
            "replicas_idle_cpu",
            format!(
                "each replica, ping every {} s, over {secs:.0} s: A {:.2} %, B {:.2} %; A held {} agents \
                 ({:.2} KB each), B {} ({:.2} KB each)",
                b.sizes.ping_secs, cpu[0], cpu[1], held[0], rss[0], held[1], rss[1]
            ),
        );
        match (postgres, pg0) {
            (Some(pg), Some(before)) => {
                res.add(
                    "replicas_idle_pg_cpu",
                    percent(pg.ticks()?.saturating_sub(before)),
                );
                res.note(
                    "replicas_idle_pg_cpu",
                    "the postmaster and its children (reaped ones included): the leases both replicas \
                     renew every 3 s, the heartbeats, the leader's sweeps",
                );
            }
            _ => res.not_measured(
                "replicas_idle_pg_cpu",
                "the PostgreSQL server's processes cannot be read here (not a local server of this user)",
            ),
        }
        Ok(())
    }

    /// Where every agent is: how many each replica holds (A's agents that failed a dial moved
    /// to B, as real agents do, and the other way round), and the `to` of each swarm.
    async fn placement(&mut self) -> Result<Placement> {
        let kept = self.kept.report_where().await?;
        let leaving = match &mut self.leaving {
            Some(s) => Some(s.report_where().await?),
            None => None,
        };
        let on_b = self.on_b.report_where().await?;
        let count = |r: &Report, server: u64| r.to.iter().filter(|&&t| t == server).count();
        let (mut on_a, mut held_by_b) = (
            count(&kept, 1) + count(&on_b, 2),
            count(&kept, 2) + count(&on_b, 1),
        );
        if let Some(l) = &leaving {
            on_a += count(l, 1);
            held_by_b += count(l, 2);
        }
        Ok(Placement {
            on_a,
            on_b: held_by_b,
            kept,
            b_group: on_b,
        })
    }

    /// A quarter of A's agents leave; B is SIGKILLed; the agents it held are watched moving to A.
    async fn storm(&mut self, b: &Bench, res: &mut Results, n: usize, spare: usize) -> Result<()> {
        if let Some(s) = self.leaving.take() {
            s.stop().await?;
        }
        let token = b.fixture()?.admin_token.clone();
        let mut http = Http::new(self.a.addr()?, Some(&token));
        let staying = 2 * n - spare;
        wait_online_at_most(&mut http, staying, Duration::from_secs(60)).await?;

        // Which agents B holds now: A's group on its second server, B's group on its first.
        let at_kill = self.placement().await?;
        let pick = |r: &Report, server: u64| -> Vec<usize> {
            r.to.iter()
                .enumerate()
                .filter(|(_, t)| **t == server)
                .map(|(i, _)| i)
                .collect()
        };
        let (kept_moving, b_moving) = (pick(&at_kill.kept, 2), pick(&at_kill.b_group, 1));
        let moving = kept_moving.len() + b_moving.len();
        let busy_before = at_kill.kept.totals.busy_503 + at_kill.b_group.totals.busy_503;
        let killed_at = epoch_ms();
        self.replica_b.take().context("replica B is gone")?.kill().await?;
        let probe = HealthzProbe::start(self.a.addr()?);
        let deadline = Instant::now() + Duration::from_secs(b.sizes.storm_limit_secs);
        let (since, kept_now, on_b_now, busy) = loop {
            let kept = self.kept.report_where().await?;
            let on_b = self.on_b.report_where().await?;
            let since: Vec<u64> = kept_moving
                .iter()
                .map(|&i| kept.since[i])
                .chain(b_moving.iter().map(|&i| on_b.since[i]))
                .collect();
            let back = since.iter().filter(|&&s| s > killed_at).count();
            if back >= moving || Instant::now() >= deadline {
                let busy = kept.totals.busy_503 + on_b.totals.busy_503 - busy_before;
                break (since, kept, on_b, busy);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let (lat, failures) = probe.stop().await?;
        let keys = StormKeys {
            within_30s: "replicas_storm_30s",
            within_90s: "replicas_storm_90s",
            t99: "replicas_storm_t99",
            busy: "replicas_storm_503",
        };
        report_storm(res, &keys, &since, killed_at, busy as f64);
        report_healthz(
            res,
            ("replicas_storm_healthz_p99", "replicas_storm_healthz_max"),
            lat,
            failures,
        );
        // The agents A held were left alone: none of them lost its connection.
        let dropped_of = |at_kill: &Report, now: &Report, on_a: u64| {
            at_kill
                .to
                .iter()
                .zip(&now.since)
                .filter(|&(&to, &since)| to == on_a && (since == 0 || since > killed_at))
                .count()
        };
        let dropped = dropped_of(&at_kill.kept, &kept_now, 1) + dropped_of(&at_kill.b_group, &on_b_now, 2);
        res.add("replicas_storm_a_dropped", dropped as f64);

        // Once B's leases ran out, A counts exactly the agents still running as online: B's
        // agents under A's presence, none left online by a dead replica's lease.
        let lease_out = Duration::from_millis(killed_at + LEASE.as_millis() as u64 + 2_000)
            .saturating_sub(Duration::from_millis(epoch_ms()));
        tokio::time::sleep(lease_out).await;
        let online = online_count(&mut http).await?;
        res.add("replicas_storm_online", online as f64 / staying as f64 * 100.0);
        res.note(
            "replicas_storm_30s",
            format!(
                "B held {moving} agents ({} of A's group, which had failed a dial to A while filling), \
                 SIGKILLed, not restarted; A held {} and took B's at {}; times from the kill",
                kept_moving.len(),
                at_kill.on_a,
                b.storm_handshakes.map_or_else(
                    || "its default handshake cap".to_owned(),
                    |c| format!("{c} handshakes/s")
                )
            ),
        );
        res.note(
            "replicas_storm_online",
            format!(
                "replica A's /api/agents {:.0} s after the kill: {online} of {staying} online",
                (epoch_ms() - killed_at) as f64 / 1000.0
            ),
        );
        Ok(())
    }

    /// Agents first, so none of them dials a replica while it shuts down.
    async fn stop(self) {
        let _ = self.kept.stop().await;
        if let Some(s) = self.leaving {
            let _ = s.stop().await;
        }
        let _ = self.on_b.stop().await;
        let _ = self.a.stop().await;
        if let Some(b) = self.replica_b {
            let _ = b.stop().await;
        }
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// Poll until at most `n` agents are online (the ones that left are seen gone).
async fn wait_online_at_most(http: &mut Http, n: usize, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let online = online_count(http).await?;
        if online <= n {
            return Ok(());
        }
        if Instant::now() >= deadline {
            anyhow::bail!("still {online} agents online, expected {n}, after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The local PostgreSQL server's processes: its postmaster (from `postmaster.pid` in its data
/// directory) and the postmaster's children.
struct Postgres {
    postmaster: u32,
}

impl Postgres {
    async fn find(admin: &str) -> Option<Postgres> {
        let dir = admin_setting(admin, "data_directory").await.ok()?;
        let pid = std::fs::read_to_string(Path::new(&dir).join("postmaster.pid")).ok()?;
        let postmaster = pid.lines().next()?.trim().parse().ok()?;
        Path::new(&format!("/proc/{postmaster}/stat"))
            .exists()
            .then_some(Postgres { postmaster })
    }

    /// CPU ticks of the postmaster, of the children it reaped, and of its live children.
    fn ticks(&self) -> Result<u64> {
        let mut total = stat_fields(self.postmaster)?.iter().skip(11).take(4).sum::<u64>();
        for entry in std::fs::read_dir("/proc")? {
            let Some(pid) = entry?.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            // A process may end between the listing and the read.
            if let Ok(f) = stat_fields(pid)
                && f.get(1) == Some(&u64::from(self.postmaster))
            {
                total += f[11] + f[12];
            }
        }
        Ok(total)
    }
}

/// The numeric fields of `/proc/<pid>/stat` after the command name, from the state on (the state
/// itself reads as 0): index 1 is the parent, 11 and 12 utime and stime, 13 and 14 those of the
/// children it waited for.
fn stat_fields(pid: u32) -> Result<Vec<u64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<u64> = rest.split_whitespace().map(|v| v.parse().unwrap_or(0)).collect();
    anyhow::ensure!(fields.len() > 14, "short /proc/{pid}/stat");
    Ok(fields)
}
