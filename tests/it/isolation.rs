//! Tenant isolation as a property: random sequences of attaches, detaches (also of another
//! connection's hooks, which answer 204 and change nothing), rotations and events over several
//! connections; no event ever reaches another connection's hook, and no answer ever
//! shows another connection's hooks, events or credentials.

use std::collections::HashMap;
use std::time::Duration;

use proptest::prelude::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::{Conn, Sink, TestServer, event, eventually};

const CONNECTIONS: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    Attach(usize),
    Detach(usize, prop::sample::Index),
    /// Connection `.0` detaches a hook of connection `.1`.
    DetachForeign(usize, usize, prop::sample::Index),
    RotateKey(usize),
    RotateSecret(usize, bool),
    Ingest(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let conn = 0..CONNECTIONS;
    prop_oneof![
        3 => conn.clone().prop_map(Op::Attach),
        1 => (conn.clone(), any::<prop::sample::Index>()).prop_map(|(c, i)| Op::Detach(c, i)),
        1 => (conn.clone(), conn.clone(), any::<prop::sample::Index>()).prop_map(|(c, o, i)| Op::DetachForeign(c, o, i)),
        1 => conn.clone().prop_map(Op::RotateKey),
        1 => (conn.clone(), any::<bool>()).prop_map(|(c, g)| Op::RotateSecret(c, g)),
        4 => conn.prop_map(Op::Ingest),
    ]
}

/// What the test knows about one connection.
struct Tenant {
    conn: Conn,
    hooks: Vec<String>,
    events: Vec<String>,
    /// Every key and secret it ever had.
    credentials: Vec<String>,
}

async fn run(ops: Vec<Op>) {
    let relay = TestServer::start().await;
    let sink = Sink::start().await;
    let mut tenants = Vec::new();
    for c in 0..CONNECTIONS {
        let conn = relay.connection(&format!("tenant{c}")).await;
        let credentials = vec![conn.api_key.clone(), conn.secret.clone()];
        tenants.push(Tenant { conn, hooks: Vec::new(), events: Vec::new(), credentials });
    }
    for (n, op) in ops.iter().enumerate() {
        match *op {
            Op::Attach(c) => {
                let url = format!("{}/tenant{c}/{n}", sink.url);
                let id = relay.attach(&tenants[c].conn, &url, None).await;
                tenants[c].hooks.push(id);
            }
            Op::Detach(c, pick) if !tenants[c].hooks.is_empty() => {
                let at = pick.index(tenants[c].hooks.len());
                let id = tenants[c].hooks.remove(at);
                let reply = relay.api(&tenants[c].conn, Method::DELETE, &format!("/hooks/{id}"), None).await;
                assert_eq!(reply.status, StatusCode::NO_CONTENT);
            }
            Op::Detach(..) => {}
            Op::DetachForeign(c, other, pick) if c != other && !tenants[other].hooks.is_empty() => {
                let id = &tenants[other].hooks[pick.index(tenants[other].hooks.len())];
                let reply = relay.api(&tenants[c].conn, Method::DELETE, &format!("/hooks/{id}"), None).await;
                assert_eq!(reply.status, StatusCode::NO_CONTENT, "a detach answers the same whoever owns the hook");
                let still = relay.api(&tenants[other].conn, Method::GET, &format!("/hooks/{id}"), None).await;
                assert_eq!(still.status, StatusCode::OK, "tenant{c} detached tenant{other}'s hook");
            }
            Op::DetachForeign(..) => {}
            Op::RotateKey(c) => {
                let id = &tenants[c].conn.id;
                let reply = relay.admin(Method::POST, &format!("/connections/{id}/api-key"), None).await;
                tenants[c].conn.api_key = reply.body["api_key"].as_str().unwrap().to_owned();
                let key = tenants[c].conn.api_key.clone();
                tenants[c].credentials.push(key);
            }
            Op::RotateSecret(c, grace) => {
                let id = &tenants[c].conn.id;
                let body = json!({ "grace_seconds": if grace { 60 } else { 0 } });
                let reply = relay.admin(Method::POST, &format!("/connections/{id}/signing-secret"), Some(body)).await;
                tenants[c].conn.secret = reply.body["signing_secret"].as_str().unwrap().to_owned();
                let secret = tenants[c].conn.secret.clone();
                tenants[c].credentials.push(secret);
            }
            Op::Ingest(c) => {
                let id = format!("evt-{c}-{n}");
                let reply = relay.ingest(&tenants[c].conn, &event(&id, None)).await;
                assert_eq!(reply.status, StatusCode::ACCEPTED);
                assert_eq!(reply.body["deliveries"].as_u64().unwrap() as usize, tenants[c].hooks.len());
                tenants[c].events.push(id);
            }
        }
        for (c, tenant) in tenants.iter().enumerate() {
            let hooks = relay.api(&tenant.conn, Method::GET, "/hooks", None).await.body.to_string();
            let events = relay.api(&tenant.conn, Method::GET, "/events?limit=100", None).await.body.to_string();
            for (other, them) in tenants.iter().enumerate().filter(|(o, _)| *o != c) {
                let foreign = them.hooks.iter().chain(&them.events).chain(&them.credentials);
                for secret in foreign {
                    assert!(
                        !hooks.contains(secret.as_str()) && !events.contains(secret.as_str()),
                        "tenant{c} sees tenant{other}'s {secret}"
                    );
                }
            }
        }
    }
    eventually("all deliveries to settle", || async {
        let text = reqwest::get(format!("{}/metrics", relay.base)).await.ok()?.text().await.ok()?;
        text.contains("relay_pending_deliveries 0\n").then_some(())
    })
    .await;
    let owner: HashMap<&str, usize> =
        tenants.iter().enumerate().flat_map(|(c, t)| t.events.iter().map(move |e| (e.as_str(), c))).collect();
    loop {
        let got = tokio::select! {
            got = sink.recv() => got,
            () = tokio::time::sleep(Duration::from_millis(100)) => break,
        };
        let tenant: usize = got.path.split('/').nth(2).unwrap().trim_start_matches("tenant").parse().unwrap();
        let event = got.header("webhook-id");
        assert_eq!(owner[event], tenant, "{event} reached a hook of tenant{tenant}");
    }
}

#[test]
fn no_event_or_answer_crosses_connections() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let config = ProptestConfig { cases: 6, failure_persistence: None, ..ProptestConfig::default() };
    proptest!(config, |(ops in prop::collection::vec(op(), 5..25))| {
        runtime.block_on(run(ops));
    });
}
