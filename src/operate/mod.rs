//! Operating what runs (issue 15): container logs on demand (`logs*`) and lifecycle actions
//! (`actions*`, `delete*`), each a typed request to the environment's agent
//! (`crate::agents::requests`), never a command line.

pub mod logs;
pub mod logs_api;
pub mod logs_pages;
