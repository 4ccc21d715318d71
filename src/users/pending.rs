//! Sign-ins in flight between the redirect to a provider (GitHub, an OpenID Connect provider) and
//! its callback, keyed by the OAuth `state`: kept in memory with a short TTL and a bounded count,
//! and taken (so consumed) by the first callback that presents the state.

use std::collections::HashMap;
use std::sync::Mutex;

/// How long a sign-in may take at the provider.
pub const PENDING_TTL_MS: i64 = 10 * 60 * 1000;
/// At most this many sign-ins in flight; opening more drops the oldest.
pub const MAX_PENDING: usize = 1000;

pub struct PendingLogins<P> {
    map: Mutex<HashMap<String, (i64, P)>>,
}

impl<P> Default for PendingLogins<P> {
    fn default() -> Self {
        PendingLogins {
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<P> PendingLogins<P> {
    /// Remember `pending` under `state`, opened at `now` (ms).
    pub fn insert(&self, state: String, now: i64, pending: P) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, (created, _)| now - *created < PENDING_TTL_MS);
        if map.len() >= MAX_PENDING {
            // Someone is opening sign-ins without finishing them: drop the oldest.
            if let Some(oldest) = map.iter().min_by_key(|(_, (c, _))| *c).map(|(k, _)| k.clone()) {
                map.remove(&oldest);
            }
        }
        map.insert(state, (now, pending));
    }

    /// The sign-in opened under `state`, once: a second callback with it finds nothing.
    pub fn take(&self, state: &str, now: i64) -> Option<P> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(state)
            .filter(|(created, _)| now - *created < PENDING_TTL_MS)
            .map(|(_, p)| p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_is_taken_once_expires_and_the_count_is_bounded() {
        let p = PendingLogins::default();
        p.insert("a".into(), 0, 1);
        assert_eq!(p.take("a", 1), Some(1));
        assert_eq!(p.take("a", 1), None, "consumed");
        p.insert("b".into(), 0, 2);
        assert_eq!(p.take("b", PENDING_TTL_MS), None, "expired");
        for i in 0..=MAX_PENDING {
            p.insert(format!("s{i}"), i64::try_from(i).unwrap(), i);
        }
        assert_eq!(p.take("s0", 2000), None, "the oldest was dropped");
        assert_eq!(p.take(&format!("s{MAX_PENDING}"), 2000), Some(MAX_PENDING));
    }
}
