//! The binary's command line: configuration errors, `sign`.

use std::process::{Command, Output};

use crate::harness::process::{BIN, run_briefly};

/// `serve` with one variable set to `value` and harmless defaults for the rest.
fn serve_with(var: &str, value: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(BIN);
    command.arg("serve").env("RELAY_LISTEN", "127.0.0.1:0");
    command.env("RELAY_DATABASE_URL", format!("sqlite://{}", dir.path().join("r.db").display()));
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
        // A database URL may carry a password: it is not repeated.
        let shown = var != "RELAY_DATABASE_URL";
        assert!(stderr.contains(var) && stderr.contains(value) == shown, "{stderr}");
    }
}

#[test]
fn flags_win_over_environment() {
    let out = run_briefly(Command::new(BIN).args(["serve", "--ingest-rate", "nope"]).env("RELAY_INGEST_RATE", "10"));
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
    let vectors: Vec<Vector> = serde_json::from_slice(&crate::harness::fixture("signatures.json")).unwrap();
    let file = format!("{}/fixtures/payloads/legacy-image-created-with-id.json", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(BIN).args(["sign", "--secret", &vectors[0].secret, &file]).output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), vectors[0].signature);

    use std::io::Write;
    let mut child = Command::new(BIN)
        .args(["sign", "--secret", &vectors[2].secret])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(vectors[2].body.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), vectors[2].signature);
}

/// Runs an operator command against `relay` (or `server`), returning exit code, stdout, stderr.
async fn operator(server: &str, token: Option<&str>, args: &[&str]) -> (i32, String, String) {
    let mut command = tokio::process::Command::new(BIN);
    command.args(args).arg("--server").arg(server).env_remove("RELAY_ADMIN_TOKEN").env_remove("RELAY_SERVER");
    if let Some(token) = token {
        command.arg("--admin-token").arg(token);
    }
    let out = tokio::time::timeout(crate::harness::PATIENCE, command.output()).await.unwrap().unwrap();
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (out.status.code().unwrap_or(-1), text(out.stdout), text(out.stderr))
}

#[tokio::test]
async fn operator_commands_manage_connections_hooks_and_dead_letters() {
    use crate::harness::client::ADMIN_TOKEN;
    let relay = crate::harness::TestServer::start().await;
    let t = Some(ADMIN_TOKEN);
    let (code, out, _) =
        operator(&relay.base, t, &["connections", "add", "--name", "Acme", "--id", "acme", "--json"]).await;
    assert_eq!(code, 0);
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    let conn = crate::harness::Conn {
        id: "acme".into(),
        api_key: created["api_key"].as_str().unwrap().into(),
        secret: created["signing_secret"].as_str().unwrap().into(),
    };
    let sink = crate::harness::Sink::start_with(crate::harness::SinkReply::Status(422)).await;
    let hook = relay.attach(&conn, &sink.url, None).await;

    let (code, out, _) = operator(&relay.base, t, &["connections", "list"]).await;
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("ID") && lines[0].contains("HOOKS"), "{out}");
    assert!(lines[1].starts_with("acme") && lines[1].contains("Acme") && lines[1].contains(" 1 "), "{out}");
    assert!(!out.contains(&conn.api_key));

    let (_, out, _) = operator(&relay.base, t, &["hooks", "list", "--connection", "acme"]).await;
    assert!(out.contains(&hook) && out.contains(&sink.url), "{out}");
    assert!(out.lines().next().is_some_and(|h| h.contains("STATUS") && h.contains("FAILURES")), "{out}");
    assert!(out.lines().nth(1).is_some_and(|l| l.contains(" active ")), "{out}");
    let (_, out, _) = operator(&relay.base, t, &["connections", "show", "acme"]).await;
    assert!(out.lines().any(|l| l.starts_with("hook_count") && l.ends_with('1')), "{out}");

    relay.ingest(&conn, &crate::harness::event("evt-cli", None)).await;
    sink.recv().await;
    let letter = crate::harness::eventually("a dead letter", || async {
        let (_, out, _) = operator(&relay.base, t, &["dead-letters", "list", "--connection", "acme", "--json"]).await;
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["data"][0]["id"].as_str().map(str::to_owned)
    })
    .await;
    let (_, out, _) = operator(&relay.base, t, &["dead-letters", "list"]).await;
    assert!(out.contains("evt-cli") && out.contains("422"), "{out}");
    sink.answer(crate::harness::SinkReply::Status(200));
    assert_eq!(operator(&relay.base, t, &["dead-letters", "retry", &letter]).await.0, 0);
    assert_eq!(sink.recv().await.header("webhook-id"), "evt-cli");

    let (code, out, _) = operator(&relay.base, t, &["connections", "rotate-key", "acme"]).await;
    assert!(code == 0 && out.starts_with("api_key"), "{out}");
    let (code, out, _) = operator(&relay.base, t, &["connections", "rotate-secret", "acme", "--grace", "60"]).await;
    assert!(code == 0 && out.contains("signing_secret"), "{out}");
    assert_eq!(operator(&relay.base, t, &["connections", "remove", "acme"]).await.0, 0);
    let (code, _, err) = operator(&relay.base, t, &["connections", "show", "acme"]).await;
    assert_eq!((code, err.trim().lines().count()), (5, 1), "{err}");
}

#[tokio::test]
async fn connections_take_and_change_ingest_auth_and_tables_never_print_escapes() {
    use crate::harness::client::ADMIN_TOKEN;
    let relay = crate::harness::TestServer::start().await;
    let t = Some(ADMIN_TOKEN);
    let add = ["connections", "add", "--name", "Shop", "--id", "shop", "--ingest-auth", "token", "--json"];
    let (code, out, _) = operator(&relay.base, t, &add).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap()["ingest_auth"], "token");
    let evil = "Shop\u{1b}]0;owned\u{7}\u{1b}[2J";
    let set = ["connections", "set", "shop", "--ingest-auth", "either", "--name", evil];
    let (code, out, _) = operator(&relay.base, t, &set).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.lines().any(|l| l.starts_with("ingest_auth") && l.ends_with("either")), "{out}");
    let (_, list, _) = operator(&relay.base, t, &["connections", "list"]).await;
    for printed in [&out, &list] {
        assert!(!printed.contains('\u{1b}') && !printed.contains('\u{7}'), "escapes reach the terminal: {printed:?}");
        assert!(printed.contains("\\u{1b}]0;owned"), "{printed}");
    }
    let (code, _, err) = operator(&relay.base, t, &["connections", "set", "shop", "--ingest-auth", "hmac"]).await;
    assert_eq!(code, 2, "{err}");
}

#[tokio::test]
async fn operator_errors_are_one_line_with_distinct_exit_codes() {
    let relay = crate::harness::TestServer::start().await;
    let (code, _, err) = operator(&relay.base, Some("wrong"), &["connections", "list"]).await;
    assert_eq!(code, 4);
    assert!(err.contains("unauthorized") && err.trim().lines().count() == 1, "{err}");
    let (code, _, err) = operator(&relay.base, None, &["connections", "list"]).await;
    assert!(code == 2 && err.contains("RELAY_ADMIN_TOKEN"), "{err}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (code, _, err) = operator(&format!("http://{closed}"), Some("x"), &["connections", "list"]).await;
    assert!(code == 3 && err.contains("cannot reach") && err.trim().lines().count() == 1, "{err}");
}

#[test]
fn demo_walks_one_event_to_a_hook_and_exits_zero() {
    let out = run_briefly(Command::new(BIN).arg("demo"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    for step in [
        "created connection",
        "attached hook",
        "answered 202",
        "delivered to the hook",
        "identical to what Stencil sent: true",
    ] {
        assert!(stdout.contains(step), "missing {step:?} in\n{stdout}");
    }
}
