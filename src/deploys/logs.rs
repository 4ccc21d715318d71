//! The log writer: one background task that batches agents' log lines into SQLite.
//!
//! Lines arrive already masked. They are buffered and written in one transaction per flush
//! period (default 100 ms), so a chatty deploy costs ten transactions a second, not one per
//! line. A deployment's end goes through the same queue, so it is written after every line that
//! came before it, and the agent's ACK is sent only once both are committed.
//!
//! After each committed batch the writer tells every agent whose lines were in it how far its
//! deployment's log is committed (`LOG_ACK`, through the hub to the agent's connection): the
//! agent keeps each line until then and resends the rest after a reconnect, so a kill -9 of the
//! appliance loses no line. Lines the caps drop and resent duplicates go through the queue as
//! [`LogWriter::seen`] markers, so the ACK that covers them still waits for every line before.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::store::{self, Finish, PendingLine};
use crate::agents::hub::{Hub, Outbound};
use crate::db::{Db, DbError};
use stagely_protocol::{self as protocol, ServerMessage};

/// Lines buffered before a flush is forced regardless of the timer (bounds memory).
const MAX_BUFFERED_LINES: usize = 50_000;
/// Depth of the queue from connections to the writer; a full queue slows the sending agents.
const QUEUE_DEPTH: usize = 16_384;

/// The agent a line came from, to be told once it is committed (on whichever connection it has
/// by then: the hub routes by agent and environment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckTo {
    pub agent_id: i64,
    pub environment_id: i64,
}

enum Command {
    Line(PendingLine, AckTo),
    /// A line not to store (dropped by the caps, withheld, or a resent duplicate), only to
    /// acknowledge after everything queued before it.
    Seen {
        deployment_id: i64,
        seq: i64,
        to: AckTo,
    },
    Finish(Finish, oneshot::Sender<Result<bool, DbError>>),
    Flush(oneshot::Sender<()>),
}

#[derive(Clone)]
pub struct LogWriter {
    tx: mpsc::Sender<Command>,
    /// Counts the writer's transactions: a live viewer missing lines waits for the next one
    /// instead of forcing a commit of its own.
    commits: watch::Receiver<u64>,
}

#[derive(Debug, thiserror::Error)]
#[error("the log writer has stopped")]
pub struct WriterStopped;

impl LogWriter {
    /// Start the writer task; it drains and stops when `shutdown` fires.
    pub fn start(
        db: Db,
        flush_every: Duration,
        hub: Arc<Hub>,
        shutdown: CancellationToken,
    ) -> (LogWriter, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let (committed, commits) = watch::channel(0);
        let task = tokio::spawn(run(db, rx, flush_every, hub, shutdown, committed));
        (LogWriter { tx, commits }, task)
    }

    /// Store a line; its agent is told once it is committed.
    pub async fn line(&self, line: PendingLine, to: AckTo) -> Result<(), WriterStopped> {
        self.tx
            .send(Command::Line(line, to))
            .await
            .map_err(|_| WriterStopped)
    }

    /// Acknowledge a line that is not stored, after every line queued before it is committed.
    pub async fn seen(&self, deployment_id: i64, seq: i64, to: AckTo) -> Result<(), WriterStopped> {
        self.tx
            .send(Command::Seen {
                deployment_id,
                seq,
                to,
            })
            .await
            .map_err(|_| WriterStopped)
    }

    /// Write the end of a deployment after its lines; true when this call finished it.
    pub async fn finish(&self, finish: Finish) -> Result<bool, DbError> {
        let (done, wait) = oneshot::channel();
        let stopped = || DbError::Task("the log writer has stopped".into());
        self.tx
            .send(Command::Finish(finish, done))
            .await
            .map_err(|_| stopped())?;
        wait.await.map_err(|_| stopped())?
    }

    /// Changes after each of the writer's transactions.
    pub fn commits(&self) -> watch::Receiver<u64> {
        self.commits.clone()
    }

    /// Wait until everything queued so far is committed.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Command::Flush(done)).await.is_ok() {
            // An error means the writer stopped mid-flush: there is nothing left to wait for.
            let _ = wait.await;
        }
    }
}

#[derive(Default)]
struct Batch {
    lines: Vec<PendingLine>,
    finishes: Vec<(Finish, oneshot::Sender<Result<bool, DbError>>)>,
    flushed: Vec<oneshot::Sender<()>>,
    /// Per deployment, the highest seq in this batch and whom to tell once it is committed.
    acks: HashMap<i64, (AckTo, i64)>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.lines.is_empty() && self.finishes.is_empty() && self.flushed.is_empty() && self.acks.is_empty()
    }

    fn ack_later(&mut self, deployment_id: i64, seq: i64, to: AckTo) {
        let entry = self.acks.entry(deployment_id).or_insert((to, seq));
        if seq >= entry.1 {
            *entry = (to, seq);
        }
    }

    /// Add a command; true when the batch should be written now rather than at the deadline.
    fn push(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Line(l, to) => {
                self.ack_later(l.deployment_id, l.seq, to);
                self.lines.push(l);
                self.lines.len() >= MAX_BUFFERED_LINES
            }
            Command::Seen {
                deployment_id,
                seq,
                to,
            } => {
                self.ack_later(deployment_id, seq, to);
                false
            }
            Command::Finish(f, done) => {
                self.finishes.push((f, done));
                true
            }
            Command::Flush(done) => {
                self.flushed.push(done);
                true
            }
        }
    }
}

async fn run(
    db: Db,
    mut rx: mpsc::Receiver<Command>,
    flush_every: Duration,
    hub: Arc<Hub>,
    shutdown: CancellationToken,
    committed: watch::Sender<u64>,
) {
    loop {
        let first = tokio::select! {
            cmd = rx.recv() => cmd,
            () = shutdown.cancelled() => None,
        };
        let Some(first) = first else { break };
        let mut batch = Batch::default();
        let mut now = batch.push(first);
        let deadline = tokio::time::Instant::now() + flush_every;
        while !now {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(cmd) => now = batch.push(cmd),
                    None => break,
                },
                () = tokio::time::sleep_until(deadline) => break,
                () = shutdown.cancelled() => break,
            }
        }
        // Take whatever else is already queued: it costs nothing extra in this transaction.
        while let Ok(cmd) = rx.try_recv() {
            if batch.lines.len() >= MAX_BUFFERED_LINES {
                batch.push(cmd);
                break;
            }
            batch.push(cmd);
        }
        write(&db, &hub, batch).await;
        committed.send_modify(|n| *n += 1);
    }
    // Shutting down: drain what is queued so no line that reached us is lost.
    rx.close();
    let mut batch = Batch::default();
    while let Some(cmd) = rx.recv().await {
        batch.push(cmd);
    }
    if !batch.is_empty() {
        write(&db, &hub, batch).await;
    }
}

async fn write(db: &Db, hub: &Hub, batch: Batch) {
    let Batch {
        lines,
        finishes,
        flushed,
        acks,
    } = batch;
    let ends: Vec<Finish> = finishes.iter().map(|(f, _)| f.clone()).collect();
    let count = lines.len();
    if lines.is_empty() && ends.is_empty() {
        // Only markers (and flushes): what they acknowledge was committed by earlier batches.
        for (deployment_id, (to, seq)) in acks {
            send_log_ack(hub, to, deployment_id, seq);
        }
        for done in flushed {
            let _ = done.send(());
        }
        return;
    }
    let result = db
        .write(move |tx| {
            store::write_lines(tx, &lines)?;
            ends.iter()
                .map(|f| store::finish(tx, f))
                .collect::<Result<Vec<bool>, DbError>>()
        })
        .await;
    match result {
        Ok(changed) => {
            // A waiter that went away (its connection closed) needs no answer.
            for ((_, done), changed) in finishes.into_iter().zip(changed) {
                let _ = done.send(Ok(changed));
            }
            // Lines are queued in the order each agent sent them and batches commit in queue
            // order: the highest seq of a deployment here covers every line before it.
            for (deployment_id, (to, seq)) in acks {
                send_log_ack(hub, to, deployment_id, seq);
            }
        }
        Err(e) => {
            tracing::error!(error = %e, lines = count, "cannot store deployment log lines");
            let text = e.to_string();
            for (_, done) in finishes {
                let _ = done.send(Err(DbError::Task(text.clone())));
            }
        }
    }
    // As above: a flusher that went away needs no answer.
    for done in flushed {
        let _ = done.send(());
    }
}

fn send_log_ack(hub: &Hub, to: AckTo, deployment_id: i64, seq: i64) {
    let Ok(seq) = u64::try_from(seq) else { return };
    let frame = protocol::encode(&ServerMessage::LogAck { deployment_id, seq });
    if let Err(e) = hub.send_droppable(to.agent_id, to.environment_id, Outbound::Text(frame.into())) {
        // Offline or backed up: the agent resends what it holds after reconnecting, and the next
        // LOG_ACK (or the STATUS ACK) covers these lines too.
        tracing::debug!(deployment_id, seq, reason = ?e, "LOG_ACK not queued");
    }
}
