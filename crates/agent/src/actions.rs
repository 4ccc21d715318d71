//! Lifecycle actions (issue 15): the appliance's ACTION on the agent's own compose project.
//!
//! A closed set, each one fixed `docker compose` invocation given as an argument list (never a
//! shell): `compose -p <project> restart|stop|start [<service>]`, and `compose -p <project> down
//! --remove-orphans` (volumes kept). Compose v2 acts on a project by its name alone, from the
//! containers' labels, without the compose file; the command runs from `/` with the compose
//! variables that would point it at a file removed, so no file on this machine changes what it
//! does. Compose v1 cannot act without the file: the action is refused, saying so.
//!
//! Refused (ACTION_RESULT ok=false, with why) unless the project is the one the appliance named
//! in WATCH on this connection and the service, when given, is a valid compose service name;
//! `down` takes no service; and while a deployment runs, or another action does.

use std::time::Duration;

use stagely_protocol::operate::{self, Action};

use super::compose::Compose;
use super::process;

/// Longest an action's compose command runs before it is killed (its whole process group) and
/// the action fails. Below the appliance's wait (120 s), so the appliance hears why.
pub const ACTION_TIMEOUT: Duration = Duration::from_secs(110);

/// Longest error line sent back.
pub const MAX_ERROR_BYTES: usize = 512;

/// Compose's variables that could make it read a file or another project.
const COMPOSE_VARS: [&str; 4] = [
    "COMPOSE_FILE",
    "COMPOSE_PROJECT_NAME",
    "COMPOSE_PROFILES",
    "COMPOSE_PATH_SEPARATOR",
];

/// One action the agent accepted, ready to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub project: String,
    pub action: Action,
    pub service: Option<String>,
}

/// Check an ACTION against what this connection's appliance asked the agent to watch.
/// `running` is the deployment running on the agent, `acting` whether an action runs.
pub fn accept(
    watching: Option<&str>,
    running: Option<i64>,
    acting: bool,
    project: &str,
    action: Action,
    service: Option<&str>,
) -> Result<Accepted, String> {
    match watching {
        Some(w) if w == project => {}
        Some(_) | None => {
            return Err(format!(
                "refused: {:?} is not the compose project this agent serves",
                process::truncate(project, 64)
            ));
        }
    }
    if let Some(s) = service {
        if action == Action::Down {
            return Err("refused: down applies to the whole environment, not to a service".into());
        }
        if let Some(rule) = operate::service_name_error(s) {
            return Err(format!("refused: invalid service name ({rule})"));
        }
    }
    if let Some(id) = running {
        return Err(format!("busy: deployment {id} is running"));
    }
    if acting {
        return Err("busy: another action is running on this project".into());
    }
    Ok(Accepted {
        project: project.to_owned(),
        action,
        service: service.map(str::to_owned),
    })
}

/// The arguments after the compose command.
pub fn args(a: &Accepted) -> Vec<String> {
    let mut args = vec!["-p".to_owned(), a.project.clone(), a.action.as_str().to_owned()];
    match a.action {
        Action::Down => args.push("--remove-orphans".into()),
        Action::Restart | Action::Stop | Action::Start => {
            if let Some(s) = &a.service {
                // The name is checked; `--` still ends the options, whatever it is.
                args.push("--".into());
                args.push(s.clone());
            }
        }
    }
    args
}

/// Run an accepted action to its end (or [`ACTION_TIMEOUT`]). The error is one short line:
/// compose's last line of stderr, cut.
pub async fn run(compose: &Compose, a: &Accepted, timeout: Duration) -> Result<(), String> {
    if compose.is_v1() {
        return Err(
            "compose v1 (docker-compose) cannot act on a project without its compose file; \
             install compose v2 on this machine"
                .into(),
        );
    }
    let mut cmd = compose.command();
    cmd.args(args(a)).current_dir("/");
    for var in COMPOSE_VARS {
        cmd.env_remove(var);
    }
    let out = match tokio::time::timeout(timeout, process::output_capped(cmd, 256 * 1024)).await {
        // The future dropped kills the command's whole process group (process::Running).
        Err(_) => {
            return Err(format!(
                "{} timed out after {} s",
                a.action.as_str(),
                timeout.as_secs()
            ));
        }
        Ok(Err(e)) => return Err(format!("cannot run {}: {e}", compose.display())),
        Ok(Ok(None)) => return Err(format!("{} printed too much output", a.action.as_str())),
        Ok(Ok(Some(out))) => out,
    };
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or_default();
    let why = if last.is_empty() {
        match out.status.code() {
            Some(code) => format!("exit code {code}"),
            None => "killed by a signal".into(),
        }
    } else {
        last.to_owned()
    };
    Err(process::truncate(
        &format!("{} failed: {why}", a.action.as_str()),
        MAX_ERROR_BYTES,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_watched_project_and_valid_services_are_accepted() {
        let ok = accept(
            Some("shop-staging"),
            None,
            false,
            "shop-staging",
            Action::Restart,
            Some("web"),
        );
        assert_eq!(args(&ok.unwrap()), ["-p", "shop-staging", "restart", "--", "web"]);
        let down = accept(
            Some("shop-staging"),
            None,
            false,
            "shop-staging",
            Action::Down,
            None,
        )
        .unwrap();
        assert_eq!(args(&down), ["-p", "shop-staging", "down", "--remove-orphans"]);
        let all = accept(Some("p"), None, false, "p", Action::Stop, None).unwrap();
        assert_eq!(args(&all), ["-p", "p", "stop"]);

        let e = accept(Some("shop-staging"), None, false, "other", Action::Stop, None).unwrap_err();
        assert!(e.contains("not the compose project"), "{e}");
        assert!(
            accept(None, None, false, "p", Action::Stop, None).is_err(),
            "no WATCH yet"
        );
        for bad in ["web;id", "--help", "../x", ""] {
            let e = accept(Some("p"), None, false, "p", Action::Restart, Some(bad)).unwrap_err();
            assert!(e.contains("invalid service name"), "{bad}: {e}");
        }
        let e = accept(Some("p"), None, false, "p", Action::Down, Some("web")).unwrap_err();
        assert!(e.contains("whole environment"), "{e}");
        let e = accept(Some("p"), Some(7), false, "p", Action::Start, None).unwrap_err();
        assert_eq!(e, "busy: deployment 7 is running");
        let e = accept(Some("p"), None, true, "p", Action::Start, None).unwrap_err();
        assert!(e.starts_with("busy: another action"), "{e}");
    }

    #[tokio::test]
    async fn a_failing_or_slow_command_is_one_short_line() {
        // `sh -c` stands in for compose here only: the agent never runs a shell.
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("compose");
        std::fs::write(
            &fake,
            "#!/bin/sh\nfor a in \"$@\"; do echo \"$a\"; done > \"$0.args\"\necho noise >&2\necho \"no such service: web\" >&2\nexit 1\n",
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let compose = Compose::new(fake.to_str().unwrap()).unwrap();
        let a = accept(Some("p"), None, false, "p", Action::Restart, Some("web")).unwrap();
        let e = run(&compose, &a, Duration::from_secs(10)).await.unwrap_err();
        assert_eq!(e, "restart failed: no such service: web");
        let argv = std::fs::read_to_string(dir.path().join("compose.args")).unwrap();
        assert_eq!(argv, "-p\np\nrestart\n--\nweb\n");

        let slow = dir.path().join("slow");
        std::fs::write(&slow, "#!/bin/sh\nsleep 30\n").unwrap();
        std::fs::set_permissions(&slow, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let compose = Compose::new(slow.to_str().unwrap()).unwrap();
        let e = run(&compose, &a, Duration::from_secs(1)).await.unwrap_err();
        assert_eq!(e, "restart timed out after 1 s");
    }
}
