//! One validation rule per kind of name, used by every caller (API, pages, CLI). Lengths are
//! counted in characters (`char`s), never bytes, so the same name is valid everywhere.
//!
//! | kind | rule | used for |
//! | --- | --- | --- |
//! | [`NameKind::Project`] | slug, 1–63 | project names (they become compose project names) |
//! | [`NameKind::Environment`] | slug, 1–32 | environment names |
//! | [`NameKind::Agent`] | handle, 1–64, unique per environment (the store enforces that) | agent names |
//! | [`NameKind::Token`] | label, 1–64 | API token names |
//!
//! - slug: lowercase ASCII letters, digits, `-` and `_`, starting with a letter or digit: safe in
//!   URLs, paths and compose project names.
//! - handle: ASCII letters, digits, `-`, `_` and `.`, starting with a letter or digit, no `..`:
//!   safe in a path, a log line and a page, so an agent can never be called `<script>` or `../x`.
//! - label: any printable text (no control characters), trimmed; pages escape it.

/// What a name names; each kind has one rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    Project,
    Environment,
    Agent,
    Token,
}

/// A name that breaks its kind's rule; the message says what the rule is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InvalidName {
    pub kind: NameKind,
    pub message: String,
}

impl NameKind {
    /// The most characters a name of this kind may have.
    pub const fn max_chars(self) -> usize {
        match self {
            NameKind::Project => 63,
            NameKind::Environment => 32,
            NameKind::Agent | NameKind::Token => 64,
        }
    }

    /// The rule, as the error message states it.
    pub fn rule(self) -> String {
        let max = self.max_chars();
        match self {
            NameKind::Project | NameKind::Environment => format!(
                "use 1 to {max} lowercase letters, digits, '-' or '_', starting with a letter or digit"
            ),
            NameKind::Agent => {
                format!("use 1 to {max} letters, digits, '-', '_' or '.', starting with a letter or digit")
            }
            NameKind::Token => format!("must be 1 to {max} printable characters"),
        }
    }
}

/// Check `value` against `kind`'s rule; answers the trimmed name.
pub fn validate(kind: NameKind, value: &str) -> Result<String, InvalidName> {
    let v = value.trim();
    let count = v.chars().count();
    let starts_alnum = |lower_only: bool| {
        v.chars().next().is_some_and(|c| {
            c.is_ascii_digit()
                || if lower_only {
                    c.is_ascii_lowercase()
                } else {
                    c.is_ascii_alphabetic()
                }
        })
    };
    let ok = count >= 1
        && count <= kind.max_chars()
        && match kind {
            NameKind::Project | NameKind::Environment => {
                starts_alnum(true)
                    && v.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
            }
            NameKind::Agent => {
                starts_alnum(false)
                    && !v.contains("..")
                    && v.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            }
            NameKind::Token => !v.chars().any(char::is_control),
        };
    if ok {
        Ok(v.to_owned())
    } else {
        Err(InvalidName {
            kind,
            message: kind.rule(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        assert_eq!(validate(NameKind::Project, "  web-app_2 ").unwrap(), "web-app_2");
        for bad in ["", "Web", "-x", "_x", "a b", "a/b", "é", &"a".repeat(64)] {
            assert!(validate(NameKind::Project, bad).is_err(), "{bad:?}");
        }
        assert!(validate(NameKind::Project, &"a".repeat(63)).is_ok());
        assert!(validate(NameKind::Environment, &"a".repeat(33)).is_err());
    }

    #[test]
    fn agent_handles_refuse_markup_and_paths() {
        assert_eq!(validate(NameKind::Agent, "Web-1.eu").unwrap(), "Web-1.eu");
        for bad in [
            "<script>",
            "../../x",
            "a..b",
            ".hidden",
            "a/b",
            "a b",
            "",
            &"a".repeat(65),
        ] {
            assert!(validate(NameKind::Agent, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn labels_count_characters_not_bytes() {
        // 64 three-byte characters: 192 bytes, 64 characters: valid everywhere.
        assert!(validate(NameKind::Token, &"€".repeat(64)).is_ok());
        assert!(validate(NameKind::Token, &"€".repeat(65)).is_err());
        assert!(validate(NameKind::Token, "ci\u{7}bell").is_err());
        assert!(validate(NameKind::Token, "   ").is_err());
    }
}
