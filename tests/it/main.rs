//! Integration tests, one binary (STYLE.md). The lead owns this file; the agent's modules are
//! listed here until it is reconciled.

mod agent_engine;
mod agent_git;
mod agent_override;
mod agent_run;
mod agent_support;
