//! OpenID Connect sign-in (`[[oidc]]` providers): [`client`] talks to the provider and verifies
//! the ID token; this file turns verified claims into a decision (who may come in, with which
//! global and project roles); [`ops`] applies it to the account bound to `(issuer, sub)`;
//! [`store`] holds the SQL. The pages are in `users::pages::oidc`.

pub mod client;
pub mod ops;
pub mod store;

use openidconnect::core::CoreIdTokenClaims;

use crate::access::ProjectRole;
use crate::config::OidcProvider;
use crate::users::Role;

/// What a verified ID token (and perhaps the userinfo endpoint) says about a person.
#[derive(Debug, Clone)]
pub struct Claims {
    pub subject: String,
    /// Only a verified e-mail (`email_verified: true`): an unverified one is ignored.
    pub email: Option<String>,
    pub preferred_username: Option<String>,
    pub name: Option<String>,
    pub groups: Vec<String>,
}

impl Claims {
    /// From claims the crate verified, and the same token's raw payload for the groups claim.
    pub fn from_verified(v: &CoreIdTokenClaims, raw: &serde_json::Value, groups_claim: &str) -> Claims {
        let email = v
            .email()
            .filter(|_| v.email_verified() == Some(true))
            .map(|e| e.as_str().trim().to_owned());
        Claims {
            subject: v.subject().as_str().to_owned(),
            email,
            preferred_username: v.preferred_username().map(|u| u.as_str().to_owned()),
            name: v.name().and_then(|n| n.get(None)).map(|n| n.as_str().to_owned()),
            groups: groups_of(raw, groups_claim),
        }
    }

    /// The verified e-mail's domain, lowercased.
    pub fn email_domain(&self) -> Option<String> {
        let email = self.email.as_deref()?;
        let (_, domain) = email.rsplit_once('@')?;
        Some(domain.to_ascii_lowercase())
    }
}

/// The groups a claim lists: an array of strings, or one string.
pub fn groups_of(claims: &serde_json::Value, claim: &str) -> Vec<String> {
    if claim.is_empty() {
        return Vec::new();
    }
    match claims.get(claim) {
        Some(serde_json::Value::Array(list)) => list
            .iter()
            .filter_map(|g| g.as_str().map(str::to_owned))
            .collect(),
        Some(serde_json::Value::String(one)) => vec![one.clone()],
        _ => Vec::new(),
    }
}

/// A person the mapping lets in: their global role and project roles (by project name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    pub role: Role,
    pub projects: Vec<(String, ProjectRole)>,
    /// Why, for the audit entry: "domain example.com", "groups ops, web".
    pub reason: String,
}

/// Who may come in through this provider: a verified e-mail in an allowed domain, or a group
/// that maps to a global or project role. The global role is the highest mapped group's, else
/// `default_role`. `None`: not allowed.
pub fn admit(p: &OidcProvider, c: &Claims) -> Option<Admission> {
    let domain = c
        .email_domain()
        .filter(|d| p.allowed_email_domains.iter().any(|a| a == d));
    let in_group = |g: &String| c.groups.iter().any(|mine| mine == g);
    let group_role = p
        .group_roles
        .iter()
        .filter(|(g, _)| in_group(g))
        .map(|(_, r)| *r)
        .max();
    let mut projects: Vec<(String, ProjectRole)> = Vec::new();
    for grant in p.project_roles.iter().filter(|g| in_group(&g.group)) {
        match projects.iter_mut().find(|(name, _)| *name == grant.project) {
            Some((_, role)) => *role = (*role).max(grant.role),
            None => projects.push((grant.project.clone(), grant.role)),
        }
    }
    if domain.is_none() && group_role.is_none() && projects.is_empty() {
        return None;
    }
    let mut matched: Vec<&str> = p
        .group_roles
        .keys()
        .chain(p.project_roles.iter().map(|g| &g.group))
        .filter(|g| in_group(g))
        .map(String::as_str)
        .collect();
    matched.sort_unstable();
    matched.dedup();
    let reason = match (&domain, matched.is_empty()) {
        (Some(d), true) => format!("domain {d}"),
        (Some(d), false) => format!("domain {d}, groups {}", matched.join(", ")),
        (None, _) => format!("groups {}", matched.join(", ")),
    };
    Some(Admission {
        role: group_role.unwrap_or(p.default_role),
        projects,
        reason,
    })
}

/// A valid, unused-looking username from the claims: `preferred_username`, else the e-mail's
/// local part, else `user`; characters a username cannot hold become `-`.
pub fn username_hint(c: &Claims) -> String {
    let raw = c
        .preferred_username
        .as_deref()
        .map(|u| u.split('@').next().unwrap_or(u))
        .or_else(|| c.email.as_deref().and_then(|e| e.split('@').next()))
        .unwrap_or("user");
    let mut name: String = raw
        .chars()
        .map(|ch| {
            if ch.is_ascii_alphanumeric() || "-_.".contains(ch) {
                ch
            } else {
                '-'
            }
        })
        .collect();
    name = name
        .trim_start_matches(|ch: char| !ch.is_ascii_alphanumeric())
        .to_owned();
    name.truncate(32);
    if name.is_empty() { "user".into() } else { name }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider() -> OidcProvider {
        let text = r#"
            name = "corp"
            issuer = "https://id.example.com"
            client_id = "stagely"
            client_secret_file = "/dev/null"
            allowed_email_domains = ["example.com"]
            groups_claim = "groups"
            group_roles = { ops = "admin", devs = "member" }
            project_roles = [{ group = "web", project = "shop", role = "deployer" },
                             { group = "ops", project = "shop", role = "maintainer" }]
        "#;
        toml::from_str(text).unwrap()
    }

    fn claims(email: Option<&str>, groups: &[&str]) -> Claims {
        Claims {
            subject: "s".into(),
            email: email.map(str::to_owned),
            preferred_username: None,
            name: None,
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        }
    }

    #[test]
    fn the_highest_group_wins_and_the_domain_alone_gives_the_default_role() {
        let p = provider();
        let a = admit(&p, &claims(None, &["devs", "ops"])).unwrap();
        assert_eq!(a.role, Role::Admin);
        assert_eq!(a.projects, [("shop".to_owned(), ProjectRole::Maintainer)]);
        let a = admit(&p, &claims(Some("Ann@EXAMPLE.com"), &[])).unwrap();
        assert_eq!((a.role, a.reason.as_str()), (Role::Viewer, "domain example.com"));
        let a = admit(&p, &claims(None, &["web"])).unwrap();
        assert_eq!((a.role, a.projects.len()), (Role::Viewer, 1));
        assert_eq!(admit(&p, &claims(Some("x@example.com.evil"), &["Ops"])), None);
        assert_eq!(admit(&p, &claims(None, &[])), None);
    }

    #[test]
    fn usernames_are_made_valid() {
        let mut c = claims(Some("jane.doe+x@example.com"), &[]);
        assert_eq!(username_hint(&c), "jane.doe-x");
        c.preferred_username = Some("_Zoë Smith".into());
        assert_eq!(username_hint(&c), "Zo--Smith");
        assert_eq!(username_hint(&claims(None, &[])), "user");
        assert!(crate::users::validate_username(&username_hint(&c)).is_ok());
    }

    #[test]
    fn groups_are_a_list_or_one_string() {
        let v = serde_json::json!({"groups": ["a", 1, "b"], "one": "c"});
        assert_eq!(groups_of(&v, "groups"), ["a", "b"]);
        assert_eq!(groups_of(&v, "one"), ["c"]);
        assert!(groups_of(&v, "none").is_empty() && groups_of(&v, "").is_empty());
    }
}
