//! Integration tests: one test binary (faster to link), one module per area.

// Test code panics on purpose when an expectation fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod abuse;
mod agent_engine;
mod agent_git;
mod agent_identity;
mod agent_override;
mod agent_policy;
mod agent_release;
mod agent_run;
mod agent_signing;
mod agent_support;
mod api;
mod bench_quick;
mod bins;
mod cancel_engine;
mod cli_deploy;
mod common;
mod compose_names;
mod deploy_flow;
mod domain_rules;
mod e2e_engine;
mod engine_support;
mod fault_proxy;
mod faults;
mod hooks;
mod hooks_engine;
mod lifecycle;
mod log_limits;
mod log_resend;
mod names;
mod notify;
mod operations;
mod packaging;
mod prereq;
mod privilege;
mod queue;
mod request_context;
mod sign_in_limits;
mod web_access;
mod web_browser;
mod web_github;
mod web_live;
mod web_support;
mod workspace;
