//! Per-deployment log limits: how many lines and bytes of one deployment's log are stored.
//! Past either cap one "log truncated" line is stored and the rest dropped; the deployment
//! itself goes on. The counts live with the deployment's live context; after a restart they
//! are read back from the store ([`LogBudget::resume`]).
//!
//! The budget is also where a resent line is recognised (the agent resends what was not yet
//! acknowledged after a reconnect): a seq already admitted is a [`Admit::Duplicate`], counted
//! neither against the caps nor shown live a second time.

use std::sync::Mutex;

use crate::config::DeploysConfig;

/// The line stored (stream `agent`) where a deployment's log reached its cap.
pub fn truncated_note(limits: &DeploysConfig) -> String {
    format!(
        "log truncated: this deployment's log reached its limit ({} lines or {} bytes, \
         deploys.log_max_lines / deploys.log_max_bytes); later lines are dropped, the deployment goes on",
        limits.log_max_lines, limits.log_max_bytes
    )
}

/// What to do with the next line of a deployment's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Keep,
    /// The cap is reached with this line: store the truncation note in its place.
    Truncate,
    Drop,
    /// A seq already admitted (a resent line): nothing to count, show or store.
    Duplicate,
}

#[derive(Debug, Default)]
pub struct LogBudget {
    used: Mutex<Used>,
}

#[derive(Debug, Default)]
struct Used {
    lines: u64,
    bytes: u64,
    truncated: bool,
    /// Every seq below this one was admitted (kept, noted or dropped) already.
    next_seq: u64,
}

impl LogBudget {
    /// Continue from what is already stored (after a restart): a log at its cap stays closed,
    /// and lines up to the highest stored seq are duplicates.
    pub fn resume(&self, lines: u64, bytes: u64, next_seq: u64, limits: &DeploysConfig) {
        let mut used = self.lock();
        used.lines = lines;
        used.bytes = bytes;
        used.next_seq = next_seq;
        used.truncated = lines >= limits.log_max_lines || bytes >= limits.log_max_bytes;
    }

    /// Whether `seq` was admitted already (a cheap look before the line is masked).
    pub fn is_duplicate(&self, seq: u64) -> bool {
        seq < self.lock().next_seq
    }

    /// The seq after the highest one admitted: how many lines the log accounts for.
    pub fn next_seq(&self) -> u64 {
        self.lock().next_seq
    }

    /// Count line `seq` of `len` bytes against the caps. An agent sends seqs in order, so a
    /// seq below the highest admitted is a resent one.
    pub fn admit(&self, seq: u64, len: usize, limits: &DeploysConfig) -> Admit {
        let mut used = self.lock();
        if seq < used.next_seq {
            return Admit::Duplicate;
        }
        used.next_seq = seq.saturating_add(1);
        if used.truncated {
            return Admit::Drop;
        }
        let bytes = used.bytes.saturating_add(len as u64);
        // The note takes the last line's place, so the stored lines never exceed the cap.
        if used.lines + 1 >= limits.log_max_lines || bytes > limits.log_max_bytes {
            used.truncated = true;
            used.lines += 1;
            return Admit::Truncate;
        }
        used.lines += 1;
        used.bytes = bytes;
        Admit::Keep
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Used> {
        // A panic while holding this lock leaves plain counters behind: still usable.
        self.used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_gives_one_note_then_drops() {
        let limits = DeploysConfig {
            log_max_lines: 3,
            log_max_bytes: 100,
            ..DeploysConfig::default()
        };
        let b = LogBudget::default();
        assert_eq!(b.admit(0, 10, &limits), Admit::Keep);
        assert_eq!(b.admit(1, 10, &limits), Admit::Keep);
        assert_eq!(b.admit(2, 10, &limits), Admit::Truncate);
        assert_eq!(b.admit(3, 10, &limits), Admit::Drop);
        let b = LogBudget::default();
        assert_eq!(b.admit(0, 60, &limits), Admit::Keep);
        assert_eq!(b.admit(1, 60, &limits), Admit::Truncate);
        let b = LogBudget::default();
        b.resume(3, 30, 3, &limits);
        assert_eq!(b.admit(3, 1, &limits), Admit::Drop);
    }

    #[test]
    fn a_resent_line_is_a_duplicate_and_costs_nothing() {
        let limits = DeploysConfig {
            log_max_lines: 3,
            log_max_bytes: 100,
            ..DeploysConfig::default()
        };
        let b = LogBudget::default();
        assert_eq!(b.admit(0, 10, &limits), Admit::Keep);
        assert_eq!(b.admit(1, 10, &limits), Admit::Keep);
        // The agent reconnected and resends 0 and 1 before going on with 2.
        assert!(b.is_duplicate(0));
        assert_eq!(b.admit(0, 10, &limits), Admit::Duplicate);
        assert_eq!(b.admit(1, 10, &limits), Admit::Duplicate);
        assert_eq!(
            b.admit(2, 10, &limits),
            Admit::Truncate,
            "the cap counts each line once"
        );
        assert_eq!(b.admit(2, 10, &limits), Admit::Duplicate);
        assert_eq!(b.next_seq(), 3);
        // After a restart: what is stored is known.
        let b = LogBudget::default();
        b.resume(2, 20, 2, &limits);
        assert_eq!(b.admit(1, 10, &limits), Admit::Duplicate);
        assert_eq!(b.admit(2, 10, &limits), Admit::Truncate);
    }
}
