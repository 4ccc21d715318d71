//! Requests the appliance sent an agent and waits on (issue 15): LOGS and ACTION, each under a
//! request id this registry hands out. The agent's answers come back through its socket
//! (`api/socket.rs`), which delivers them here. An answer counts only from the agent the request
//! was sent to; when that agent's connection ends, its open requests end with it (their
//! receivers see the channel close).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use stagely_protocol::operate::{ContainerLogLine, LogEnd};
use tokio::sync::mpsc;

/// An agent's answer to one request.
#[derive(Debug)]
pub enum Reply {
    Log {
        lines: Vec<ContainerLogLine>,
        dropped: u64,
    },
    LogEnd {
        reason: LogEnd,
        error: Option<String>,
    },
    Action {
        ok: bool,
        error: Option<String>,
    },
}

impl Reply {
    /// Whether nothing more comes for the request after this one.
    fn is_last(&self) -> bool {
        !matches!(self, Reply::Log { .. })
    }
}

/// What became of an answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    /// The waiter is behind: this answer was dropped (a viewer too slow for the log).
    Full,
    /// No such open request for this agent (ended, never sent, or another agent's).
    Unknown,
}

struct Pending {
    agent_id: i64,
    tx: mpsc::Sender<Reply>,
}

#[derive(Default)]
pub struct Requests {
    next: AtomicU64,
    pending: Mutex<HashMap<u64, Pending>>,
}

/// One open request: its id (to put in the frame) and its answers. Dropping it forgets the
/// request; later answers are then [`Delivery::Unknown`].
pub struct Ticket {
    pub id: u64,
    pub rx: mpsc::Receiver<Reply>,
    requests: Arc<Requests>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        lock(&self.requests.pending).remove(&self.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Requests {
    /// Open a request to `agent_id`, buffering up to `buffer` answers for its waiter.
    pub fn open(self: &Arc<Self>, agent_id: i64, buffer: usize) -> Ticket {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = mpsc::channel(buffer.max(1));
        lock(&self.pending).insert(id, Pending { agent_id, tx });
        Ticket {
            id,
            rx,
            requests: Arc::clone(self),
        }
    }

    /// Open requests to `agent_id` (to cap how many one agent serves at once).
    pub fn open_for(&self, agent_id: i64) -> usize {
        lock(&self.pending)
            .values()
            .filter(|p| p.agent_id == agent_id)
            .count()
    }

    /// Hand an answer from `agent_id` to the request's waiter. A last answer (log end, action
    /// result) closes the request.
    pub fn deliver(&self, agent_id: i64, request_id: u64, reply: Reply) -> Delivery {
        let mut pending = lock(&self.pending);
        let Some(p) = pending.get(&request_id).filter(|p| p.agent_id == agent_id) else {
            return Delivery::Unknown;
        };
        let last = reply.is_last();
        let delivered = match p.tx.try_send(reply) {
            Ok(()) => Delivery::Delivered,
            Err(mpsc::error::TrySendError::Full(_)) => Delivery::Full,
            Err(mpsc::error::TrySendError::Closed(_)) => Delivery::Unknown,
        };
        if last {
            pending.remove(&request_id);
        }
        delivered
    }

    /// The agent's connection ended: end its open requests.
    pub fn agent_gone(&self, agent_id: i64) {
        lock(&self.pending).retain(|_, p| p.agent_id != agent_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end() -> Reply {
        Reply::Action {
            ok: true,
            error: None,
        }
    }

    #[tokio::test]
    async fn answers_reach_only_the_request_of_the_agent_it_was_sent_to() {
        let requests = Arc::new(Requests::default());
        let mut t = requests.open(7, 4);
        assert_eq!(
            requests.deliver(8, t.id, end()),
            Delivery::Unknown,
            "another agent"
        );
        assert_eq!(
            requests.deliver(7, t.id + 100, end()),
            Delivery::Unknown,
            "no such id"
        );
        assert_eq!(requests.deliver(7, t.id, end()), Delivery::Delivered);
        assert!(matches!(t.rx.recv().await, Some(Reply::Action { ok: true, .. })));
        // The last answer closed it.
        assert_eq!(requests.deliver(7, t.id, end()), Delivery::Unknown);
        assert_eq!(requests.open_for(7), 0);
    }

    #[tokio::test]
    async fn a_gone_agent_ends_its_requests_and_a_dropped_ticket_is_forgotten() {
        let requests = Arc::new(Requests::default());
        let mut t = requests.open(7, 1);
        let other = requests.open(9, 1);
        assert_eq!(requests.open_for(7), 1);
        requests.agent_gone(7);
        assert!(t.rx.recv().await.is_none(), "the waiter sees the end");
        assert_eq!(requests.open_for(9), 1);
        let id = other.id;
        drop(other);
        assert_eq!(requests.open_for(9), 0);
        let log = || Reply::Log {
            lines: vec![],
            dropped: 0,
        };
        assert_eq!(requests.deliver(9, id, log()), Delivery::Unknown);
        // A full waiter drops lines rather than blocking the agent's socket.
        let t2 = requests.open(3, 1);
        assert_eq!(requests.deliver(3, t2.id, log()), Delivery::Delivered);
        assert_eq!(requests.deliver(3, t2.id, log()), Delivery::Full);
    }
}
