//! `stagely deploy`, `stagely deployments` and `stagely logs`: the appliance's JSON API driven
//! from CI. stdout carries the deployment's log (masked, as the appliance stores it); every
//! note and the one-line reason for the exit code go to stderr. Exit codes: [`super::client::exit`].

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::time::Instant;

use super::client::{Client, ClientError, Token, exit, retrying, retrying_briefly};

/// Where the appliance is and how to authenticate (the token is never a flag value).
#[derive(Debug, Args)]
pub struct Remote {
    /// The appliance's URL, e.g. https://stagely.example.com.
    #[arg(long, env = "STAGELY_SERVER", hide_env_values = true, value_name = "URL")]
    pub server: String,
    /// Read the API token from this file (mode 0600). Without it, STAGELY_TOKEN holds the token.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    #[command(flatten)]
    pub remote: Remote,
    /// The project's name.
    #[arg(long, value_name = "NAME")]
    pub project: String,
    /// The environment's name.
    #[arg(long, value_name = "NAME")]
    pub environment: String,
    /// Deploy this branch, tag or commit instead of the environment's ref.
    #[arg(long = "ref", value_name = "REF")]
    pub git_ref: Option<String>,
    /// Stream the log to stdout until the deployment ends; the exit code says how it ended.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this many seconds (exit 3; the deployment may still run).
    #[arg(long, value_name = "SECS", requires = "wait", value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: Option<u64>,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub remote: Remote,
    /// The project's name.
    #[arg(long, value_name = "NAME")]
    pub project: String,
    /// The environment's name.
    #[arg(long, value_name = "NAME")]
    pub environment: String,
    /// Redeploy this deployment's release. Default: the successful release before the
    /// environment's latest one.
    #[arg(long = "to", value_name = "DEPLOYMENT_ID")]
    pub to: Option<i64>,
    /// Print the new deployment's id and exit instead of streaming its log until it ends.
    #[arg(long)]
    pub no_wait: bool,
    /// Give up waiting after this many seconds (exit 3; the deployment may still run).
    #[arg(long, value_name = "SECS", conflicts_with = "no_wait", value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: Option<u64>,
}

#[derive(Debug, Args)]
pub struct DeploymentsArgs {
    #[command(flatten)]
    pub remote: Remote,
    /// The project's name.
    #[arg(long, value_name = "NAME")]
    pub project: String,
    /// Only this environment.
    #[arg(long, value_name = "NAME")]
    pub environment: Option<String>,
    /// How many, newest first.
    #[arg(long, default_value_t = 20, value_name = "N", value_parser = clap::value_parser!(i64).range(1..=500))]
    pub limit: i64,
    /// JSON (the API's deployment objects) instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    #[command(flatten)]
    pub remote: Remote,
    /// The deployment's id.
    pub id: i64,
    /// Keep printing until the deployment ends; the exit code says how it ended (as deploy --wait).
    #[arg(long)]
    pub follow: bool,
    /// With --follow: give up after this many seconds (exit 3).
    #[arg(long, value_name = "SECS", requires = "follow", value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: Option<u64>,
}

/// How a deployment ended, as the exit code says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Final {
    Success,
    Failed,
    /// `cancelled` or `superseded`.
    Stopped,
}

impl Final {
    pub fn exit_code(self) -> u8 {
        match self {
            Final::Success => exit::SUCCESS,
            Final::Failed => exit::FAILED,
            Final::Stopped => exit::STOPPED,
        }
    }
}

/// A deployment status as the API reports it; `None` for one that is still going — `queued`,
/// `running`, `waiting`, and any state this binary does not know yet (a newer appliance's).
pub fn final_state(status: &str) -> Option<Final> {
    match status {
        "success" => Some(Final::Success),
        "failed" => Some(Final::Failed),
        // `expired`: it awaited approval too long (issue 16) and never ran.
        "cancelled" | "superseded" | "expired" => Some(Final::Stopped),
        _ => None,
    }
}

#[derive(Debug, Deserialize)]
struct ProjectView {
    id: i64,
    name: String,
    environments: Vec<EnvironmentView>,
}

#[derive(Debug, Deserialize)]
struct EnvironmentView {
    id: i64,
    name: String,
}

/// The fields of `GET /api/deployments/{id}` the CLI uses; the rest is kept for `--json`.
#[derive(Debug, Deserialize, Serialize)]
struct DeploymentView {
    id: i64,
    status: String,
    #[serde(default)]
    environment: String,
    #[serde(default)]
    commit: Option<String>,
    #[serde(default)]
    git_ref: String,
    #[serde(default)]
    triggered_by: String,
    #[serde(default)]
    created_at: String,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    superseded_by: Option<i64>,
    #[serde(default)]
    log_pruned_at: Option<String>,
    #[serde(default)]
    environment_id: i64,
    #[serde(default)]
    release: Option<serde_json::Value>,
    #[serde(flatten)]
    rest: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct LogLineView {
    seq: i64,
    line: String,
}

#[derive(Debug, Deserialize)]
struct Triggered {
    deployment_id: i64,
    status: String,
}

/// Run one client command on a small runtime of its own; returns the exit code.
pub fn run(command: impl std::future::Future<Output = Result<u8, ClientError>>) -> u8 {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("stagely: cannot start the runtime: {e}");
            return exit::FAILED;
        }
    };
    match runtime.block_on(command) {
        Ok(code) => code,
        Err(ClientError::TimedOut) => {
            eprintln!("stagely: timed out");
            exit::TIMEOUT
        }
        Err(e) => {
            eprintln!("stagely: {e}");
            e.exit_code()
        }
    }
}

fn connect(remote: &Remote) -> Result<Client, ClientError> {
    let token = Token::load(remote.token_file.as_deref())?;
    Client::new(&remote.server, &token)
}

async fn find_project(client: &Client, name: &str) -> Result<ProjectView, ClientError> {
    let projects: Vec<ProjectView> = retrying_briefly(|| client.get("/api/projects")).await?;
    let names: Vec<String> = projects.iter().map(|p| p.name.clone()).collect();
    projects.into_iter().find(|p| p.name == name).ok_or_else(|| {
        ClientError::Usage(format!(
            "no project named {name:?} (there are: {})",
            list_or_none(&names)
        ))
    })
}

fn find_environment<'p>(project: &'p ProjectView, name: &str) -> Result<&'p EnvironmentView, ClientError> {
    project
        .environments
        .iter()
        .find(|e| e.name == name)
        .ok_or_else(|| {
            let names: Vec<String> = project.environments.iter().map(|e| e.name.clone()).collect();
            ClientError::Usage(format!(
                "project {:?} has no environment named {name:?} (it has: {})",
                project.name,
                list_or_none(&names)
            ))
        })
}

fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

pub async fn deploy(args: DeployArgs) -> Result<u8, ClientError> {
    let started = Instant::now();
    let client = connect(&args.remote)?;
    let project = find_project(&client, &args.project).await?;
    let env = find_environment(&project, &args.environment)?;
    let mut body = json!({ "environment": env.name });
    if let Some(r) = &args.git_ref {
        body["ref"] = json!(r);
    }
    let path = format!("/api/deploy/{}", project.id);
    // Retried only while no connection could be made: a request that may have arrived is never
    // sent twice (it would be a second deployment).
    let triggered: Triggered = retrying_briefly(|| client.post(&path, &body)).await?;
    let id = triggered.deployment_id;
    eprintln!(
        "stagely: deployment {id} of {}/{}: {} — {}",
        project.name,
        env.name,
        triggered.status,
        client.url(&format!("/deployments/{id}"))
    );
    if !args.wait {
        // Without --wait stdout carries only the id, for scripts: id=$(stagely deploy …).
        println!("{id}");
        return Ok(exit::SUCCESS);
    }
    let deadline = args.timeout.map(|s| started + Duration::from_secs(s));
    follow(&client, id, deadline).await
}

#[derive(Debug, Deserialize)]
struct Redeployed {
    deployment_id: i64,
    status: String,
    redeploy_of: i64,
}

/// Of an environment's deployments (newest first), the one whose release a rollback restores:
/// the successful release before the latest one.
fn rollback_target(history: &[DeploymentView]) -> Option<i64> {
    history
        .iter()
        .filter(|d| d.status == "success" && d.release.as_ref().is_some_and(|r| !r.is_null()))
        .nth(1)
        .map(|d| d.id)
}

/// `stagely rollback`: redeploy a release of an environment (its commit, secret versions and
/// pinned images), then wait for it like `stagely deploy --wait` unless --no-wait.
pub async fn rollback(args: RollbackArgs) -> Result<u8, ClientError> {
    let started = Instant::now();
    let client = connect(&args.remote)?;
    let project = find_project(&client, &args.project).await?;
    let env = find_environment(&project, &args.environment)?;
    let target = match args.to {
        Some(id) => {
            let path = format!("/api/deployments/{id}");
            let d: DeploymentView = retrying_briefly(|| client.get(&path)).await?;
            if d.environment_id != env.id {
                return Err(ClientError::Usage(format!(
                    "deployment {id} is not one of {}/{} (it is of environment {:?})",
                    project.name, env.name, d.environment
                )));
            }
            id
        }
        None => {
            let path = format!("/api/deployments?environment_id={}&limit=500", env.id);
            let history: Vec<DeploymentView> = retrying_briefly(|| client.get(&path)).await?;
            rollback_target(&history).ok_or_else(|| {
                ClientError::Failed(format!(
                    "{}/{} has no successful release before its latest one to roll back to",
                    project.name, env.name
                ))
            })?
        }
    };
    let path = format!("/api/deployments/{target}/redeploy");
    // As for deploy: retried only while no connection could be made.
    let empty = json!({});
    let r: Redeployed = retrying_briefly(|| client.post(&path, &empty)).await?;
    let id = r.deployment_id;
    eprintln!(
        "stagely: deployment {id} of {}/{} redeploys the release of deployment {}: {} — {}",
        project.name,
        env.name,
        r.redeploy_of,
        r.status,
        client.url(&format!("/deployments/{id}"))
    );
    if args.no_wait {
        println!("{id}");
        return Ok(exit::SUCCESS);
    }
    let deadline = args.timeout.map(|s| started + Duration::from_secs(s));
    follow(&client, id, deadline).await
}

pub async fn logs(args: LogsArgs) -> Result<u8, ClientError> {
    let started = Instant::now();
    let client = connect(&args.remote)?;
    if args.follow {
        let deadline = args.timeout.map(|s| started + Duration::from_secs(s));
        return follow(&client, args.id, deadline).await;
    }
    let path = format!("/api/deployments/{}", args.id);
    let d: DeploymentView = retrying_briefly(|| client.get(&path)).await?;
    let mut stdout = std::io::stdout().lock();
    print_log(&client, d.id, -1, None, &mut stdout).await?;
    note_pruned(&d);
    Ok(exit::SUCCESS)
}

/// Print the log as it grows and poll the deployment until it ends or `deadline` passes.
async fn follow(client: &Client, id: i64, deadline: Option<Instant>) -> Result<u8, ClientError> {
    let mut stdout = std::io::stdout().lock();
    let mut after = -1;
    let mut pause = Duration::from_millis(250);
    let deployment_path = format!("/api/deployments/{id}");
    let mut said_awaiting = false;
    loop {
        let before = after;
        after = match print_log(client, id, after, deadline, &mut stdout).await {
            Err(ClientError::TimedOut) => return Ok(timed_out(id)),
            other => other?,
        };
        let d: DeploymentView = match retrying(deadline, || client.get(&deployment_path)).await {
            Err(ClientError::TimedOut) => return Ok(timed_out(id)),
            other => other?,
        };
        if d.status == "awaiting_approval" && !said_awaiting {
            // It keeps waiting (bounded by --timeout): another person approves it on its page.
            said_awaiting = true;
            eprintln!(
                "stagely: deployment {id} awaits approval by another person who may deploy it: {}",
                client.url(&format!("/deployments/{id}"))
            );
        }
        if let Some(end) = final_state(&d.status) {
            // Lines reported just before the end: the status is read after them, so one more
            // pass has them all.
            match print_log(client, id, after, deadline, &mut stdout).await {
                Err(ClientError::TimedOut) => return Ok(timed_out(id)),
                other => other?,
            };
            note_pruned(&d);
            say_end(&d, end);
            return Ok(end.exit_code());
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return Ok(timed_out(id));
        }
        // Quick while lines flow, slower (up to 1 s) while the deployment is quiet.
        pause = if after > before {
            Duration::from_millis(250)
        } else {
            (pause * 2).min(Duration::from_secs(1))
        };
        let wait = deadline.map_or(pause, |d| pause.min(d.saturating_duration_since(now)));
        tokio::time::sleep(wait).await;
    }
}

/// Every line after `after`, page by page; returns the last seq printed (or `after`).
async fn print_log(
    client: &Client,
    id: i64,
    mut after: i64,
    deadline: Option<Instant>,
    out: &mut impl Write,
) -> Result<i64, ClientError> {
    loop {
        let page = retrying(deadline, || client.logs::<LogLineView>(id, after)).await?;
        for l in &page.lines {
            writeln!(out, "{}", for_output(&l.line))
                .map_err(|e| ClientError::Failed(format!("cannot write the log to stdout: {e}")))?;
            after = after.max(l.seq);
        }
        out.flush()
            .map_err(|e| ClientError::Failed(format!("cannot write the log to stdout: {e}")))?;
        match page.next_after {
            Some(next) if !page.lines.is_empty() => after = after.max(next),
            _ => return Ok(after),
        }
    }
}

/// A log line as printed: as stored when stdout is a file or pipe (a CI log keeps its colours),
/// but with control characters shown as `?` at a terminal, where a line from a build could
/// otherwise move the cursor, retitle the window or write the clipboard (escape sequences).
fn for_output(line: &str) -> std::borrow::Cow<'_, str> {
    use std::io::IsTerminal;
    static TERMINAL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *TERMINAL.get_or_init(|| std::io::stdout().is_terminal()) {
        defang(line)
    } else {
        std::borrow::Cow::Borrowed(line)
    }
}

fn defang(line: &str) -> std::borrow::Cow<'_, str> {
    if line.chars().any(|c| c.is_control() && c != '\t') {
        line.chars()
            .map(|c| if c.is_control() && c != '\t' { '?' } else { c })
            .collect::<String>()
            .into()
    } else {
        line.into()
    }
}

fn note_pruned(d: &DeploymentView) {
    if let Some(at) = &d.log_pruned_at {
        eprintln!(
            "stagely: the log of deployment {} was deleted by retention at {at}",
            d.id
        );
    }
}

fn say_end(d: &DeploymentView, end: Final) {
    let id = d.id;
    match (end, d.status.as_str()) {
        (Final::Success, _) => eprintln!("stagely: deployment {id} succeeded"),
        (Final::Failed, _) => eprintln!(
            "stagely: deployment {id} failed: {}",
            d.error.as_deref().unwrap_or("no reason given")
        ),
        (Final::Stopped, "superseded") => match d.superseded_by {
            Some(by) => eprintln!("stagely: deployment {id} was superseded by deployment {by}"),
            None => eprintln!("stagely: deployment {id} was superseded by a newer one"),
        },
        (Final::Stopped, status) => eprintln!("stagely: deployment {id} was {status}"),
    }
}

fn timed_out(id: i64) -> u8 {
    eprintln!(
        "stagely: timed out waiting for deployment {id}; it may still be running (stagely logs {id} --follow)"
    );
    exit::TIMEOUT
}

pub async fn deployments(args: DeploymentsArgs) -> Result<u8, ClientError> {
    let client = connect(&args.remote)?;
    let project = find_project(&client, &args.project).await?;
    let envs: Vec<&EnvironmentView> = match &args.environment {
        Some(name) => vec![find_environment(&project, name)?],
        None => project.environments.iter().collect(),
    };
    // The API lists per environment; the newest `limit` of the project are among each one's
    // newest `limit`.
    let mut all: Vec<DeploymentView> = Vec::new();
    for env in envs {
        let path = format!("/api/deployments?environment_id={}&limit={}", env.id, args.limit);
        let page: Vec<DeploymentView> = retrying_briefly(|| client.get(&path)).await?;
        all.extend(page);
    }
    all.sort_by_key(|d| std::cmp::Reverse(d.id));
    all.truncate(usize::try_from(args.limit).unwrap_or(usize::MAX));
    let mut stdout = std::io::stdout().lock();
    let written = if args.json {
        serde_json::to_string_pretty(&all)
            .map_err(|e| ClientError::Failed(e.to_string()))
            .and_then(|s| writeln!(stdout, "{s}").map_err(|e| ClientError::Failed(e.to_string())))
    } else {
        write!(stdout, "{}", table(&all)).map_err(|e| ClientError::Failed(e.to_string()))
    };
    written?;
    Ok(exit::SUCCESS)
}

/// id, environment, status, commit (short), triggered_by, created — padded columns.
fn table(rows: &[DeploymentView]) -> String {
    let header = ["ID", "ENVIRONMENT", "STATUS", "COMMIT", "TRIGGERED BY", "CREATED"];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|d| {
            let commit = d
                .commit
                .as_deref()
                .map_or_else(|| format!("({})", d.git_ref), |c| c.chars().take(8).collect());
            [
                d.id.to_string(),
                for_output(&d.environment).into_owned(),
                for_output(&d.status).into_owned(),
                for_output(&commit).into_owned(),
                for_output(&d.triggered_by).into_owned(),
                for_output(&d.created_at).into_owned(),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |row: &[String]| {
        let mut l = String::new();
        for (i, (c, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}  "));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&header.map(str::to_owned));
    for row in &cells {
        line(row);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_states_and_their_exit_codes() {
        let code = |s: &str| final_state(s).map(Final::exit_code);
        assert_eq!(code("success"), Some(0));
        assert_eq!(code("failed"), Some(1));
        // The queue's end states (issue 13): exit 4.
        assert_eq!(code("cancelled"), Some(4));
        assert_eq!(code("superseded"), Some(4));
        // An approval nobody gave (issue 16): exit 4; awaiting one is still going.
        assert_eq!(code("expired"), Some(4));
        assert_eq!(code("awaiting_approval"), None);
        // Still going: the states of today, the queue's `waiting`, and any state a newer
        // appliance may add — never guessed to be an end.
        for going in ["queued", "running", "waiting", "paused", ""] {
            assert_eq!(code(going), None, "{going}");
        }
        assert_eq!(exit::TIMEOUT, 3);
        assert_eq!(exit::USAGE, 2);
    }

    #[test]
    fn control_characters_are_defanged_for_a_terminal() {
        assert_eq!(defang("plain\ttext ünï"), "plain\ttext ünï");
        assert_eq!(defang("\u{1b}]52;c;aGk=\u{7}x\u{9b}2J"), "?]52;c;aGk=?x?2J");
    }

    #[test]
    fn the_table_has_one_row_per_deployment_and_a_short_commit() {
        let d = |id, commit: Option<&str>| DeploymentView {
            id,
            status: "success".into(),
            environment: "production".into(),
            commit: commit.map(str::to_owned),
            git_ref: "main".into(),
            triggered_by: "token:ci".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            error: None,
            superseded_by: None,
            log_pruned_at: None,
            environment_id: 1,
            release: None,
            rest: Default::default(),
        };
        let t = table(&[
            d(12, Some("0123456789abcdef0123456789abcdef01234567")),
            d(3, None),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines[0].starts_with("ID  "), "{t}");
        assert!(
            lines[1].contains("01234567 ") && !lines[1].contains("012345678"),
            "{t}"
        );
        assert!(lines[2].contains("(main)"), "{t}");
    }

    #[test]
    fn a_rollback_goes_to_the_successful_release_before_the_latest_one() {
        let d = |id, status: &str, release: bool| DeploymentView {
            id,
            status: status.into(),
            environment: "prod".into(),
            commit: None,
            git_ref: "main".into(),
            triggered_by: "t".into(),
            created_at: String::new(),
            error: None,
            superseded_by: None,
            log_pruned_at: None,
            environment_id: 1,
            release: release.then(|| serde_json::json!({"compose_hash": "x"})),
            rest: Default::default(),
        };
        // Newest first: a failure, the latest release, a success without a release (an old
        // agent's), then the one to go back to.
        let history = [
            d(9, "failed", false),
            d(8, "success", true),
            d(7, "success", false),
            d(6, "success", true),
            d(5, "success", true),
        ];
        assert_eq!(rollback_target(&history), Some(6));
        assert_eq!(
            rollback_target(&history[..2]),
            None,
            "only one release: nowhere to go back to"
        );
    }
}
