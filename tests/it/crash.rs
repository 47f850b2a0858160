//! Crash consistency on the real binary: repeated SIGKILL under load loses nothing that got a
//! 2xx, and a store that cannot write answers 503 (never 202) and recovers.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use reqwest::{Method, StatusCode};

use crate::harness::process::{ingest_until_stopped, sqlite_env, test_env};
use crate::harness::{RelayProcess, Sink, event, eventually, stencil_event};

#[tokio::test]
async fn repeated_sigkill_under_load_loses_no_accepted_event() {
    let dir = tempfile::tempdir().unwrap();
    let env = test_env(dir.path()).await;
    let sink = Sink::start().await;
    let mut relay = RelayProcess::spawn(&env);
    let conn = relay.connection("acme").await;
    relay.attach(&conn, &sink.url, None).await;
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let mut accepted = HashSet::new();
    for round in 0..3 {
        let (ids, tasks) = ingest_until_stopped(&relay.base, &conn, &format!("evt-{round}"), 4);
        let pause = 100 + u64::from(seed.rotate_left(round as u32 * 7) % 400);
        tokio::time::sleep(Duration::from_millis(pause)).await; // a random moment: this is the test
        relay.kill();
        for task in tasks {
            task.await.unwrap();
        }
        accepted.extend(ids.lock().unwrap().drain(..));
        relay = RelayProcess::spawn(&env);
    }
    assert!(accepted.len() > 10, "the load ran ({} accepted, seed {seed})", accepted.len());
    let mut received: HashMap<String, usize> = HashMap::new();
    while !accepted.iter().all(|id| received.contains_key(id)) {
        *received.entry(sink.recv().await.header("webhook-id").to_owned()).or_default() += 1;
    }
    let duplicates: usize = received.values().map(|n| n - 1).sum();
    println!(
        "seed {seed}: {} events accepted across 3 SIGKILLs, all delivered; {duplicates} duplicate deliveries",
        accepted.len()
    );
    drop(relay);
}

#[tokio::test]
async fn a_store_that_cannot_write_answers_503_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let env = sqlite_env(dir.path());
    let sink = Sink::start().await;
    let relay = RelayProcess::spawn(&env);
    let conn = relay.connection("acme").await;
    let hook = relay.attach(&conn, &sink.url, None).await;
    assert_eq!(relay.ingest(&conn, &stencil_event("before")).await.status, StatusCode::ACCEPTED);
    sink.recv().await;
    relay.await_attempts(&conn, &hook, 1).await; // recorded: nothing is in flight when the disk fills

    let limit = |size: &str| {
        let pid = relay.pid().to_string();
        let status =
            std::process::Command::new("prlimit").args(["--pid", &pid, &format!("--fsize={size}")]).status().unwrap();
        assert!(status.success(), "prlimit works here");
    };
    limit("4096:unlimited"); // like a full disk: no file may grow past 4 KiB
    for n in 0..5 {
        let reply = relay.ingest(&conn, &stencil_event(&format!("full-{n}"))).await;
        assert_eq!((reply.status, reply.error()), (StatusCode::SERVICE_UNAVAILABLE, "unavailable"), "full-{n}");
    }
    let ready = relay.send(Method::GET, "/readyz", None, None, &[]).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE, "no commit can happen: not ready");
    limit("unlimited:unlimited");
    eventually("/readyz to answer 200 again", || async {
        (relay.send(Method::GET, "/readyz", None, None, &[]).await.status == StatusCode::OK).then_some(())
    })
    .await;
    let recovered = eventually("the store to accept again", || async {
        let reply = relay.ingest(&conn, &event("after", None)).await;
        (reply.status == StatusCode::ACCEPTED).then_some(())
    });
    recovered.await;
    assert_eq!(sink.recv().await.header("webhook-id"), "after", "nothing refused was delivered");
}
