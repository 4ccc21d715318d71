//! The audit log: who did what to which object, when. Never a secret value.

pub mod api;
pub mod pages;
pub mod store;

pub use store::{AuditEntry, Entry, Filter, list, record};
