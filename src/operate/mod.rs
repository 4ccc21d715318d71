//! Operating what runs (issue 15), through the environment's agents, each a typed request
//! (`crate::agents::requests`), never a command line: container logs on demand (`logs*`: LOGS),
//! lifecycle actions (`actions*`: restart, stop, start a service, take an environment down:
//! ACTION) and deleting a project or an environment after its stacks are taken down (`delete*`).

pub mod actions;
pub mod actions_api;
pub mod actions_pages;
pub mod actions_store;
pub mod delete;
pub mod delete_pages;
pub mod logs;
pub mod logs_api;
pub mod logs_pages;
