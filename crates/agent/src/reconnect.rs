//! Between connections: which server to dial next (one appliance, or its replicas in turn) and
//! how long to wait first (exponential backoff with full jitter).

use std::time::Duration;

/// First retry ceiling; doubled each failed attempt up to [`BACKOFF_CAP`].
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
pub const BACKOFF_CAP: Duration = Duration::from_secs(super::config::DEFAULT_RECONNECT_MAX_SECS);
/// A connection that lasted this long resets the backoff.
pub const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(60);

/// Exponential backoff with full jitter: the n-th delay is uniform in `[0, min(cap, base·2ⁿ)]`,
/// so a thousand agents of a restarted server do not come back in the same second.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The ceiling of the next delay (before jitter).
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32 << self.attempt.min(20);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The next delay for a uniform random `unit` in `[0, 1)`.
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(unit.clamp(0.0, 1.0))
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// The servers to dial, in turn: every attempt (after a failed dial or an ended session) goes to
/// the next one, round robin, so an agent given every replica finds a live one. One server is
/// the ring of one. The replicas share the appliance's signing key, so the pin is the same for all.
#[derive(Debug, Clone)]
pub struct ServerRing {
    servers: Vec<String>,
    next: usize,
}

impl ServerRing {
    /// `servers` is never empty ([`super::config::normalize_servers`] refuses that).
    pub fn new(servers: Vec<String>) -> Self {
        Self { servers, next: 0 }
    }

    /// The server for this attempt; the following attempt gets the one after it.
    pub fn next_server(&mut self) -> Option<&str> {
        let index = self.next % self.servers.len().max(1);
        self.next = index + 1;
        self.servers.get(index).map(String::as_str)
    }

    /// The server the next attempt goes to, without moving on.
    pub fn peek(&self) -> Option<&str> {
        self.servers
            .get(self.next % self.servers.len().max(1))
            .map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.servers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_full_jitter_and_resets() {
        let mut b = Backoff::new(BACKOFF_BASE, BACKOFF_CAP);
        let ceilings: Vec<u64> = (0..9)
            .map(|_| {
                let c = b.ceiling();
                let d = b.next_delay(0.999);
                assert!(d <= c);
                c.as_secs()
            })
            .collect();
        assert_eq!(ceilings, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(b.next_delay(0.0), Duration::ZERO, "full jitter reaches zero");
        assert_eq!(b.next_delay(0.5), Duration::from_secs(30));
        b.reset();
        assert_eq!(b.ceiling(), BACKOFF_BASE);
        for _ in 0..100 {
            b.next_delay(1.0);
        }
        assert_eq!(b.ceiling(), BACKOFF_CAP, "no overflow after many attempts");
    }

    #[test]
    fn servers_are_taken_in_turn_round_robin() {
        let mut ring = ServerRing::new(vec![
            "wss://a/ws/agent".into(),
            "wss://b/ws/agent".into(),
            "wss://c/ws/agent".into(),
        ]);
        let order: Vec<String> = (0..7).map(|_| ring.next_server().unwrap().to_owned()).collect();
        assert_eq!(
            order,
            ["a", "b", "c", "a", "b", "c", "a"].map(|h| format!("wss://{h}/ws/agent"))
        );
        let mut one = ServerRing::new(vec!["wss://only/ws/agent".into()]);
        assert_eq!(ring.peek(), Some("wss://b/ws/agent"), "peeking does not move on");
        assert_eq!(ring.next_server(), Some("wss://b/ws/agent"));
        for _ in 0..3 {
            assert_eq!(one.next_server(), Some("wss://only/ws/agent"));
        }
        assert_eq!(ServerRing::new(Vec::new()).next_server(), None);
    }
}
