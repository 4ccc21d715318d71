//! Stagely: deploy docker-compose projects onto your own servers.
//!
//! The control plane (the `stagely` binary) and the agent (`stagely-agent`) share only
//! [`protocol`], the wire between them. Everything else here belongs to one side:
//! the agent lives in [`agent`] and links no storage, vault or HTTP-handler code.

pub mod protocol;
pub mod agent;
