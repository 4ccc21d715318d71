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

/// Whether `name` is a compose service name as LOGS and ACTION accept it: 1–200 ASCII letters,
/// digits, `_`, `.` and `-`, starting with a letter or digit (so never an option like `--help`,
/// a path like `../x` or shell text like `web;id`).
pub fn is_service_name(name: &str) -> bool {
    name.len() <= 200
        && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_are_never_options_paths_or_shell() {
        for ok in ["web", "db_1", "api.v2", "w-1", "9lives"] {
            assert!(is_service_name(ok), "{ok}");
        }
        for bad in ["", "web;id", "../x", "--help", "-x", "a b", "web\n", "$(id)", "é"] {
            assert!(!is_service_name(bad), "{bad:?}");
        }
        assert!(!is_service_name(&"a".repeat(201)));
    }
}
