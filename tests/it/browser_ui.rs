//! The UI papercuts of issue 15 (dashboard header, no-agent message, tabs, paging, …): steps of the real-browser flow in `web_browser` (see `Flow` there for the state
//! they start from).

use crate::web_browser::Flow;

pub async fn steps(_f: &Flow<'_>) {}
