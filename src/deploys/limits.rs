//! Per-deployment log limits: how many lines and bytes of one deployment's log are stored.
//! Past either cap one "log truncated" line is stored and the rest dropped; the deployment
//! itself goes on. The counts live with the deployment's live context; after a restart they
//! are read back from the store ([`LogBudget::resume`]).

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
}

impl LogBudget {
    /// Continue from what is already stored (after a restart): a log at its cap stays closed.
    pub fn resume(&self, lines: u64, bytes: u64, limits: &DeploysConfig) {
        let mut used = self.lock();
        used.lines = lines;
        used.bytes = bytes;
        used.truncated = lines >= limits.log_max_lines || bytes >= limits.log_max_bytes;
    }

    /// Count a line of `len` bytes against the caps.
    pub fn admit(&self, len: usize, limits: &DeploysConfig) -> Admit {
        let mut used = self.lock();
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
        assert_eq!(b.admit(10, &limits), Admit::Keep);
        assert_eq!(b.admit(10, &limits), Admit::Keep);
        assert_eq!(b.admit(10, &limits), Admit::Truncate);
        assert_eq!(b.admit(10, &limits), Admit::Drop);
        let b = LogBudget::default();
        assert_eq!(b.admit(60, &limits), Admit::Keep);
        assert_eq!(b.admit(60, &limits), Admit::Truncate);
        let b = LogBudget::default();
        b.resume(3, 30, &limits);
        assert_eq!(b.admit(1, &limits), Admit::Drop);
    }
}
