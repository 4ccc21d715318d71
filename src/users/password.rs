//! Password hashing: argon2id with the crate's defaults (19 MiB, 2 passes), on a small pool of
//! threads of its own.
//!
//! Each hash holds 19 MiB while it runs, so how many run at once is what bounds the appliance's
//! memory under a flood of sign-ins. Each thread also keeps its 19 MiB of argon2 blocks and
//! reuses them for every check: allocating them per check made glibc keep ~60 MB per thread
//! (its mmap threshold rises after the first free, so later blocks come from the thread's arena
//! and stay there), 400 MB under a flood with only two threads (BENCHMARKS.md). The pool runs `threads` at a time and lets `queue` more
//! wait; anything beyond is refused at once ([`PasswordError::Busy`], answered 429 +
//! `Retry-After`) instead of piling up. It is not tokio's blocking pool, which the database
//! uses: a sign-in flood cannot take the database's threads.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};

use argon2::PasswordHash;
use argon2::password_hash::PasswordHasher;
use argon2::{Algorithm, Argon2, Block, Params, Version};
use tokio::sync::oneshot;
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("cannot hash the password: {0}")]
    Hash(String),
    #[error("password task failed: {0}")]
    Task(String),
    #[error("every password thread is busy and the queue is full")]
    Busy,
}

enum Work {
    Hash(Zeroizing<String>),
    Verify(Zeroizing<String>, Option<String>),
}

enum Done {
    Hashed(Result<String, PasswordError>),
    Verified(bool),
}

struct Job {
    work: Work,
    reply: oneshot::Sender<Done>,
    /// Held until the job is done: counts it against the pool's capacity.
    _slot: Slot,
}

/// A place in the pool (queued or running), taken with [`HashPool::admit`] before the work that
/// leads to a hash (a sign-in's user lookup), so a flood is turned away before it costs
/// anything; gives its place back when dropped.
pub struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

pub struct HashPool {
    jobs: Mutex<mpsc::Sender<Job>>,
    admitted: Arc<AtomicUsize>,
    capacity: usize,
    verified: Arc<AtomicU64>,
}

impl HashPool {
    /// Start `threads` (at least 1) hashing threads, with room for `queue` waiting jobs. The
    /// threads end when the pool is dropped.
    pub fn new(threads: usize, queue: usize) -> std::io::Result<HashPool> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let verified = Arc::new(AtomicU64::new(0));
        let threads = threads.max(1);
        for n in 0..threads {
            let (rx, verified) = (Arc::clone(&rx), Arc::clone(&verified));
            std::thread::Builder::new()
                .name(format!("stagely-argon2-{n}"))
                .spawn(move || worker(&rx, &verified))?;
        }
        Ok(HashPool {
            jobs: Mutex::new(tx),
            admitted: Arc::new(AtomicUsize::new(0)),
            capacity: threads + queue,
            verified,
        })
    }

    /// How many password checks have run (the tests' evidence that a burst was cut short).
    pub fn verified(&self) -> u64 {
        self.verified.load(Ordering::Acquire)
    }

    /// Take a place, or [`PasswordError::Busy`] at once when the threads and the queue are full.
    pub fn admit(&self) -> Result<Slot, PasswordError> {
        self.admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .map_err(|_| PasswordError::Busy)?;
        Ok(Slot(Arc::clone(&self.admitted)))
    }

    async fn run(&self, slot: Slot, work: Work) -> Result<Done, PasswordError> {
        let (reply, done) = oneshot::channel();
        let job = Job {
            work,
            reply,
            _slot: slot,
        };
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(job)
            .map_err(|_| PasswordError::Task("the password threads have stopped".into()))?;
        done.await
            .map_err(|_| PasswordError::Task("a password thread failed".into()))
    }

    /// Hash a password into a PHC string (`$argon2id$v=19$…`).
    pub async fn hash(&self, password: Zeroizing<String>) -> Result<String, PasswordError> {
        match self.run(self.admit()?, Work::Hash(password)).await? {
            Done::Hashed(r) => r,
            Done::Verified(_) => Err(PasswordError::Task("unexpected answer".into())),
        }
    }

    /// Check a password against a stored hash. With no stored hash (unknown user, GitHub-only
    /// user) a dummy hash is checked instead, so the answer takes as long either way.
    pub async fn verify(
        &self,
        password: Zeroizing<String>,
        stored: Option<String>,
    ) -> Result<bool, PasswordError> {
        self.verify_in(self.admit()?, password, stored).await
    }

    /// [`HashPool::verify`] in a place already taken.
    pub async fn verify_in(
        &self,
        slot: Slot,
        password: Zeroizing<String>,
        stored: Option<String>,
    ) -> Result<bool, PasswordError> {
        match self.run(slot, Work::Verify(password, stored)).await? {
            Done::Verified(ok) => Ok(ok),
            Done::Hashed(_) => Err(PasswordError::Task("unexpected answer".into())),
        }
    }
}

fn worker(rx: &Mutex<mpsc::Receiver<Job>>, verified: &AtomicU64) {
    // This thread's argon2 memory, made once (at the first check) and reused.
    let mut memory: Vec<Block> = Vec::new();
    loop {
        let job = match rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
            Ok(job) => job,
            // The pool was dropped.
            Err(_) => return,
        };
        let Job { work, reply, _slot } = job;
        let done = std::panic::catch_unwind(AssertUnwindSafe(|| match work {
            Work::Hash(password) => Done::Hashed(hash_now(&password)),
            Work::Verify(password, stored) => {
                let ok = verify_now(&password, stored.as_deref(), &mut memory);
                verified.fetch_add(1, Ordering::AcqRel);
                Done::Verified(ok)
            }
        }));
        // A panic drops the reply: the caller sees a failed task; the thread goes on.
        if let Ok(done) = done {
            let _ = reply.send(done);
        }
    }
}

fn hash_now(password: &str) -> Result<String, PasswordError> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

/// Check `password` against a PHC string in `memory` (grown to the hash's block count once). An
/// unparsable or unknown hash fails closed. Same computation as `PasswordVerifier`, but with
/// the thread's own blocks, and the output compared in constant time.
fn verify_now(password: &str, stored: Option<&str>, memory: &mut Vec<Block>) -> bool {
    let (hash, real) = match stored {
        Some(h) => (h, true),
        None => (dummy_hash(), false),
    };
    let Ok(phc) = PasswordHash::new(hash) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (&phc.salt, &phc.hash) else {
        return false;
    };
    let algorithm = Algorithm::try_from(phc.algorithm.as_str());
    let version = phc.version.map_or(Ok(Version::default()), Version::try_from);
    let (Ok(algorithm), Ok(version), Ok(params)) = (algorithm, version, Params::try_from(&phc)) else {
        return false;
    };
    let blocks = params.block_count();
    if memory.len() < blocks {
        memory.resize(blocks, Block::new());
    }
    let mut out = Zeroizing::new([0_u8; 64]);
    let Some(out) = out.get_mut(..expected.len()) else {
        return false;
    };
    let Some(blocks) = memory.get_mut(..blocks) else {
        return false;
    };
    let computed = Argon2::new(algorithm, version, params).hash_password_into_with_memory(
        password.as_bytes(),
        salt,
        out,
        blocks,
    );
    computed.is_ok() && crate::crypto::ct_eq(out, expected.as_bytes()) && real
}

fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        Argon2::default()
            .hash_password(b"stagely-timing-equaliser")
            .map(|h| h.to_string())
            // Hashing a constant does not fail; if it did, verifying against "" fails closed.
            .unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_unknown_users_never_match() {
        let pool = HashPool::new(1, 1).unwrap();
        let h = pool
            .hash(Zeroizing::new("correct horse battery".into()))
            .await
            .unwrap();
        assert!(h.starts_with("$argon2id$"));
        let ok = |p: &str, s: Option<String>| pool.verify(Zeroizing::new(p.into()), s);
        assert!(ok("correct horse battery", Some(h.clone())).await.unwrap());
        assert!(!ok("wrong", Some(h)).await.unwrap());
        assert!(!ok("stagely-timing-equaliser", None).await.unwrap());
        assert_eq!(pool.verified(), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn beyond_threads_and_queue_the_answer_is_busy_at_once() {
        let pool = Arc::new(HashPool::new(1, 1).unwrap());
        let tries: Vec<_> = (0..12)
            .map(|_| {
                let pool = Arc::clone(&pool);
                tokio::spawn(async move { pool.verify(Zeroizing::new("x".into()), None).await })
            })
            .collect();
        let mut busy = 0;
        for t in tries {
            match t.await.unwrap() {
                Ok(ok) => assert!(!ok),
                Err(PasswordError::Busy) => busy += 1,
                Err(e) => panic!("{e}"),
            }
        }
        // At most 2 admitted at a time; 12 started together cannot all fit.
        assert!(busy > 0, "some were refused");
        assert_eq!(pool.verified() + busy, 12);
        // Once the burst is over there is room again.
        assert!(!pool.verify(Zeroizing::new("x".into()), None).await.unwrap());
    }
}
