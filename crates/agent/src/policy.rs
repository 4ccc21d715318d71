//! The compose policy: what a project's compose model may ask of the target host.
//!
//! The agent runs compose as root, so a compose file that can say `privileged: true`, mount `/`
//! or join the host's namespaces is root on the target. The policy is checked over compose's own
//! normalised model (`docker compose config --format json` of the checkout plus the override)
//! before anything is pulled, built or started. It lives only in the agent's configuration
//! (`[policy]` in agent.toml, owned by root on the target): nothing in a DEPLOY can change it.
//!
//! Every refusal names the service, the key, the value and the setting that would allow it.
//! Allowances are narrow: a capability, a device, a host path, a namespace, for every project
//! (`[policy]`) or for one (`[policy.project."shop"]`, `[policy.project."shop/production"]`).
//!
//! The model holds the secret values (in `environment`): it is parsed in memory, only the keys
//! named here are read, and it is dropped after the check. A violation never quotes
//! `environment`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

/// Capabilities Docker already grants every container (moby's default set): adding one back
/// (after `cap_drop: [ALL]`, the usual hardening) grants nothing a default container lacks.
pub const SAFE_CAPS: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "NET_RAW",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// Host paths never mounted without an allowance that names them (or a path inside them):
/// a mount of any of these, or of a directory holding one, is root on the host.
pub const PROTECTED_PATHS: &[&str] = &[
    "/",
    "/etc",
    "/root",
    "/proc",
    "/sys",
    "/boot",
    "/dev",
    "/run/docker.sock",
    "/var/run/docker.sock",
    "/run/containerd",
    "/var/lib/docker",
    "/var/lib/containerd",
];

/// The namespaces a service may share with the host (or another container) only if allowed.
pub const NAMESPACES: &[(&str, &str)] = &[
    ("network_mode", "network"),
    ("pid", "pid"),
    ("ipc", "ipc"),
    ("userns_mode", "userns"),
    ("uts", "uts"),
    ("cgroup", "cgroup"),
];

/// One set of allowances (`[policy]` or one `[policy.project."…"]`). Every field narrows to
/// one thing: there is no "allow everything".
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Allowances {
    /// `privileged: true` (and a build's `privileged` or `entitlements`).
    #[serde(default)]
    pub allow_privileged: bool,
    /// Capabilities beyond [`SAFE_CAPS`], e.g. `["NET_ADMIN"]`.
    #[serde(default)]
    pub allow_cap_add: Vec<String>,
    /// Host devices, by host path, e.g. `["/dev/fuse"]`.
    #[serde(default)]
    pub allow_devices: Vec<PathBuf>,
    /// `device_cgroup_rules` (access to device numbers, present or future).
    #[serde(default)]
    pub allow_device_cgroup_rules: bool,
    /// Namespaces shared with the host or a container outside the project:
    /// `network`, `pid`, `ipc`, `userns`, `uts`, `cgroup`.
    #[serde(default)]
    pub allow_shared_namespaces: Vec<String>,
    /// `security_opt` entries that weaken confinement, exactly, e.g. `["apparmor=unconfined"]`.
    #[serde(default)]
    pub allow_security_opt: Vec<String>,
    /// Host paths (and everything under them) that may be bind-mounted, e.g. `["/srv/shop"]`.
    #[serde(default)]
    pub allow_bind: Vec<PathBuf>,
    /// Host paths outside the checkout compose may read (env_file, include, extends, build
    /// contexts), e.g. `["/etc/shop/production.env"]`.
    #[serde(default)]
    pub allow_read: Vec<PathBuf>,
    /// Containers outside the project whose volumes a service may take (`volumes_from`).
    #[serde(default)]
    pub allow_volumes_from: Vec<String>,
}

/// `[policy]` in agent.toml: allowances for every project, and per project.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    #[serde(flatten)]
    pub all: Allowances,
    /// Keyed `"name"` (every environment) or `"name/environment"`.
    #[serde(default)]
    pub project: BTreeMap<String, Allowances>,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyConfigError {
    #[error("[policy] {field}: {value:?} {reason}")]
    Bad {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
}

impl PolicyConfig {
    /// Refuse allowances that are not narrow or not paths the checker can compare.
    pub fn validate(&self) -> Result<(), PolicyConfigError> {
        for a in std::iter::once(&self.all).chain(self.project.values()) {
            let bad = |field, value: &dyn fmt::Display, reason| PolicyConfigError::Bad {
                field,
                value: value.to_string(),
                reason,
            };
            for (field, paths) in [
                ("allow_bind", &a.allow_bind),
                ("allow_read", &a.allow_read),
                ("allow_devices", &a.allow_devices),
            ] {
                for p in paths {
                    if !p.is_absolute() || p.components().any(|c| c == Component::ParentDir) {
                        return Err(bad(field, &p.display(), "must be an absolute path without `..`"));
                    }
                    if p.parent().is_none() {
                        return Err(bad(
                            field,
                            &p.display(),
                            "is the whole host: name the path you need",
                        ));
                    }
                }
            }
            for ns in &a.allow_shared_namespaces {
                if !NAMESPACES.iter().any(|(_, n)| n == ns) {
                    return Err(bad(
                        "allow_shared_namespaces",
                        ns,
                        "is not one of network, pid, ipc, userns, uts, cgroup",
                    ));
                }
            }
            for cap in &a.allow_cap_add {
                if normalize_cap(cap) == "ALL" {
                    return Err(bad(
                        "allow_cap_add",
                        cap,
                        "is every capability: name the ones you need",
                    ));
                }
            }
        }
        Ok(())
    }

    /// The allowances for one project: `[policy]`, `[policy.project."name"]` and
    /// `[policy.project."name/environment"]` together.
    pub fn for_project(&self, name: &str, environment: &str) -> Effective {
        let mut sections = vec![(String::from("[policy]"), self.all.clone())];
        for key in [name.to_owned(), format!("{name}/{environment}")] {
            if let Some(a) = self.project.get(&key) {
                sections.push((format!("[policy.project.{key:?}]"), a.clone()));
            }
        }
        Effective {
            sections,
            project_section: format!("[policy.project.{name:?}]"),
        }
    }
}

/// The allowances in force for one deployment.
#[derive(Debug, Clone)]
pub struct Effective {
    sections: Vec<(String, Allowances)>,
    /// Where a refusal tells the operator to put the allowance.
    project_section: String,
}

impl Effective {
    fn any(&self, f: impl Fn(&Allowances) -> bool) -> bool {
        self.sections.iter().any(|(_, a)| f(a))
    }

    fn paths(&self, f: impl Fn(&Allowances) -> &Vec<PathBuf>) -> Vec<PathBuf> {
        self.sections
            .iter()
            .flat_map(|(_, a)| f(a).iter().map(|p| resolve(p)))
            .collect()
    }

    /// Where to add `setting` to allow this, for the message.
    fn hint(&self, setting: String) -> String {
        format!(
            "{setting} under {} in the agent's config file",
            self.project_section
        )
    }

    /// May compose read `path` (already resolved) outside the checkout?
    pub fn may_read(&self, path: &Path) -> bool {
        self.paths(|a| &a.allow_read).iter().any(|p| path.starts_with(p))
    }

    pub fn read_hint(&self, path: &Path) -> String {
        self.hint(format!("allow_read = [{:?}]", path.display().to_string()))
    }
}

/// One thing the policy refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// `service web`, `volume data`, `secret tls`, or the file.
    pub subject: String,
    pub key: String,
    pub value: String,
    /// The setting that would allow it, and where.
    pub allow_with: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (subject, key, value) = (&self.subject, &self.key, &self.value);
        match self.allow_with.strip_prefix("nothing: ") {
            Some(why) => write!(
                f,
                "{subject}: `{key}: {value}` is refused by the agent's compose policy and cannot be allowed: {why}"
            ),
            None => write!(
                f,
                "{subject}: `{key}: {value}` is refused by the agent's compose policy; to allow it, set {}",
                self.allow_with
            ),
        }
    }
}

/// Every violation of one deployment, in model order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Refused(pub Vec<Violation>);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "refused by the compose policy, nothing was started:")?;
        for v in &self.0 {
            write!(f, "\n  {v}")?;
        }
        Ok(())
    }
}

/// What the check needs besides the model.
pub struct Context<'a> {
    pub allow: &'a Effective,
    /// The checkout (resolved): binds and reads inside it are the project's own files.
    pub checkout: &'a Path,
    /// The agent's own state (work dir, private runtime dir): never mounted, whatever is allowed.
    pub agent_state: &'a [PathBuf],
}

/// Check compose's normalised model. `Ok` means nothing in it needs an allowance it lacks.
pub fn check(model: &Value, cx: &Context<'_>) -> Result<(), Refused> {
    let mut out = Vec::new();
    let binds = cx.allow.paths(|a| &a.allow_bind);
    let empty = serde_json::Map::new();
    let services = model.get("services").and_then(Value::as_object).unwrap_or(&empty);
    for (name, svc) in services {
        check_service(name, svc, cx, &binds, &mut out);
    }
    // Top-level `secrets`/`configs` with `file:` are bind mounts of that host file.
    for section in ["secrets", "configs"] {
        for (name, def) in model.get(section).and_then(Value::as_object).unwrap_or(&empty) {
            if let Some(file) = def.get("file").and_then(Value::as_str) {
                let subject = format!("{} {name}", &section[..section.len() - 1]);
                check_bind(&subject, "file", file, cx, &binds, &mut out);
            }
        }
    }
    // A local volume with `o: bind` is a bind mount of its `device`.
    for (name, def) in model.get("volumes").and_then(Value::as_object).unwrap_or(&empty) {
        let opts = def.get("driver_opts");
        let device = opts.and_then(|o| o.get("device")).and_then(Value::as_str);
        let o = opts
            .and_then(|o| o.get("o"))
            .and_then(Value::as_str)
            .unwrap_or("");
        if let Some(device) = device
            && (o.split(',').any(|x| x.trim() == "bind" || x.trim() == "rbind") || device.starts_with('/'))
        {
            check_bind(
                &format!("volume {name}"),
                "driver_opts.device",
                device,
                cx,
                &binds,
                &mut out,
            );
        }
    }
    // An external network named `host` is the host's network stack.
    for (name, def) in model.get("networks").and_then(Value::as_object).unwrap_or(&empty) {
        let real = def.get("name").and_then(Value::as_str).unwrap_or(name);
        let driver = def.get("driver").and_then(Value::as_str).unwrap_or("");
        if (real == "host" || driver == "host") && !allows_ns(cx, "network") {
            out.push(Violation {
                subject: format!("network {name}"),
                key: "name".into(),
                value: "host".into(),
                allow_with: cx.allow.hint(r#"allow_shared_namespaces = ["network"]"#.into()),
            });
        }
    }
    if out.is_empty() { Ok(()) } else { Err(Refused(out)) }
}

fn allows_ns(cx: &Context<'_>, ns: &str) -> bool {
    cx.allow
        .any(|a| a.allow_shared_namespaces.iter().any(|n| n == ns))
}

fn check_service(name: &str, svc: &Value, cx: &Context<'_>, binds: &[PathBuf], out: &mut Vec<Violation>) {
    let subject = format!("service {name}");
    let mut refuse = |key: &str, value: String, setting: String| {
        out.push(Violation {
            subject: subject.clone(),
            key: key.into(),
            value,
            allow_with: cx.allow.hint(setting),
        });
    };
    let allow_privileged = cx.allow.any(|a| a.allow_privileged);
    if svc.get("privileged").and_then(Value::as_bool) == Some(true) && !allow_privileged {
        refuse("privileged", "true".into(), "allow_privileged = true".into());
    }
    for cap in strings(svc.get("cap_add")) {
        let norm = normalize_cap(cap);
        let allowed = SAFE_CAPS.contains(&norm.as_str())
            || cx
                .allow
                .any(|a| a.allow_cap_add.iter().any(|c| normalize_cap(c) == norm));
        if !allowed {
            refuse("cap_add", cap.to_owned(), format!("allow_cap_add = [{norm:?}]"));
        }
    }
    for dev in svc.get("devices").and_then(Value::as_array).into_iter().flatten() {
        // Normalised: {source, target, permissions}; older composes keep "src:dst:perm".
        let source = dev
            .get("source")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| dev.as_str().map(|s| s.split(':').next().unwrap_or(s).to_owned()))
            .unwrap_or_default();
        let resolved = resolve(Path::new(&source));
        let allowed = cx.allow.paths(|a| &a.allow_devices).contains(&resolved);
        if !allowed {
            refuse("devices", source.clone(), format!("allow_devices = [{source:?}]"));
        }
    }
    if !strings(svc.get("device_cgroup_rules")).is_empty() && !cx.allow.any(|a| a.allow_device_cgroup_rules) {
        let rules = strings(svc.get("device_cgroup_rules")).join(", ");
        refuse(
            "device_cgroup_rules",
            rules,
            "allow_device_cgroup_rules = true".into(),
        );
    }
    for (key, ns) in NAMESPACES {
        let Some(value) = svc.get(*key).and_then(Value::as_str) else {
            continue;
        };
        if shares_outside(value) && !allows_ns(cx, ns) {
            refuse(
                key,
                value.to_owned(),
                format!("allow_shared_namespaces = [{ns:?}]"),
            );
        }
    }
    for opt in strings(svc.get("security_opt")) {
        let norm = normalize_security_opt(opt);
        if weakens_confinement(&norm)
            && !cx.allow.any(|a| {
                a.allow_security_opt
                    .iter()
                    .any(|o| normalize_security_opt(o) == norm)
            })
        {
            refuse(
                "security_opt",
                opt.to_owned(),
                format!("allow_security_opt = [{norm:?}]"),
            );
        }
    }
    for from in strings(svc.get("volumes_from")) {
        // `service` or `service:mode` is the project's own; `container:name` is not.
        if let Some(container) = from.strip_prefix("container:") {
            let container = container.split(':').next().unwrap_or(container);
            if !cx
                .allow
                .any(|a| a.allow_volumes_from.iter().any(|c| c == container))
            {
                refuse(
                    "volumes_from",
                    from.to_owned(),
                    format!("allow_volumes_from = [{container:?}]"),
                );
            }
        }
    }
    for vol in svc.get("volumes").and_then(Value::as_array).into_iter().flatten() {
        if vol.get("type").and_then(Value::as_str) == Some("bind")
            && let Some(source) = vol.get("source").and_then(Value::as_str)
        {
            check_bind(&subject, "volumes", source, cx, binds, out);
        }
    }
    if let Some(build) = svc.get("build") {
        check_build(&subject, build, cx, allow_privileged, out);
    }
}

fn check_build(
    subject: &str,
    build: &Value,
    cx: &Context<'_>,
    allow_privileged: bool,
    out: &mut Vec<Violation>,
) {
    // (key, value, the setting that allows it, or the whole "nothing: …" text)
    let mut found: Vec<(&str, String, Result<String, &str>)> = Vec::new();
    let context = build.get("context").and_then(Value::as_str).unwrap_or(".");
    let mut local = Vec::new();
    if !is_remote(context) {
        local.push(("build.context", PathBuf::from(context)));
        if let Some(file) = build.get("dockerfile").and_then(Value::as_str) {
            local.push(("build.dockerfile", Path::new(context).join(file)));
        }
    }
    let extra = build.get("additional_contexts").and_then(Value::as_object);
    for ctx in extra.into_iter().flat_map(|m| m.values()) {
        if let Some(ctx) = ctx
            .as_str()
            .filter(|c| !is_remote(c) && !c.starts_with("service:"))
        {
            local.push(("build.additional_contexts", Path::new(context).join(ctx)));
        }
    }
    for ssh in strings(build.get("ssh")) {
        if let Some((_, path)) = ssh.split_once('=') {
            local.push(("build.ssh", Path::new(context).join(path)));
        }
    }
    for (key, path) in local {
        let resolved = resolve(&path);
        if !confined_ok(&resolved, cx.checkout, cx.agent_state) {
            found.push((key, path.display().to_string(), Err(STATE_NEVER_READ)));
        } else if !resolved.starts_with(cx.checkout) && !cx.allow.may_read(&resolved) {
            let setting = format!("allow_read = [{:?}]", resolved.display().to_string());
            found.push((key, path.display().to_string(), Ok(setting)));
        }
    }
    if build.get("privileged").and_then(Value::as_bool) == Some(true) && !allow_privileged {
        found.push((
            "build.privileged",
            "true".into(),
            Ok("allow_privileged = true".into()),
        ));
    }
    let entitlements = strings(build.get("entitlements"));
    if !entitlements.is_empty() && !allow_privileged {
        found.push((
            "build.entitlements",
            entitlements.join(", "),
            Ok("allow_privileged = true".into()),
        ));
    }
    if build.get("network").and_then(Value::as_str) == Some("host") && !allows_ns(cx, "network") {
        let setting = r#"allow_shared_namespaces = ["network"]"#.to_owned();
        found.push(("build.network", "host".into(), Ok(setting)));
    }
    for (key, value, allow) in found {
        out.push(Violation {
            subject: subject.to_owned(),
            key: key.into(),
            value,
            allow_with: match allow {
                Ok(setting) => cx.allow.hint(setting),
                Err(never) => never.into(),
            },
        });
    }
}

/// The `allow_with` of a path inside the agent's state.
pub const STATE_NEVER_READ: &str = "nothing: the agent's own state (its work and private directories) is never read or mounted; use a path outside it";

/// A bind mount of `source`: fine inside the checkout (unless that is the agent's own state
/// beyond it), else only under an `allow_bind` entry; a protected path needs an entry naming it
/// or a path inside it, and the agent's state is never mounted.
fn check_bind(
    subject: &str,
    key: &str,
    source: &str,
    cx: &Context<'_>,
    binds: &[PathBuf],
    out: &mut Vec<Violation>,
) {
    let resolved = resolve(Path::new(source));
    if bind_allowed(&resolved, cx, binds) {
        return;
    }
    let allow_with = if resolved.parent().is_none() {
        "nothing: the whole host is never mounted".into()
    } else if !confined_ok(&resolved, cx.checkout, cx.agent_state) {
        STATE_NEVER_READ.into()
    } else {
        cx.allow
            .hint(format!("allow_bind = [{:?}]", resolved.display().to_string()))
    };
    out.push(Violation {
        subject: subject.to_owned(),
        key: key.to_owned(),
        value: source.to_owned(),
        allow_with,
    });
}

fn bind_allowed(path: &Path, cx: &Context<'_>, binds: &[PathBuf]) -> bool {
    if !path.is_absolute() {
        return false;
    }
    if !confined_ok(path, cx.checkout, cx.agent_state) {
        return false;
    }
    // Inside a protected path (even in a checkout there, for a repo-less project): only an
    // allowance naming that path or a path inside it.
    let guarded = PROTECTED_PATHS
        .iter()
        .map(|p| resolve(Path::new(p)))
        .filter(|p| p.parent().is_some())
        .find(|p| path.starts_with(p));
    if path.starts_with(cx.checkout) && guarded.is_none() {
        return true;
    }
    binds
        .iter()
        .any(|allowed| path.starts_with(allowed) && guarded.as_ref().is_none_or(|p| allowed.starts_with(p)))
}

/// The agent's state is never exposed: not a directory holding it (that is every project's
/// checkout and the deployments record), and nothing inside it, except the project's own
/// checkout when that checkout lives there (a cloned repository).
pub fn confined_ok(path: &Path, checkout: &Path, agent_state: &[PathBuf]) -> bool {
    let in_state = |p: &Path| agent_state.iter().any(|s| p.starts_with(s));
    if agent_state.iter().any(|s| s.starts_with(path)) {
        return false;
    }
    !in_state(path) || path.starts_with(checkout) && in_state(checkout)
}

/// `host`, or `container:<name>`: a container compose does not manage for this project (a
/// sibling service is `service:<name>`; a container that merely shares a service's name is not
/// the project's).
fn shares_outside(value: &str) -> bool {
    value == "host" || value.starts_with("container:")
}

/// `seccomp:unconfined` and `seccomp=unconfined` are the same option.
fn normalize_security_opt(opt: &str) -> String {
    let opt = opt.trim();
    match opt.find([':', '=']) {
        Some(i) => format!("{}={}", opt[..i].to_ascii_lowercase(), &opt[i + 1..]),
        None => opt.to_ascii_lowercase(),
    }
}

/// Options that switch a confinement off: seccomp unconfined or a custom profile, AppArmor
/// unconfined, SELinux labelling disabled or the super-privileged type, unmasked /proc paths.
fn weakens_confinement(norm: &str) -> bool {
    let (key, value) = norm.split_once('=').unwrap_or((norm, ""));
    match key {
        "seccomp" => value != "builtin",
        "apparmor" => value == "unconfined",
        "label" => value == "disable" || value.contains("spc_t"),
        "systempaths" => value == "unconfined",
        _ => false,
    }
}

fn normalize_cap(cap: &str) -> String {
    let up = cap.trim().to_ascii_uppercase();
    up.strip_prefix("CAP_").map(str::to_owned).unwrap_or(up)
}

fn is_remote(context: &str) -> bool {
    context.contains("://") || context.starts_with("git@") || context.starts_with("docker-image:")
}

fn strings(v: Option<&Value>) -> Vec<&str> {
    match v {
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        Some(Value::String(s)) => vec![s.as_str()],
        _ => Vec::new(),
    }
}

/// Where `path` really is on the host, whether it exists yet or not (Docker creates a bind's
/// missing source): `.`/`..` applied as compose does (lexically, before Docker sees the path),
/// then every symlink in the longest existing prefix followed. A relative path stays relative
/// (and is refused by callers).
pub fn resolve(path: &Path) -> PathBuf {
    if !path.is_absolute() {
        return path.to_owned();
    }
    let clean = lexical(path);
    let mut existing = clean.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(mut real) = std::fs::canonicalize(existing) {
            for name in rest.iter().rev() {
                real.push(name);
            }
            return real;
        }
        match (existing.file_name(), existing.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name.to_owned());
                existing = parent;
            }
            _ => return clean,
        }
    }
}

/// `.`/`..` applied without the file system.
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
