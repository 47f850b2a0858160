//! PostgreSQL ingest, batched across concurrent requests.
//!
//! Each ingest is a commit that waits for the WAL flush, and PostgreSQL shares the machine's
//! cores: one statement and one commit per event made ingest the slowest part of a
//! PostgreSQL relay (and its commits queued behind the flushes of the delivery pipeline's).
//! Here events queue for a few batch tasks instead: a task takes everything queued (up to
//! [`MAX_BATCH`]) and commits it as one statement, so under load many events share a round
//! trip and a flush, and an event that arrives alone still goes at once. As in the SQLite
//! writer, nobody gets an answer before the commit that holds their event.
//!
//! Deliveries handed off ([`Fanout::handed`]) are stored in flight (`HANDED`, with the lease
//! they are handed under), the others waiting; the statement returns their ids, and the handed
//! ones are entered in flight in memory (`in_flight`) before anyone hears of the commit.
//!
//! An event for a connection that is gone is left out of its batch's insert and answered as
//! such. A batch that fails as a whole (a connection deleted while the statement runs breaks
//! its foreign key, or the database is down) is committed again one event at a time, so that
//! each event gets its own answer.

use std::collections::HashSet;
use std::sync::Arc;

use deadpool_postgres::Pool;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use super::HANDED;
use super::in_flight::InFlight;
use crate::metrics::Metrics;
use crate::model::{DueDelivery, Event};
use crate::store::{Fanout, FanoutHook, Ingested, PENDING, StoreError};

/// Most events committed in one statement.
const MAX_BATCH: usize = 256;
/// Batches committing at once: while they all wait on PostgreSQL, the next one grows.
const BATCHES_IN_FLIGHT: usize = 4;
/// Events waiting for a batch before senders wait (backpressure, not loss).
const QUEUE_DEPTH: usize = 4096;

/// What runs once an event's commit succeeded, before its caller hears of it.
type OnCommit = Box<dyn FnOnce(&mut Ingested) + Send>;

/// Hands events to the batch tasks; they stop once every handle is gone.
#[derive(Clone)]
pub(super) struct IngestQueue {
    jobs: mpsc::Sender<Job>,
}

/// One event waiting for its batch.
struct Job {
    write: Write,
    answer: Answer,
}

/// What a job commits.
struct Write {
    connection_id: String,
    event: Event,
    fanout: Fanout,
}

/// Where a job's outcome goes.
struct Answer {
    on_commit: OnCommit,
    reply: oneshot::Sender<Result<Ingested, StoreError>>,
}

impl IngestQueue {
    /// Starts batching ingests into `pool`; handed-off deliveries are entered in `in_flight`.
    pub(super) fn start(pool: Pool, metrics: Metrics, in_flight: Arc<InFlight>) -> Self {
        let (jobs, queued) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(run(Batches { pool, metrics, in_flight }, queued));
        Self { jobs }
    }

    /// Commits the event and its deliveries; `on_commit` runs once that succeeded, even if
    /// the caller has stopped waiting (a client hung up) — what must follow a commit cannot
    /// be skipped.
    pub(super) async fn ingest(
        &self,
        connection_id: String,
        event: Event,
        fanout: Fanout,
        on_commit: impl FnOnce(&mut Ingested) + Send + 'static,
    ) -> Result<Ingested, StoreError> {
        let (reply, result) = oneshot::channel();
        let job = Job {
            write: Write { connection_id, event, fanout },
            answer: Answer { on_commit: Box::new(on_commit), reply },
        };
        self.jobs.send(job).await.map_err(|_| StoreError::Closed)?;
        result.await.map_err(|_| StoreError::Closed)?
    }
}

/// What the batch tasks share.
#[derive(Clone)]
struct Batches {
    pool: Pool,
    metrics: Metrics,
    in_flight: Arc<InFlight>,
}

/// Takes a batch whenever one of the [`BATCHES_IN_FLIGHT`] is free, and commits it in a task
/// of its own.
async fn run(batches: Batches, mut queued: mpsc::Receiver<Job>) {
    let in_flight = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    loop {
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else { return };
        let Some(first) = queued.recv().await else { return };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH
            && let Ok(job) = queued.try_recv()
        {
            batch.push(job);
        }
        let batches = batches.clone();
        tokio::spawn(async move {
            batches.commit(batch).await;
            drop(permit);
        });
    }
}

impl Batches {
    /// Commits a batch and answers each of its events.
    async fn commit(&self, batch: Vec<Job>) {
        // An id sent twice in one batch is committed after it: it is then a duplicate, or the
        // first one's commit failed and it gets its own chance.
        let mut keys = HashSet::with_capacity(batch.len());
        let first: Vec<bool> = batch
            .iter()
            .map(|job| keys.insert((job.write.connection_id.as_str(), job.write.event.id.as_str())))
            .collect();
        drop(keys);
        let (batch, repeated): (Vec<_>, Vec<_>) = batch.into_iter().zip(first).partition(|&(_, first)| first);
        let (writes, answers): (Vec<Write>, Vec<Answer>) =
            batch.into_iter().map(|(job, _)| (job.write, job.answer)).unzip();
        let results = match writes.as_slice() {
            [write] => vec![self.commit_one(write).await],
            writes => match self.commit_many(writes).await {
                Ok(results) => results.into_iter().map(Ok).collect(),
                Err(e) => {
                    tracing::debug!(cause = %e, events = writes.len(), "an ingest batch failed; committing its events one by one");
                    let mut results = Vec::with_capacity(writes.len());
                    for write in writes {
                        results.push(self.commit_one(write).await);
                    }
                    results
                }
            },
        };
        for (answer, result) in answers.into_iter().zip(results) {
            answer.send(result);
        }
        for (Job { write, answer }, _) in repeated {
            answer.send(self.commit_one(&write).await);
        }
    }

    /// One event and its deliveries in one statement: one round trip and one (implicit)
    /// transaction, the event, then a delivery for each planned hook that still exists.
    async fn commit_one(&self, write: &Write) -> Result<Ingested, StoreError> {
        let Write { connection_id, event, fanout } = write;
        let (mut hook_ids, mut states, mut leases) = (Vec::new(), Vec::new(), Vec::new());
        for (hook, state, lease) in planned(fanout) {
            hook_ids.push(hook);
            states.push(state);
            leases.push(lease);
        }
        let client = self.pool.get().await?;
        let statement = client
            .prepare_cached(concat!(
                "WITH event AS (
                    INSERT INTO events (connection_id, id, type, payload, received_at, template_id)
                    VALUES ($1, $2, $3, $4, $5, $8)
                    ON CONFLICT (connection_id, id) DO NOTHING RETURNING seq
                 ), made AS (
                    INSERT INTO deliveries
                        (event_seq, hook_id, connection_id, url, state, lease_until, attempts, next_attempt_at, updated_at)
                    SELECT event.seq, h.id, h.connection_id, h.url, p.state, p.lease_until, 0, ",
                db_now!(),
                ", $5 FROM event, unnest($7::text[], $6::int[], $9::bigint[]) AS p(hook_id, state, lease_until)
                    JOIN hooks h ON h.id = p.hook_id AND h.connection_id = $1
                    RETURNING id, hook_id
                 )
                 SELECT (SELECT seq FROM event), ARRAY(SELECT id FROM made ORDER BY id),
                        ARRAY(SELECT hook_id FROM made ORDER BY id)",
            ))
            .await?;
        let params: [&(dyn ToSql + Sync); 9] = [
            connection_id,
            &event.id,
            &event.event_type,
            &event.payload.as_ref(),
            &event.received_at,
            &states,
            &hook_ids,
            &event.template_id,
            &leases,
        ];
        let row = match client.query_one(&statement, &params).await {
            Ok(row) => row,
            Err(e) if is_unknown_connection(&e) => return Ok(Ingested::UnknownConnection),
            Err(e) => return Err(e.into()),
        };
        self.metrics.commit_batch(1);
        Ok(self.outcome(write, row.get(0), row.get(1), row.get(2)))
    }

    /// Several events (no two with the same id for the same connection) in one statement; their
    /// outcomes in the batch's order. Events are numbered by their place in the batch
    /// (`WITH ORDINALITY`), and each planned hook names its event by that number; events and
    /// deliveries are inserted in that order, so their ids follow the order the events were
    /// queued.
    async fn commit_many(&self, writes: &[Write]) -> Result<Vec<Ingested>, StoreError> {
        let mut columns = Columns::default();
        for (n, write) in (1..).zip(writes) {
            columns.push(n, write);
        }
        let client = self.pool.get().await?;
        let statement = client
            .prepare_cached(concat!(
                "WITH input AS (
                    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::bigint[], $9::text[])
                        WITH ORDINALITY AS i(connection_id, id, type, payload, received_at, template_id, n)
                 ), event AS (
                    INSERT INTO events (connection_id, id, type, payload, received_at, template_id)
                    SELECT connection_id, id, type, payload, received_at, template_id FROM input
                    WHERE connection_id IN (SELECT id FROM connections) ORDER BY n
                    ON CONFLICT (connection_id, id) DO NOTHING
                    RETURNING seq, connection_id, id
                 ), made AS (
                    INSERT INTO deliveries
                        (event_seq, hook_id, connection_id, url, state, lease_until, attempts, next_attempt_at, updated_at)
                    SELECT e.seq, h.id, h.connection_id, h.url, p.state, p.lease_until, 0, ",
                db_now!(),
                ", i.received_at
                    FROM event e
                    JOIN input i ON i.connection_id = e.connection_id AND i.id = e.id
                    JOIN unnest($7::bigint[], $8::text[], $6::int[], $10::bigint[]) AS p(n, hook_id, state, lease_until)
                      ON p.n = i.n
                    JOIN hooks h ON h.id = p.hook_id AND h.connection_id = e.connection_id
                    ORDER BY i.n
                    RETURNING event_seq, id, hook_id
                 ), made_by_event AS (
                    SELECT event_seq, array_agg(id ORDER BY id) AS ids, array_agg(hook_id ORDER BY id) AS hooks
                    FROM made GROUP BY event_seq
                 )
                 SELECT i.n, e.seq, COALESCE(m.ids, '{}'), COALESCE(m.hooks, '{}'),
                        EXISTS (SELECT 1 FROM connections k WHERE k.id = i.connection_id)
                 FROM input i
                 LEFT JOIN event e ON e.connection_id = i.connection_id AND e.id = i.id
                 LEFT JOIN made_by_event m ON m.event_seq = e.seq",
            ))
            .await?;
        let c = &columns;
        let params: [&(dyn ToSql + Sync); 10] = [
            &c.connection_id,
            &c.id,
            &c.event_type,
            &c.payload,
            &c.received_at,
            &c.hook_state,
            &c.hook_event,
            &c.hook_id,
            &c.template_id,
            &c.hook_lease,
        ];
        let rows = client.query(&statement, &params).await?;
        self.metrics.commit_batch(writes.len());
        let mut outcomes: Vec<Option<Ingested>> = writes.iter().map(|_| None).collect();
        for row in rows {
            let n = usize::try_from(row.get::<_, i64>(0)).unwrap_or(0);
            if let Some((slot, write)) = n.checked_sub(1).and_then(|i| outcomes.get_mut(i).zip(writes.get(i))) {
                *slot = Some(if row.get(4) {
                    self.outcome(write, row.get(1), row.get(2), row.get(3))
                } else {
                    Ingested::UnknownConnection
                });
            }
        }
        outcomes
            .into_iter()
            .map(|o| o.ok_or_else(|| StoreError::Corrupt("an ingest batch lost an event's outcome".into())))
            .collect()
    }

    /// An event's outcome from its `seq` (none: it was there already) and the deliveries made
    /// (ids and hooks); those of handed hooks are entered in flight and handed over.
    fn outcome(&self, write: &Write, seq: Option<i64>, ids: Vec<i64>, hooks: Vec<String>) -> Ingested {
        if seq.is_none() {
            return Ingested::Duplicate;
        }
        let Write { connection_id, event, fanout } = write;
        let deliveries = ids.len();
        // Sorted once, so that a fan-out to many hooks costs no pass over them per delivery.
        let mut handed_hooks: Vec<&FanoutHook> = fanout.handed.iter().collect();
        handed_hooks.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        let mut handed: Vec<DueDelivery> = ids
            .into_iter()
            .zip(hooks)
            .filter_map(|(id, hook_id)| {
                let at = handed_hooks.binary_search_by(|h| h.id.as_str().cmp(&hook_id)).ok()?;
                let hook = handed_hooks[at];
                Some(DueDelivery {
                    id,
                    connection_id: connection_id.clone(),
                    url: hook.url.clone(),
                    hook_id,
                    event_id: event.id.clone(),
                    payload: event.payload.clone(),
                    attempts: 0,
                    received_at: event.received_at,
                    lease_until: fanout.lease_until,
                    streak: None,
                })
            })
            .collect();
        self.in_flight.handed(&mut handed, fanout.lease_until);
        Ingested::Accepted { deliveries, handed }
    }
}

impl Answer {
    fn send(self, mut result: Result<Ingested, StoreError>) {
        if let Ok(ingested) = &mut result {
            (self.on_commit)(ingested);
        }
        let _ = self.reply.send(result);
    }
}

/// A batch as the statement's columns.
#[derive(Default)]
struct Columns<'a> {
    connection_id: Vec<&'a str>,
    id: Vec<&'a str>,
    event_type: Vec<&'a str>,
    payload: Vec<&'a [u8]>,
    received_at: Vec<i64>,
    template_id: Vec<Option<&'a str>>,
    /// For each planned hook, the number of its event in the batch.
    hook_event: Vec<i64>,
    hook_id: Vec<&'a str>,
    /// Its delivery's state: waiting, or handed off under the lease in `hook_lease`.
    hook_state: Vec<i32>,
    hook_lease: Vec<Option<i64>>,
}

impl<'a> Columns<'a> {
    fn push(&mut self, n: i64, write: &'a Write) {
        self.connection_id.push(&write.connection_id);
        self.id.push(&write.event.id);
        self.event_type.push(&write.event.event_type);
        self.payload.push(&write.event.payload);
        self.received_at.push(write.event.received_at);
        self.template_id.push(write.event.template_id.as_deref());
        for (hook, state, lease) in planned(&write.fanout) {
            self.hook_event.push(n);
            self.hook_id.push(hook);
            self.hook_state.push(state);
            self.hook_lease.push(lease);
        }
    }
}

/// The hooks an event goes to, each with the state its delivery is stored in and, when handed
/// off, the lease it is handed under.
fn planned(fanout: &Fanout) -> impl Iterator<Item = (&str, i32, Option<i64>)> {
    let queued = fanout.queued.iter().map(|h| (h.id.as_str(), PENDING, None));
    queued.chain(fanout.handed.iter().map(|h| (h.id.as_str(), HANDED, Some(fanout.lease_until))))
}

/// Whether an ingest failed because its connection is gone (the event's foreign key), not
/// because a hook went away mid-statement.
fn is_unknown_connection(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|db| {
        db.code() == &SqlState::FOREIGN_KEY_VIOLATION && db.constraint() == Some("events_connection_id_fkey")
    })
}
