//! Push payloads of GitHub, GitLab and Gitea/Forgejo: the ref, the pushed commit, whether it
//! was a delete, and who pushed. Only these fields are read; the rest of the body is ignored.

use serde::Deserialize;
use serde_json::Value;

use crate::deploys::ops::is_commit_id;

/// What a push moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pushed {
    Branch(String),
    Tag(String),
    /// Any other ref (`refs/notes/…`, `refs/pull/…`).
    Other(String),
}

/// A push, as the hook handling needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    pub pushed: Pushed,
    /// The commit to deploy: `after` for a branch; for a tag the commit it points at when the
    /// payload says (GitHub's and Gitea's `head_commit.id`, GitLab's `checkout_sha`), else
    /// `after` (for an annotated tag that is the tag object, which the agent peels to its commit).
    pub commit: Option<String>,
    pub deleted: bool,
    /// Who pushed, sanitised for `triggered_by` (`unknown` when the payload does not say).
    pub pusher: String,
}

#[derive(Debug, Deserialize)]
struct Payload {
    #[serde(rename = "ref")]
    git_ref: String,
    #[serde(default)]
    after: Option<String>,
    #[serde(default)]
    deleted: Option<bool>,
    #[serde(default)]
    checkout_sha: Option<Value>,
    #[serde(default)]
    head_commit: Option<Value>,
    #[serde(default)]
    pusher: Option<Value>,
    #[serde(default)]
    sender: Option<Value>,
    /// GitLab.
    #[serde(default)]
    user_username: Option<String>,
}

/// Read a push body; `None` when it is not one (no `ref`, not JSON).
pub fn parse(body: &[u8]) -> Option<Push> {
    let p: Payload = serde_json::from_slice(body).ok()?;
    let pushed = if let Some(b) = p.git_ref.strip_prefix("refs/heads/") {
        Pushed::Branch(b.to_owned())
    } else if let Some(t) = p.git_ref.strip_prefix("refs/tags/") {
        Pushed::Tag(t.to_owned())
    } else {
        Pushed::Other(p.git_ref.clone())
    };
    let after = p.after.filter(|a| is_commit_id(a));
    // GitLab marks a delete only by an all-zero `after`; GitHub and Gitea also say `deleted`.
    let zero = after.as_deref().is_some_and(|a| a.bytes().all(|b| b == b'0'));
    let deleted = p.deleted.unwrap_or(false) || zero;
    let peeled = p
        .head_commit
        .as_ref()
        .and_then(|h| h.get("id"))
        .and_then(Value::as_str)
        .or_else(|| p.checkout_sha.as_ref().and_then(Value::as_str))
        .filter(|c| is_commit_id(c))
        .map(str::to_owned);
    let commit = match pushed {
        Pushed::Tag(_) => peeled.or(after),
        _ => after,
    }
    .filter(|_| !deleted)
    .map(|c| c.to_ascii_lowercase());
    let name = |v: &Option<Value>, keys: &[&str]| {
        v.as_ref().and_then(|v| {
            keys.iter()
                .find_map(|k| v.get(*k).and_then(Value::as_str).map(str::to_owned))
        })
    };
    // GitHub: pusher.name (the login); Gitea: pusher.login / username; GitLab: user_username.
    let pusher = name(&p.pusher, &["login", "username", "name"])
        .or(p.user_username)
        .or_else(|| name(&p.sender, &["login", "username"]))
        .map(|n| sanitize_actor(&n))
        .unwrap_or_else(|| "unknown".to_owned());
    Some(Push {
        pushed,
        commit,
        deleted,
        pusher,
    })
}

/// A name from a payload, safe for `triggered_by` and the audit log: at most 64 of
/// `[A-Za-z0-9._@-]`, anything else dropped; `unknown` if nothing is left.
pub fn sanitize_actor(name: &str) -> String {
    let s: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "._@-".contains(*c))
        .take(64)
        .collect();
    if s.is_empty() { "unknown".to_owned() } else { s }
}

/// A header value safe for the delivery log: printable ASCII, at most `max` characters.
pub fn sanitize_label(value: &str, max: usize) -> String {
    value
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(max)
        .collect()
}

/// `*` matches any run of characters (also `/`), `?` exactly one; everything else itself.
pub fn glob_matches(glob: &str, name: &str) -> bool {
    let (g, n): (Vec<char>, Vec<char>) = (glob.chars().collect(), name.chars().collect());
    let (mut gi, mut ni) = (0, 0);
    // The last `*` seen and the name position it was tried at: backtrack there on a mismatch.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match g.get(gi) {
            Some('*') => {
                star = Some((gi, ni));
                gi += 1;
            }
            Some(&c) if c == '?' || c == n[ni] => {
                gi += 1;
                ni += 1;
            }
            _ => match star {
                Some((sg, sn)) => {
                    gi = sg + 1;
                    ni = sn + 1;
                    star = Some((sg, sn + 1));
                }
                None => return false,
            },
        }
    }
    g[gi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const ZERO: &str = "0000000000000000000000000000000000000000";

    fn parse_json(v: serde_json::Value) -> Option<Push> {
        parse(v.to_string().as_bytes())
    }

    #[test]
    fn globs() {
        for (g, n, ok) in [
            ("v*", "v1.2.0", true),
            ("v*", "v", true),
            ("v*", "release-1", false),
            ("v?.*", "v1.2", true),
            ("v?.*", "v10.2", false),
            ("*", "anything/at/all", true),
            ("release-*-rc?", "release-2026-rc1", true),
            ("release-*-rc?", "release-2026-rc", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
        ] {
            assert_eq!(glob_matches(g, n), ok, "{g} {n}");
        }
    }

    #[test]
    fn providers_payloads() {
        // GitHub branch push.
        let p = parse_json(json!({"ref": "refs/heads/main", "after": A, "deleted": false,
            "pusher": {"name": "octo-cat", "email": "o@example.com"}}))
        .unwrap();
        assert_eq!(p.pushed, Pushed::Branch("main".into()));
        assert_eq!(
            (p.commit.as_deref(), p.deleted, p.pusher.as_str()),
            (Some(A), false, "octo-cat")
        );
        // GitHub annotated tag: `after` is the tag object, head_commit the commit.
        let p = parse_json(
            json!({"ref": "refs/tags/v1", "after": A, "head_commit": {"id": B},
            "pusher": {"name": "x"}}),
        )
        .unwrap();
        assert_eq!(
            (p.pushed, p.commit.as_deref()),
            (Pushed::Tag("v1".into()), Some(B))
        );
        // GitLab delete: all-zero after, no `deleted`.
        let p = parse_json(
            json!({"ref": "refs/heads/main", "after": ZERO, "checkout_sha": null,
            "user_username": "gl user!"}),
        )
        .unwrap();
        assert!(p.deleted && p.commit.is_none());
        assert_eq!(p.pusher, "gluser");
        // Gitea.
        let p = parse_json(json!({"ref": "refs/heads/dev", "after": B.to_uppercase(),
            "pusher": {"login": "gt", "username": "gt"}}))
        .unwrap();
        assert_eq!((p.commit.as_deref(), p.pusher.as_str()), (Some(B), "gt"));
        assert!(parse(b"not json").is_none());
        assert!(parse_json(json!({"zen": "ping"})).is_none());
        assert_eq!(sanitize_actor("\u{1b}[31m"), "31m");
        assert_eq!(sanitize_actor(&"x".repeat(500)).len(), 64);
    }
}
