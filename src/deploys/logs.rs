//! The log writer: one background task that batches agents' log lines into SQLite.
//!
//! Lines arrive already masked. They are buffered and written in one transaction per flush
//! period (default 100 ms), so a chatty deploy costs ten transactions a second, not one per
//! line. A deployment's end goes through the same queue, so it is written after every line that
//! came before it, and the agent's ACK is sent only once both are committed.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::store::{self, Finish, PendingLine};
use crate::db::{Db, DbError};

/// Lines buffered before a flush is forced regardless of the timer (bounds memory).
const MAX_BUFFERED_LINES: usize = 50_000;
/// Depth of the queue from connections to the writer; a full queue slows the sending agents.
const QUEUE_DEPTH: usize = 16_384;

enum Command {
    Line(PendingLine),
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
        shutdown: CancellationToken,
    ) -> (LogWriter, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let (committed, commits) = watch::channel(0);
        let task = tokio::spawn(run(db, rx, flush_every, shutdown, committed));
        (LogWriter { tx, commits }, task)
    }

    pub async fn line(&self, line: PendingLine) -> Result<(), WriterStopped> {
        self.tx.send(Command::Line(line)).await.map_err(|_| WriterStopped)
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
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.lines.is_empty() && self.finishes.is_empty() && self.flushed.is_empty()
    }

    /// Add a command; true when the batch should be written now rather than at the deadline.
    fn push(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Line(l) => {
                self.lines.push(l);
                self.lines.len() >= MAX_BUFFERED_LINES
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
        write(&db, batch).await;
        committed.send_modify(|n| *n += 1);
    }
    // Shutting down: drain what is queued so no line that reached us is lost.
    rx.close();
    let mut batch = Batch::default();
    while let Some(cmd) = rx.recv().await {
        batch.push(cmd);
    }
    if !batch.is_empty() {
        write(&db, batch).await;
    }
}

async fn write(db: &Db, batch: Batch) {
    let Batch {
        lines,
        finishes,
        flushed,
    } = batch;
    let ends: Vec<Finish> = finishes.iter().map(|(f, _)| f.clone()).collect();
    let count = lines.len();
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
