//! Operating what runs (issue 15), through the environment's agents: lifecycle actions
//! (`actions*`: restart, stop, start a service, take an environment down) and deleting a project
//! or an environment after its stacks are taken down (`delete*`). The agent gets a closed set of
//! typed requests (ACTION), never a command line.

pub mod actions;
pub mod actions_api;
pub mod actions_pages;
pub mod actions_store;
pub mod delete;
pub mod delete_pages;
