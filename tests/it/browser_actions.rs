//! Service and environment actions, deleting (issue 15): restart, stop/start, down with confirmation, delete: steps of the real-browser flow in `web_browser` (see `Flow` there for the state
//! they start from).

use crate::web_browser::Flow;

pub async fn steps(_f: &Flow<'_>) {}
