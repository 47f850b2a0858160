//! The real `stencil-relay` binary as a child process, for what only a process can show:
//! SIGKILL and SIGTERM, exit codes, and what it prints.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

use super::Conn;

use super::client::{ADMIN_TOKEN, RelayClient};

/// The binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_stencil-relay");

/// Runs `command`, killing it if it has not exited within a few seconds (a start that should
/// have failed but serves instead must fail the test, not hang it).
pub(crate) fn run_briefly(command: &mut Command) -> std::process::Output {
    let mut child = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// A running relay process.
pub(crate) struct RelayProcess {
    child: Child,
    client: RelayClient,
    log: Arc<Mutex<Vec<String>>>,
}

impl std::ops::Deref for RelayProcess {
    type Target = RelayClient;

    fn deref(&self) -> &RelayClient {
        &self.client
    }
}

/// The test settings as environment variables, on the test's store (see `database_url`).
pub(crate) async fn test_env(dir: &Path) -> Vec<(String, String)> {
    let mut env = sqlite_env(dir);
    env.retain(|(k, _)| k != "RELAY_DATABASE_URL");
    env.push(("RELAY_DATABASE_URL".to_owned(), super::database_url(dir).await));
    env
}

/// The test settings as environment variables, always on an SQLite file in `dir`.
pub(crate) fn sqlite_env(dir: &Path) -> Vec<(String, String)> {
    [
        ("RELAY_LISTEN", "127.0.0.1:0".to_owned()),
        ("RELAY_DATABASE_URL", format!("sqlite://{}", dir.join("relay.db").display())),
        ("RELAY_LEASE", "4s".to_owned()),
        ("RELAY_DELIVERY_TIMEOUT", "2s".to_owned()),
        ("RELAY_ADMIN_TOKEN", ADMIN_TOKEN.to_owned()),
        ("RELAY_TARGET_HOSTS", "*".to_owned()),
        ("RELAY_ALLOW_PRIVATE_TARGETS", "true".to_owned()),
        ("RELAY_RETRY_SCHEDULE", "200ms,200ms,200ms,200ms,200ms,200ms,200ms,200ms,200ms,200ms".to_owned()),
        ("RELAY_HOOK_RATE", "1000".to_owned()),
        ("RELAY_INGEST_RATE", "10000".to_owned()),
        ("RELAY_LOG_FORMAT", "json".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

impl RelayProcess {
    /// Starts `stencil-relay serve` with `env` (and nothing from the test's own environment
    /// that starts with `RELAY_`), and waits until it reports its address.
    pub(crate) fn spawn(env: &[(String, String)]) -> Self {
        let mut command = Command::new(BIN);
        command.arg("serve").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("RELAY_")) {
            command.env_remove(key);
        }
        let mut child = command.envs(env.iter().map(|(k, v)| (k, v))).spawn().expect("the binary runs");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && v["message"] == "listening"
                {
                    let _ = addr_tx.send(v["addr"].as_str().unwrap_or_default().to_owned());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let addr = addr_rx
            .recv_timeout(super::PATIENCE)
            .unwrap_or_else(|_| panic!("the relay did not report its address: {:?}", log.lock().unwrap()));
        Self { child, client: RelayClient::new(format!("http://{addr}")), log }
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every line written to stderr so far.
    pub(crate) fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// SIGKILL: no chance to clean up.
    pub(crate) fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then the exit status and the whole log.
    pub(crate) fn terminate(mut self) -> (ExitStatus, Vec<String>) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("a pid fits an i32"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("the relay can be signalled");
        let deadline = std::time::Instant::now() + super::PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                std::thread::sleep(std::time::Duration::from_millis(50)); // let the reader drain stderr
                return (status, self.log());
            }
            assert!(std::time::Instant::now() < deadline, "the relay did not exit after SIGTERM");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Signed ingests from `workers` tasks (ids `{prefix}-{worker}-{n}`) until the relay stops
/// answering; the accepted ids, and the tasks to await.
pub(crate) fn ingest_until_stopped(
    base: &str,
    conn: &Conn,
    prefix: &str,
    workers: usize,
) -> (Arc<Mutex<Vec<String>>>, Vec<tokio::task::JoinHandle<()>>) {
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let tasks = (0..workers)
        .map(|worker| {
            let (base, conn, accepted, prefix) =
                (base.to_owned(), conn.clone(), Arc::clone(&accepted), prefix.to_owned());
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                for n in 0.. {
                    let id = format!("{prefix}-{worker}-{n}");
                    let body = super::event(&id, None);
                    let signature = stencil_relay::signature::sign(&conn.secret, &body);
                    let url = format!("{base}/v1/ingest/{}", conn.id);
                    match http.post(url).header("x-usestencil-signature", signature).body(body).send().await {
                        Ok(r) if r.status().is_success() => accepted.lock().unwrap().push(id),
                        Ok(r) => panic!("unexpected {}", r.status()),
                        Err(_) => return, // the relay stopped accepting
                    }
                }
            })
        })
        .collect();
    (accepted, tasks)
}
