//! A private repository over HTTP with Basic auth (git's dumb HTTP protocol, served by a few lines
//! of Python): the `STAGELY_GIT_TOKEN` secret gets the agent in, and the token ends up nowhere on
//! disk, in the checkout's `.git/config`, nor in the log.

// Test helpers outside #[test] fns: clippy does not count them as tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use stagely_agent::compose::{Compose, project_name};
use stagely_agent::deploy::Deployer;
use stagely_agent::ephemeral::RuntimeDir;
use stagely_protocol::{DeployOutcome, ProjectSpec, PullPolicy};

use crate::agent_override::global;
use crate::agent_support::{ProjectDown, git, require_engine, require_python, unique};

const SERVER: &str = r#"
import base64, functools, http.server, sys
want = "Basic " + base64.b64encode(sys.argv[2].encode()).decode()
class H(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        if self.headers.get("Authorization") != want:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="t"')
            self.end_headers()
            return
        super().do_GET()
    def log_message(self, *args):
        pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(H, directory=sys.argv[1]))
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;

struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Serve `root` on a free loopback port, answering only to `user:password`.
fn serve(root: &Path, credentials: &str) -> Option<(Served, u16)> {
    let mut child = Command::new("python3")
        .args(["-c", SERVER])
        .arg(root)
        .arg(credentials)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take()?)
        .read_line(&mut line)
        .ok()?;
    let port = line.trim().parse().ok()?;
    Some((Served(child), port))
}

fn contains_bytes(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn tree_contains(dir: &Path, needle: &str) -> Vec<std::path::PathBuf> {
    let mut hits = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            hits.extend(tree_contains(&p, needle));
        } else if std::fs::read(&p).is_ok_and(|b| contains_bytes(&b, needle)) {
            hits.push(p);
        }
    }
    hits
}

#[tokio::test]
async fn a_private_repository_is_cloned_with_the_token_secret_which_touches_no_disk() {
    if !require_engine() || !require_python() {
        return;
    }
    let token = format!("tok-{}", unique("canary"));
    let root = tempfile::tempdir().unwrap();
    let src = root.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(
        src.join("compose.yml"),
        "services:\n  web:\n    image: stagely-test-busybox\n    command: [\"sleep\", \"3600\"]\n",
    )
    .unwrap();
    git(&src, &["init", "-q", "-b", "main"]);
    git(&src, &["add", "-A"]);
    git(&src, &["commit", "-q", "-m", "private"]);
    let head = git(&src, &["rev-parse", "HEAD"]);
    let bare = root.path().join("repo.git");
    git(
        root.path(),
        &[
            "clone",
            "-q",
            "--bare",
            src.to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
    );
    git(&bare, &["update-server-info"]);
    let Some((_server, port)) = serve(root.path(), &format!("x-access-token:{token}")) else {
        panic!("cannot start python3's http.server");
    };

    let work = tempfile::tempdir().unwrap();
    let base = tempfile::tempdir().unwrap();
    let deployer = Deployer {
        compose: Compose::new("docker compose").unwrap(),
        work_dir: work.path().to_owned(),
        runtime: RuntimeDir::prepare(work.path(), Some(base.path())).unwrap(),
        verify_wait: Duration::from_secs(1),
        health_timeout: Duration::from_secs(10),
        deploy_timeout: Duration::from_secs(120),
        policy: Default::default(),
    };
    let name = unique("agtpriv");
    let _down = ProjectDown(project_name(&name, "staging"));
    let project = ProjectSpec {
        name: name.clone(),
        environment: "staging".into(),
        repo_url: Some(format!("http://127.0.0.1:{port}/repo.git")),
        git_ref: "main".into(),
        compose_path: "compose.yml".into(),
        pull: PullPolicy::Never,
        compose_project: None,
        images: Default::default(),
    };

    // Without the token: refused by the server, at once (no prompt), nothing started.
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let result = deployer.run(1, &project, &[], &tx).await;
    assert_eq!(result.status, DeployOutcome::Fail);
    assert!(result.error.unwrap_or_default().contains("git clone failed"));

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let result = deployer
        .run(2, &project, &[global("STAGELY_GIT_TOKEN", &token)], &tx)
        .await;
    drop(tx);
    let mut lines = Vec::new();
    while let Some(l) = rx.recv().await {
        lines.push(l.line);
    }
    assert_eq!(
        result.status,
        DeployOutcome::Success,
        "{:?}\n{lines:#?}",
        result.error
    );
    assert_eq!(result.commit.as_deref(), Some(head.as_str()));
    // A second deploy fetches with the token again (it was not stored anywhere).
    let result = deployer
        .run(
            3,
            &project,
            &[global("STAGELY_GIT_TOKEN", &token)],
            &tokio::sync::mpsc::unbounded_channel().0,
        )
        .await;
    assert_eq!(result.status, DeployOutcome::Success, "{:?}", result.error);

    assert!(lines.iter().all(|l| !l.contains(&token)));
    assert_eq!(
        tree_contains(work.path(), &token),
        Vec::<std::path::PathBuf>::new()
    );
    assert_eq!(
        tree_contains(base.path(), &token),
        Vec::<std::path::PathBuf>::new()
    );
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
    if let Some(creds) = home.map(|h| h.join(".git-credentials")).filter(|p| p.is_file()) {
        assert!(!contains_bytes(&std::fs::read(creds).unwrap(), &token));
    }
}
