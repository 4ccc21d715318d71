//! A new agent's token, held in memory between the form's POST and the page that shows it
//! (POST → redirect → GET, issue 15): the POST stores it under a random nonce bound to the
//! person who created it, the GET takes it out. Reloading the page shows no token and creates
//! no second agent; another person cannot open the link; an unopened token is forgotten after
//! [`TTL`], and at most [`CAPACITY`] wait at once (the oldest goes first). Never on disk.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::ops::CreatedAgent;

/// How long a created agent's token waits for its page.
pub const TTL: Duration = Duration::from_secs(10 * 60);
/// Tokens waiting at once.
pub const CAPACITY: usize = 256;

struct Waiting {
    user_id: Option<i64>,
    agent: CreatedAgent,
    at: Instant,
}

#[derive(Default)]
pub struct ShownOnce {
    waiting: Mutex<HashMap<String, Waiting>>,
}

impl ShownOnce {
    /// Keep `agent` for its creator's next GET; answers the nonce for the redirect.
    pub fn put(&self, user_id: Option<i64>, agent: CreatedAgent) -> String {
        let nonce = crate::crypto::random_token("shown");
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        waiting.retain(|_, w| w.at.elapsed() < TTL);
        while waiting.len() >= CAPACITY {
            let Some(oldest) = waiting.iter().min_by_key(|(_, w)| w.at).map(|(k, _)| k.clone()) else {
                break;
            };
            waiting.remove(&oldest);
        }
        waiting.insert(
            nonce.clone(),
            Waiting {
                user_id,
                agent,
                at: Instant::now(),
            },
        );
        nonce
    }

    /// The agent created under `nonce` for agent `agent_id`, once, and only for its creator.
    pub fn take(&self, user_id: Option<i64>, agent_id: i64, nonce: &str) -> Option<CreatedAgent> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let found = waiting.get(nonce)?;
        if found.user_id != user_id || found.agent.id != agent_id || found.at.elapsed() >= TTL {
            return None;
        }
        waiting.remove(nonce).map(|w| w.agent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(id: i64) -> CreatedAgent {
        CreatedAgent {
            id,
            name: format!("a{id}"),
            environment_id: 1,
            token: format!("stga_canary{id}"),
            fingerprint: String::new(),
        }
    }

    #[test]
    fn a_token_is_taken_once_by_its_creator_only() {
        let store = ShownOnce::default();
        let nonce = store.put(Some(1), agent(7));
        assert!(store.take(Some(2), 7, &nonce).is_none(), "another person");
        assert!(store.take(Some(1), 8, &nonce).is_none(), "another agent's page");
        assert!(store.take(Some(1), 7, "guess").is_none());
        assert_eq!(store.take(Some(1), 7, &nonce).unwrap().token, "stga_canary7");
        assert!(store.take(Some(1), 7, &nonce).is_none(), "a reload shows nothing");
    }

    #[test]
    fn a_flood_keeps_at_most_capacity_and_drops_the_oldest() {
        let store = ShownOnce::default();
        let first = store.put(Some(1), agent(0));
        let mut last = String::new();
        for i in 1..=CAPACITY as i64 {
            last = store.put(Some(1), agent(i));
        }
        assert_eq!(store.waiting.lock().unwrap().len(), CAPACITY);
        assert!(store.take(Some(1), 0, &first).is_none());
        assert!(store.take(Some(1), CAPACITY as i64, &last).is_some());
    }
}
