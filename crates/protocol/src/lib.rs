//! The wire protocol between the appliance and its agents (protocol v1).
//!
//! JSON text frames over one WebSocket, each with a `type` field. This module knows neither side:
//! the appliance (`stagely::agents::hub`) and the agent (`stagely_agent`) both speak it. Extra fields
//! are ignored on decode so either side can grow; unknown `type`s decode to [`Incoming::Unknown`]
//! so a newer peer's informational messages do not break an older one. See docs/protocol.md.

pub mod mask;
pub mod operate;
pub mod redact;
pub mod release;
pub mod signing;

pub use release::{Release, ReleaseService, RuntimeContainer};

use serde::{Deserialize, Serialize};

/// The protocol version this build speaks. An agent sending another version is told to upgrade.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest frame either side accepts; anything bigger is a protocol error.
pub const MAX_FRAME_BYTES: usize = 1024 * 1024;

/// WebSocket path the agent dials under the appliance's public URL.
pub const AGENT_WS_PATH: &str = "/ws/agent";

/// Close reason sent to an agent whose token was revoked.
pub const CLOSE_REVOKED: &str = "agent revoked";
/// Close reason sent when a second connection with the same token replaced this one.
pub const CLOSE_REPLACED: &str = "replaced by a newer connection";
/// Close reason sent to every agent when the appliance stops.
pub const CLOSE_SHUTDOWN: &str = "server shutting down";

/// How the agent gets images before `up`, as set on the project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PullPolicy {
    /// `docker compose pull --ignore-buildable`: a moved tag such as `:latest` gets deployed.
    #[default]
    Always,
    /// Pull only images that are not present locally.
    Missing,
    /// Never pull; every image must be present or buildable.
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "always",
            PullPolicy::Missing => "missing",
            PullPolicy::Never => "never",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "always" => Some(Self::Always),
            "missing" => Some(Self::Missing),
            "never" => Some(Self::Never),
            _ => None,
        }
    }
}

/// Where a secret goes in the compose project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Into every service.
    Global,
    /// Into one named service; beats a global secret of the same key.
    Service,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Global => "global",
            Scope::Service => "service",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "global" => Some(Self::Global),
            "service" => Some(Self::Service),
            _ => None,
        }
    }
}

/// One decrypted secret as it travels in a `DEPLOY`. Its `Debug` never prints the value, and the
/// value is wiped from memory when the entry is dropped.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, zeroize::ZeroizeOnDrop)]
pub struct SecretEntry {
    #[zeroize(skip)]
    pub key: String,
    pub value: String,
    #[zeroize(skip)]
    pub scope: Scope,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[zeroize(skip)]
    pub service: Option<String>,
}

impl std::fmt::Debug for SecretEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretEntry")
            .field("key", &self.key)
            .field("value", &"<redacted>")
            .field("scope", &self.scope)
            .field("service", &self.service)
            .finish()
    }
}

/// The plaintext inside a DEPLOY's `sealed_secrets`. It repeats the deployment id and project,
/// and the agent refuses a DEPLOY whose outer fields differ: a ciphertext lifted from one DEPLOY
/// cannot be pasted into another (say, one pointing at another repository) to have its values
/// deployed there. Sealing gives secrecy only; who may send a DEPLOY is the signature's business.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedSecrets {
    pub deployment_id: i64,
    pub project: ProjectSpec,
    pub secrets: Vec<SecretEntry>,
}

impl SealedSecrets {
    /// The JSON to encrypt; wiped when dropped.
    pub fn to_plaintext(&self) -> zeroize::Zeroizing<Vec<u8>> {
        zeroize::Zeroizing::new(serde_json::to_vec(self).unwrap_or_default())
    }

    /// Parse decrypted JSON. The error never quotes the input.
    pub fn from_plaintext(plaintext: &[u8]) -> Result<Self, DecodeError> {
        serde_json::from_slice(plaintext).map_err(|e| DecodeError::Invalid {
            kind: "sealed secrets".into(),
            reason: crate::redact::serde_message(&e.to_string()),
        })
    }

    /// Whether this plaintext belongs to the DEPLOY it arrived in.
    pub fn matches(&self, deployment_id: i64, project: &ProjectSpec) -> bool {
        self.deployment_id == deployment_id && &self.project == project
    }
}

/// What the agent needs to know about the project it deploys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectSpec {
    pub name: String,
    pub environment: String,
    #[serde(default)]
    pub repo_url: Option<String>,
    pub git_ref: String,
    pub compose_path: String,
    #[serde(default)]
    pub pull: PullPolicy,
    /// The compose project name the stack runs under (`docker compose -p`), chosen by the
    /// appliance once per environment and unique across it. Absent from an older appliance: the
    /// agent then derives `<name>-<environment>` as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compose_project: Option<String>,
    /// Image pins of a redeployed release (issue 14): service → the reference its `image` is
    /// set to in the override (`name@sha256:…`, or an image id `sha256:…`). Empty for an
    /// ordinary deploy. Sent only to an agent offering [`release::CAP_RELEASES`].
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub images: std::collections::BTreeMap<String, String>,
}

/// Which output a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
    /// Lines the agent itself writes ("pulling images", "verifying").
    Agent,
}

impl LogStream {
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
            LogStream::Agent => "agent",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "stdout" => Some(Self::Stdout),
            "stderr" => Some(Self::Stderr),
            "agent" => Some(Self::Agent),
            _ => None,
        }
    }
}

/// Final outcome the agent reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum DeployOutcome {
    Success,
    Fail,
    /// Stopped on the appliance's CANCEL. Only ever sent in answer to a CANCEL, so an appliance
    /// from before the queue (which sends none) never receives it.
    Cancelled,
}

/// State of one compose service after the deploy, as the agent saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ServiceState {
    pub name: String,
    /// Compose's container state: `running`, `exited`, `restarting`, … or `missing`.
    pub state: String,
    /// `healthy`, `unhealthy`, `starting`, or empty when the service has no healthcheck.
    #[serde(default)]
    pub health: String,
    #[serde(default)]
    pub exit_code: Option<i64>,
}

/// Messages the agent sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "UPPERCASE")]
pub enum AgentMessage {
    Hello {
        protocol: u32,
        agent_version: String,
        hostname: String,
        #[serde(default)]
        docker_version: String,
        #[serde(default)]
        compose_version: String,
        /// Deployments this agent is still working on or holds an unacknowledged STATUS for.
        /// The server fails any other deployment it believes this agent is running (the agent
        /// restarted and lost it). Absent means "unknown": the server then waits for the timeout.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        active_deployments: Option<Vec<i64>>,
        /// The agent's age X25519 recipient (`age1…`), the public half of the identity in its
        /// work dir. The appliance pins it at the first connection and seals every DEPLOY's
        /// secrets to it. Absent from agents older than 0.1 with end-to-end secrets: they are
        /// sent no DEPLOY.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recipient: Option<String>,
        /// What this agent can do beyond protocol 1's core ([`release::CAP_RELEASES`],
        /// [`release::CAP_RUNTIME`]). Absent from older agents: none.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        capabilities: Vec<String>,
    },
    Log {
        deployment_id: i64,
        seq: u64,
        stream: LogStream,
        line: String,
    },
    Status {
        deployment_id: i64,
        status: DeployOutcome,
        #[serde(default)]
        services: Vec<ServiceState>,
        #[serde(default)]
        error: Option<String>,
        /// The commit that was deployed, when the project has a repository.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        commit: Option<String>,
        /// How many LOG lines the agent sent for this deployment (seq `0..lines`), so the
        /// appliance can tell a complete log from one with lines missing. Absent from older
        /// agents, and from an agent that restarted during the deployment (it cannot know).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lines: Option<u64>,
        /// What the deployment put on the server, read from the engine after `up`: on SUCCESS
        /// from an agent offering [`release::CAP_RELEASES`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        release: Option<Release>,
        /// Whether `docker compose up` ran (the stack may have changed): a FAIL with `applied`
        /// is one that may have left the stack half-applied, which `auto_rollback` answers.
        /// Absent from older agents.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        applied: Option<bool>,
    },
    /// The containers of the compose project named in WATCH, sent on connect (after WATCH),
    /// after every deployment and whenever the engine reports a change to the project, and
    /// only when something changed since the last RUNTIME (docs/protocol.md).
    Runtime {
        /// The compose project described.
        project: String,
        containers: Vec<RuntimeContainer>,
        /// More than [`release::MAX_RUNTIME_CONTAINERS`] containers: the rest are left out.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        truncated: bool,
    },
    /// Lines of a container log asked for by LOGS `request_id` (at most
    /// [`operate::MAX_LOG_BATCH`]), masked by the agent with the secrets the request sealed.
    #[serde(rename = "CONTAINER_LOG")]
    ContainerLog {
        request_id: u64,
        lines: Vec<operate::ContainerLogLine>,
        /// Lines the agent left out since the previous frame (a flood beyond its rate).
        #[serde(default, skip_serializing_if = "is_zero")]
        dropped: u64,
    },
    /// The end of LOGS `request_id`'s lines: nothing more comes for it.
    #[serde(rename = "CONTAINER_LOG_END")]
    ContainerLogEnd {
        request_id: u64,
        reason: operate::LogEnd,
        /// Why it failed (no secret value: masked like the lines).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// The outcome of ACTION `request_id`.
    #[serde(rename = "ACTION_RESULT")]
    ActionResult {
        request_id: u64,
        ok: bool,
        /// Why it failed, in one line (masked).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    Error {
        code: String,
        message: String,
    },
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Messages the server sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "UPPERCASE")]
pub enum ServerMessage {
    Deploy {
        deployment_id: i64,
        project: ProjectSpec,
        /// The secrets, end to end: standard base64 of one binary age file encrypted to the
        /// agent's pinned recipient, whose plaintext is a [`SealedSecrets`] in JSON. Nothing on
        /// the path (a TLS-terminating proxy, a frame log) can read a value.
        sealed_secrets: String,
    },
    Ack {
        deployment_id: i64,
    },
    /// Stop this deployment: end its commands (SIGTERM to their process groups, SIGKILL after a
    /// grace), remove its override and working files, and report STATUS `CANCELLED`. A CANCEL
    /// for a deployment the agent has finished is ignored (its STATUS stands). An agent from
    /// before the queue ignores it as an unknown type and the deployment runs to its end.
    Cancel {
        deployment_id: i64,
    },
    /// Every LOG line of this deployment with a seq up to and including `seq` is committed (or
    /// deliberately dropped by the log caps): the agent may forget them. Cumulative, so a lost
    /// or skipped one is covered by the next. An agent keeps every line it sent until then, and
    /// resends the rest after a reconnect, before the deployment's STATUS (docs/protocol.md).
    #[serde(rename = "LOG_ACK")]
    LogAck {
        deployment_id: i64,
        seq: u64,
    },
    /// Report the state of this compose project (the agent's environment's) in RUNTIME, now
    /// and whenever it changes. Sent after every HELLO of an agent offering
    /// [`release::CAP_RUNTIME`]; a later WATCH replaces the project watched.
    Watch {
        project: String,
    },
    /// Send the log of `service` in compose project `project` (the one named in WATCH): the
    /// last `tail` lines (at most [`operate::MAX_LOG_TAIL`]), then, with `follow`, new lines
    /// for at most `follow_secs` ([`operate::MAX_FOLLOW_SECS`]) or until LOGS_STOP. Answered
    /// by CONTAINER_LOG frames and one CONTAINER_LOG_END. `sealed_secrets` is sealed like
    /// DEPLOY's, to the agent's recipient: the values the agent masks the lines with.
    Logs {
        request_id: u64,
        project: String,
        service: String,
        tail: u32,
        #[serde(default)]
        follow: bool,
        #[serde(default)]
        follow_secs: u32,
        sealed_secrets: String,
    },
    /// Stop sending LOGS `request_id` (the viewer left). Ignored when it already ended.
    #[serde(rename = "LOGS_STOP")]
    LogsStop {
        request_id: u64,
    },
    /// Run `action` on `service` (or on the whole project when absent) of compose project
    /// `project` (the one named in WATCH). Answered by one ACTION_RESULT.
    Action {
        request_id: u64,
        project: String,
        action: operate::Action,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service: Option<String>,
    },
    Error {
        code: String,
        message: String,
    },
    /// The appliance's signing key was rotated: the statements (oldest first) by which an agent
    /// that pinned an older key moves its pin to the key signing this frame ([`signing`]).
    Rekey {
        chain: Vec<signing::RotationLink>,
    },
}

/// A decoded frame: a known message, or a well-formed frame of a type this build does not know.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<M> {
    Known(M),
    Unknown(String),
}

/// Why a frame could not be decoded. The text never echoes frame contents (they may hold secrets).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("frame of {0} bytes is over the {MAX_FRAME_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("frame is not a JSON object with a string \"type\" field")]
    NotAMessage,
    #[error("invalid {kind} message: {reason}")]
    Invalid { kind: String, reason: String },
}

/// Decode a text frame into `M`, telling unknown types apart from malformed frames.
pub fn decode<M: serde::de::DeserializeOwned>(
    frame: &str,
    known: &[&str],
) -> Result<Incoming<M>, DecodeError> {
    if frame.len() > MAX_FRAME_BYTES {
        return Err(DecodeError::TooLarge(frame.len()));
    }
    #[derive(Deserialize)]
    struct Tag<'a> {
        #[serde(rename = "type", borrow)]
        kind: std::borrow::Cow<'a, str>,
    }
    let tag: Tag = serde_json::from_str(frame).map_err(|_| DecodeError::NotAMessage)?;
    if !known.contains(&tag.kind.as_ref()) {
        return Ok(Incoming::Unknown(tag.kind.into_owned()));
    }
    serde_json::from_str(frame)
        .map(Incoming::Known)
        .map_err(|e| DecodeError::Invalid {
            kind: tag.kind.into_owned(),
            // serde_json quotes the offending input, which may be a secret: cut it out.
            reason: crate::redact::serde_message(&e.to_string()),
        })
}

/// Message types an agent may send.
pub const AGENT_MESSAGE_TYPES: &[&str] = &[
    "HELLO",
    "LOG",
    "STATUS",
    "RUNTIME",
    "CONTAINER_LOG",
    "CONTAINER_LOG_END",
    "ACTION_RESULT",
    "ERROR",
];
/// Message types a server may send.
pub const SERVER_MESSAGE_TYPES: &[&str] = &[
    "DEPLOY",
    "ACK",
    "CANCEL",
    "LOG_ACK",
    "WATCH",
    "LOGS",
    "LOGS_STOP",
    "ACTION",
    "ERROR",
    "REKEY",
];

pub fn decode_agent_message(frame: &str) -> Result<Incoming<AgentMessage>, DecodeError> {
    decode(frame, AGENT_MESSAGE_TYPES)
}

pub fn decode_server_message(frame: &str) -> Result<Incoming<ServerMessage>, DecodeError> {
    decode(frame, SERVER_MESSAGE_TYPES)
}

/// Encode a message as a text frame. Serialising these plain structs cannot fail.
pub fn encode<M: Serialize>(msg: &M) -> String {
    serde_json::to_string(msg).unwrap_or_else(|_| String::from("{}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issue_15_messages_are_known_types() {
        let action = encode(&ServerMessage::Action {
            request_id: 3,
            project: "shop-staging".into(),
            action: operate::Action::Restart,
            service: Some("web".into()),
        });
        assert!(matches!(
            decode_server_message(&action),
            Ok(Incoming::Known(ServerMessage::Action { request_id: 3, .. }))
        ));
        let result = r#"{"type":"ACTION_RESULT","request_id":3,"ok":false,"error":"busy"}"#;
        assert!(matches!(
            decode_agent_message(result),
            Ok(Incoming::Known(AgentMessage::ActionResult { ok: false, .. }))
        ));
        for kind in ["LOGS", "LOGS_STOP"] {
            assert!(SERVER_MESSAGE_TYPES.contains(&kind));
        }
        for kind in ["CONTAINER_LOG", "CONTAINER_LOG_END"] {
            assert!(AGENT_MESSAGE_TYPES.contains(&kind));
        }
    }

    #[test]
    fn hello_round_trips_and_ignores_extra_fields() {
        let frame = r#"{"type":"HELLO","protocol":1,"agent_version":"0.1.0","hostname":"h",
            "docker_version":"28","compose_version":"2.40","future_field":true}"#;
        let Ok(Incoming::Known(AgentMessage::Hello {
            protocol, hostname, ..
        })) = decode_agent_message(frame)
        else {
            panic!("HELLO did not decode")
        };
        assert_eq!((protocol, hostname.as_str()), (1, "h"));
    }

    #[test]
    fn unknown_type_is_not_an_error() {
        assert_eq!(
            decode_server_message(r#"{"type":"NEWS","text":"hi"}"#),
            Ok(Incoming::Unknown("NEWS".into()))
        );
    }

    #[test]
    fn malformed_frames_are_errors_that_do_not_echo_content() {
        assert_eq!(decode_agent_message("not json"), Err(DecodeError::NotAMessage));
        assert_eq!(
            decode_agent_message(r#"{"type":5}"#),
            Err(DecodeError::NotAMessage)
        );
        let err = decode_agent_message(r#"{"type":"LOG","deployment_id":"s3cr3t-canary"}"#).unwrap_err();
        assert!(matches!(err, DecodeError::Invalid { .. }));
        assert!(!err.to_string().contains("s3cr3t-canary"), "{err}");
        let big = format!(r#"{{"type":"LOG","line":"{}"}}"#, "x".repeat(MAX_FRAME_BYTES));
        assert!(matches!(
            decode_agent_message(&big),
            Err(DecodeError::TooLarge(_))
        ));
    }

    fn spec() -> ProjectSpec {
        ProjectSpec {
            name: "shop".into(),
            environment: "staging".into(),
            repo_url: None,
            git_ref: "main".into(),
            compose_path: "/srv/shop/compose.yaml".into(),
            pull: PullPolicy::Missing,
            compose_project: None,
            images: Default::default(),
        }
    }

    #[test]
    fn deploy_matches_the_documented_shape() {
        let msg = ServerMessage::Deploy {
            deployment_id: 7,
            project: spec(),
            sealed_secrets: "YWdlLWVuY3J5cHRpb24ub3Jn".into(),
        };
        let json: serde_json::Value = serde_json::from_str(&encode(&msg)).unwrap();
        assert_eq!(json["type"], "DEPLOY");
        assert_eq!(json["project"]["pull"], "missing");
        assert_eq!(json["sealed_secrets"], "YWdlLWVuY3J5cHRpb24ub3Jn");
        assert!(json.get("secrets").is_none(), "no clear secrets field: {json}");
        let status = AgentMessage::Status {
            deployment_id: 7,
            status: DeployOutcome::Fail,
            services: vec![],
            error: Some("boom".into()),
            commit: None,
            lines: None,
            applied: None,
            release: None,
        };
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&encode(&status)).unwrap()["status"],
            "FAIL"
        );
    }

    #[test]
    fn a_deploy_with_clear_secrets_is_invalid() {
        // What an appliance from before end-to-end secrets would send: refused, not half-read.
        let frame = r#"{"type":"DEPLOY","deployment_id":1,"project":{"name":"a","environment":"b",
            "git_ref":"main","compose_path":"/c.yml"},"secrets":[{"key":"K","value":"canary-v","scope":"global"}]}"#;
        let err = decode_server_message(frame).unwrap_err();
        assert!(matches!(err, DecodeError::Invalid { .. }), "{err:?}");
        assert!(!err.to_string().contains("canary-v"));
    }

    #[test]
    fn hello_carries_the_recipient_and_an_old_hello_has_none() {
        let hello = AgentMessage::Hello {
            protocol: 1,
            agent_version: "0.1.0".into(),
            hostname: "h".into(),
            docker_version: String::new(),
            compose_version: String::new(),
            active_deployments: None,
            recipient: Some("age1example".into()),
            capabilities: Vec::new(),
        };
        let json: serde_json::Value = serde_json::from_str(&encode(&hello)).unwrap();
        assert_eq!(json["recipient"], "age1example");
        let old = r#"{"type":"HELLO","protocol":1,"agent_version":"0.0.9","hostname":"h"}"#;
        let Ok(Incoming::Known(AgentMessage::Hello { recipient, .. })) = decode_agent_message(old) else {
            panic!("old HELLO did not decode")
        };
        assert_eq!(recipient, None);
    }

    #[test]
    fn sealed_secrets_round_trip_and_are_bound_to_their_deploy() {
        let sealed = SealedSecrets {
            deployment_id: 7,
            project: spec(),
            secrets: vec![SecretEntry {
                key: "DB_URL".into(),
                value: "postgres://canary".into(),
                scope: Scope::Service,
                service: Some("web".into()),
            }],
        };
        let back = SealedSecrets::from_plaintext(&sealed.to_plaintext()).unwrap();
        assert_eq!(back, sealed);
        assert!(back.matches(7, &spec()));
        assert!(!back.matches(8, &spec()));
        let elsewhere = ProjectSpec {
            repo_url: Some("https://evil.example/x.git".into()),
            ..spec()
        };
        assert!(!back.matches(7, &elsewhere));
        assert!(!format!("{back:?}").contains("canary"));
        let err = SealedSecrets::from_plaintext(br#"{"deployment_id":"canary-x"}"#).unwrap_err();
        assert!(!err.to_string().contains("canary-x"), "{err}");
    }

    #[test]
    fn log_ack_has_its_documented_shape_and_an_older_peer_ignores_it() {
        let frame = encode(&ServerMessage::LogAck {
            deployment_id: 7,
            seq: 41,
        });
        let json: serde_json::Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(json["type"], "LOG_ACK");
        assert_eq!(
            (json["deployment_id"].as_i64(), json["seq"].as_u64()),
            (Some(7), Some(41))
        );
        assert_eq!(
            decode_server_message(&frame),
            Ok(Incoming::Known(ServerMessage::LogAck {
                deployment_id: 7,
                seq: 41
            }))
        );
        // What an agent from before LOG_ACK makes of it: an unknown type, not an error.
        assert_eq!(
            decode::<ServerMessage>(&frame, &["DEPLOY", "ACK", "ERROR", "REKEY"]),
            Ok(Incoming::Unknown("LOG_ACK".into()))
        );
        // STATUS's line count is optional both ways.
        let old = r#"{"type":"STATUS","deployment_id":7,"status":"SUCCESS"}"#;
        let Ok(Incoming::Known(AgentMessage::Status { lines, .. })) = decode_agent_message(old) else {
            panic!("old STATUS did not decode")
        };
        assert_eq!(lines, None);
    }

    #[test]
    fn cancel_and_the_cancelled_outcome_have_their_documented_shape() {
        let cancel = encode(&ServerMessage::Cancel { deployment_id: 7 });
        assert_eq!(cancel, r#"{"type":"CANCEL","deployment_id":7}"#);
        assert_eq!(
            decode_server_message(&cancel).unwrap(),
            Incoming::Known(ServerMessage::Cancel { deployment_id: 7 })
        );
        let status = r#"{"type":"STATUS","deployment_id":7,"status":"CANCELLED"}"#;
        assert!(matches!(
            decode_agent_message(status).unwrap(),
            Incoming::Known(AgentMessage::Status {
                status: DeployOutcome::Cancelled,
                ..
            })
        ));
        // What an appliance from before the queue makes of it: an invalid STATUS, said plainly.
        let old = decode::<AgentMessage>(&status.replace("CANCELLED", "PAUSED"), AGENT_MESSAGE_TYPES);
        assert!(
            matches!(old, Err(DecodeError::Invalid { ref kind, .. }) if kind == "STATUS"),
            "{old:?}"
        );
    }

    #[test]
    fn secret_debug_is_redacted() {
        let s = SecretEntry {
            key: "K".into(),
            value: "canary-value".into(),
            scope: Scope::Global,
            service: None,
        };
        assert!(!format!("{s:?}").contains("canary-value"));
    }
}
