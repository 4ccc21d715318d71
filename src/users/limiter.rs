//! Sign-in rate limit, in memory (a restart forgets it, which only ever helps the legitimate user).
//!
//! Two rules, both decided *before* a password is hashed, so an attacker's burst costs at most
//! what the rules allow (a slot is reserved atomically, under one lock, and counted as a failure
//! until the attempt succeeds):
//! - **per client address**: at most `max_per_ip` failed attempts in a fixed window, then every
//!   attempt from that address waits for the window to end;
//! - **per account and address**: `free_per_pair` failures, then each further attempt for that
//!   account *from that address* waits a growing delay (5 s, doubling, up to the window). There
//!   is no lock per account: a flood against `admin` from one address slows only that address,
//!   and admin still signs in from another.
//!
//! A success refunds its address's slot and forgets the (account, address) pair; an attempt
//! that never ran (the hashing pool was full) is [cancelled](LoginLimiter::cancel) and costs
//! nothing.

use std::collections::HashMap;
use std::sync::Mutex;

/// Entries beyond this many are pruned of expired ones before a new one is added.
const MAX_KEYS: usize = 10_000;
/// The first wait once an (account, address) pair has used its free failures; each further
/// attempt doubles it, up to the window.
const FIRST_DELAY_MS: i64 = 5_000;

pub struct LoginLimiter {
    window_ms: i64,
    max_per_ip: u32,
    free_per_pair: u32,
    state: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    ips: HashMap<String, Window>,
    pairs: HashMap<String, Pair>,
}

/// Attempts from one address in a fixed window.
struct Window {
    start: i64,
    n: u32,
}

/// Failures for one account from one address, and when the next attempt may run.
struct Pair {
    last: i64,
    failures: u32,
    not_before: i64,
}

/// A reserved attempt: pass it back with [`LoginLimiter::succeeded`] or
/// [`LoginLimiter::cancel`]; dropping it leaves the attempt counted as a failure.
#[derive(Debug)]
#[must_use]
pub struct Reservation {
    ip_key: String,
    pair_key: String,
    /// The pair's `not_before` before this attempt, and the one it set (to undo a cancel).
    before: i64,
    set: i64,
}

impl LoginLimiter {
    pub fn new(window_secs: u64, max_per_ip: u32, free_per_pair: u32) -> LoginLimiter {
        LoginLimiter {
            window_ms: i64::try_from(window_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
            max_per_ip,
            free_per_pair,
            state: Mutex::new(Counts::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The wait before the next attempt once `over` attempts beyond the free ones have run.
    fn delay_ms(&self, over: u32) -> i64 {
        FIRST_DELAY_MS
            .saturating_mul(1_i64 << over.min(30))
            .min(self.window_ms)
    }

    /// Reserve an attempt for `account` from `ip` at `now`, or say how many seconds to wait.
    /// The attempt counts as a failure from here on (so concurrent attempts see it).
    pub fn reserve(&self, ip: &str, account: &str, now: i64) -> Result<Reservation, u64> {
        let window = self.window_ms;
        let ip_key = ip.to_owned();
        let pair_key = format!("{}\u{0}{ip}", account.to_ascii_lowercase());
        let mut counts = self.lock();
        if counts.ips.len() >= MAX_KEYS {
            counts.ips.retain(|_, w| now - w.start < window);
        }
        if counts.pairs.len() >= MAX_KEYS {
            counts
                .pairs
                .retain(|_, p| now - p.last < window || now < p.not_before);
        }
        let Counts { ips, pairs } = &mut *counts;
        let w = ips.entry(ip_key.clone()).or_insert(Window { start: now, n: 0 });
        if now - w.start >= window {
            *w = Window { start: now, n: 0 };
        }
        if w.n >= self.max_per_ip {
            return Err(secs_until(w.start.saturating_add(window), now));
        }
        let p = pairs.entry(pair_key.clone()).or_insert(Pair {
            last: now,
            failures: 0,
            not_before: 0,
        });
        if now < p.not_before {
            return Err(secs_until(p.not_before, now));
        }
        if now - p.last >= window {
            p.failures = 0;
        }
        w.n += 1;
        p.failures = p.failures.saturating_add(1);
        p.last = now;
        let before = p.not_before;
        if p.failures >= self.free_per_pair {
            p.not_before = now.saturating_add(self.delay_ms(p.failures - self.free_per_pair));
        }
        Ok(Reservation {
            ip_key,
            pair_key,
            before,
            set: p.not_before,
        })
    }

    /// The attempt signed in: its address gets the slot back, the pair starts afresh.
    pub fn succeeded(&self, r: Reservation) {
        let mut counts = self.lock();
        if let Some(w) = counts.ips.get_mut(&r.ip_key) {
            w.n = w.n.saturating_sub(1);
        }
        counts.pairs.remove(&r.pair_key);
    }

    /// The attempt never ran (no password was checked): undo it.
    pub fn cancel(&self, r: Reservation) {
        let mut counts = self.lock();
        if let Some(w) = counts.ips.get_mut(&r.ip_key) {
            w.n = w.n.saturating_sub(1);
        }
        if let Some(p) = counts.pairs.get_mut(&r.pair_key) {
            p.failures = p.failures.saturating_sub(1);
            if p.not_before == r.set {
                p.not_before = r.before;
            }
        }
    }
}

/// Whole seconds from `now` to `at`, rounded up, at least 1 (what `Retry-After` says).
fn secs_until(at: i64, now: i64) -> u64 {
    u64::try_from(at.saturating_sub(now))
        .unwrap_or(0)
        .div_ceil(1000)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_account_and_address_delays_grow_and_never_lock_out_another_address() {
        let l = LoginLimiter::new(900, 100, 3);
        for _ in 0..3 {
            drop(l.reserve("1.1.1.1", "Admin", 0).unwrap());
        }
        // Reserved up front: the fourth attempt waits before any hashing.
        assert_eq!(l.reserve("1.1.1.1", "admin", 1).unwrap_err(), 5);
        // Not a lock on the account: admin from another address goes on.
        let other = l.reserve("9.9.9.9", "admin", 1).unwrap();
        l.succeeded(other);
        // The same address again after the wait, then the wait doubles.
        drop(l.reserve("1.1.1.1", "admin", 5_000).unwrap());
        assert_eq!(l.reserve("1.1.1.1", "admin", 5_001).unwrap_err(), 10);
        drop(l.reserve("1.1.1.1", "admin", 15_000).unwrap());
        assert_eq!(l.reserve("1.1.1.1", "admin", 15_000).unwrap_err(), 20);
        // A success from the pair forgets it.
        let ok = l.reserve("1.1.1.1", "admin", 40_000).unwrap();
        l.succeeded(ok);
        for _ in 0..3 {
            drop(l.reserve("1.1.1.1", "admin", 40_001).unwrap());
        }
    }

    #[test]
    fn per_address_limit_successes_refund_and_cancels_undo() {
        let l = LoginLimiter::new(60, 3, 100);
        let a = l.reserve("1.1.1.1", "a", 0).unwrap();
        let b = l.reserve("1.1.1.1", "b", 0).unwrap();
        l.succeeded(a);
        l.cancel(b);
        for name in ["c", "d", "e"] {
            drop(l.reserve("1.1.1.1", name, 0).unwrap());
        }
        assert_eq!(l.reserve("1.1.1.1", "f", 1000).unwrap_err(), 59, "any account");
        assert!(l.reserve("2.2.2.2", "f", 1000).is_ok(), "another address");
        assert!(l.reserve("1.1.1.1", "f", 60_000).is_ok(), "window passed");
        // A cancel restores the pair's wait as it was.
        let l = LoginLimiter::new(60, 100, 1);
        let r = l.reserve("1.1.1.1", "a", 0).unwrap();
        assert!(l.reserve("1.1.1.1", "a", 1).is_err());
        l.cancel(r);
        assert!(l.reserve("1.1.1.1", "a", 1).is_ok());
    }
}
