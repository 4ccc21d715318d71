//! The Config Merger: secrets → `docker-compose.stagely.yml`, an override file that holds only
//! `services.<name>.environment` entries, and, for a redeployed release (issue 14), the image
//! pins: `services.<name>.image` set to a digest reference or an image id.
//!
//! Compose merges it over the project's own file, so a secret replaces a variable of the same
//! name (list or map form) and nothing else in the model changes. Which services exist is read
//! from the file's `services` keys where nothing else can add one, else asked of compose itself
//! (`config --services` with every profile), so `include:`, `extends`, anchors, merge keys and
//! profiles count exactly as compose counts them (`compose::services_in_file`).
//!
//! Every value must reach the container byte for byte, so each one is written as a YAML
//! double-quoted scalar with `$` doubled (compose interpolates `$`), never bare (YAML would retype
//! `yes`, `0123`, `1e3`, `null`, `~`), and without `\u` surrogate pairs (compose's YAML parser
//! rejects them): characters outside the BMP are written raw, as UTF-8.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use super::compose::{Compose, ComposeError};
use stagely_protocol::{Scope, SecretEntry};

/// The override's file name, as docs/design.md names it.
pub const OVERRIDE_FILE_NAME: &str = "docker-compose.stagely.yml";

/// Secrets whose key starts with this are for the agent itself (the git credential) and are
/// never injected into a service: see docs/agent.md.
pub const AGENT_ONLY_PREFIX: &str = "STAGELY_GIT_";

/// Longest accepted secret key.
pub const MAX_KEY_LEN: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum OverrideError {
    /// Keys are names, not secrets: they may be shown (cut short in case of garbage).
    #[error(
        "secret key {0:?} is not a valid environment variable name ([A-Za-z_][A-Za-z0-9_]*, at most {MAX_KEY_LEN} characters)"
    )]
    InvalidKey(String),
    #[error("the value of secret {0} contains a NUL byte, which no environment variable can hold")]
    NulInValue(String),
    #[error("service secret {0} does not name a service")]
    MissingService(String),
    #[error(
        "service secret {key} is for service {service:?}, which the compose file does not define (it defines: {known})"
    )]
    UnknownService {
        key: String,
        service: String,
        known: String,
    },
    #[error("secret {key} is given twice for {target}")]
    Duplicate { key: String, target: String },
    /// A pin is an image reference the appliance recorded, not a secret: it may be shown.
    #[error(
        "the image pin for service {service:?} is neither an image id (sha256:<64 hex>) nor a digest reference (<name>@sha256:<64 hex>)"
    )]
    InvalidPin { service: String },
    #[error(
        "the release pins an image for service {service:?}, which the compose file does not define (it defines: {known})"
    )]
    UnknownPinnedService { service: String, known: String },
    #[error(transparent)]
    Compose(#[from] ComposeError),
}

/// Check every image pin's shape: `sha256:<64 hex>` (an image id) or `<name>@sha256:<64 hex>`
/// (a registry digest). Run before anything else, so a bad pin fails the deployment with
/// nothing run.
pub fn validate_pins(pins: &BTreeMap<String, String>) -> Result<(), OverrideError> {
    for (service, pin) in pins {
        if !is_valid_pin(pin) {
            return Err(OverrideError::InvalidPin {
                service: service.chars().take(128).collect(),
            });
        }
    }
    Ok(())
}

/// `sha256:<64 hex>` or `<name>@sha256:<64 hex>`, the name made of reference characters.
pub fn is_valid_pin(pin: &str) -> bool {
    let digest = match pin.split_once('@') {
        None => pin,
        Some((name, digest)) => {
            let name_ok = !name.is_empty()
                && name.len() <= 255
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/' | b':'))
                && !name.starts_with(['/', ':', '-', '.']);
            if !name_ok {
                return false;
            }
            digest
        }
    };
    super::engine::is_image_id(digest)
}

/// Render the override for `compose_file`, asking compose which services it defines.
pub async fn render_for_file(
    compose: &Compose,
    compose_file: &Path,
    secrets: &[SecretEntry],
) -> Result<String, OverrideError> {
    // Checked before compose runs, so a bad key is reported as such even when compose is missing.
    validate(secrets)?;
    let services = compose.all_services(compose_file).await?;
    render(&services, secrets)
}

/// Check keys and values without knowing the services.
pub fn validate(secrets: &[SecretEntry]) -> Result<(), OverrideError> {
    for s in secrets {
        if !is_valid_key(&s.key) {
            return Err(OverrideError::InvalidKey(s.key.chars().take(64).collect()));
        }
        if s.value.contains('\0') {
            return Err(OverrideError::NulInValue(s.key.clone()));
        }
    }
    Ok(())
}

/// `[A-Za-z_][A-Za-z0-9_]*`, at most [`MAX_KEY_LEN`] bytes.
pub fn is_valid_key(key: &str) -> bool {
    let mut chars = key.chars();
    let Some(first) = chars.next() else { return false };
    key.len() <= MAX_KEY_LEN
        && (first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Whether a secret is for the agent only (never injected into a service).
pub fn is_agent_only(key: &str) -> bool {
    key.starts_with(AGENT_ONLY_PREFIX)
}

/// Render the override for the given service names (as compose lists them).
///
/// Globals go into every service, service secrets into their service, and a service secret beats
/// a global one of the same key. Agent-only secrets ([`AGENT_ONLY_PREFIX`]) are left out.
pub fn render(services: &[String], secrets: &[SecretEntry]) -> Result<String, OverrideError> {
    render_with_pins(services, secrets, &BTreeMap::new())
}

/// [`render`], and each pinned service's `image` set to its pin (a redeployed release). A pin
/// for a service the compose file does not define is refused, naming it.
pub fn render_with_pins(
    services: &[String],
    secrets: &[SecretEntry],
    pins: &BTreeMap<String, String>,
) -> Result<String, OverrideError> {
    validate(secrets)?;
    validate_pins(pins)?;
    if let Some(service) = pins.keys().find(|p| !services.contains(p)) {
        return Err(OverrideError::UnknownPinnedService {
            service: service.chars().take(128).collect(),
            known: if services.is_empty() {
                "no services".into()
            } else {
                services.join(", ")
            },
        });
    }
    let mut globals: BTreeMap<&str, &str> = BTreeMap::new();
    let mut per_service: BTreeMap<&str, BTreeMap<&str, &str>> = BTreeMap::new();
    for s in secrets.iter().filter(|s| !is_agent_only(&s.key)) {
        match s.scope {
            Scope::Global => {
                if globals.insert(&s.key, &s.value).is_some() {
                    return Err(OverrideError::Duplicate {
                        key: s.key.clone(),
                        target: "every service (global)".into(),
                    });
                }
            }
            Scope::Service => {
                let service = s
                    .service
                    .as_deref()
                    .filter(|n| !n.is_empty())
                    .ok_or_else(|| OverrideError::MissingService(s.key.clone()))?;
                if !services.iter().any(|n| n == service) {
                    return Err(OverrideError::UnknownService {
                        key: s.key.clone(),
                        service: service.chars().take(128).collect(),
                        known: if services.is_empty() {
                            "no services".into()
                        } else {
                            services.join(", ")
                        },
                    });
                }
                let env = per_service.entry(service).or_default();
                if env.insert(&s.key, &s.value).is_some() {
                    return Err(OverrideError::Duplicate {
                        key: s.key.clone(),
                        target: format!("service {service}"),
                    });
                }
            }
        }
    }

    let mut out = String::from(
        "# Written by stagely-agent for one deployment; deleted as soon as compose has read it.\n",
    );
    let mut any = false;
    let mut sorted: Vec<&String> = services.iter().collect();
    sorted.sort();
    sorted.dedup();
    for service in sorted {
        let mut env = globals.clone();
        if let Some(own) = per_service.get(service.as_str()) {
            env.extend(own.iter().map(|(k, v)| (*k, *v)));
        }
        let pin = pins.get(service.as_str());
        if env.is_empty() && pin.is_none() {
            continue;
        }
        if !any {
            out.push_str("services:\n");
            any = true;
        }
        // Writing to a String cannot fail (fmt::Write for String is infallible).
        let _ = writeln!(out, "  {}:", yaml_quote(service));
        if let Some(pin) = pin {
            // Validated: reference characters only. Quoted all the same, and `$` doubled.
            let _ = writeln!(out, "    image: {}", quote_value(pin));
        }
        if env.is_empty() {
            continue;
        }
        out.push_str("    environment:\n");
        for (key, value) in env {
            let _ = writeln!(out, "      {}: {}", yaml_quote(key), quote_value(value));
        }
    }
    if !any {
        out.push_str("services: {}\n");
    }
    Ok(out)
}

/// A value as compose must read it: `$` doubled against interpolation, then YAML-quoted.
pub fn quote_value(value: &str) -> String {
    yaml_quote(&value.replace('$', "$$"))
}

/// A YAML double-quoted scalar that any YAML 1.1/1.2 parser reads back as exactly `s`.
///
/// Escapes what YAML would otherwise fold, strip or refuse: quotes and backslashes, every C0
/// and C1 control character, the Unicode line and paragraph separators, the BOM and the two
/// non-characters outside YAML's printable set. Everything else, including characters outside
/// the BMP, is written raw (a `\u` surrogate pair would break compose's parser).
pub fn yaml_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            // C0, DEL and C1 (NEL included: YAML 1.1 treats it as a line break).
            '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}' => {
                let _ = write!(out, "\\x{:02X}", u32::from(c));
            }
            '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}' => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(key: &str, value: &str, service: Option<&str>) -> SecretEntry {
        SecretEntry {
            key: key.into(),
            value: value.into(),
            scope: if service.is_some() {
                Scope::Service
            } else {
                Scope::Global
            },
            service: service.map(Into::into),
        }
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// The environment maps as a YAML parser reads the override back, `$$` undone.
    fn parse(text: &str) -> BTreeMap<String, BTreeMap<String, String>> {
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).unwrap();
        let mut out = BTreeMap::new();
        let services = doc["services"].as_mapping().unwrap();
        for (name, svc) in services {
            let mut env = BTreeMap::new();
            for (k, v) in svc["environment"].as_mapping().unwrap() {
                let v = v.as_str().unwrap_or_else(|| panic!("{k:?} was retyped: {v:?}"));
                env.insert(k.as_str().unwrap().to_owned(), v.replace("$$", "$"));
            }
            out.insert(name.as_str().unwrap().to_owned(), env);
        }
        out
    }

    pub(crate) fn hard_values() -> Vec<String> {
        // Shared with the unit tests: tests/fixtures/hard-values.json (short values), plus big ones.
        let mut v: Vec<String> =
            serde_json::from_str(include_str!("../../../tests/fixtures/hard-values.json"))
                .expect("hard-values.json is a JSON array of strings");
        v.push("x".repeat(64 * 1024));
        v.push("$\"\\\n".repeat(4000));
        v
    }

    #[test]
    fn hard_values_round_trip_through_a_yaml_parser() {
        let values = hard_values();
        let secrets: Vec<SecretEntry> = values
            .iter()
            .enumerate()
            .map(|(i, v)| secret(&format!("K{i}"), v, None))
            .collect();
        let text = render(&names(&["web"]), &secrets).unwrap();
        assert!(!text.contains("\\u{D8"), "no surrogates");
        // A surrogate escape is a lone `\u`; a value's own backslash comes out doubled (`\\u`).
        let lone = text.to_ascii_lowercase().replace("\\\\", "");
        assert!(!lone.contains("\\ud8"), "no surrogate escapes");
        let parsed = parse(&text);
        for (i, v) in values.iter().enumerate() {
            assert_eq!(&parsed["web"][&format!("K{i}")], v, "value {i}");
        }
    }

    #[test]
    fn dollar_is_doubled_and_non_bmp_is_raw() {
        assert_eq!(quote_value("a$b"), "\"a$$b\"");
        assert_eq!(quote_value("😀"), "\"😀\"");
        assert_eq!(yaml_quote("\u{85}\u{2028}"), "\"\\x85\\u2028\"");
        assert_eq!(yaml_quote("q\"\\"), "\"q\\\"\\\\\"");
    }

    #[test]
    fn globals_go_everywhere_and_service_secrets_win() {
        let secrets = vec![
            secret("SHARED", "global", None),
            secret("SHARED", "web's own", Some("web")),
            secret("ONLY_DB", "db", Some("db")),
        ];
        let parsed = parse(&render(&names(&["web", "db", "worker"]), &secrets).unwrap());
        assert_eq!(parsed["web"]["SHARED"], "web's own");
        assert_eq!(parsed["db"]["SHARED"], "global");
        assert_eq!(parsed["db"]["ONLY_DB"], "db");
        assert_eq!(parsed["worker"].len(), 1);
        assert!(!parsed["web"].contains_key("ONLY_DB"));
    }

    #[test]
    fn unknown_service_is_named() {
        let err = render(&names(&["web"]), &[secret("K", "v", Some("wbe"))]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("\"wbe\"") && msg.contains("web"), "{msg}");
        assert!(!msg.contains(": v"), "value not in message: {msg}");
    }

    #[test]
    fn keys_are_validated_and_values_never_appear_in_errors() {
        for bad in ["", "1A", "A-B", "A B", "É", "A=B", "A$", &"A".repeat(257)] {
            let err = render(&names(&["web"]), &[secret(bad, "canary-secret", None)]).unwrap_err();
            assert!(matches!(err, OverrideError::InvalidKey(_)), "{bad:?}");
            assert!(!err.to_string().contains("canary-secret"));
        }
        for good in ["A", "_", "_a1", "abc_DEF_123", &"A".repeat(256)] {
            assert!(is_valid_key(good), "{good:?}");
        }
        let err = render(&names(&["web"]), &[secret("K", "a\0canary", None)]).unwrap_err();
        assert!(matches!(err, OverrideError::NulInValue(_)));
        assert!(!err.to_string().contains("canary"));
    }

    #[test]
    fn duplicates_and_missing_service_are_refused() {
        let dup = [secret("K", "1", None), secret("K", "2", None)];
        assert!(matches!(
            render(&names(&["web"]), &dup),
            Err(OverrideError::Duplicate { .. })
        ));
        let mut no_service = secret("K", "1", Some("web"));
        no_service.service = None;
        assert!(matches!(
            render(&names(&["web"]), &[no_service]),
            Err(OverrideError::MissingService(_))
        ));
    }

    const ID: &str = "sha256:8d9db4ae45eeb435475b8bdf87aa9b9ce65ff829d8bf2988faf10553bc192796";

    #[test]
    fn pins_are_validated_and_set_the_image() {
        for good in [
            ID.to_owned(),
            format!("shop/web@{ID}"),
            format!("reg.example:5000/a_b/c-d@{ID}"),
        ] {
            assert!(is_valid_pin(&good), "{good}");
        }
        for bad in [
            "",
            "shop/web:1.2",
            "sha256:abc",
            &ID.to_uppercase(),
            &format!("@{ID}"),
            &format!("a b@{ID}"),
            &format!("a\"b@{ID}"),
            &format!("a@{ID}@{ID}"),
            &format!("-a@{ID}"),
            &format!("{ID}\n"),
        ] {
            assert!(!is_valid_pin(bad), "{bad:?}");
        }
        let pins: BTreeMap<String, String> = [("web".to_owned(), "shop/web:latest".to_owned())].into();
        let err = render_with_pins(&names(&["web"]), &[], &pins).unwrap_err();
        assert!(
            matches!(err, OverrideError::InvalidPin { .. }) && err.to_string().contains("\"web\""),
            "{err}"
        );

        let pins: BTreeMap<String, String> = [
            ("web".to_owned(), format!("shop/web@{ID}")),
            ("db".to_owned(), ID.to_owned()),
        ]
        .into();
        let text = render_with_pins(
            &names(&["web", "db", "other"]),
            &[secret("K", "v$", Some("web"))],
            &pins,
        )
        .unwrap();
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(
            doc["services"]["web"]["image"].as_str(),
            Some(format!("shop/web@{ID}").as_str())
        );
        assert_eq!(doc["services"]["db"]["image"].as_str(), Some(ID));
        assert_eq!(doc["services"]["web"]["environment"]["K"].as_str(), Some("v$$"));
        assert!(doc["services"]["db"].get("environment").is_none(), "{text}");
        assert!(doc["services"].get("other").is_none(), "{text}");

        let err = render_with_pins(&names(&["web"]), &[], &pins).unwrap_err();
        assert!(
            matches!(&err, OverrideError::UnknownPinnedService { service, .. } if service == "db"),
            "{err}"
        );
    }

    #[test]
    fn agent_only_secrets_are_not_injected_and_empty_is_valid_yaml() {
        let text = render(&names(&["web"]), &[secret("STAGELY_GIT_TOKEN", "tok", None)]).unwrap();
        assert!(!text.contains("tok"));
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
        assert!(doc["services"].as_mapping().unwrap().is_empty());
    }
}
