//! The operator commands: a client of the admin API that prints readable tables (or the raw
//! JSON with `--json`) and fails with one clear line and a distinct exit code.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use hyper::Method;
use serde_json::{Value, json};

use super::http::{DEFAULT_TIMEOUT, JsonClient};

/// Where the admin API is and how to authenticate, shared by every operator command.
#[derive(Debug, Clone, Args)]
pub struct Remote {
    /// Base URL of the relay.
    #[arg(long, env = "RELAY_SERVER", default_value = "http://127.0.0.1:8080", global = true)]
    pub server: String,
    /// The relay's admin token.
    #[arg(long, env = "RELAY_ADMIN_TOKEN", hide_env_values = true, global = true)]
    pub admin_token: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `connections …`
#[derive(Debug, Subcommand)]
pub enum ConnectionsCommand {
    /// Create a connection; prints its API key and signing secret (shown only once).
    Add {
        /// Human name.
        #[arg(long)]
        name: String,
        /// Id (`[A-Za-z0-9_-]{1,64}`); generated when absent.
        #[arg(long)]
        id: Option<String>,
        /// Ingest events per second for this connection.
        #[arg(long)]
        ingest_rate: Option<u32>,
        /// How Stencil authenticates: `signature` (X-UseStencil-Signature), `token`
        /// (`Authorization: Bearer <signing secret>`) or `either`.
        #[arg(long, value_parser = ["signature", "token", "either"], default_value = "signature")]
        ingest_auth: String,
    },
    /// Change a connection's name, ingest rate or how Stencil authenticates.
    Set {
        /// Connection id.
        id: String,
        /// New human name.
        #[arg(long)]
        name: Option<String>,
        /// New ingest events per second.
        #[arg(long)]
        ingest_rate: Option<u32>,
        /// `signature`, `token` or `either`.
        #[arg(long, value_parser = ["signature", "token", "either"])]
        ingest_auth: Option<String>,
    },
    /// List connections with their hook counts.
    List,
    /// Show one connection.
    Show {
        /// Connection id.
        id: String,
    },
    /// Delete a connection with its hooks and pending deliveries.
    Remove {
        /// Connection id.
        id: String,
    },
    /// Issue a new API key; the old one stops working at once.
    RotateKey {
        /// Connection id.
        id: String,
    },
    /// Issue a new signing secret; the old one keeps verifying for `--grace` seconds.
    RotateSecret {
        /// Connection id.
        id: String,
        /// Seconds the old secret stays valid.
        #[arg(long, default_value_t = 0)]
        grace: u64,
    },
}

/// `hooks …`
#[derive(Debug, Subcommand)]
pub enum HooksCommand {
    /// List a connection's hooks.
    List {
        /// Connection id.
        #[arg(long)]
        connection: String,
    },
}

/// `dead-letters …`
#[derive(Debug, Subcommand)]
pub enum DeadLettersCommand {
    /// List deliveries that ran out of chances, newest first.
    List {
        /// Only this connection's.
        #[arg(long)]
        connection: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Schedule a dead letter again from attempt 1.
    Retry {
        /// Dead-letter id (`dlv_…`).
        id: String,
    },
}

/// Why an operator command failed; each kind has its own exit code.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// No admin token given (exit 2).
    #[error("no admin token: pass --admin-token or set RELAY_ADMIN_TOKEN")]
    NoToken,
    /// The relay could not be reached (exit 3).
    #[error("cannot reach the relay at {server}: {cause}")]
    Unreachable {
        /// The base URL tried.
        server: String,
        /// Why.
        cause: String,
    },
    /// The admin token was refused (exit 4).
    #[error("unauthorized: the relay refused the admin token (or its admin API is off)")]
    Unauthorized,
    /// The thing asked for does not exist (exit 5).
    #[error("not found: {0}")]
    NotFound(String),
    /// Any other refusal (exit 1).
    #[error("the relay answered {status}: {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The API's message.
        message: String,
    },
}

impl OperatorError {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            Self::NoToken => 2,
            Self::Unreachable { .. } => 3,
            Self::Unauthorized => 4,
            Self::NotFound(_) => 5,
            Self::Refused { .. } => 1,
        })
    }
}

/// A client of one relay's admin API.
pub struct AdminClient {
    server: String,
    token: String,
    http: JsonClient,
}

impl AdminClient {
    /// A client for `remote`.
    ///
    /// # Errors
    /// No admin token was given.
    pub fn new(remote: &Remote) -> Result<Self, OperatorError> {
        let token = remote.admin_token.clone().filter(|t| !t.is_empty()).ok_or(OperatorError::NoToken)?;
        let server = remote.server.trim_end_matches('/').to_owned();
        let http = JsonClient::new(DEFAULT_TIMEOUT)
            .map_err(|e| OperatorError::Unreachable { server: server.clone(), cause: e.to_string() })?;
        Ok(Self { server, token, http })
    }

    /// Calls `method /admin/v1{path}` and returns the JSON answer (`Null` when empty).
    ///
    /// # Errors
    /// Unreachable, unauthorized, not found, or any other refusal.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, OperatorError> {
        let url = format!("{}/admin/v1{path}", self.server);
        let answer = self
            .http
            .call(method, &url, Some(&self.token), body.as_ref())
            .await
            .map_err(|e| OperatorError::Unreachable { server: self.server.clone(), cause: e.to_string() })?;
        let (status, body) = (answer.status.as_u16(), answer.body);
        let message = body["message"].as_str().unwrap_or("no message").to_owned();
        match status {
            200..=299 => Ok(body),
            401 => Err(OperatorError::Unauthorized),
            404 => Err(OperatorError::NotFound(message)),
            _ => Err(OperatorError::Refused { status, message }),
        }
    }
}

/// Runs a `connections` command and returns what to print.
///
/// # Errors
/// See [`OperatorError`].
pub(super) async fn connections(
    client: &AdminClient,
    command: ConnectionsCommand,
    as_json: bool,
) -> Result<String, OperatorError> {
    let (answer, view): (Value, fn(&Value) -> String) = match command {
        ConnectionsCommand::Add { name, id, ingest_rate, ingest_auth } => {
            let body = json!({ "name": name, "id": id, "ingest_rate": ingest_rate, "ingest_auth": ingest_auth });
            (client.call(Method::POST, "/connections", Some(body)).await?, fields)
        }
        ConnectionsCommand::Set { id, name, ingest_rate, ingest_auth } => {
            let mut body = serde_json::Map::new();
            for (key, value) in
                [("name", json!(name)), ("ingest_rate", json!(ingest_rate)), ("ingest_auth", json!(ingest_auth))]
            {
                if !value.is_null() {
                    body.insert(key.to_owned(), value);
                }
            }
            (client.call(Method::PATCH, &format!("/connections/{id}"), Some(Value::Object(body))).await?, fields)
        }
        ConnectionsCommand::List => (client.call(Method::GET, "/connections", None).await?, connection_table),
        ConnectionsCommand::Show { id } => {
            (client.call(Method::GET, &format!("/connections/{id}"), None).await?, fields)
        }
        ConnectionsCommand::Remove { id } => {
            client.call(Method::DELETE, &format!("/connections/{id}"), None).await?;
            (json!({ "removed": id }), fields)
        }
        ConnectionsCommand::RotateKey { id } => {
            (client.call(Method::POST, &format!("/connections/{id}/api-key"), None).await?, fields)
        }
        ConnectionsCommand::RotateSecret { id, grace } => {
            let body = json!({ "grace_seconds": grace });
            (client.call(Method::POST, &format!("/connections/{id}/signing-secret"), Some(body)).await?, fields)
        }
    };
    Ok(render(&answer, as_json, view))
}

/// Runs a `hooks` command and returns what to print.
///
/// # Errors
/// See [`OperatorError`].
pub(super) async fn hooks(client: &AdminClient, command: HooksCommand, as_json: bool) -> Result<String, OperatorError> {
    let HooksCommand::List { connection } = command;
    let answer = client.call(Method::GET, &format!("/connections/{connection}/hooks"), None).await?;
    Ok(render(&answer, as_json, |v| {
        table(
            &["ID", "STATUS", "PAUSED UNTIL", "FAILURES", "LAST SUCCESS", "EVENT", "TEMPLATE", "URL", "CREATED"],
            &v["data"],
            &[
                "id",
                "status",
                "paused_until",
                "consecutive_failures",
                "last_success_at",
                "event",
                "template_id",
                "url",
                "created_at",
            ],
        )
    }))
}

/// Runs a `dead-letters` command and returns what to print.
///
/// # Errors
/// See [`OperatorError`].
pub(super) async fn dead_letters(
    client: &AdminClient,
    command: DeadLettersCommand,
    as_json: bool,
) -> Result<String, OperatorError> {
    match command {
        DeadLettersCommand::List { connection, limit } => {
            let filter = connection.map(|c| format!("&connection={c}")).unwrap_or_default();
            let answer = client.call(Method::GET, &format!("/dead-letters?limit={limit}{filter}"), None).await?;
            Ok(render(&answer, as_json, |v| {
                let columns =
                    ["id", "connection_id", "event_id", "hook_id", "attempts", "last_status", "last_error", "dead_at"];
                table(
                    &["ID", "CONNECTION", "EVENT", "HOOK", "ATTEMPTS", "STATUS", "ERROR", "DEAD AT"],
                    &v["data"],
                    &columns,
                )
            }))
        }
        DeadLettersCommand::Retry { id } => {
            let answer = client.call(Method::POST, &format!("/dead-letters/{id}/retry"), None).await?;
            Ok(render(&answer, as_json, fields))
        }
    }
}

fn render(answer: &Value, as_json: bool, view: fn(&Value) -> String) -> String {
    if as_json { serde_json::to_string_pretty(answer).unwrap_or_default() } else { view(answer) }
}

/// A value as a table cell. Control characters (a tenant's text could carry terminal escapes)
/// are shown escaped, never sent to the operator's terminal.
pub(super) fn text(v: &Value) -> String {
    let raw = match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if raw.chars().any(char::is_control) {
        raw.chars()
            .flat_map(|c| if c.is_control() { c.escape_default().collect::<Vec<_>>() } else { vec![c] })
            .collect()
    } else {
        raw
    }
}

/// One `key: value` line per field.
fn fields(v: &Value) -> String {
    let Some(object) = v.as_object() else {
        return text(v);
    };
    let width = object.keys().map(String::len).max().unwrap_or(0);
    object.iter().map(|(k, v)| format!("{k:<width$}  {}", text(v))).collect::<Vec<_>>().join("\n")
}

fn connection_table(v: &Value) -> String {
    table(
        &["ID", "NAME", "HOOKS", "RATE", "AUTH", "CREATED"],
        &v["data"],
        &["id", "name", "hook_count", "ingest_rate", "ingest_auth", "created_at"],
    )
}

/// Aligned columns: `headers` over `rows[i][keys[j]]`.
fn table(headers: &[&str], rows: &Value, keys: &[&str]) -> String {
    let rows: Vec<Vec<String>> =
        rows.as_array().into_iter().flatten().map(|row| keys.iter().map(|k| text(&row[*k])).collect()).collect();
    let widths: Vec<usize> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| rows.iter().map(|r| r[i].chars().count()).chain([h.len()]).max().unwrap_or(0))
        .collect();
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        padded.join("  ").trim_end().to_owned()
    };
    let mut out = vec![line(headers.iter().map(|h| (*h).to_owned()).collect())];
    out.extend(rows.into_iter().map(line));
    if out.len() == 1 {
        out.push("(none)".to_owned());
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_show_missing_values() {
        let rows = json!([{ "id": "a", "n": 1 }, { "id": "longer", "n": null }]);
        assert_eq!(table(&["ID", "N"], &rows, &["id", "n"]), "ID      N\na       1\nlonger  -");
        assert_eq!(table(&["ID"], &json!([]), &["id"]), "ID\n(none)");
    }

    #[test]
    fn control_characters_are_shown_escaped() {
        let evil = json!("t\u{1b}]0;owned\u{7}\u{1b}[1Ax");
        let shown = text(&evil);
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert!(shown.contains("\\u{1b}]0;owned"), "{shown}");
        let rows = json!([{ "id": "t\u{1b}[2J" }]);
        assert!(!table(&["ID"], &rows, &["id"]).contains('\u{1b}'));
    }

    #[test]
    fn fields_are_one_per_line() {
        assert_eq!(fields(&json!({ "api_key": "k", "id": "c" })), "api_key  k\nid       c");
    }
}
