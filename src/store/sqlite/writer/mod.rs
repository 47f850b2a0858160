//! The SQLite writer thread: it owns the write connection and commits whatever jobs are queued
//! in one transaction (group commit), so with `synchronous=FULL` concurrent writes share one
//! fsync.
//!
//! An API job runs inside a savepoint of its own, so when it fails it rolls back alone. A bulk
//! job does not: a savepoint copies every page the job touches to a sub-journal first, a large
//! share of the writer's CPU on the hot path. Bulk jobs fail only when the database itself does (a full
//! disk, an I/O error), so a failing bulk job spoils its batch instead: the transaction rolls
//! back and every job in it gets the error, which their callers already answer (a 503 for
//! ingest) or retry (claims, records).
//!
//! A job that panics does not take the writer down: its batch is rolled back and every job in
//! it fails (their callers answer 503, as for any failed commit), and the writer goes on with
//! the next batch. Whether the last commit succeeded is kept in [`Writer::failing`], for
//! `/readyz`.
//!
//! Two lanes feed it. The bulk lane carries the hot path (ingest commits, claims, attempt
//! records), which is what makes batches large under load. The API lane carries everything a
//! person or Make waits on (attaching a hook, rotating a key…): between two bulk jobs the writer
//! looks at it, and once it holds a job the batch is committed at once. An API write therefore
//! waits for one bulk job and one commit, not for a whole batch; and since every batch still
//! runs at least one bulk job, a stream of API writes cannot stall ingest either.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rusqlite::Connection as Db;
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;
use crate::store::StoreError;

/// Most jobs committed in one transaction.
const MAX_BATCH: usize = 1024;
/// Bulk jobs waiting for the writer before senders wait (backpressure, not loss).
const QUEUE_DEPTH: usize = 8192;
/// API jobs waiting for the writer before senders wait.
const API_QUEUE_DEPTH: usize = 256;

/// Which lane a write waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lane {
    /// Writes someone is waiting on, one at a time: they go ahead of the bulk.
    Api,
    /// The high-volume writes of the hot path, batched as large as the load makes them.
    Bulk,
}

/// Upkeep the writer runs now and then inside a batch's transaction, sharing its commit.
pub(super) trait Chore: Send {
    /// How often it runs, at most (and at least as often, while batches keep coming).
    fn every(&self) -> Duration;
    /// What it does, in a savepoint: if it fails, it is rolled back alone and logged, and the
    /// batch commits without it (a savepoint costs little at a chore's pace).
    fn run(&mut self, db: &Db) -> Result<(), StoreError>;
    /// A batch rolled back: whatever the chore keeps in memory about what was committed (in it,
    /// or by the jobs it serves) may have been undone.
    fn rolled_back(&mut self) {}
}

/// A chore and when it last ran.
struct Scheduled {
    chore: Box<dyn Chore>,
    ran: Instant,
}

/// Handle to the writer thread; clones share it, and it stops once every clone is gone.
#[derive(Clone)]
pub(super) struct Writer {
    bulk: mpsc::Sender<Box<dyn WriteJob>>,
    api: mpsc::Sender<Box<dyn WriteJob>>,
    /// Whether the last commit failed (set by the writer thread after every commit).
    failing: Arc<AtomicBool>,
}

impl Writer {
    /// Starts the writer thread on `db`, with its chores.
    pub(super) fn spawn(db: Db, chores: Vec<Box<dyn Chore>>, metrics: Metrics) -> std::io::Result<Self> {
        let (bulk, bulk_jobs) = mpsc::channel(QUEUE_DEPTH);
        let (api, api_jobs) = mpsc::channel(API_QUEUE_DEPTH);
        let queues = Queues { bulk: bulk_jobs, api: api_jobs, first: None };
        let chores = chores.into_iter().map(|chore| Scheduled { chore, ran: Instant::now() }).collect();
        let failing = Arc::new(AtomicBool::new(false));
        let status = Arc::clone(&failing);
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || run(db, queues, chores, &metrics, &status))?;
        Ok(Self { bulk, api, failing })
    }

    /// Whether the writer thread is gone (every write fails then).
    pub(super) fn stopped(&self) -> bool {
        self.bulk.is_closed()
    }

    /// Whether the last commit failed; the next one that succeeds clears it.
    pub(super) fn failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    /// Runs `op` in the writer's next transaction and returns its result once that committed.
    pub(super) async fn write<T, F>(&self, lane: Lane, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Db) -> Result<T, StoreError> + Send + 'static,
    {
        self.write_then(lane, op, |_: &mut T| {}).await
    }

    /// Like [`Writer::write`], and once `op`'s transaction has committed, `then` runs on the
    /// writer thread with its result before the caller gets it. It runs even if the caller has
    /// stopped waiting (a client hung up): what must follow a commit cannot be skipped, and no
    /// task has to be spawned per write to guarantee that.
    pub(super) async fn write_then<T, F, A>(&self, lane: Lane, op: F, then: A) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Db) -> Result<T, StoreError> + Send + 'static,
        A: FnOnce(&mut T) + Send + 'static,
    {
        self.enqueue_then(lane, op, then).await?.await.map_err(|_| StoreError::Closed)?
    }

    /// Queues `op` and returns where its result will arrive, without waiting for the commit:
    /// a caller can queue several short jobs, which the writer may commit together.
    pub(super) async fn enqueue<T, F>(&self, lane: Lane, op: F) -> Result<Reply<T>, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Db) -> Result<T, StoreError> + Send + 'static,
    {
        self.enqueue_then(lane, op, |_: &mut T| {}).await
    }

    /// [`Writer::enqueue`] with a `then`, which runs as in [`Writer::write_then`].
    async fn enqueue_then<T, F, A>(&self, lane: Lane, op: F, then: A) -> Result<Reply<T>, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Db) -> Result<T, StoreError> + Send + 'static,
        A: FnOnce(&mut T) + Send + 'static,
    {
        let (reply, result) = oneshot::channel();
        let job = Box::new(Job { op: Some(op), then, savepoint: lane == Lane::Api, result: None, reply });
        match lane {
            Lane::Bulk => self.bulk.send(job).await.map_err(|_| StoreError::Closed)?,
            Lane::Api => {
                self.api.send(job).await.map_err(|_| StoreError::Closed)?;
                // Wakes a writer idle on the bulk lane; a full bulk lane means it is busy and
                // looks at the API lane after its current job anyway.
                let _ = self.bulk.try_send(Box::new(Wake));
            }
        }
        Ok(result)
    }
}

/// Where a queued job's result arrives once its transaction committed (or failed).
pub(super) type Reply<T> = oneshot::Receiver<Result<T, StoreError>>;

/// A write queued for the writer thread.
trait WriteJob: Send {
    /// Runs inside the open batch transaction; an error here spoils the whole batch (a job
    /// without a savepoint may have left half its writes behind).
    fn run(&mut self, db: &Db) -> Result<(), StoreError>;
    /// Reports the job's result once the batch committed (or failed to).
    fn complete(self: Box<Self>, commit: &Result<(), StoreError>);
}

struct Job<T, F, A> {
    op: Option<F>,
    /// Runs with the result once the batch committed, before the reply is sent.
    then: A,
    /// Whether the job runs in a savepoint of its own (API jobs), so that it can fail alone.
    savepoint: bool,
    result: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F, A> WriteJob for Job<T, F, A>
where
    T: Send,
    F: FnOnce(&Db) -> Result<T, StoreError> + Send,
    A: FnOnce(&mut T) + Send,
{
    fn run(&mut self, db: &Db) -> Result<(), StoreError> {
        let op = self.op.take().expect("a job runs once");
        if !self.savepoint {
            let result = op(db);
            let ran = result.as_ref().map(drop).map_err(StoreError::clone);
            self.result = Some(result);
            return ran;
        }
        self.result = Some(alone(db, op));
        Ok(())
    }

    fn complete(self: Box<Self>, commit: &Result<(), StoreError>) {
        let mut result = match (commit, self.result) {
            (Err(e), _) => Err(e.clone()),
            (Ok(()), Some(result)) => result,
            (Ok(()), None) => Err(StoreError::Closed),
        };
        if let Ok(value) = &mut result {
            (self.then)(value);
        }
        let _ = self.reply.send(result);
    }
}

/// Wakes the writer for the API lane; does nothing itself.
struct Wake;

impl WriteJob for Wake {
    fn run(&mut self, _: &Db) -> Result<(), StoreError> {
        Ok(())
    }
    fn complete(self: Box<Self>, _: &Result<(), StoreError>) {}
}

struct Queues {
    bulk: mpsc::Receiver<Box<dyn WriteJob>>,
    api: mpsc::Receiver<Box<dyn WriteJob>>,
    /// The bulk job the writer woke up for, not yet run.
    first: Option<Box<dyn WriteJob>>,
}

impl Queues {
    /// Waits until there is work; `false` once every sender is gone and nothing is left.
    fn wait(&mut self) -> bool {
        if self.first.is_none() && self.api.is_empty() {
            match self.bulk.blocking_recv() {
                Some(job) => self.first = Some(job),
                None => return !self.api.is_empty(),
            }
        }
        true
    }

    /// The next bulk job for a batch that has run `ran` of them. Jobs are taken one at a time,
    /// so those that arrive while the batch runs join it: they would otherwise wait for its
    /// commit and then pay for one of their own.
    fn next_bulk(&mut self, ran: usize) -> Option<Box<dyn WriteJob>> {
        if ran >= MAX_BATCH {
            return None;
        }
        self.first.take().or_else(|| self.bulk.try_recv().ok())
    }

    /// Runs every queued API job into `done`; whether there was one.
    fn run_api(&mut self, db: &Db, done: &mut Vec<Box<dyn WriteJob>>) -> bool {
        let before = done.len();
        while let Ok(mut job) = self.api.try_recv() {
            // An API job's failure is its own: its savepoint rolled it back.
            let _ = job.run(db);
            done.push(job);
        }
        done.len() > before
    }
}

fn run(db: Db, mut queues: Queues, mut chores: Vec<Scheduled>, metrics: &Metrics, failing: &AtomicBool) {
    let mut done: Vec<Box<dyn WriteJob>> = Vec::with_capacity(MAX_BATCH);
    while queues.wait() {
        let committed = catch_unwind(AssertUnwindSafe(|| commit(&db, &mut queues, &mut done, &mut chores)))
            .unwrap_or_else(|_| {
                // The panicking job is gone (its caller sees the writer hang up); the rest of the
                // batch is rolled back with it and fails, like any batch whose commit failed.
                let _ = run_statement(&db, "ROLLBACK");
                Err(StoreError::Abandoned)
            });
        failing.store(committed.is_err(), Ordering::Relaxed);
        metrics.commit_batch(done.len());
        if let Err(e) = &committed {
            tracing::error!(jobs = done.len(), cause = %error_chain(e), "store commit failed");
            for scheduled in &mut chores {
                scheduled.chore.rolled_back();
            }
        }
        for job in done.drain(..) {
            // What follows a commit (`then`) must not take the writer down either.
            if catch_unwind(AssertUnwindSafe(|| job.complete(&committed))).is_err() {
                tracing::error!("completing a committed write panicked; its caller gets no answer");
            }
        }
    }
}

/// One transaction: queued API jobs, then bulk jobs until none is left, the batch is full or an
/// API job arrives (at least one bulk job, so bulk writes always progress), then the chores
/// that are due. A bulk job that fails rolls the whole transaction back, and its error becomes
/// every job's in it.
fn commit(
    db: &Db,
    queues: &mut Queues,
    done: &mut Vec<Box<dyn WriteJob>>,
    chores: &mut [Scheduled],
) -> Result<(), StoreError> {
    if let Err(e) = run_statement(db, "BEGIN IMMEDIATE") {
        // Nothing can run: every queued job fails with this error instead of waiting on it.
        while let Some(job) = queues.next_bulk(done.len()) {
            done.push(job);
        }
        while let Ok(job) = queues.api.try_recv() {
            done.push(job);
        }
        return Err(e);
    }
    let rollback = |e: StoreError| {
        // SQLite may have rolled back already after an I/O error; then this one finds nothing.
        let _ = run_statement(db, "ROLLBACK");
        e
    };
    let mut urgent = queues.run_api(db, done);
    let mut ran = 0;
    while let Some(mut job) = queues.next_bulk(ran) {
        let result = job.run(db);
        done.push(job);
        ran += 1;
        result.map_err(rollback)?;
        urgent |= queues.run_api(db, done);
        if urgent {
            break;
        }
    }
    for due in chores.iter_mut().filter(|s| s.ran.elapsed() >= s.chore.every()) {
        if let Err(e) = alone(db, |db| due.chore.run(db)) {
            tracing::error!(cause = %error_chain(&e), "a writer chore failed; it runs again with a later batch");
        }
        due.ran = Instant::now();
    }
    run_statement(db, "COMMIT").map_err(rollback)
}

/// Runs `op` in a savepoint of its own: if it fails, what it wrote is rolled back and the rest
/// of the transaction stands.
fn alone<T>(db: &Db, op: impl FnOnce(&Db) -> Result<T, StoreError>) -> Result<T, StoreError> {
    run_statement(db, "SAVEPOINT alone")?;
    let result = op(db);
    if result.is_err() {
        run_statement(db, "ROLLBACK TO alone")?;
    }
    run_statement(db, "RELEASE alone")?;
    result
}

/// Runs a parameterless statement through the statement cache: the writer runs a few of these
/// per job, and parsing them each time cost it dearly.
fn run_statement(db: &Db, sql: &str) -> Result<(), StoreError> {
    db.prepare_cached(sql)?.execute([])?;
    Ok(())
}

/// An error with its causes, for the log.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests;
