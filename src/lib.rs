//! Stagely: deploy docker-compose projects onto your own servers.
//!
//! The control plane (the `stagely` binary) and the agent (`stagely-agent`) share only
//! [`protocol`], the wire between them. The agent lives in [`agent`] and uses nothing else of
//! this crate (no storage, vault or HTTP handlers: it never sees the master key). Everything
//! else belongs to the control plane: storage ([`db`]), the secret vault ([`secrets`]), the
//! agent hub ([`agents`]), deploys ([`deploys`]) and the HTTP surface ([`web`]).

pub mod agent;
pub mod agents;
pub mod app;
pub mod audit;
pub mod backup;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod db;
pub mod deploys;
pub mod projects;
pub mod protocol;
pub mod redact;
pub mod secrets;
pub mod users;
pub mod web;
