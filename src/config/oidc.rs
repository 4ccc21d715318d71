//! `[[oidc]]`: OpenID Connect providers (Google, GitLab, Authentik, Keycloak, Entra, …), each an
//! entry of an array of tables, typed and checked once at load (src/users/oidc/ uses them).

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ConfigError, SecretString};
use crate::access::ProjectRole;
use crate::users::Role;

/// One OpenID Connect provider.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcProvider {
    /// Slug used in URLs (`/auth/oidc/<name>`): `[a-z0-9-]{1,32}`, unique, not `github`.
    pub name: String,
    /// Shown on the sign-in button; empty: the name.
    #[serde(default)]
    pub display_name: String,
    /// The issuer exactly as the provider's discovery document names it (its
    /// `<issuer>/.well-known/openid-configuration` is fetched). https, except on loopback.
    pub issuer: String,
    pub client_id: String,
    /// A file holding the client secret, read once at start.
    pub client_secret_file: PathBuf,
    /// Read from `client_secret_file` at load; never serialized or printed.
    #[serde(skip)]
    pub client_secret: SecretString,
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// Verified e-mail domains that may sign in (case-insensitive).
    #[serde(default)]
    pub allowed_email_domains: Vec<String>,
    /// The claim that lists a person's groups (e.g. `groups`); empty: groups are not read.
    #[serde(default)]
    pub groups_claim: String,
    /// Group → global role (`admin`, `member`, `viewer`); the highest matching group wins.
    #[serde(default)]
    pub group_roles: BTreeMap<String, Role>,
    /// Group → role on one project (by name).
    #[serde(default)]
    pub project_roles: Vec<OidcProjectRole>,
    /// Global role of a person let in by their e-mail domain (or a project group) alone.
    #[serde(default = "default_role")]
    pub default_role: Role,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcProjectRole {
    pub group: String,
    pub project: String,
    pub role: ProjectRole,
}

fn default_scopes() -> Vec<String> {
    ["openid", "email", "profile"].map(String::from).to_vec()
}

fn default_role() -> Role {
    Role::Viewer
}

impl OidcProvider {
    /// What the sign-in button says.
    pub fn label(&self) -> &str {
        if self.display_name.trim().is_empty() {
            &self.name
        } else {
            &self.display_name
        }
    }
}

fn bad<T>(key: String, message: String) -> Result<T, ConfigError> {
    Err(ConfigError::Invalid { key, message })
}

/// Check every entry and read its client secret file.
pub(super) fn finish(providers: &mut [OidcProvider]) -> Result<(), ConfigError> {
    let mut seen = HashSet::new();
    for (i, p) in providers.iter_mut().enumerate() {
        let key = |k: &str| format!("oidc[{i}].{k}");
        let name_ok = (1..=32).contains(&p.name.len())
            && p.name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !name_ok {
            return bad(
                key("name"),
                format!("{:?}: use 1 to 32 of a-z, 0-9 and '-'", p.name),
            );
        }
        if p.name == "github" {
            return bad(
                key("name"),
                "\"github\" is reserved for the [github] sign-in".into(),
            );
        }
        if !seen.insert(p.name.clone()) {
            return bad(
                key("name"),
                format!("{:?} is used by two [[oidc]] entries", p.name),
            );
        }
        let at = |k: &str| format!("oidc.{}.{k}", p.name);
        check_issuer(&p.issuer).or_else(|m| bad(at("issuer"), m))?;
        if p.client_id.trim().is_empty() {
            return bad(at("client_id"), "is required".into());
        }
        let file = &p.client_secret_file;
        if file.as_os_str().is_empty() {
            return bad(
                at("client_secret_file"),
                "is required (a file holding the client secret)".into(),
            );
        }
        let text = std::fs::read_to_string(file).or_else(|e| {
            bad(
                at("client_secret_file"),
                format!("cannot read {}: {e}", file.display()),
            )
        })?;
        if text.trim().is_empty() {
            return bad(at("client_secret_file"), format!("{} is empty", file.display()));
        }
        p.client_secret = SecretString::new(text.trim());
        if !p.scopes.iter().any(|s| s == "openid") {
            return bad(at("scopes"), "must include \"openid\"".into());
        }
        p.allowed_email_domains = p
            .allowed_email_domains
            .iter()
            .map(|d| d.trim().trim_start_matches('@').to_ascii_lowercase())
            .filter(|d| !d.is_empty())
            .collect();
        if p.allowed_email_domains.is_empty() && p.group_roles.is_empty() && p.project_roles.is_empty() {
            return bad(
                format!("oidc.{}", p.name),
                "allows nobody: set allowed_email_domains, group_roles or project_roles".into(),
            );
        }
        if (!p.group_roles.is_empty() || !p.project_roles.is_empty()) && p.groups_claim.trim().is_empty() {
            return bad(
                at("groups_claim"),
                "is required when group_roles or project_roles are set".into(),
            );
        }
    }
    Ok(())
}

/// An absolute http(s) URL; plain http only on a loopback host (a test or local provider).
fn check_issuer(issuer: &str) -> Result<(), String> {
    let url = url::Url::parse(issuer).map_err(|e| format!("{issuer:?} is not a URL ({e})"))?;
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => return Err(format!("{issuer:?} has no host")),
    };
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(format!(
            "{issuer:?} must be an https:// URL (http:// only on loopback)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::{Config, Overrides};

    fn load(dir: &Path, entries: &str) -> Result<Config, String> {
        let file = dir.join("stagely.toml");
        std::fs::write(&file, entries).unwrap();
        Config::load(Some(&file), vec![], &Overrides::default()).map_err(|e| e.to_string())
    }

    fn entry(dir: &Path, name: &str, mapping: &str) -> String {
        let secret = dir.join(format!("{name}.secret"));
        std::fs::write(&secret, "oidc-canary-secret\n").unwrap();
        format!(
            "[[oidc]]\nname = \"{name}\"\nissuer = \"https://id.example.com/realms/x\"\nclient_id = \"stagely\"\n\
             client_secret_file = \"{}\"\n{mapping}\n",
            secret.display()
        )
    }

    #[test]
    fn providers_are_typed_and_their_secret_read_from_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let text = entry(
            dir.path(),
            "corp",
            "allowed_email_domains = [\"@Example.COM\"]\ngroups_claim = \"groups\"\n\
             group_roles = { ops = \"admin\" }\n\
             project_roles = [{ group = \"web\", project = \"shop\", role = \"deployer\" }]",
        ) + &entry(dir.path(), "google", "allowed_email_domains = [\"example.org\"]");
        let c = load(dir.path(), &text).unwrap();
        assert_eq!(c.oidc.len(), 2);
        let corp = &c.oidc[0];
        assert_eq!(corp.client_secret.expose(), "oidc-canary-secret");
        assert_eq!(corp.allowed_email_domains, ["example.com"]);
        assert_eq!(corp.scopes, ["openid", "email", "profile"]);
        assert_eq!(corp.group_roles["ops"], crate::users::Role::Admin);
        assert_eq!(corp.project_roles[0].role, crate::access::ProjectRole::Deployer);
        assert_eq!(corp.default_role, crate::users::Role::Viewer);
        assert_eq!(corp.label(), "corp");
        assert!(!format!("{c:?}").contains("oidc-canary-secret"));
        assert!(!toml::to_string(&c).unwrap().contains("oidc-canary-secret"));
    }

    #[test]
    fn an_entry_that_allows_nobody_is_refused_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(
            dir.path(),
            &entry(dir.path(), "corp", "groups_claim = \"groups\""),
        )
        .unwrap_err();
        assert!(
            err.contains("oidc.corp") && err.contains("allows nobody"),
            "{err}"
        );
    }

    #[test]
    fn bad_entries_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ok = "allowed_email_domains = [\"example.com\"]";
        let cases = [
            (entry(d, "GitHub", ok), "oidc[0].name"),
            (entry(d, "github", ok), "reserved"),
            (entry(d, "a", ok) + &entry(d, "a", ok), "two [[oidc]]"),
            (
                entry(d, "a", "group_roles = { ops = \"admin\" }"),
                "oidc.a.groups_claim",
            ),
            (
                entry(d, "a", "group_roles = { ops = \"root\" }\ngroups_claim = \"g\""),
                "root",
            ),
            (entry(d, "a", &format!("{ok}\ncolour = \"red\"")), "colour"),
            (
                entry(d, "a", ok).replace("https://id.example.com", "http://id.example.com"),
                "oidc.a.issuer",
            ),
            (
                entry(d, "a", ok).replace(".secret\"", ".missing\""),
                "oidc.a.client_secret_file",
            ),
        ];
        for (text, want) in cases {
            let err = load(d, &text).unwrap_err();
            assert!(err.contains(want), "{want}: {err}");
        }
        let text = entry(d, "empty", ok);
        std::fs::write(d.join("empty.secret"), "\n").unwrap();
        let err = load(d, &text).unwrap_err();
        assert!(
            err.contains("oidc.empty.client_secret_file") && err.contains("is empty"),
            "{err}"
        );
        let loopback = entry(d, "dev", ok).replace("https://id.example.com", "http://127.0.0.1:9");
        assert!(load(d, &loopback).is_ok());
    }
}
