//! Sign-in rate limit: failed attempts counted per client address and per account in a fixed
//! window, in memory (a restart forgets them, which only ever helps the legitimate user).

use std::collections::HashMap;
use std::sync::Mutex;

/// Keys beyond this many are pruned of expired windows before a new one is added.
const MAX_KEYS: usize = 10_000;

pub struct LoginLimiter {
    window_ms: i64,
    max_per_ip: u32,
    max_per_account: u32,
    failures: Mutex<HashMap<String, (i64, u32)>>,
}

impl LoginLimiter {
    pub fn new(window_secs: u64, max_per_ip: u32, max_per_account: u32) -> LoginLimiter {
        LoginLimiter {
            window_ms: i64::try_from(window_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
            max_per_ip,
            max_per_account,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn keys(ip: &str, account: &str) -> [String; 2] {
        [
            format!("ip:{ip}"),
            format!("account:{}", account.to_ascii_lowercase()),
        ]
    }

    /// `Some(seconds)` to wait when either the address or the account is over its limit.
    pub fn blocked(&self, ip: &str, account: &str, now: i64) -> Option<u64> {
        let map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let [ip_key, account_key] = Self::keys(ip, account);
        let mut wait = None;
        for (key, max) in [(ip_key, self.max_per_ip), (account_key, self.max_per_account)] {
            if let Some((start, n)) = map.get(&key)
                && now - start < self.window_ms
                && *n >= max
            {
                let left = (start + self.window_ms - now) / 1000 + 1;
                wait = wait.max(Some(u64::try_from(left).unwrap_or(1)));
            }
        }
        wait
    }

    pub fn record_failure(&self, ip: &str, account: &str, now: i64) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_KEYS {
            let window = self.window_ms;
            map.retain(|_, (start, _)| now - *start < window);
        }
        for key in Self::keys(ip, account) {
            let entry = map.entry(key).or_insert((now, 0));
            if now - entry.0 >= self.window_ms {
                *entry = (now, 0);
            }
            entry.1 = entry.1.saturating_add(1);
        }
    }

    /// A successful sign-in clears the account's count (not the address's).
    pub fn record_success(&self, account: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&format!("account:{}", account.to_ascii_lowercase()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_account_and_per_address_then_forgets() {
        let l = LoginLimiter::new(60, 5, 3);
        for _ in 0..3 {
            assert_eq!(l.blocked("1.1.1.1", "Alice", 0), None);
            l.record_failure("1.1.1.1", "Alice", 0);
        }
        assert!(
            l.blocked("9.9.9.9", "alice", 1000).is_some(),
            "per account, any address"
        );
        assert_eq!(l.blocked("1.1.1.1", "bob", 1000), None);
        l.record_failure("1.1.1.1", "bob", 1000);
        l.record_failure("1.1.1.1", "carol", 1000);
        assert!(
            l.blocked("1.1.1.1", "dave", 1000).is_some(),
            "per address, any account"
        );
        assert_eq!(l.blocked("1.1.1.1", "dave", 61_000), None, "window passed");
    }
}
