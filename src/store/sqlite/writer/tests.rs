//! The writer thread's batching, lanes, chores and failure handling, on an in-memory database.

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

/// A writer on a fresh in-memory table `t`, and a bulk job that holds the writer until
/// told to go on, so that what is queued behind it shares one batch.
async fn held_writer() -> (Writer, std::sync::mpsc::Sender<()>, Reply<()>) {
    let db = Db::open_in_memory().unwrap();
    db.execute_batch("CREATE TABLE t (v TEXT NOT NULL)").unwrap();
    let writer = Writer::spawn(db, Vec::new(), Metrics::default()).unwrap();
    let (release, held) = std::sync::mpsc::channel::<()>();
    let (started, running) = tokio::sync::oneshot::channel::<()>();
    let blocking = writer
        .enqueue(Lane::Bulk, move |_| {
            started.send(()).unwrap();
            held.recv().unwrap();
            Ok(())
        })
        .await
        .unwrap();
    running.await.unwrap();
    (writer, release, blocking)
}

/// A job that inserts `v` into `t`, then fails if told to.
fn insert(v: &'static str, fail: bool) -> impl FnOnce(&Db) -> Result<(), StoreError> + use<> {
    move |db| {
        db.execute("INSERT INTO t VALUES (?1)", [v])?;
        if fail { Err(StoreError::Corrupt("told to fail".into())) } else { Ok(()) }
    }
}

async fn rows(writer: &Writer) -> Vec<String> {
    let rows = |db: &Db| {
        let mut stmt = db.prepare("SELECT v FROM t ORDER BY rowid")?;
        Ok(stmt.query_map([], |r| r.get(0))?.collect::<Result<Vec<String>, _>>()?)
    };
    writer.write(Lane::Api, rows).await.unwrap()
}

#[tokio::test]
async fn a_failing_bulk_job_rolls_back_its_whole_batch() {
    let (writer, release, blocking) = held_writer().await;
    let before = writer.enqueue(Lane::Bulk, insert("before", false)).await.unwrap();
    let failing = writer.enqueue(Lane::Bulk, insert("failing", true)).await.unwrap();
    release.send(()).unwrap();
    assert!(blocking.await.unwrap().is_err(), "the job that ran first is rolled back too");
    assert!(before.await.unwrap().is_err());
    assert!(failing.await.unwrap().is_err());
    assert!(rows(&writer).await.is_empty(), "no half of a bulk job is committed");
    writer.write(Lane::Bulk, insert("after", false)).await.unwrap();
    assert_eq!(rows(&writer).await, ["after"], "the next batch commits");
}

#[tokio::test]
async fn a_failing_api_job_rolls_back_alone() {
    let (writer, release, blocking) = held_writer().await;
    let bulk = writer.enqueue(Lane::Bulk, insert("bulk", false)).await.unwrap();
    let failing = writer.enqueue(Lane::Api, insert("failing", true)).await.unwrap();
    let api = writer.enqueue(Lane::Api, insert("api", false)).await.unwrap();
    release.send(()).unwrap();
    blocking.await.unwrap().unwrap();
    assert!(failing.await.unwrap().is_err());
    api.await.unwrap().unwrap();
    bulk.await.unwrap().unwrap();
    assert_eq!(rows(&writer).await, ["api", "bulk"]);
}

#[tokio::test]
async fn what_follows_a_commit_runs_when_nobody_waits_for_it_any_more() {
    let (writer, release, blocking) = held_writer().await;
    let (ran, after) = tokio::sync::oneshot::channel();
    let then = move |rows: &mut usize| ran.send(*rows).unwrap();
    let write = writer.write_then(Lane::Bulk, |db| Ok(db.execute("INSERT INTO t VALUES ('x')", [])?), then);
    // Polled once (the job is queued behind the held one), then given up on.
    assert!(tokio::time::timeout(Duration::ZERO, write).await.is_err(), "the write cannot have committed");
    release.send(()).unwrap();
    blocking.await.unwrap().unwrap();
    assert_eq!(after.await.expect("`then` ran"), 1, "with the job's result");
    assert_eq!(rows(&writer).await, ["x"]);
}

#[tokio::test]
async fn what_follows_a_commit_does_not_run_when_it_fails() {
    let (writer, release, blocking) = held_writer().await;
    let then = |(): &mut ()| panic!("ran after a failed commit");
    let failing = writer.write_then(Lane::Bulk, insert("failing", true), then);
    let (failing, ()) = tokio::join!(failing, async { release.send(()).unwrap() });
    assert!(failing.is_err() && blocking.await.unwrap().is_err());
    writer.write(Lane::Bulk, insert("after", false)).await.expect("the writer lives on");
}

/// A chore that adds `chore` to `t`, then fails if told to; it counts the rollbacks it
/// is told of.
struct Inserting {
    every: Duration,
    fail: bool,
    rollbacks: Arc<Mutex<usize>>,
}

impl Chore for Inserting {
    fn every(&self) -> Duration {
        self.every
    }
    fn run(&mut self, db: &Db) -> Result<(), StoreError> {
        insert("chore", self.fail)(db)
    }
    fn rolled_back(&mut self) {
        *self.rollbacks.lock().unwrap() += 1;
    }
}

/// A writer on a fresh in-memory table `t` with an [`Inserting`] chore; and its count of
/// rollbacks.
fn writer_with_chore(every: Duration, fail: bool) -> (Writer, Arc<Mutex<usize>>) {
    let db = Db::open_in_memory().unwrap();
    db.execute_batch("CREATE TABLE t (v TEXT NOT NULL)").unwrap();
    let rollbacks = Arc::new(Mutex::new(0));
    let chore = Inserting { every, fail, rollbacks: Arc::clone(&rollbacks) };
    (Writer::spawn(db, vec![Box::new(chore)], Metrics::default()).unwrap(), rollbacks)
}

#[tokio::test]
async fn a_failing_chore_is_rolled_back_alone() {
    let (writer, rollbacks) = writer_with_chore(Duration::ZERO, true);
    writer.write(Lane::Bulk, insert("job", false)).await.expect("the batch commits");
    assert_eq!(rows(&writer).await, ["job"]);
    assert_eq!(*rollbacks.lock().unwrap(), 0, "the batch itself committed");
}

#[tokio::test]
async fn a_due_chore_runs_after_the_jobs_of_a_batch_and_shares_its_commit() {
    let (writer, _) = writer_with_chore(Duration::ZERO, false);
    writer.write(Lane::Bulk, insert("job", false)).await.unwrap();
    assert_eq!(rows(&writer).await, ["job", "chore"]);
    let (idle, _) = writer_with_chore(Duration::from_secs(3600), false);
    idle.write(Lane::Bulk, insert("job", false)).await.unwrap();
    assert_eq!(rows(&idle).await, ["job"], "a chore that is not due does not run");
}

#[tokio::test]
async fn chores_are_told_when_a_batch_rolls_back() {
    let (writer, rollbacks) = writer_with_chore(Duration::ZERO, false);
    assert!(writer.write(Lane::Bulk, insert("failing", true)).await.is_err());
    assert_eq!(*rollbacks.lock().unwrap(), 1);
    assert!(rows(&writer).await.is_empty(), "nothing of the failed batch is left");
}

#[tokio::test]
async fn an_api_write_overtakes_queued_bulk_writes() {
    let (writer, release, blocking) = held_writer().await;
    let order = Arc::new(Mutex::new(Vec::new()));
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
    assert_eq!(order.len(), 51);
    assert_eq!(order[0], "api", "the API write waits for the bulk job running, not for the queue");
    assert_eq!(order[1], "bulk 0", "bulk writes keep their order");
}
