//! The SQLite writer thread: it owns the write connection and commits whatever jobs are queued
//! in one transaction (group commit), so with `synchronous=FULL` concurrent writes share one
//! fsync. Each job runs inside its own savepoint, so a failing job rolls back alone.
//!
//! Two lanes feed it. The bulk lane carries the hot path (ingest commits, claims, attempt
//! records), which is what makes batches large under load. The API lane carries everything a
//! person or Make waits on (attaching a hook, rotating a key…): between two bulk jobs the writer
//! looks at it, and once it holds a job the batch is committed at once. An API write therefore
//! waits for one bulk job and one commit, not for a whole batch; and since every batch still
//! runs at least one bulk job, a stream of API writes cannot stall ingest either.

use std::collections::VecDeque;

use rusqlite::Connection as Db;
use tokio::sync::{mpsc, oneshot};

use super::StoreError;
use crate::metrics::Metrics;

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

/// Handle to the writer thread; clones share it, and it stops once every clone is gone.
#[derive(Clone)]
pub(super) struct Writer {
    bulk: mpsc::Sender<Box<dyn WriteJob>>,
    api: mpsc::Sender<Box<dyn WriteJob>>,
}

impl Writer {
    /// Starts the writer thread on `db`.
    pub(super) fn spawn(db: Db, metrics: Metrics) -> std::io::Result<Self> {
        let (bulk, bulk_jobs) = mpsc::channel(QUEUE_DEPTH);
        let (api, api_jobs) = mpsc::channel(API_QUEUE_DEPTH);
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || run(db, Queues { bulk: bulk_jobs, api: api_jobs, waiting: VecDeque::new() }, &metrics))?;
        Ok(Self { bulk, api })
    }

    /// Runs `op` in the writer's next transaction and returns its result once that committed.
    pub(super) async fn write<T, F>(&self, lane: Lane, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Db) -> Result<T, StoreError> + Send + 'static,
    {
        self.enqueue(lane, op).await?.await.map_err(|_| StoreError::Closed)?
    }

    /// Queues `op` and returns where its result will arrive, without waiting for the commit:
    /// a caller can queue several short jobs, which the writer may commit together.
    pub(super) async fn enqueue<T, F>(&self, lane: Lane, op: F) -> Result<Reply<T>, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Db) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, result) = oneshot::channel();
        let job = Box::new(Job { op: Some(op), result: None, reply });
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
    /// Runs inside the open batch transaction.
    fn run(&mut self, db: &Db);
    /// Reports the job's result once the batch committed (or failed to).
    fn complete(self: Box<Self>, commit: &Result<(), StoreError>);
}

struct Job<T, F> {
    op: Option<F>,
    result: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T: Send, F: FnOnce(&Db) -> Result<T, StoreError> + Send> WriteJob for Job<T, F> {
    fn run(&mut self, db: &Db) {
        let op = self.op.take().expect("a job runs once");
        let result = run_statement(db, "SAVEPOINT job").and_then(|()| {
            let result = op(db);
            if result.is_err() {
                run_statement(db, "ROLLBACK TO job")?;
            }
            run_statement(db, "RELEASE job")?;
            result
        });
        self.result = Some(result);
    }

    fn complete(self: Box<Self>, commit: &Result<(), StoreError>) {
        let result = match (commit, self.result) {
            (Err(e), _) => Err(e.clone()),
            (Ok(()), Some(result)) => result,
            (Ok(()), None) => Err(StoreError::Closed),
        };
        let _ = self.reply.send(result);
    }
}

/// Wakes the writer for the API lane; does nothing itself.
struct Wake;

impl WriteJob for Wake {
    fn run(&mut self, _: &Db) {}
    fn complete(self: Box<Self>, _: &Result<(), StoreError>) {}
}

struct Queues {
    bulk: mpsc::Receiver<Box<dyn WriteJob>>,
    api: mpsc::Receiver<Box<dyn WriteJob>>,
    /// Bulk jobs taken off the channel but not yet run: a batch cut short by an API job
    /// leaves the rest here, in order, for the next one.
    waiting: VecDeque<Box<dyn WriteJob>>,
}

impl Queues {
    /// Waits until there is work; `false` once every sender is gone and nothing is left.
    fn wait(&mut self) -> bool {
        if self.waiting.is_empty() && self.api.is_empty() {
            match self.bulk.blocking_recv() {
                Some(job) => self.waiting.push_back(job),
                None => return !self.api.is_empty(),
            }
        }
        while self.waiting.len() < MAX_BATCH {
            match self.bulk.try_recv() {
                Ok(job) => self.waiting.push_back(job),
                Err(_) => break,
            }
        }
        true
    }

    /// Runs every queued API job into `done`; whether there was one.
    fn run_api(&mut self, db: &Db, done: &mut Vec<Box<dyn WriteJob>>) -> bool {
        let before = done.len();
        while let Ok(mut job) = self.api.try_recv() {
            job.run(db);
            done.push(job);
        }
        done.len() > before
    }
}

fn run(mut db: Db, mut queues: Queues, metrics: &Metrics) {
    let mut done: Vec<Box<dyn WriteJob>> = Vec::with_capacity(MAX_BATCH);
    while queues.wait() {
        let committed = commit(&mut db, &mut queues, &mut done);
        metrics.commit_batch(done.len());
        if let Err(e) = &committed {
            tracing::error!(jobs = done.len(), cause = %error_chain(e), "store commit failed");
        }
        for job in done.drain(..) {
            job.complete(&committed);
        }
    }
}

/// One transaction: queued API jobs, then bulk jobs until the batch is done or an API job
/// arrives (at least one bulk job, so bulk writes always progress).
fn commit(db: &mut Db, queues: &mut Queues, done: &mut Vec<Box<dyn WriteJob>>) -> Result<(), StoreError> {
    if let Err(e) = run_statement(db, "BEGIN IMMEDIATE") {
        // Nothing can run: every queued job fails with this error instead of waiting on it.
        done.extend(queues.waiting.drain(..));
        while let Ok(job) = queues.api.try_recv() {
            done.push(job);
        }
        return Err(e);
    }
    let mut urgent = queues.run_api(db, done);
    while let Some(mut job) = queues.waiting.pop_front() {
        job.run(db);
        done.push(job);
        urgent |= queues.run_api(db, done);
        if urgent {
            break;
        }
    }
    run_statement(db, "COMMIT").inspect_err(|_| {
        let _ = run_statement(db, "ROLLBACK");
    })?;
    Ok(())
}

/// Runs a parameterless statement through the statement cache: the writer runs a few of these
/// per job, and parsing them each time was a fifth of its CPU.
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
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A job that notes its name in `order` when it runs.
    fn noting(order: &Arc<Mutex<Vec<String>>>, name: String) -> impl FnOnce(&Db) -> Result<(), StoreError> + use<> {
        let order = Arc::clone(order);
        move |_| {
            order.lock().unwrap().push(name);
            Ok(())
        }
    }

    #[tokio::test]
    async fn an_api_write_overtakes_queued_bulk_writes() {
        let writer = Writer::spawn(Db::open_in_memory().unwrap(), Metrics::default()).unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (started, running) = tokio::sync::oneshot::channel::<()>();
        let first = noting(&order, "first".into());
        let blocking = writer
            .enqueue(Lane::Bulk, move |db| {
                started.send(()).unwrap();
                held.recv().unwrap();
                first(db)
            })
            .await
            .unwrap();
        running.await.unwrap();
        let mut bulk = Vec::new();
        for n in 0..50 {
            bulk.push(writer.enqueue(Lane::Bulk, noting(&order, format!("bulk {n}"))).await.unwrap());
        }
        let api = writer.enqueue(Lane::Api, noting(&order, "api".into())).await.unwrap();
        release.send(()).unwrap();
        api.await.unwrap().unwrap();
        blocking.await.unwrap().unwrap();
        for reply in bulk {
            reply.await.unwrap().unwrap();
        }
        let order = order.lock().unwrap();
        assert_eq!(order.len(), 52);
        assert_eq!(&order[..2], ["first", "api"], "the API write waits for one bulk job, not for the queue");
        assert_eq!(order[2], "bulk 0", "bulk writes keep their order");
    }
}
