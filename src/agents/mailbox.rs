//! One agent connection's outbound mailbox: the few frames the hub queues for it (DEPLOY, a
//! close), behind a mutex, with a `Notify` to wake the connection's task.
//!
//! tokio's mpsc allocates its channel state and a first block of 32 slots when it is made,
//! ~600 bytes for every idle agent whatever the bound (BENCHMARKS.md, "10,000 idle agents").
//! Here an idle connection costs one small allocation; the queue allocates only while frames
//! wait. One sender (the hub's entry), one receiver (the connection's task).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// Frames one connection may have waiting; more means a stuck peer.
pub const CAPACITY: usize = 8;

struct Shared<T> {
    state: Mutex<State<T>>,
    notify: Notify,
}

struct State<T> {
    frames: VecDeque<T>,
    sender_gone: bool,
    receiver_gone: bool,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum TrySendError {
    /// [`CAPACITY`] frames are already waiting.
    Full,
    /// The connection's task has ended.
    Closed,
}

pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

pub fn mailbox<T>() -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            frames: VecDeque::new(),
            sender_gone: false,
            receiver_gone: false,
        }),
        notify: Notify::new(),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver { shared },
    )
}

impl<T> Sender<T> {
    pub fn try_send(&self, frame: T) -> Result<(), TrySendError> {
        self.try_send_leaving(frame, 0)
    }

    /// Queue a frame only if `keep_free` slots stay free after it: for frames that may be
    /// dropped (a cumulative LOG_ACK), so they never take the room a DEPLOY needs.
    pub fn try_send_leaving(&self, frame: T, keep_free: usize) -> Result<(), TrySendError> {
        {
            let mut state = self.shared.lock();
            if state.receiver_gone {
                return Err(TrySendError::Closed);
            }
            if state.frames.len() + keep_free >= CAPACITY {
                return Err(TrySendError::Full);
            }
            state.frames.push_back(frame);
        }
        // One waiter at most; if it is not waiting yet, the permit is kept for it.
        self.shared.notify.notify_one();
        Ok(())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        self.shared.lock().sender_gone = true;
        self.shared.notify.notify_one();
    }
}

impl<T> Receiver<T> {
    /// The next frame; `None` once the sender is gone and nothing waits. Cancel-safe: a frame
    /// is taken only in the poll that returns it.
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            if let Some(next) = self.try_recv() {
                return next;
            }
            self.shared.notify.notified().await;
        }
    }

    /// `Some(Some(frame))`, `Some(None)` when closed and empty, `None` when empty for now.
    pub fn try_recv(&mut self) -> Option<Option<T>> {
        let mut state = self.shared.lock();
        match state.frames.pop_front() {
            Some(frame) => {
                if state.frames.is_empty() {
                    // Give the memory back: an idle connection holds no queue.
                    state.frames = VecDeque::new();
                }
                Some(Some(frame))
            }
            None if state.sender_gone => Some(None),
            None => None,
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.receiver_gone = true;
        state.frames.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn frames_arrive_in_order_and_the_queue_is_bounded() {
        let (tx, mut rx) = mailbox();
        for i in 0..CAPACITY {
            tx.try_send(i).unwrap();
        }
        assert_eq!(tx.try_send(99), Err(TrySendError::Full));
        for i in 0..CAPACITY {
            assert_eq!(rx.recv().await, Some(i));
        }
        // A droppable frame leaves room for the ones that matter.
        for i in 0..CAPACITY / 2 {
            tx.try_send_leaving(i, CAPACITY / 2).unwrap();
        }
        assert_eq!(tx.try_send_leaving(99, CAPACITY / 2), Err(TrySendError::Full));
        tx.try_send(100).unwrap();
        for _ in 0..=CAPACITY / 2 {
            rx.recv().await.unwrap();
        }
        assert_eq!(rx.try_recv(), None, "empty, still open");
        drop(tx);
        assert_eq!(rx.recv().await, None, "closed once the sender is gone");
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_and_a_gone_one_refuses_frames() {
        let (tx, mut rx) = mailbox();
        let waiter = tokio::spawn(async move {
            let got = rx.recv().await;
            (got, rx)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.try_send("deploy").unwrap();
        let (got, rx) = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, Some("deploy"));
        drop(rx);
        assert_eq!(tx.try_send("late"), Err(TrySendError::Closed));
    }

    #[tokio::test]
    async fn a_cancelled_recv_loses_nothing() {
        let (tx, mut rx) = mailbox();
        // A select that gives up on recv (as the connection's loop does every ping).
        tokio::select! {
            _ = rx.recv() => unreachable!("nothing was sent"),
            () = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
        tx.try_send(1).unwrap();
        tx.try_send(2).unwrap();
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(rx.recv().await, Some(2));
    }
}
