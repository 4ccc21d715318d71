//! Operating what runs (issue 15): container logs on demand and lifecycle actions on the agent's
//! own compose project. A closed set of typed requests — never a command line, an exec or a
//! shell: the agent maps each to one fixed `docker compose` invocation (docs/protocol.md).
//!
//! Every request carries a `request_id` the appliance chose; the agent's answers carry it back,
//! and the appliance accepts an answer only from the connection it sent the request on.

use serde::{Deserialize, Serialize};

/// HELLO capability: the agent answers LOGS, LOGS_STOP and ACTION.
pub const CAP_OPERATE: &str = "operate";

/// Most lines a LOGS request may ask for (`tail`).
pub const MAX_LOG_TAIL: u32 = 5_000;
/// Longest a followed log runs before the agent ends it (`follow_secs`), in seconds.
pub const MAX_FOLLOW_SECS: u32 = 600;
/// Most lines one CONTAINER_LOG frame carries; the agent batches up to this.
pub const MAX_LOG_BATCH: usize = 500;
/// Longest container log line sent, in bytes; longer ones are cut (at a char boundary) and marked.
pub const MAX_LOG_LINE: usize = 8 * 1024;

/// A lifecycle action: on one service (`restart`, `stop`, `start`) or the whole environment
/// (those three, and `down`, which only applies to the environment).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Restart,
    Stop,
    Start,
    /// `docker compose down`: containers and networks removed, volumes kept.
    Down,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Restart => "restart",
            Action::Stop => "stop",
            Action::Start => "start",
            Action::Down => "down",
        }
    }
}

/// One line of a container's log, as `docker compose logs` printed it (no colour), masked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerLogLine {
    /// The container the line came from (`shop-staging-web-1`).
    pub container: String,
    /// RFC 3339 time the engine recorded for the line, when it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    pub line: String,
}

/// Why a container log stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogEnd {
    /// The tail was sent (no follow), or the containers stopped logging.
    Done,
    /// The appliance sent LOGS_STOP (the viewer left).
    Stopped,
    /// `follow_secs` ran out.
    TimeLimit,
    /// The request could not be served; `error` says why.
    Failed,
}

/// The plaintext of a LOGS request's `sealed_secrets` (age-encrypted to the agent's recipient,
/// base64, as DEPLOY's): the values the agent masks the lines with. It names the request and the
/// compose project, so it is of no use in any other request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedLogSecrets {
    pub request_id: u64,
    pub project: String,
    pub secrets: Vec<crate::SecretEntry>,
}

impl SealedLogSecrets {
    /// The JSON to encrypt; wiped when dropped.
    pub fn to_plaintext(&self) -> zeroize::Zeroizing<Vec<u8>> {
        zeroize::Zeroizing::new(serde_json::to_vec(self).unwrap_or_default())
    }

    /// Parse decrypted JSON. The error never quotes the input.
    pub fn from_plaintext(plaintext: &[u8]) -> Result<Self, crate::DecodeError> {
        serde_json::from_slice(plaintext).map_err(|e| crate::DecodeError::Invalid {
            kind: "sealed log secrets".into(),
            reason: crate::redact::serde_message(&e.to_string()),
        })
    }

    /// Whether this plaintext belongs to the LOGS request it arrived in.
    pub fn matches(&self, request_id: u64, project: &str) -> bool {
        self.request_id == request_id && self.project == project
    }
}

/// Longest compose service name an ACTION or LOGS request may name.
pub const MAX_SERVICE_NAME: usize = 63;

/// Why `name` cannot be a compose service name in a request, or `None` when it can: 1 to
/// [`MAX_SERVICE_NAME`] ASCII letters, digits, `.`, `_` or `-`, starting with a letter or digit
/// (so never an option such as `--help`, a path such as `../x`, or shell syntax such as
/// `web;id`). Both the appliance (before sending) and the agent (before running) check it.
pub fn service_name_error(name: &str) -> Option<String> {
    let rule =
        "a service name is 1 to 63 ASCII letters, digits, '.', '_' or '-', starting with a letter or digit";
    let ok = !name.is_empty()
        && name.len() <= MAX_SERVICE_NAME
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    (!ok).then(|| rule.to_owned())
}

/// Whether `name` is a compose service name a request may carry ([`service_name_error`]).
pub fn is_service_name(name: &str) -> bool {
    service_name_error(name).is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_are_never_options_paths_or_shell() {
        for good in ["web", "db-1", "api_v2", "a.b", "W9"] {
            assert_eq!(service_name_error(good), None, "{good}");
        }
        let long = "a".repeat(64);
        for bad in [
            "", "web;id", "--help", "-x", "../x", "a/b", ".hidden", "a b", "é", &long,
        ] {
            assert!(service_name_error(bad).is_some(), "{bad:?}");
        }
        assert!(is_service_name("web") && !is_service_name("web;id"));
    }
}
