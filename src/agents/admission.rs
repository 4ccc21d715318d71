//! Who may try an agent handshake: the cheap checks in front of the `/ws/agent` upgrade.
//!
//! The shared handshake budget ([`super::hub::Hub::admit_handshake`]) is spent only by requests
//! whose agent token is valid, so a flood without one cannot keep agents out (issue 12). Every
//! other attempt (no token, or a wrong one) is charged to its client address: a small token
//! bucket per address (IPv6 per /64), in a map of bounded size. An address past its allowance
//! gets 429 *before* its token is looked up, unless the token's hash is one this process knows
//! belongs to an agent (loaded at start, added when an agent is created or authenticates), so an
//! agent behind the same address as an attacker (a NAT, loopback in the tests) still gets in.
//! The database stays the authority: a known hash is still looked up, and forgotten when the
//! lookup finds no live agent (revoked).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::web::serve::address_key;

/// Addresses tracked at once. Past it, idle ones (bucket full again) are dropped; if every one
/// is busy, untracked addresses are refused (known agents are not affected).
const MAX_ADDRESSES: usize = 8192;
/// How often a full map may be swept for idle addresses.
const PRUNE_EVERY: Duration = Duration::from_secs(1);

pub struct Admission {
    known: Mutex<HashSet<Vec<u8>>>,
    failures: Mutex<Failures>,
    /// Handshakes refused since start, by [`Rejection`] (for `/metrics`).
    rejected: [AtomicU64; Rejection::ALL.len()],
}

/// Why an agent handshake was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The client address used its allowance of failed attempts (429 before any lookup).
    RateLimited,
    /// No agent token in the request.
    NoToken,
    /// A token that is no live agent's.
    BadToken,
    /// A valid agent, but the shared handshake budget was spent (503, come back later).
    Busy,
}

impl Rejection {
    pub const ALL: [Rejection; 4] = [
        Rejection::RateLimited,
        Rejection::NoToken,
        Rejection::BadToken,
        Rejection::Busy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::RateLimited => "rate_limited",
            Rejection::NoToken => "no_token",
            Rejection::BadToken => "bad_token",
            Rejection::Busy => "busy",
        }
    }
}

struct Failures {
    /// Attempts allowed in a burst, refilled at `burst` per minute.
    burst: f64,
    by_address: HashMap<IpAddr, Bucket>,
    pruned_at: Option<Instant>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Admission {
    pub fn new(failed_per_ip_per_min: u32) -> Admission {
        Admission {
            known: Mutex::new(HashSet::new()),
            failures: Mutex::new(Failures {
                burst: f64::from(failed_per_ip_per_min.max(1)),
                by_address: HashMap::new(),
                pruned_at: None,
            }),
            rejected: Default::default(),
        }
    }

    /// Count a refused handshake.
    pub fn rejected(&self, why: Rejection) {
        self.rejected[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Refused handshakes since start, by reason.
    pub fn rejections(&self) -> [(Rejection, u64); Rejection::ALL.len()] {
        Rejection::ALL.map(|r| (r, self.rejected[r as usize].load(Ordering::Relaxed)))
    }

    /// This token hash belongs to a live agent (at start, on creation, after a good lookup).
    pub fn remember(&self, token_hash: Vec<u8>) {
        lock(&self.known).insert(token_hash);
    }

    /// The lookup found no live agent for this hash (it was revoked): stop exempting it.
    pub fn forget(&self, token_hash: &[u8]) {
        lock(&self.known).remove(token_hash);
    }

    pub fn is_known(&self, token_hash: &[u8]) -> bool {
        lock(&self.known).contains(token_hash)
    }

    /// Reserve one attempt for `ip`, before anything is looked up (so a concurrent burst cannot
    /// pass the check together). `Err(retry_after)` when the address has used its allowance.
    pub fn try_attempt(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let key = address_key(ip);
        let mut f = lock(&self.failures);
        let burst = f.burst;
        if !f.by_address.contains_key(&key) && f.by_address.len() >= MAX_ADDRESSES {
            f.prune(now);
            if f.by_address.len() >= MAX_ADDRESSES {
                return Err(Duration::from_secs(60));
            }
        }
        let bucket = f.by_address.entry(key).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let rate = burst / 60.0;
        bucket.tokens =
            (bucket.tokens + now.saturating_duration_since(bucket.at).as_secs_f64() * rate).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                ((1.0 - bucket.tokens) / rate).ceil().max(1.0),
            ))
        }
    }

    /// The attempt reserved by [`Admission::try_attempt`] was a valid agent: give it back.
    pub fn refund(&self, ip: IpAddr) {
        let mut f = lock(&self.failures);
        let burst = f.burst;
        if let Some(b) = f.by_address.get_mut(&address_key(ip)) {
            b.tokens = (b.tokens + 1.0).min(burst);
        }
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        lock(&self.failures).by_address.len()
    }
}

impl Failures {
    /// Drop addresses whose bucket has refilled (they have been quiet for a while).
    fn prune(&mut self, now: Instant) {
        if self
            .pruned_at
            .is_some_and(|at| now.saturating_duration_since(at) < PRUNE_EVERY)
        {
            return;
        }
        self.pruned_at = Some(now);
        let burst = self.burst;
        let rate = burst / 60.0;
        self.by_address
            .retain(|_, b| b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4([10, 0, 0, last].into())
    }

    #[test]
    fn an_address_gets_its_burst_then_waits_for_the_refill() {
        let a = Admission::new(6);
        let t0 = Instant::now();
        assert_eq!((0..10).filter(|_| a.try_attempt(ip(1), t0).is_ok()).count(), 6);
        let retry = a.try_attempt(ip(1), t0).unwrap_err();
        assert_eq!(retry, Duration::from_secs(10), "6 per minute: one every 10 s");
        assert!(
            a.try_attempt(ip(2), t0).is_ok(),
            "another address is not affected"
        );
        assert!(a.try_attempt(ip(1), t0 + Duration::from_secs(10)).is_ok());
    }

    #[test]
    fn a_refund_gives_the_attempt_back() {
        let a = Admission::new(1);
        let t0 = Instant::now();
        a.try_attempt(ip(1), t0).unwrap();
        a.refund(ip(1));
        assert!(a.try_attempt(ip(1), t0).is_ok());
    }

    #[test]
    fn the_map_stays_bounded_and_idle_addresses_make_room() {
        let a = Admission::new(60);
        let t0 = Instant::now();
        for i in 0..MAX_ADDRESSES {
            let v6 = std::net::Ipv6Addr::new(0x2001, 0xdb8, (i >> 16) as u16, i as u16, 0, 0, 0, 1);
            a.try_attempt(IpAddr::V6(v6), t0).unwrap();
        }
        assert_eq!(a.tracked(), MAX_ADDRESSES);
        assert!(a.try_attempt(ip(1), t0).is_err(), "full of busy addresses");
        // A second later every bucket has its token back: all idle, swept.
        assert!(a.try_attempt(ip(1), t0 + Duration::from_secs(2)).is_ok());
        assert_eq!(a.tracked(), 1);
    }

    #[test]
    fn known_hashes_are_remembered_and_forgotten() {
        let a = Admission::new(1);
        a.remember(vec![1, 2, 3]);
        assert!(a.is_known(&[1, 2, 3]));
        a.forget(&[1, 2, 3]);
        assert!(!a.is_known(&[1, 2, 3]));
    }
}
