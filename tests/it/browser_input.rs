//! Input and audit papercuts of issue 15 (secret values, audit names and filters, sign-in hints, …): steps of the real-browser flow in `web_browser` (see `Flow` there for the state
//! they start from).

use crate::web_browser::Flow;

pub async fn steps(_f: &Flow<'_>) {}
