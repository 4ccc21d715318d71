//! Container logs in the browser (issue 15): masked, followed live: steps of the real-browser flow in `web_browser` (see `Flow` there for the state
//! they start from).

use crate::web_browser::Flow;

pub async fn steps(_f: &Flow<'_>) {}
