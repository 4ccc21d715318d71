//! The appliance under test as a real `stagely serve` process, and what `/proc` says about a
//! process (its memory and CPU are always read from the process itself, never from the generator).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::http::{Http, addr_of};

/// How long the appliance may take to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `stagely serve`.
pub struct Server {
    pub child: tokio::process::Child,
    pub pid: u32,
    pub url: String,
}

/// How to start the appliance: binary, data dir, address, extra `STAGELY_*` variables.
#[derive(Clone)]
pub struct ServerSpec {
    pub bin: PathBuf,
    pub data_dir: PathBuf,
    pub listen: String,
    pub env: Vec<(String, String)>,
    pub log: PathBuf,
}

impl ServerSpec {
    pub fn with_env(&self, key: &str, value: &str) -> ServerSpec {
        let mut s = self.clone();
        s.env.retain(|(k, _)| k != key);
        s.env.push((key.to_owned(), value.to_owned()));
        s
    }

    pub fn on(&self, listen: &str) -> ServerSpec {
        let mut s = self.clone();
        s.listen = listen.to_owned();
        s
    }

    /// Start the appliance and wait for its `stagely listening on` line.
    pub async fn start(&self) -> Result<Server> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("cannot open {}", self.log.display()))?;
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.args(["serve", "--listen", &self.listen, "--data-dir"])
            .arg(&self.data_dir)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot run {}", self.bin.display()))?;
        let pid = child.id().context("the appliance exited at once")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let url = tokio::time::timeout(START_TIMEOUT, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(url) = line.strip_prefix("stagely listening on ") {
                    return Ok(url.trim().to_owned());
                }
            }
            bail!(
                "the appliance exited before listening (log: {})",
                self.log.display()
            )
        })
        .await
        .context("the appliance did not start in time")??;
        // Keep draining stdout so the appliance never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Server { child, pid, url })
    }
}

impl Server {
    pub fn addr(&self) -> Result<std::net::SocketAddr> {
        addr_of(&self.url)
    }

    /// Wait until `/readyz` answers 200 (database open, migrations applied).
    pub async fn wait_ready(&self) -> Result<()> {
        let mut http = Http::new(self.addr()?, None);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if http.get("/readyz").await.is_ok_and(|a| a.status == 200) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("/readyz did not answer 200 within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn rss_kb(&self) -> Result<u64> {
        rss_kb(self.pid)
    }

    pub fn cpu_ticks(&self) -> Result<u64> {
        cpu_ticks(self.pid)
    }

    /// SIGKILL: the crash case. Returns once the process is gone.
    pub async fn kill(mut self) -> Result<()> {
        self.child.start_kill()?;
        self.child.wait().await?;
        Ok(())
    }

    /// SIGTERM and wait for a clean exit (killed if it takes longer than 20 s).
    pub async fn stop(mut self) -> Result<()> {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -TERM {} failed", self.pid);
        }
        if tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .is_err()
        {
            self.child.start_kill()?;
            self.child.wait().await?;
            bail!("the appliance did not stop within 20 s of SIGTERM");
        }
        Ok(())
    }
}

/// Poll `check` every 20 ms until it yields `Some`, failing after `timeout`.
pub async fn poll_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Resident memory of a process, from `/proc/<pid>/status`.
pub fn rss_kb(pid: u32) -> Result<u64> {
    status_field(pid, "VmRSS")
}

/// Threads of a process, from `/proc/<pid>/status`.
pub fn threads(pid: u32) -> Result<u64> {
    status_field(pid, "Threads")
}

fn status_field(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// User + system CPU time of a process (all threads), in clock ticks, from `/proc/<pid>/stat`.
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3 of the man page, so utime (14) and stime (15) are at 11 and 12.
    let utime: u64 = fields.get(11).and_then(|v| v.parse().ok()).context("no utime")?;
    let stime: u64 = fields.get(12).and_then(|v| v.parse().ok()).context("no stime")?;
    Ok(utime + stime)
}

/// Context switches of every thread of a process: each is a wakeup (a poll loop shows up here).
pub fn wakeups(pid: u32) -> Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let task = task?.path();
        let Ok(status) = std::fs::read_to_string(task.join("status")) else {
            continue;
        };
        for line in status.lines() {
            if let Some(v) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                total += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    Ok(total)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on every Linux this runs on).
pub fn clock_ticks_per_sec() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// A new admin API token, made by the real CLI on the data dir.
pub fn admin_token(bin: &Path, data_dir: &Path) -> Result<String> {
    let out = std::process::Command::new(bin)
        .args(["admin", "create-token", "--name", "loadgen", "--data-dir"])
        .arg(data_dir)
        .env_remove("RUST_LOG")
        .output()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "stagely admin create-token failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// A free loopback port (bound then released), for an appliance that must come back on the same one.
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}
