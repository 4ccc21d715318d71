//! Stagely: deploy docker-compose projects onto your own servers.
//!
//! This crate is the appliance, the control plane (the `stagely` binary: server and admin/CI CLI).
//! It shares only the `stagely-protocol` crate (the wire, masking, redaction) with the agent,
//! which is its own crate (`crates/agent`) and cannot link anything of this one. Here: storage
//! ([`db`]), the secret vault ([`secrets`]), the agent hub ([`agents`]), deploys ([`deploys`])
//! and the HTTP surface ([`web`]). See docs/design.md.

pub mod access;
pub mod agents;
pub mod app;
pub mod audit;
pub mod backup;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod crypto;
pub mod db;
pub mod deploys;
pub mod hooks;
pub mod metrics;
pub mod names;
pub mod notify;
pub mod operate;
pub mod projects;
pub mod protect;
pub mod releases;
pub mod runtime;
pub mod secrets;
pub mod signing;
pub mod store_copy;
pub mod users;
pub mod web;
