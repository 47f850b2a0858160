//! The SQLite backend's tests: its migrations, and the store's behaviour where one process owns
//! every hook (records written twice, hand-offs, claims that name hooks).

use std::sync::Arc;

use super::schema::{MIGRATIONS, fill_hook_secrets, migrate};
use super::*;
use crate::config::DatabaseUrl;
use crate::metrics::Metrics;
use crate::model::{Attempt, AttemptRecord, Event, Hook, IMAGE_CREATED, NextStep};
use crate::store::test_records::{connection, hook};
use crate::store::{Claim, Fanout, FanoutHook, Ingested, OwnedClaim, Store};

/// Migrations 3, 5 and 6 rebuild `deliveries`, `events` and `attempts`: the rows must
/// survive, and the references must hold again afterwards.
#[test]
fn the_rebuilds_keep_every_row_and_reference() {
    let mut db = Db::open_in_memory().unwrap();
    db.execute_batch("PRAGMA foreign_keys = ON").unwrap();
    for sql in &MIGRATIONS[..2] {
        db.execute_batch(sql).unwrap();
    }
    db.execute_batch(
        "PRAGMA user_version = 2;
             INSERT INTO connections VALUES ('c', 'c', x'01', '[]', NULL, 0);
             INSERT INTO hooks VALUES ('hk', 'c', 'https://example.com', 'image.created', '', 0);
             INSERT INTO events VALUES (7, 'c', 'e', 'image.created', x'7b7d', 0);
             INSERT INTO deliveries VALUES (9, 7, 'hk', 'c', 'https://example.com', 1, 1, 0, NULL, 200, NULL, 0);
             INSERT INTO attempts VALUES (11, 9, 'hk', 'e', 1, 200, NULL, 1, 0);",
    )
    .unwrap();
    migrate(&mut db).unwrap();
    let count = |sql: &str| db.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
    assert_eq!(count("PRAGMA user_version"), MIGRATIONS.len() as i64);
    assert_eq!(count("SELECT COUNT(*) FROM deliveries WHERE id = 9 AND hook_id = 'hk'"), 1);
    assert_eq!(count("SELECT COUNT(*) FROM attempts WHERE delivery_id = 9"), 1, "no cascade ran");
    assert_eq!(count("SELECT COUNT(*) FROM sqlite_master WHERE name = 'deliveries_by_hook'"), 0);
    assert_eq!(count("PRAGMA foreign_keys"), 1);
    assert_eq!(count("SELECT seq FROM connection_events WHERE connection_id = 'c'"), 7, "migration 4 lists old events");
    assert_eq!(count("SELECT seq FROM connection_events_through"), 7);
    assert_eq!(count("SELECT COUNT(*) FROM event_ids WHERE connection_id = 'c' AND id = 'e'"), 1, "migration 5");
    assert_eq!(count("SELECT seq FROM event_ids_through"), 7);
    assert_eq!(count("SELECT COUNT(*) FROM sqlite_master WHERE tbl_name = 'events' AND type = 'index'"), 0);
    assert_eq!(count("SELECT attempt_id FROM hook_attempts WHERE hook_id = 'hk'"), 11, "migration 6");
    assert_eq!(count("SELECT id FROM hook_attempts_through"), 11);
    assert_eq!(count("SELECT COUNT(*) FROM sqlite_master WHERE name = 'attempts_by_hook'"), 0);
    assert_eq!(count("SELECT COUNT(*) FROM connections WHERE ingest_auth = 'signature'"), 1, "migration 7");
    assert_eq!(count("SELECT COUNT(*) FROM events WHERE template_id IS NULL"), 1);
    fill_hook_secrets(&db).unwrap();
    let keys: String = db.query_row("SELECT secrets FROM hooks WHERE id = 'hk'", [], |r| r.get(0)).unwrap();
    assert!(crate::store::stored_hook_keys(&keys).is_ok(), "a hook from before keys gets one: {keys}");
    db.execute("DELETE FROM events WHERE seq = 7", []).unwrap();
    assert_eq!(count("SELECT COUNT(*) FROM attempts"), 0, "an event's deletion still reaches its attempts");
    db.execute("INSERT INTO events (connection_id, id, type, payload, received_at) VALUES ('c', 'f', '', x'', 0)", [])
        .unwrap();
    assert_eq!(db.last_insert_rowid(), 8, "the rebuilt events table hands no seq out twice");
}

/// An ingest's `on_commit` for tests that look only at what `ingest` returns.
fn ignore(_: &mut Ingested) {}

async fn sqlite(dir: &tempfile::TempDir) -> Store {
    let store = Store::open(&DatabaseUrl::Sqlite(dir.path().join("relay.db")), Metrics::default()).await.unwrap();
    store.create_connection(connection("a")).await.unwrap();
    store
}

fn event(id: &str) -> Event {
    Event { id: id.into(), event_type: IMAGE_CREATED.into(), template_id: None, payload: "{}".into(), received_at: 0 }
}

#[tokio::test]
async fn a_record_written_twice_is_applied_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(&dir).await;
    let h = hook("hk_1")(Arc::from("a")).unwrap();
    store.attach_hook(h.clone()).await.unwrap();
    let handed = vec![FanoutHook { id: h.id.clone(), url: h.url.clone() }];
    let Ingested::Accepted { handed, .. } =
        store.ingest("a", event("e1"), Fanout { queued: vec![], handed, lease_until: 1 }, ignore).await.unwrap()
    else {
        panic!("not accepted")
    };
    let attempt = |status| Attempt {
        event_id: "e1".into(),
        attempt: 1,
        status_code: Some(status),
        error: None,
        duration_ms: 1,
        at: 1,
    };
    let record = |status, next| AttemptRecord {
        delivery_id: handed[0].id,
        hook_id: h.id.clone(),
        attempt: attempt(status),
        next,
        streak: None,
    };
    store.record(Arc::from([record(500, NextStep::RetryAt(10))])).await.unwrap();
    store.record(Arc::from([record(500, NextStep::RetryAt(10)), record(200, NextStep::Delivered)])).await.unwrap();
    let attempts = store.attempts(&h.id, 10).await.unwrap();
    assert_eq!(attempts.iter().map(|a| a.status_code).collect::<Vec<_>>(), [Some(500)], "attempt 1 is recorded once");
    assert_eq!(store.stats().await.unwrap().pending, 1, "and its retry stays scheduled");
}

#[tokio::test]
async fn a_hook_detached_after_the_plan_gets_no_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(&dir).await;
    let kept = hook("hk_kept")(Arc::from("a")).unwrap();
    let gone = hook("hk_gone")(Arc::from("a")).unwrap();
    for h in [&kept, &gone] {
        store.attach_hook(h.clone()).await.unwrap();
    }
    store.detach_hook("a", "hk_gone").await.unwrap();
    let fanout_hook = |h: &Hook| FanoutHook { id: h.id.clone(), url: h.url.clone() };
    let fanout = Fanout { queued: vec![fanout_hook(&gone)], handed: vec![fanout_hook(&kept)], lease_until: 1 };
    match store.ingest("a", event("e1"), fanout, ignore).await.unwrap() {
        Ingested::Accepted { deliveries, handed } => {
            assert_eq!(deliveries, 1);
            assert_eq!(handed.iter().map(|d| d.hook_id.as_str()).collect::<Vec<_>>(), ["hk_kept"]);
        }
        other => panic!("not accepted: {other:?}"),
    }
    assert_eq!(store.stats().await.unwrap().pending, 1);
}

#[tokio::test]
async fn hand_offs_go_back_to_the_claim_queue_when_released_expired_or_orphaned() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = sqlite(&dir).await;
    let mut ids = Vec::new();
    for (n, lease_until) in [(1, 100), (2, 100), (3, 10_000)] {
        let h = Hook { url: format!("https://x/{n}"), ..hook(&format!("hk_{n}"))(Arc::from("a")).unwrap() };
        store.attach_hook(h.clone()).await.unwrap();
        let handed = vec![FanoutHook { id: h.id, url: h.url }];
        let fanout = Fanout { queued: vec![], handed, lease_until };
        let Ingested::Accepted { handed, .. } =
            store.ingest("a", event(&format!("e{n}")), fanout, ignore).await.unwrap()
        else {
            panic!("not accepted")
        };
        ids.push(handed[0].id);
    }
    assert_eq!(store.stats().await.unwrap().pending, 3, "hand-offs in flight are pending");
    let claim = |store: Store, now| async move {
        let Store::Sqlite(store) = store else { unreachable!() };
        let every_hook = (1..=3).map(|n| (format!("hk_{n}"), 10)).collect();
        let claimed: OwnedClaim =
            store.claim(Claim { now, lease_until: 1_000_000, limit: 10 }, every_hook).await.unwrap();
        claimed.due.into_iter().map(|d| d.id).collect::<Vec<_>>()
    };
    assert_eq!(claim(store.clone(), 50).await, [0_i64; 0], "leased hand-offs are not claimed");
    store.release(vec![ids[0]]).await.unwrap();
    assert_eq!(claim(store.clone(), 50).await, [ids[0]], "a released hand-off is");
    assert_eq!(claim(store.clone(), 150).await, [ids[1]], "and one whose lease ran out");
    drop(store);
    store = Store::open(&DatabaseUrl::Sqlite(dir.path().join("relay.db")), Metrics::default()).await.unwrap();
    let after_restart = claim(store.clone(), 150).await;
    assert!(after_restart.contains(&ids[2]), "a hand-off of a process that is gone is claimed at once");
}

#[tokio::test]
async fn claims_naming_hooks_take_each_ones_oldest_and_say_what_waits() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(&dir).await;
    let mut hooks = Vec::new();
    for n in ["busy", "retrying", "idle"] {
        let h = Hook { url: format!("https://x/{n}"), ..hook(n)(Arc::from("a")).unwrap() };
        store.attach_hook(h.clone()).await.unwrap();
        hooks.push(FanoutHook { id: h.id, url: h.url });
    }
    for (i, at) in [5, 1, 4, 2, 3].into_iter().enumerate() {
        let event = Event { received_at: at, ..event(&format!("busy{i}")) };
        let fanout = Fanout { queued: vec![hooks[0].clone()], handed: vec![], lease_until: 0 };
        store.ingest("a", event, fanout, ignore).await.unwrap();
    }
    let fanout = Fanout { queued: vec![hooks[1].clone()], handed: vec![], lease_until: 0 };
    store.ingest("a", Event { received_at: 500, ..event("later") }, fanout, ignore).await.unwrap();
    let named = |limit| vec![("busy".to_owned(), limit), ("retrying".to_owned(), 5), ("idle".to_owned(), 5)];
    let Store::Sqlite(store) = store else { unreachable!() };
    let claim = Claim { now: 100, lease_until: 1_000, limit: 10 };
    let claimed = store.claim(claim, named(3)).await.unwrap();
    let received = claimed.due.iter().map(|d| (d.hook_id.as_str(), d.received_at)).collect::<Vec<_>>();
    assert_eq!(received.len(), 3, "three of the busy hook, none due of the others: {received:?}");
    assert!(received.iter().all(|(h, at)| *h == "busy" && *at <= 3), "its oldest first: {received:?}");
    let order = named(3);
    let next = |hook: &str| claimed.next_due[order.iter().position(|(h, _)| h == hook).unwrap()];
    assert_eq!((next("busy"), next("retrying"), next("idle")), (Some(4), Some(500), None));
    let again = store.claim(claim, named(3)).await.unwrap();
    assert_eq!(again.due.len(), 2, "leased deliveries are not claimed twice");
}
