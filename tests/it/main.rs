//! Integration tests: one test binary (faster to link), one module per area.

mod api;
mod common;
mod deploy_flow;
mod lifecycle;
