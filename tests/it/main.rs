//! Integration tests: one test binary (faster to link), one module per area.

// Test code panics on purpose when an expectation fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api;
mod bench_quick;
mod common;
mod deploy_flow;
mod lifecycle;
