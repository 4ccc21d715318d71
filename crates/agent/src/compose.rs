//! The compose CLI, v2 (`docker compose`) or v1 (`docker-compose`): the only way the agent
//! touches Docker. It never exposes the Docker API.

use std::path::Path;

use stagely_protocol::ProjectSpec;
use tokio::process::Command;

use super::process;

/// Longest compose error message kept (compose's own words, cut). Generous on purpose: the
/// message is masked and only then cut to the FAIL's limit (deploy.rs), so a secret across that
/// cut is still recognised whole (docs/security.md).
const MAX_MESSAGE_BYTES: usize = process::MAX_READ_LINE_BYTES;

#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error("the compose command is empty")]
    EmptyCommand,
    #[error("cannot run {program}: {source}")]
    Spawn { program: String, source: std::io::Error },
    /// Compose refused the file; the text is compose's own stderr.
    #[error("the compose file is invalid: {0}")]
    Invalid(String),
}

/// How to invoke compose: `docker compose`, the v2 plugin binary itself, or v1 `docker-compose`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compose {
    argv: Vec<String>,
    /// Compose v1 (the Python `docker-compose`) lacks `ps --format json`, `--profile '*'`, `--pull`.
    v1: bool,
}

/// Where the docker CLI looks for plugins, in its order (after `$DOCKER_CONFIG/cli-plugins` or
/// `~/.docker/cli-plugins`).
const SYSTEM_PLUGIN_DIRS: [&str; 4] = [
    "/usr/local/lib/docker/cli-plugins",
    "/usr/local/libexec/docker/cli-plugins",
    "/usr/lib/docker/cli-plugins",
    "/usr/libexec/docker/cli-plugins",
];

impl Compose {
    /// From a configured command such as `docker compose` (split on whitespace, no shell
    /// quoting). A lone `docker-compose` is taken for v1 until [`Compose::configured`] asks it.
    pub fn new(spec: &str) -> Result<Self, ComposeError> {
        let argv: Vec<String> = spec.split_whitespace().map(str::to_owned).collect();
        if argv.is_empty() {
            return Err(ComposeError::EmptyCommand);
        }
        let v1 = argv.len() == 1 && argv[0].ends_with("docker-compose");
        Ok(Self { argv, v1 })
    }

    /// A configured command, its version asked: a standalone `docker-compose` may well be v2.
    pub async fn configured(spec: &str) -> Result<Self, ComposeError> {
        Ok(Self::new(spec)?.version_asked().await)
    }

    /// v1 or v2 by what `version --short` says, when it answers.
    async fn version_asked(mut self) -> Self {
        if let Some(version) = self.version().await {
            self.v1 = is_v1_version(&version);
        }
        self
    }

    /// The v2 plugin binary run directly when the docker CLI would find one; else `docker
    /// compose` when it answers; else `docker-compose`. Running the plugin directly saves the
    /// docker CLI's start and its plugin metadata probe: two Go programs per compose call.
    pub async fn detect() -> Self {
        for path in plugin_candidates() {
            let direct = Self {
                argv: vec![path.to_string_lossy().into_owned()],
                v1: false,
            };
            if direct.version().await.is_some_and(|v| !is_v1_version(&v)) {
                return direct;
            }
        }
        let v2 = Self {
            argv: vec!["docker".into(), "compose".into()],
            v1: false,
        };
        let mut cmd = v2.command();
        cmd.arg("version");
        match process::output(cmd).await {
            Ok(out) if out.status.success() => v2,
            _ => {
                Self {
                    argv: vec!["docker-compose".into()],
                    v1: true,
                }
                .version_asked()
                .await
            }
        }
    }

    pub fn is_v1(&self) -> bool {
        self.v1
    }

    pub fn argv(&self) -> &[String] {
        &self.argv
    }

    pub fn display(&self) -> String {
        self.argv.join(" ")
    }

    /// The bare compose command.
    pub fn command(&self) -> Command {
        let mut cmd = process::command(&self.argv[0]);
        cmd.args(&self.argv[1..]);
        cmd
    }

    /// `compose -p <project> -f <file>…`, run from the first file's directory.
    pub fn project_command(&self, project: &str, files: &[&Path]) -> Command {
        let mut cmd = self.command();
        cmd.arg("-p").arg(project);
        for f in files {
            cmd.arg("-f").arg(f);
        }
        if let Some(dir) = files
            .first()
            .and_then(|f| f.parent())
            .filter(|d| !d.as_os_str().is_empty())
        {
            cmd.current_dir(dir);
        }
        cmd
    }

    /// `compose version --short`, for HELLO.
    pub async fn version(&self) -> Option<String> {
        let mut cmd = self.command();
        cmd.args(["version", "--short"]);
        first_line(cmd).await
    }

    /// Every service the file defines, profiled ones too: read from the file itself where
    /// nothing in it can bring services from elsewhere ([`services_in_file`]), else asked of
    /// compose. Saves one compose start (~40 ms) before `up` on most projects.
    pub async fn all_services(&self, file: &Path) -> Result<Vec<String>, ComposeError> {
        match services_in_file(file) {
            Some(names) => Ok(names),
            None => self.services(file, true).await,
        }
    }

    /// The services the file defines, as compose counts them (`include`, `extends`, anchors).
    /// With `all_profiles`, services behind a profile count too.
    pub async fn services(&self, file: &Path, all_profiles: bool) -> Result<Vec<String>, ComposeError> {
        let mut cmd = self.command();
        cmd.arg("-f").arg(file);
        if all_profiles && !self.is_v1() {
            cmd.args(["--profile", "*"]);
        }
        cmd.args(["config", "--services"]);
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            cmd.current_dir(dir);
        }
        let out = process::output(cmd).await.map_err(|source| ComposeError::Spawn {
            program: self.display(),
            source,
        })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let msg = stderr.trim();
            let msg = if msg.is_empty() {
                format!("{} config exited with {}", self.display(), out.status)
            } else {
                process::truncate(msg, MAX_MESSAGE_BYTES)
            };
            return Err(ComposeError::Invalid(msg));
        }
        let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }
}

impl Compose {
    /// Each active service's `image:` (services that only `build:` have none), for naming the
    /// image in a failed pull.
    pub async fn service_images(
        &self,
        file: &Path,
    ) -> Result<std::collections::BTreeMap<String, String>, ComposeError> {
        let mut cmd = self.command();
        cmd.arg("-f").arg(file).arg("config");
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            cmd.current_dir(dir);
        }
        let out = process::output(cmd).await.map_err(|source| ComposeError::Spawn {
            program: self.display(),
            source,
        })?;
        if !out.status.success() {
            return Err(ComposeError::Invalid(process::truncate(
                String::from_utf8_lossy(&out.stderr).trim(),
                MAX_MESSAGE_BYTES,
            )));
        }
        let model: serde_yaml_ng::Value = serde_yaml_ng::from_slice(&out.stdout)
            .map_err(|e| ComposeError::Invalid(format!("unreadable `config` output: {e}")))?;
        let mut images = std::collections::BTreeMap::new();
        if let Some(services) = model.get("services").and_then(|s| s.as_mapping()) {
            for (name, svc) in services {
                if let (Some(name), Some(image)) = (name.as_str(), svc.get("image").and_then(|i| i.as_str()))
                {
                    images.insert(name.to_owned(), image.to_owned());
                }
            }
        }
        Ok(images)
    }
}

/// Largest normalised model read from `config` (the compose files are capped at 8 MiB in all).
const MAX_MODEL_BYTES: usize = 32 * 1024 * 1024;

impl Compose {
    /// Compose's normalised model of `files` for project `project`, every profile included, for
    /// the policy check. It holds the secret values (`environment`): the caller checks it in
    /// memory and drops it; nothing here logs it, and an error never quotes stdout.
    pub async fn model(&self, project: &str, files: &[&Path]) -> Result<serde_json::Value, ComposeError> {
        let mut cmd = self.project_command(project, files);
        if self.is_v1() {
            cmd.arg("config");
        } else {
            cmd.args(["--profile", "*", "config", "--format", "json"]);
        }
        let out = process::output_capped(cmd, MAX_MODEL_BYTES)
            .await
            .map_err(|source| ComposeError::Spawn {
                program: self.display(),
                source,
            })?
            .ok_or_else(|| {
                ComposeError::Invalid(format!("`config` printed more than {MAX_MODEL_BYTES} bytes"))
            })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let msg = stderr.trim();
            return Err(ComposeError::Invalid(if msg.is_empty() {
                format!("{} config exited with {}", self.display(), out.status)
            } else {
                process::truncate(msg, MAX_MESSAGE_BYTES)
            }));
        }
        // Neither parser's message quotes the input, but say only that it failed, to be sure.
        let parsed = if self.is_v1() {
            serde_yaml_ng::from_slice::<serde_json::Value>(&out.stdout).ok()
        } else {
            serde_json::from_slice::<serde_json::Value>(&out.stdout).ok()
        };
        let mut stdout = out.stdout;
        zeroize::Zeroize::zeroize(&mut stdout);
        parsed.ok_or_else(|| ComposeError::Invalid("unreadable `config` output".into()))
    }
}

impl Compose {
    /// The release's compose hash: lower-case hex SHA-256 of compose's normalised model of the
    /// project's own file (`-p <project> -f <file> config --format json`; plain `config` for
    /// v1), without the override, so no secret value (nor any image pin) is in what is hashed.
    pub async fn model_hash(&self, project: &str, file: &Path) -> Result<String, ComposeError> {
        use sha2::Digest as _;
        let mut cmd = self.project_command(project, &[file]);
        cmd.arg("config");
        if !self.is_v1() {
            cmd.args(["--format", "json"]);
        }
        let out = process::output_capped(cmd, MAX_MODEL_BYTES)
            .await
            .map_err(|source| ComposeError::Spawn {
                program: self.display(),
                source,
            })?
            .ok_or_else(|| {
                ComposeError::Invalid(format!("`config` printed more than {MAX_MODEL_BYTES} bytes"))
            })?;
        if !out.status.success() {
            return Err(ComposeError::Invalid(process::truncate(
                String::from_utf8_lossy(&out.stderr).trim(),
                MAX_MESSAGE_BYTES,
            )));
        }
        Ok(hex::encode(sha2::Sha256::digest(&out.stdout)))
    }
}

/// Largest compose file read directly; a bigger one is left to compose.
const MAX_DIRECT_READ: u64 = 1024 * 1024;

/// The keys of the file's `services` mapping, when they are exactly the services compose would
/// list with every profile: one YAML document, no YAML tag anywhere (`!reset` and `!override`
/// remove or replace services; even a core `!!str` is left to compose so its reading wins), no
/// top-level merge key (`<<` can bring in an `include:`), no top-level `include:` (which adds
/// services), a `services` mapping of plain string keys without a merge key. Anything else, and
/// any file that does not parse, gives `None`, so compose itself decides (and words the errors).
/// `extends`, anchors inside a service and profiles do not change which services exist. A file
/// that parses here but that compose refuses still fails before anything starts: `up` checks
/// the whole model first.
pub fn services_in_file(file: &Path) -> Option<Vec<String>> {
    use serde_yaml_ng::Value;
    // Unreadable or unparsable here is not an error of ours: `None` hands the file to compose,
    // which reads it again and words the error the user sees.
    if std::fs::metadata(file).ok()?.len() > MAX_DIRECT_READ {
        return None;
    }
    let text = std::fs::read_to_string(file).ok()?;
    if may_hold_a_tag(&text) {
        return None;
    }
    let doc: Value = serde_yaml_ng::from_str(&text).ok()?;
    if has_tag(&doc) {
        return None;
    }
    let top = doc.as_mapping()?;
    if top.contains_key("include") || top.contains_key("<<") {
        return None;
    }
    let mut names = Vec::new();
    for key in top.get("services")?.as_mapping()?.keys() {
        match key.as_str() {
            Some(name) if name != "<<" && !name.is_empty() => names.push(name.to_owned()),
            _ => return None,
        }
    }
    names.sort();
    names.dedup();
    Some(names)
}

/// True when a `!` starts a token anywhere (a tag's only spelling), comments and quoted text
/// included: a false alarm costs one compose start, a miss would disagree with compose.
fn may_hold_a_tag(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.iter().enumerate().any(|(i, b)| {
        *b == b'!'
            && (i == 0
                || matches!(
                    bytes[i - 1],
                    b' ' | b'\t' | b'\n' | b'\r' | b'[' | b'{' | b',' | b':' | b'-' | b'?'
                ))
    })
}

/// Any tagged node in the document (a second line of defence behind [`may_hold_a_tag`]).
fn has_tag(value: &serde_yaml_ng::Value) -> bool {
    use serde_yaml_ng::Value;
    match value {
        Value::Tagged(_) => true,
        Value::Sequence(items) => items.iter().any(has_tag),
        Value::Mapping(map) => map.iter().any(|(k, v)| has_tag(k) || has_tag(v)),
        _ => false,
    }
}

/// `docker-compose` files in the directories the docker CLI searches for plugins, in its order.
fn plugin_candidates() -> Vec<std::path::PathBuf> {
    let user_dir = std::env::var_os("DOCKER_CONFIG")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".docker")))
        .map(|d| d.join("cli-plugins"));
    user_dir
        .into_iter()
        .chain(SYSTEM_PLUGIN_DIRS.iter().map(std::path::PathBuf::from))
        .map(|d| d.join("docker-compose"))
        .filter(|p| p.is_file())
        .collect()
}

/// `version --short` says `1.29.2` for v1, `2.40.3` or `v2.40.3` for v2.
fn is_v1_version(version: &str) -> bool {
    version.trim_start_matches('v').starts_with("1.")
}

/// The Docker engine's version, for HELLO.
pub async fn docker_version() -> Option<String> {
    let mut cmd = process::command("docker");
    cmd.args(["version", "--format", "{{.Server.Version}}"]);
    first_line(cmd).await
}

/// Informational (versions in HELLO): a command that cannot run answers `None`, not an error.
async fn first_line(cmd: Command) -> Option<String> {
    let out = process::output(cmd).await.ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next()?.trim();
    (!line.is_empty()).then(|| line.chars().take(100).collect())
}

/// The compose project name a deployment runs under: the one the appliance chose for the
/// environment (unique across the appliance, stable across renames), or, from an appliance that
/// sends none, `<project>-<environment>` as before. Either way it is brought to compose's rules.
pub fn project_name_for(spec: &ProjectSpec) -> String {
    match spec.compose_project.as_deref() {
        Some(chosen) => compose_safe(chosen),
        None => project_name(&spec.name, &spec.environment),
    }
}

/// A compose project name for one environment of one project, by compose's rules: lowercase
/// letters, digits, `-` and `_`, starting with a letter or digit. So staging and production of
/// the same project can share a server.
pub fn project_name(project: &str, environment: &str) -> String {
    compose_safe(&format!("{project}-{environment}"))
}

/// `raw` by compose's project-name rules (anything else becomes `_`; leading `-`/`_` dropped).
fn compose_safe(raw: &str) -> String {
    let raw = raw.to_lowercase();
    let kept: String = raw
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '-' | '_' => c,
            _ => '_',
        })
        .collect();
    let trimmed = kept.trim_start_matches(['-', '_']);
    if trimmed.is_empty() {
        "stagely".into()
    } else {
        trimmed.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_names_follow_compose_rules() {
        assert_eq!(project_name("Shop", "Staging"), "shop-staging");
        assert_eq!(project_name("my.app", "prod eu"), "my_app-prod_eu");
        assert_eq!(project_name("_x", "é"), "x-_");
        assert_eq!(project_name("", ""), "stagely");
        let mut spec = ProjectSpec {
            name: "a-b".into(),
            environment: "c".into(),
            repo_url: None,
            git_ref: "main".into(),
            compose_path: "compose.yaml".into(),
            pull: stagely_protocol::PullPolicy::Never,
            compose_project: None,
            images: Default::default(),
        };
        assert_eq!(project_name_for(&spec), "a-b-c");
        spec.compose_project = Some("a-b-c-7".into());
        assert_eq!(project_name_for(&spec), "a-b-c-7");
        spec.compose_project = Some("../Evil name".into());
        assert_eq!(project_name_for(&spec), "evil_name");
    }

    #[test]
    fn command_spec_is_split_without_a_shell() {
        assert!(Compose::new("  ").is_err());
        let c = Compose::new("docker compose").unwrap();
        assert!(!c.is_v1());
        assert!(Compose::new("/usr/bin/docker-compose").unwrap().is_v1());
    }

    #[test]
    fn services_are_read_from_plain_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let read = |text: &str| {
            let p = dir.path().join("compose.yml");
            std::fs::write(&p, text).unwrap();
            services_in_file(&p)
        };
        let plain = "x-a: &a\n  image: i\nservices:\n  web:\n    <<: *a\n  \"on\":\n    profiles: [p]\n    image: i\n";
        assert_eq!(read(plain), Some(vec!["on".to_owned(), "web".to_owned()]));
        // Compose decides wherever services could come from elsewhere, or the file is odd.
        assert_eq!(read("include: [a.yml]\nservices:\n  web: {image: i}\n"), None);
        assert_eq!(
            read("x: &x\n  db: {image: i}\nservices:\n  <<: *x\n  web: {image: i}\n"),
            None
        );
        assert_eq!(read("services:\n  123: {image: i}\n"), None);
        assert_eq!(read("services:\n  web: {image: [\n"), None);
        assert_eq!(
            read("services: {a: {image: i}}\n---\nservices: {b: {image: i}}\n"),
            None
        );
        assert_eq!(read("services:\n"), None);
        // Tags change what compose sees; a top-level merge key can bring in an include.
        assert_eq!(read("services:\n  web: {image: i}\n  db: !reset null\n"), None);
        assert_eq!(read("services:\n  web: !override {image: i}\n"), None);
        assert_eq!(read("services:\n  !!str web: {image: i}\n"), None);
        assert_eq!(
            read("x: &x\n  include: [a.yml]\n<<: *x\nservices:\n  web: {image: i}\n"),
            None
        );
        // A `!` inside a word is no tag.
        assert_eq!(
            read("services:\n  web: {image: i, command: \"echo hi!\"}\n"),
            Some(vec!["web".to_owned()])
        );
        assert_eq!(read("- a\n"), None);
        assert_eq!(services_in_file(&dir.path().join("missing.yml")), None);
    }

    #[test]
    fn versions_tell_v1_from_v2() {
        assert!(is_v1_version("1.29.2"));
        assert!(!is_v1_version("2.40.3"));
        assert!(!is_v1_version("v2.40.3"));
    }

    /// Where the engine tests run, the plugin is found and run directly, and it is v2.
    #[tokio::test]
    async fn detect_prefers_the_plugin_binary() {
        if plugin_candidates().is_empty() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true: no docker-compose plugin binary (scripts/test-deps.sh installs it)"
            );
            eprintln!("SKIP: no docker-compose plugin binary on this machine (scripts/test-deps.sh)");
            return;
        }
        let c = Compose::detect().await;
        assert!(!c.is_v1());
        assert_eq!(c.argv.len(), 1, "{c:?}");
        assert!(c.argv[0].ends_with("cli-plugins/docker-compose"), "{c:?}");
    }
}
