//! The binary's command line: configuration errors, `sign`.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::harness::process::BIN;

/// Runs `command`, killing it if it has not exited within a few seconds (a start that should
/// have failed but serves instead must fail the test, not hang it).
fn run_briefly(command: &mut Command) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// `serve` with one variable set to `value` and harmless defaults for the rest.
fn serve_with(var: &str, value: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(BIN);
    command.arg("serve").env("RELAY_LISTEN", "127.0.0.1:0");
    command.env(
        "RELAY_DATABASE_URL",
        format!("sqlite://{}", dir.path().join("r.db").display()),
    );
    run_briefly(command.env(var, value))
}

#[test]
fn bad_settings_stop_the_start_with_one_line_and_exit_2() {
    for (var, value) in [
        ("RELAY_INGEST_RATE", "fast"),
        ("RELAY_HOOK_RATE", "0"),
        ("RELAY_RETRY_SCHEDULE", "5s,never"),
        ("RELAY_DELIVERY_TIMEOUT", "-1"),
        ("RELAY_MAX_BODY", "big"),
        ("RELAY_DATABASE_URL", "mysql://db"),
        ("RELAY_ALLOW_PRIVATE_TARGETS", "perhaps"),
        ("RELAY_LISTEN", "everywhere"),
        ("RELAY_LOG_FORMAT", "xml"),
    ] {
        let out = serve_with(var, value);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{var}={value}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(var) && stderr.contains(value), "{stderr}");
    }
}

#[test]
fn flags_win_over_environment() {
    let out = run_briefly(
        Command::new(BIN)
            .args(["serve", "--ingest-rate", "nope"])
            .env("RELAY_INGEST_RATE", "10"),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"nope\""));
}

#[test]
fn sign_prints_the_signature_of_a_file_or_stdin() {
    #[derive(serde::Deserialize)]
    struct Vector {
        secret: String,
        body: String,
        signature: String,
    }
    let vectors: Vec<Vector> =
        serde_json::from_slice(&crate::harness::fixture("signatures.json")).unwrap();
    let file = format!(
        "{}/fixtures/payloads/image-created.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let out = Command::new(BIN)
        .args(["sign", "--secret", &vectors[0].secret, &file])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        vectors[0].signature
    );

    use std::io::Write;
    let mut child = Command::new(BIN)
        .args(["sign", "--secret", &vectors[2].secret])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(vectors[2].body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        vectors[2].signature
    );
}
