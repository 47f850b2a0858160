//! The `attack` scenario: a well-behaved Stencil client's ingest and end-to-end latency with
//! nobody else around, then while one other address, without credentials, holds idle sockets
//! (nothing, one byte, or the HTTP/2 preface) and trickles ingest bodies at the relay's default
//! limits. Each attacking task reconnects when the relay closes it, pausing between tries, and
//! everything stops when the run ends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::Bench;
use crate::load::open_loop;
use crate::report::Row;
use crate::scenarios::{relay_row, setup};

/// Where the attacker's connections come from (the load generator uses 127.0.0.1).
const ATTACKER: &str = "127.0.0.2";
/// Idle sockets the attacker keeps open: the relay's default connection cap.
const IDLE_SOCKETS: usize = 4096;
/// Ingest bodies the attacker trickles at once: more than the default ingest slots.
const SLOW_BODIES: usize = 520;
/// How long an attacking task waits before it reconnects (bounds the attacker's own load on
/// the shared cores: thousands of refused sockets retry at once).
const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// The well-behaved client's rate.
const RATE: u32 = 200;

/// Counts of what the attacker achieved.
#[derive(Default)]
struct Attack {
    connections: AtomicU64,
    cut_off: AtomicU64,
}

pub(crate) async fn attack(bench: &Bench, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let setup = setup(bench, 10, 1).await?;
    for (run, attacked) in [("quiet", false), ("attacked", true)] {
        let stop = CancellationToken::new();
        let attack = Arc::new(Attack::default());
        let mut attackers = Vec::new();
        if attacked {
            let victim = setup.target.conns[0].id.clone();
            for n in 0..IDLE_SOCKETS {
                attackers.push(tokio::spawn(hold_idle(setup.relay.addr, n % 3, Arc::clone(&attack), stop.clone())));
            }
            for _ in 0..SLOW_BODIES {
                let victim = victim.clone();
                attackers.push(tokio::spawn(trickle(setup.relay.addr, victim, Arc::clone(&attack), stop.clone())));
            }
            // Let the attack reach full strength before measuring.
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let before = (setup.relay.cpu_seconds(), setup.sink.total.load(Ordering::Relaxed));
        let started = Instant::now();
        let outcome = open_loop(&setup.target, run, RATE, bench.duration).await?;
        let mut row = relay_row(bench, "attack", &setup, &outcome, before, started.elapsed()).await;
        stop.cancel();
        for task in attackers {
            let _ = task.await;
        }
        row.note = if attacked {
            format!(
                "open-loop {RATE}/s under attack from one address: {IDLE_SOCKETS} idle sockets + {SLOW_BODIES} slow bodies \
                 ({} attacker connections, {} cut off) {}",
                attack.connections.load(Ordering::Relaxed),
                attack.cut_off.load(Ordering::Relaxed),
                row.note
            )
        } else {
            format!("open-loop {RATE}/s, no attack {}", row.note)
        }
        .trim()
        .to_owned();
        rows.push(row);
    }
    Ok(())
}

async fn connect_from_attacker(to: SocketAddr) -> Option<TcpStream> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.bind(SocketAddr::new(ATTACKER.parse().ok()?, 0)).ok()?;
    socket.connect(to).await.ok()
}

/// Waits until the relay closes `stream` or the run ends; `true` if the relay closed it.
async fn until_closed(stream: &mut TcpStream, stop: &CancellationToken) -> bool {
    let mut buf = [0u8; 256];
    loop {
        tokio::select! {
            read = stream.read(&mut buf) => if matches!(read, Ok(0) | Err(_)) { return true },
            () = stop.cancelled() => return false,
        }
    }
}

/// Keeps one idle socket open: sends nothing, one byte, or the HTTP/2 preface (by `kind`).
async fn hold_idle(to: SocketAddr, kind: usize, attack: Arc<Attack>, stop: CancellationToken) {
    while !stop.is_cancelled() {
        if let Some(mut stream) = connect_from_attacker(to).await {
            attack.connections.fetch_add(1, Ordering::Relaxed);
            let opening: &[u8] = match kind {
                0 => b"",
                1 => b"P",
                _ => b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            };
            let _ = stream.write_all(opening).await;
            if until_closed(&mut stream, &stop).await {
                attack.cut_off.fetch_add(1, Ordering::Relaxed);
            }
        }
        tokio::select! {
            () = tokio::time::sleep(RETRY_PAUSE) => {}
            () = stop.cancelled() => {}
        }
    }
}

/// Keeps one ingest body trickling in: a byte every half second of a promised 100 kB.
async fn trickle(to: SocketAddr, connection_id: String, attack: Arc<Attack>, stop: CancellationToken) {
    while !stop.is_cancelled() {
        if let Some(mut stream) = connect_from_attacker(to).await {
            attack.connections.fetch_add(1, Ordering::Relaxed);
            let head =
                format!("POST /v1/ingest/{connection_id} HTTP/1.1\r\nhost: relay\r\ncontent-length: 100000\r\n\r\n");
            let mut open = stream.write_all(head.as_bytes()).await.is_ok();
            while open && !stop.is_cancelled() {
                open = stream.write_all(b" ").await.is_ok() && {
                    let mut buf = [0u8; 256];
                    tokio::select! {
                        _ = stream.read(&mut buf) => false,
                        () = tokio::time::sleep(Duration::from_millis(500)) => true,
                        () = stop.cancelled() => false,
                    }
                };
            }
            if !stop.is_cancelled() {
                attack.cut_off.fetch_add(1, Ordering::Relaxed);
            }
        }
        tokio::select! {
            () = tokio::time::sleep(RETRY_PAUSE) => {}
            () = stop.cancelled() => {}
        }
    }
}
