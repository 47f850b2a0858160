//! The store's own guarantees, on whichever backend the suite runs on (SQLite by default,
//! PostgreSQL when `RELAY_TEST_POSTGRES_URL` is set), through its public interface.

use std::path::Path;
use std::sync::Arc;

use stencil_relay::config::DatabaseUrl;
use stencil_relay::metrics::Metrics;
use stencil_relay::model::DueDelivery;
use stencil_relay::model::{Attempt, AttemptRecord, Connection, Event, Hook, HookKeys, IMAGE_CREATED, NextStep};
use stencil_relay::store::{Attached, Claim, Fanout, FanoutHook, Ingested, PostgresStore, Scheduling, Store};

use crate::harness::{database_url, is_postgres};

/// A store of its own holding one connection, `c`, whose API-key hash is `key` repeated.
async fn store_with_connection(dir: &Path, key: u8) -> Store {
    store_with_metrics(dir, key, Metrics::default()).await
}

/// [`store_with_connection`], and its URL, for a second instance of the store to open.
async fn shared_store_with_connection(dir: &Path, key: u8) -> (Store, DatabaseUrl) {
    let url = DatabaseUrl::parse(&database_url(dir).await).unwrap();
    let store = Store::open(&url, Metrics::default()).await.unwrap();
    create_connection(&store, key).await;
    (store, url)
}

/// [`store_with_connection`], reporting to `metrics`.
async fn store_with_metrics(dir: &Path, key: u8, metrics: Metrics) -> Store {
    let url = DatabaseUrl::parse(&database_url(dir).await).unwrap();
    let store = Store::open(&url, metrics).await.unwrap();
    create_connection(&store, key).await;
    store
}

/// Creates connection `c`, whose API-key hash is `key` repeated.
async fn create_connection(store: &Store, key: u8) {
    store.create_connection(connection("c", key)).await.unwrap();
}

/// Connection `id`, whose API-key hash is `key` repeated.
fn connection(id: &str, key: u8) -> Connection {
    Connection {
        id: id.into(),
        name: id.into(),
        api_key_hash: [key; 32],
        secrets: Vec::new(),
        ingest_rate: None,
        ingest_auth: Default::default(),
        created_at: 0,
    }
}

/// A hook of connection `c` for `image.created`.
fn hook(id: &str) -> Hook {
    Hook {
        id: id.into(),
        connection_id: Arc::from("c"),
        url: format!("https://example.com/{id}"),
        event: IMAGE_CREATED,
        template_id: None,
        keys: HookKeys::generate(),
        created_at: 0,
        disabled: false,
    }
}

/// Attaches these hooks.
async fn attach_all(store: &Store, hooks: &[&Hook]) {
    for hook in hooks {
        store.attach_hook((*hook).clone()).await.unwrap();
    }
}

/// The fan-out entries of these hooks.
fn fanout_to(hooks: &[&Hook]) -> Vec<FanoutHook> {
    hooks.iter().map(|h| FanoutHook { id: h.id.clone(), url: h.url.clone() }).collect()
}

/// An empty `image.created` event with this id.
fn event(id: &str) -> Event {
    Event { id: id.into(), event_type: IMAGE_CREATED.into(), template_id: None, payload: "{}".into(), received_at: 0 }
}

fn attempt(number: u32, status: u16) -> Attempt {
    Attempt { event_id: "evt-1".into(), attempt: number, status_code: Some(status), error: None, duration_ms: 1, at: 1 }
}

#[tokio::test]
async fn a_batch_of_records_written_again_after_a_failure_is_applied_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_connection(dir.path(), 1).await;
    let hook = hook("hk_1");
    store.attach_hook(hook.clone()).await.unwrap();
    queue_to(&store, &hook, &["evt-1"]).await;
    let delivery = claim(&store, Claim { now: 10, lease_until: 1_000, limit: 10 }, 10).await.remove(0);
    let record = |number, status, next| AttemptRecord {
        delivery_id: delivery.id,
        hook_id: hook.id.clone(),
        attempt: attempt(number, status),
        next,
        streak: None,
    };
    let first: Arc<[AttemptRecord]> = Arc::from([record(1, 500, NextStep::RetryAt(20))]);
    store.record(Arc::clone(&first)).await.unwrap();
    store.record(first).await.unwrap();
    store
        .record(Arc::from([record(1, 500, NextStep::RetryAt(20)), record(2, 200, NextStep::Delivered)]))
        .await
        .unwrap();
    let statuses: Vec<_> =
        store.attempts(&hook.id, 10).await.unwrap().iter().map(|a| (a.attempt, a.status_code)).collect();
    assert_eq!(statuses, [(2, Some(200)), (1, Some(500))], "each attempt once, newest first");
    assert_eq!(store.stats().await.unwrap().pending, 0, "and the delivery is delivered");
}

#[tokio::test]
async fn a_hook_is_claimed_again_once_its_delivery_is_recorded_released_or_its_lease_ran_out() {
    let dir = tempfile::tempdir().unwrap();
    let (store, url) = shared_store_with_connection(dir.path(), 6).await;
    let hook = hook("hk_1");
    store.attach_hook(hook.clone()).await.unwrap();
    queue_to(&store, &hook, &["e1", "e2", "e3"]).await;
    let first = claimed(&store, 10, 1_000).await;
    assert_eq!(event_ids(&first), ["e1"], "one per hook, oldest first");
    if is_postgres() {
        // On SQLite the dispatcher names only hooks with room, so the store need not check.
        assert!(claimed(&store, 20, 1_000).await.is_empty(), "nothing of a hook with a delivery in flight");
        let other = Store::open(&url, Metrics::default()).await.unwrap();
        assert!(claimed(&other, 20, 1_000).await.is_empty(), "nor by another instance while the hook is leased");
    }
    delivered(&store, first[0].0, &hook).await;
    let second = claimed(&store, 30, 1_000).await;
    assert_eq!(event_ids(&second), ["e2"], "recorded: the next one");
    store.release(vec![second[0].0]).await.unwrap();
    assert_eq!(claimed(&store, 40, 1_000).await, second, "released: the same one again");
    // A 100 ms lease: its own instance tells by its clock; the hook's lease in PostgreSQL runs
    // by the database's.
    assert_eq!(claimed(&store, 1_000, 1_100).await, second, "and once its lease ran out");
    if is_postgres() {
        let other = Store::open(&url, Metrics::default()).await.unwrap();
        let taken_over = crate::harness::eventually("the hook's lease to run out", || async {
            Some(claimed(&other, 2_000, 3_000).await).filter(|c| !c.is_empty())
        })
        .await;
        assert_eq!(taken_over, second, "by another instance once the hook's lease ran out");
    }
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set RELAY_TEST_POSTGRES_URL (.ci/run does)"]
async fn an_attempted_delivery_frees_its_hook_on_postgresql_and_stays_leased_until_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_connection(dir.path(), 7).await;
    let leasing = leasing(&store);
    let hook = hook("hk_1");
    store.attach_hook(hook.clone()).await.unwrap();
    queue_to(&store, &hook, &["e1", "e2"]).await;
    let first = claimed(&store, 10, 1_000).await;
    leasing.attempted(first[0].0);
    let next = claimed(&store, 20, 1_000).await;
    assert_eq!(event_ids(&next), ["e2"], "the hook's next one, while e1's record is on its way");
    leasing.attempted(next[0].0);
    assert!(claimed(&store, 30, 1_000).await.is_empty(), "attempted deliveries stay leased until recorded");
    leasing.attempted(-1); // not in flight: changes nothing
    assert_eq!(event_ids(&claimed(&store, 1_000, 2_000).await), ["e1"], "unless their leases run out unrecorded");
}

#[tokio::test]
async fn a_delivery_handed_off_at_ingest_comes_back_leased_and_is_claimed_only_once_its_lease_ran_out() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_connection(dir.path(), 8).await;
    let (handed_z, queued, handed_a) = (hook("hk_z_handed"), hook("hk_queued"), hook("hk_a_handed"));
    attach_all(&store, &[&handed_z, &queued, &handed_a]).await;
    let fanout =
        Fanout { queued: fanout_to(&[&queued]), handed: fanout_to(&[&handed_z, &handed_a]), lease_until: 1_000 };
    let Ingested::Accepted { deliveries: 3, handed } = store.ingest("c", event("e1"), fanout, |_| {}).await.unwrap()
    else {
        panic!("accepted with three deliveries")
    };
    let mut handed: Vec<_> = handed.into_iter().map(|d| (d.hook_id, d.url, d.event_id, d.attempts, d.id)).collect();
    handed.sort();
    let urls: Vec<_> =
        handed.iter().map(|(hook, url, event, attempts, _)| (hook, url, event.as_str(), *attempts)).collect();
    assert_eq!(urls, [(&handed_a.id, &handed_a.url, "e1", 0), (&handed_z.id, &handed_z.url, "e1", 0)]);
    let claimed_now = claimed(&store, 10, 5_000).await;
    assert_eq!(event_ids(&claimed_now), ["e1"], "only the queued one: the handed ones are in flight");
    assert!(handed.iter().all(|h| h.4 != claimed_now[0].0));
    let mut taken_back: Vec<i64> = claimed(&store, 1_000, 5_000).await.into_iter().map(|(id, _)| id).collect();
    taken_back.sort_unstable();
    let mut handed_ids: Vec<i64> = handed.iter().map(|h| h.4).collect();
    handed_ids.sort_unstable();
    assert_eq!(taken_back, handed_ids, "until their lease ran out");
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set RELAY_TEST_POSTGRES_URL (.ci/run does)"]
async fn claims_on_postgresql_say_which_hooks_they_left_nothing_due_of() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_connection(dir.path(), 9).await;
    let leasing = leasing(&store);
    let (busy, quiet) = (hook("hk_busy"), hook("hk_quiet"));
    attach_all(&store, &[&busy, &quiet]).await;
    queue_to(&store, &busy, &["e1", "e2"]).await;
    queue_to(&store, &quiet, &["e3"]).await;
    let mut leased =
        leasing.claim(Claim { now: 10, lease_until: 1_000, limit: 10 }, 1, vec![]).await.unwrap().leased_hooks;
    leased.sort();
    assert_eq!(leased, [(busy.id.clone(), false), (quiet.id.clone(), true)], "e2 was left waiting");
    let (early, late) = (hook("hk_early"), hook("hk_late"));
    attach_all(&store, &[&early, &late]).await;
    queue_to(&store, &early, &["e4", "e5"]).await;
    queue_to(&store, &late, &["e6"]).await;
    let claimed = leasing.claim(Claim { now: 20, lease_until: 1_000, limit: 2 }, 2, vec![]).await.unwrap();
    assert_eq!(event_ids(&claimed.due.iter().map(|d| (d.id, d.event_id.clone())).collect::<Vec<_>>()), ["e4", "e5"]);
    assert_eq!(claimed.leased_hooks, [(early.id.clone(), true)], "the late hook's delivery did not fit: not drained");
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set RELAY_TEST_POSTGRES_URL (.ci/run does)"]
async fn hooks_given_back_at_shutdown_are_claimed_by_another_instance_at_once_but_not_those_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let (store, url) = shared_store_with_connection(dir.path(), 10).await;
    leasing(&store);
    let (done, busy) = (hook("hk_done"), hook("hk_busy"));
    attach_all(&store, &[&done, &busy]).await;
    queue_to(&store, &done, &["e1", "e2"]).await;
    queue_to(&store, &busy, &["e3", "e4"]).await;
    let first = claimed(&store, 10, 1_000).await;
    assert_eq!(event_ids(&first), ["e1", "e3"]);
    delivered(&store, first[0].0, &done).await;
    let given_back = store.give_back_hooks().await.unwrap();
    assert_eq!(given_back, 1, "the hook with e3 still in flight stays leased");
    let other = Store::open(&url, Metrics::default()).await.unwrap();
    assert_eq!(event_ids(&claimed(&other, 20, 1_000).await), ["e2"], "long before the lease ran out");
}

#[tokio::test]
async fn a_detach_deletes_the_hooks_deliveries_in_every_state_and_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_connection(dir.path(), 2).await;
    let (gone, kept) = (hook("hk_gone"), hook("hk_kept"));
    attach_all(&store, &[&gone, &kept]).await;
    let ingest = |id: &str, queued: Vec<FanoutHook>, handed: Vec<FanoutHook>| {
        let event = event(id);
        store.ingest("c", event, Fanout { queued, handed, lease_until: 1_000_000 }, |_| {})
    };
    // Attempted: one delivered to each hook, and a dead letter of the gone hook.
    ingest("e1", fanout_to(&[&gone, &kept]), vec![]).await.unwrap();
    ingest("e2", fanout_to(&[&gone]), vec![]).await.unwrap();
    let records: Vec<AttemptRecord> = claim(&store, Claim { now: 10, lease_until: 1_000, limit: 10 }, 10)
        .await
        .into_iter()
        .map(|d| {
            let dead = d.event_id == "e2";
            AttemptRecord {
                delivery_id: d.id,
                hook_id: d.hook_id,
                attempt: Attempt { event_id: d.event_id, ..attempt(1, if dead { 400 } else { 200 }) },
                next: if dead { NextStep::DeadLetter } else { NextStep::Delivered },
                streak: None,
            }
        })
        .collect();
    assert_eq!(records.len(), 3, "both of e1 and the one of e2 claimed");
    store.record(records.into()).await.unwrap();
    // Not yet attempted: waiting for each hook, and one in flight to the gone hook.
    ingest("e3", fanout_to(&[&gone, &kept]), vec![]).await.unwrap();
    ingest("e4", vec![], fanout_to(&[&gone])).await.unwrap();
    assert_eq!(store.stats().await.unwrap().pending, 3);
    assert_eq!(store.dead_letters(Some("c"), 10).await.unwrap().len(), 1);

    assert!(store.detach_hook("c", &gone.id).await.unwrap());
    assert!(store.dead_letters(Some("c"), 10).await.unwrap().is_empty(), "its dead letter is invisible at once");
    while store.reap(2).await.unwrap().is_some() {} // SQLite removes the rest in steps

    assert!(store.attempts(&gone.id, 10).await.unwrap().is_empty(), "its attempts are gone");
    assert_eq!(store.stats().await.unwrap().pending, 1, "only the kept hook's delivery still waits");
    let claimed = claim(&store, Claim { now: 2_000_000, lease_until: 3_000_000, limit: 10 }, 10).await;
    let due: Vec<_> = claimed.into_iter().map(|d| (d.hook_id, d.event_id)).collect();
    assert_eq!(
        due,
        [(kept.id.clone(), "e3".to_owned())],
        "nothing of the gone hook is claimed, even after leases run out"
    );
    let kept_attempts: Vec<_> = store.attempts(&kept.id, 10).await.unwrap().into_iter().map(|a| a.event_id).collect();
    assert_eq!(kept_attempts, ["e1"], "the kept hook's history stays");
}

#[tokio::test]
async fn ingests_that_share_a_commit_succeed_or_fail_each_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::default();
    let store = store_with_metrics(dir.path(), 3, metrics.clone()).await;
    let (kept, never_attached) = (hook("hk_kept"), hook("hk_never_attached"));
    store.attach_hook(kept.clone()).await.unwrap();
    let fanout = Fanout { queued: fanout_to(&[&kept, &never_attached]), handed: vec![], lease_until: 0 };
    // Sent at once, so that the writer commits many of them together: every other one is for a
    // connection the store does not have (as when it is deleted between the check and the commit).
    let mut ingests = tokio::task::JoinSet::new();
    for n in 0..64 {
        let (store, fanout) = (store.clone(), fanout.clone());
        let connection = if n % 2 == 0 { "c" } else { "deleted" };
        let event = event(&format!("e{n}"));
        ingests.spawn(async move { (n, store.ingest(connection, event, fanout, |_| {}).await.unwrap()) });
    }
    while let Some(done) = ingests.join_next().await {
        match done.unwrap() {
            (n, Ingested::Accepted { deliveries, .. }) if n % 2 == 0 => {
                assert_eq!(deliveries, 1, "a hook that is not attached gets no delivery");
            }
            (n, Ingested::UnknownConnection) if n % 2 == 1 => {}
            (n, other) => panic!("event {n}: {other:?}"),
        }
    }
    assert_eq!(store.stats().await.unwrap().pending, 32, "every accepted event's delivery is committed");
    assert!(matches!(store.ingest("c", event("e0"), fanout, |_| {}).await.unwrap(), Ingested::Duplicate));
    assert_eq!(store.events("c", 100).await.unwrap().len(), 32);
    let (writes, commits) = commit_batches(&metrics);
    assert!(writes > commits, "some commits were shared: {writes} writes in {commits} commits");
}

#[tokio::test]
async fn an_id_sent_several_times_at_once_is_accepted_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_connection(dir.path(), 4).await;
    let kept = hook("hk_kept");
    store.attach_hook(kept.clone()).await.unwrap();
    let fanout = Fanout { queued: fanout_to(&[&kept]), handed: vec![], lease_until: 0 };
    // Sent at once, so that copies of one id meet in one batch as well as in different ones.
    let mut ingests = tokio::task::JoinSet::new();
    for n in 0..48 {
        let (store, fanout) = (store.clone(), fanout.clone());
        ingests
            .spawn(async move { store.ingest("c", event(&format!("same{}", n % 3)), fanout, |_| {}).await.unwrap() });
    }
    let (mut accepted, mut duplicates) = (0, 0);
    while let Some(done) = ingests.join_next().await {
        match done.unwrap() {
            Ingested::Accepted { deliveries: 1, .. } => accepted += 1,
            Ingested::Duplicate => duplicates += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((accepted, duplicates), (3, 45), "each of the three ids is accepted once");
    assert_eq!(store.stats().await.unwrap().pending, 3, "with one delivery each");
    assert_eq!(store.events("c", 100).await.unwrap().len(), 3);
}

#[tokio::test]
async fn an_event_the_database_refuses_fails_alone_among_those_sent_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_connection(dir.path(), 5).await;
    // PostgreSQL refuses a NUL in text (SQLite stores it): on PostgreSQL the batch holding it
    // fails as a whole, and each of its events is committed again on its own.
    let mut ingests = tokio::task::JoinSet::new();
    for n in 0..32 {
        let store = store.clone();
        let id = if n == 16 { "nul\0id".to_owned() } else { format!("e{n}") };
        let fanout = Fanout { queued: vec![], handed: vec![], lease_until: 0 };
        ingests.spawn(async move { (n, store.ingest("c", event(&id), fanout, |_| {}).await) });
    }
    while let Some(done) = ingests.join_next().await {
        match done.unwrap() {
            (n, Ok(Ingested::Accepted { .. })) => assert!(n != 16 || !is_postgres(), "PostgreSQL stored a NUL"),
            (16, Err(_)) if is_postgres() => {}
            (n, other) => panic!("event {n}: {other:?}"),
        }
    }
    let stored = store.events("c", 100).await.unwrap().len();
    assert_eq!(stored, if is_postgres() { 31 } else { 32 });
}

/// Ingests these events, each with a delivery waiting for `hook`.
async fn queue_to(store: &Store, hook: &Hook, ids: &[&str]) {
    for id in ids {
        let queued = fanout_to(&[hook]);
        store.ingest("c", event(id), Fanout { queued, handed: vec![], lease_until: 0 }, |_| {}).await.unwrap();
    }
}

/// Records delivery `id` of `hook` as delivered at its first attempt.
async fn delivered(store: &Store, id: i64, hook: &Hook) {
    let record = AttemptRecord {
        delivery_id: id,
        hook_id: hook.id.clone(),
        attempt: attempt(1, 200),
        next: NextStep::Delivered,
        streak: None,
    };
    store.record(Arc::from([record])).await.unwrap();
}

#[tokio::test]
async fn a_registry_of_many_pages_loads_whole_grouped_and_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let (store, url) = shared_store_with_connection(dir.path(), 1).await;
    store.create_connection(connection("d", 2)).await.unwrap();
    // More hooks than two of PostgreSQL's snapshot pages (10,000 rows), their ids in the
    // opposite order of their age, and the other connection's hooks after them.
    bulk_load(
        &url,
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 25000),
              key(k) AS (SELECT '[{\"secret\":\"whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\",\"expires_at\":null}]')
         INSERT INTO hooks (id, connection_id, url, event, template_id, created_at, secrets)
         SELECT 'hk_' || (100000 + i), 'c', 'https://example.com/c/' || i, 'image.created', '', 25000 - i, k FROM n, key
         UNION ALL
         SELECT 'hk_d' || i, 'd', 'https://example.com/d/' || i, 'image.created', '', 0, k FROM n, key WHERE i < 3",
    )
    .await;
    let mut read = Vec::new();
    store.each_connection(|connection, hooks| read.push((connection.id, hooks))).await.unwrap();
    let hooks_of = |id: &str| Arc::clone(&read.iter().find(|(c, _)| c == id).unwrap().1);
    let c = hooks_of("c");
    assert_eq!(c.len(), 25_001, "every hook, across pages");
    assert!(c.iter().all(|h| &*h.connection_id == "c"));
    assert!(c.windows(2).all(|w| (w[0].created_at, &w[0].id) < (w[1].created_at, &w[1].id)), "oldest first");
    assert_eq!(hooks_of("d").len(), 3);
}

/// Hooks attached before hooks had signing keys (their row says `[]`) get a key of their own
/// when a store of this version opens, each a different one.
#[tokio::test]
async fn hooks_without_keys_get_one_each_when_the_store_opens() {
    let dir = tempfile::tempdir().unwrap();
    let (store, url) = shared_store_with_connection(dir.path(), 1).await;
    bulk_load(
        &url,
        "INSERT INTO hooks (id, connection_id, url, event, template_id, created_at, secrets)
         VALUES ('hk_old1', 'c', 'https://example.com/1', 'image.created', '', 0, '[]'),
                ('hk_old2', 'c', 'https://example.com/2', 'image.created', '', 0, '[]')",
    )
    .await;
    drop(store);
    let store = Store::open(&url, Metrics::default()).await.unwrap();
    let (_, hooks) = store.connection("c").await.unwrap().unwrap();
    assert_eq!(hooks.len(), 2);
    assert_ne!(hooks[0].keys, hooks[1].keys, "a key each");
}

#[tokio::test]
async fn registry_writes_are_announced_to_other_instances_when_they_change_something() {
    let dir = tempfile::tempdir().unwrap();
    let (store, url) = shared_store_with_connection(dir.path(), 1).await;
    let Some(mut feed) = store.listen().await.unwrap() else {
        assert!(!is_postgres(), "only a store one instance uses has nothing to announce");
        return;
    };
    let other = Store::open(&url, Metrics::default()).await.unwrap();
    let h = hook("hk_1");
    assert!(matches!(other.attach_hook(h.clone()).await.unwrap(), Attached::Created(_)));
    assert!(matches!(other.attach_hook(h.clone()).await.unwrap(), Attached::Existing(_)));
    assert!(other.set_api_key_hash("c", [3; 32]).await.unwrap());
    assert!(!other.set_api_key_hash("nobody", [4; 32]).await.unwrap());
    assert!(other.set_secrets("c", Vec::new()).await.unwrap());
    assert!(other.detach_hook("c", "hk_1").await.unwrap());
    assert!(!other.detach_hook("c", "hk_1").await.unwrap());
    assert!(other.delete_connection("c").await.unwrap());
    // Five changes, five announcements; the writes that changed nothing announce nothing.
    for change in 1..=5 {
        let next = tokio::time::timeout(std::time::Duration::from_secs(5), feed.next()).await;
        assert_eq!(next.expect("announced").as_deref(), Some("c"), "announcement {change}");
    }
    let more = tokio::time::timeout(std::time::Duration::from_millis(300), feed.next()).await;
    assert!(more.is_err(), "nothing else announced: {more:?}");
}

/// Runs `sql` on the store at `url` from a connection of its own, as an operator's bulk load
/// would.
async fn bulk_load(url: &DatabaseUrl, sql: &str) {
    match url {
        DatabaseUrl::Sqlite(path) => {
            let db = rusqlite::Connection::open(path).unwrap();
            db.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
            db.execute_batch(sql).unwrap();
        }
        DatabaseUrl::Postgres(url) => {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(connection);
            client.batch_execute(sql).await.unwrap();
        }
    }
}

/// The event ids of what [`claimed`] returned, in its order.
fn event_ids(claimed: &[(i64, String)]) -> Vec<&str> {
    claimed.iter().map(|(_, e)| e.as_str()).collect()
}

/// What a claim of one delivery per hook at `now` leases until `lease_until`: (id, event id).
async fn claimed(store: &Store, now: i64, lease_until: i64) -> Vec<(i64, String)> {
    let due = claim(store, Claim { now, lease_until, limit: 10 }, 1).await;
    due.into_iter().map(|d| (d.id, d.event_id)).collect()
}

/// Claims by the store's protocol, at most `per_hook` of each hook with deliveries waiting: an
/// owning store is told which hooks those are, as the dispatcher would tell it.
async fn claim(store: &Store, claim: Claim, per_hook: usize) -> Vec<DueDelivery> {
    match store.scheduling() {
        Scheduling::Owning(owner) => {
            let waiting = store.waiting_by_hook(claim.now).await.unwrap();
            let named = waiting.into_keys().map(|hook| (hook, per_hook)).collect();
            let mut claimed = owner.claim(claim, named).await.unwrap();
            // Hand-offs whose lease ran out wait again; the dispatcher claims once more for them.
            let taken_back: Vec<_> = claimed.taken_back.iter().map(|(hook, _)| (hook.clone(), per_hook)).collect();
            if !taken_back.is_empty() {
                claimed.due.extend(owner.claim(claim, taken_back).await.unwrap().due);
            }
            claimed.due
        }
        Scheduling::Leasing(leaser) => leaser.claim(claim, per_hook, vec![]).await.unwrap().due,
    }
}

/// The leasing side of a store the test needs on PostgreSQL.
fn leasing(store: &Store) -> &PostgresStore {
    match store.scheduling() {
        Scheduling::Leasing(leaser) => leaser,
        Scheduling::Owning(_) => panic!("needs PostgreSQL: set RELAY_TEST_POSTGRES_URL"),
    }
}

/// How many writes the store's commits carried, and how many commits there were.
fn commit_batches(metrics: &Metrics) -> (f64, f64) {
    let text = metrics.render(&stencil_relay::metrics::Levels::default());
    let value = |name: &str| -> f64 {
        let line = text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} in {text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    (value("relay_store_commit_batch_size_sum "), value("relay_store_commit_batch_size_count "))
}
