//! `stencil-relay doctor`: what a connection's owner sees when Stencil's images do not reach
//! Make or Zapier. It asks the relay, with the connection's API key, what it knows: whether it
//! answers at all, how the connection expects Stencil to authenticate and why recent ingest
//! requests were refused (reasons and counts, never what they carried), the last event, and each
//! hook with its last attempt. Every problem comes with what to do about it.

use std::fmt::Write as _;

use hyper::{Method, StatusCode};
use serde_json::Value;

use super::http::JsonClient;
use super::operator::text;

/// Arguments of `doctor`.
#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// The relay's public base URL, as Stencil and Make reach it.
    #[arg(long, env = "RELAY_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// The connection's API key (the one the Make or Zapier connection uses).
    #[arg(long, env = "RELAY_API_KEY", hide_env_values = true)]
    pub api_key: String,
    /// A Stencil template id, to print the exact webhook URL for it.
    #[arg(long)]
    pub template: Option<String>,
}

/// The report, and whether it found a problem.
pub(super) struct Report {
    /// What to print.
    pub(super) text: String,
    /// Whether anything needs fixing.
    pub(super) problems: usize,
}

impl Report {
    fn ok(&mut self, line: impl AsRef<str>) {
        let _ = writeln!(self.text, "ok       {}", line.as_ref());
    }

    fn problem(&mut self, line: impl AsRef<str>) {
        self.problems += 1;
        let _ = writeln!(self.text, "PROBLEM  {}", line.as_ref());
    }

    fn note(&mut self, line: impl AsRef<str>) {
        let _ = writeln!(self.text, "         {}", line.as_ref());
    }
}

/// Runs the checks. Stops early only where nothing further can be learnt (the relay does not
/// answer, or the key is refused).
///
/// # Errors
/// Never for what the relay answers (that is the report); only for a client that cannot be built.
pub(super) async fn run(args: &DoctorArgs) -> anyhow::Result<Report> {
    let server = args.server.trim_end_matches('/');
    let http = JsonClient::new(std::time::Duration::from_secs(10))?;
    let mut report = Report { text: String::new(), problems: 0 };
    match http.call(Method::GET, &format!("{server}/healthz"), None, None).await {
        Ok(r) if r.status.is_success() => report.ok(format!("the relay at {server} answers")),
        Ok(r) => {
            report.problem(format!("the relay at {server} answered /healthz with {}", r.status));
            return Ok(report);
        }
        Err(e) => {
            report.problem(format!("the relay at {server} is unreachable: {e}"));
            report.note("check the URL (the public one Stencil posts to) and that the relay is running");
            return Ok(report);
        }
    }
    let get = |path: String| {
        let http = http.clone();
        async move { http.call(Method::GET, &format!("{server}/v1{path}"), Some(&args.api_key), None).await }
    };
    let connection = match get("/connection".into()).await {
        Ok(r) if r.status == StatusCode::UNAUTHORIZED => {
            report.problem("the API key is not valid for this relay (rotated, or another relay's)");
            return Ok(report);
        }
        Ok(r) => r.body,
        Err(e) => {
            report.problem(format!("GET /v1/connection failed: {e}"));
            return Ok(report);
        }
    };
    connection_checks(&mut report, &connection, args.template.as_deref());
    let events = get("/events?limit=1".into()).await.map_or(Value::Null, |r| r.body);
    match events["data"].get(0) {
        Some(event) => report.ok(format!(
            "last event received at {} (template {})",
            text(&event["received_at"]),
            text(&event["template_id"])
        )),
        None => report
            .problem("no event has arrived yet: render an image in Stencil, or check the webhook URL and header above"),
    }
    let hooks = get("/hooks".into()).await.map_or(Value::Null, |r| r.body);
    let hooks = hooks["data"].as_array().cloned().unwrap_or_default();
    if hooks.is_empty() {
        report.problem("no hooks: in Make, turn on the scenario with Watch Images; in Zapier, turn on the Zap");
    }
    for hook in hooks {
        let id = text(&hook["id"]);
        let attempts = get(format!("/hooks/{id}/deliveries?limit=1")).await.map_or(Value::Null, |r| r.body);
        let label = format!("hook {id} → {} (template {})", text(&hook["url"]), text(&hook["template_id"]));
        match attempts["data"].get(0) {
            None => report.ok(format!("{label}: nothing delivered yet")),
            Some(a) if a["status_code"].as_u64().is_some_and(|s| (200..300).contains(&s)) => {
                report.ok(format!("{label}: last delivery {} at {}", text(&a["status_code"]), text(&a["at"])));
            }
            Some(a) => report.problem(format!(
                "{label}: last attempt at {} failed: {}",
                text(&a["at"]),
                text(if a["error"].is_null() { &a["status_code"] } else { &a["error"] })
            )),
        }
    }
    Ok(report)
}

/// What the connection says about how Stencil must send, and what was refused.
fn connection_checks(report: &mut Report, connection: &Value, template: Option<&str>) {
    report.ok(format!("the API key belongs to connection {} ({})", text(&connection["id"]), text(&connection["name"])));
    let url = text(&connection["ingest_url"]);
    let url = match template {
        Some(t) => format!("{url}?template_id={t}"),
        None => format!("{url}?template_id=<template id>"),
    };
    let auth = text(&connection["ingest_auth"]);
    report.note(format!("Stencil webhook URL: {url}"));
    match auth.as_str() {
        "token" => report.note("Stencil custom header: Authorization: Bearer <the connection's signing secret>"),
        "either" => report.note(
            "Stencil custom header: Authorization: Bearer <signing secret> (or a webhook secret that signs X-UseStencil-Signature)",
        ),
        _ => report.note("Stencil must sign with the connection's signing secret (X-UseStencil-Signature)"),
    }
    let rejected = &connection["rejected_ingests"];
    let total = rejected["total"].as_u64().unwrap_or(0);
    if total == 0 {
        report.ok("no ingest request was refused since the relay started");
        return;
    }
    report.problem(format!("{total} ingest requests were refused since the relay started (ingest_auth: {auth})"));
    for entry in rejected["recent"].as_array().into_iter().flatten().take(5) {
        report.note(format!("{}  {}", text(&entry["at"]), text(&entry["reason"])));
    }
    let mut advice: Vec<String> =
        rejected["recent"].as_array().into_iter().flatten().map(|e| text(&e["advice"])).collect();
    advice.dedup();
    for line in advice {
        report.note(format!("→ {line}"));
    }
}
