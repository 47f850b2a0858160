//! The relay's domain records, shared by the store, the registry, the HTTP layer and the workers.
//!
//! Times are Unix milliseconds (`i64`) everywhere inside the relay; they become RFC 3339 only at
//! the API edge. Imports nothing from the crate.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use sha2::{Digest, Sha256};

/// The only event type Stencil sends today, and the default when a payload names none.
pub const IMAGE_CREATED: &str = "image.created";

/// Event types a hook may subscribe to.
pub const EVENT_TYPES: &[&str] = &[IMAGE_CREATED];

/// The static name of a subscribable event type, so that a million hooks share a handful of
/// strings instead of owning a copy each.
pub fn event_type(name: &str) -> Option<&'static str> {
    EVENT_TYPES.iter().copied().find(|known| *known == name)
}

/// Prefix of hook ids, so an id says what it names.
pub const HOOK_ID_PREFIX: &str = "hk_";

/// Prefix of delivery ids as the admin API shows them.
pub const DELIVERY_ID_PREFIX: &str = "dlv_";

/// The current time in Unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Formats Unix milliseconds as RFC 3339 (UTC, millisecond precision) for API answers.
pub fn rfc3339(ms: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(at).to_string()
}

/// A fresh unguessable token: `prefix` followed by `bytes` bytes of OS randomness in hex.
///
/// Used for hook ids, API keys and signing secrets (32 bytes: safe to hand out) and ids.
pub fn random_token(prefix: &str, bytes: usize) -> String {
    let mut bytes = vec![0u8; bytes];
    getrandom::fill(&mut bytes).expect("the OS random source is unavailable");
    format!("{prefix}{}", hex::encode(bytes))
}

/// The SHA-256 of an API key: the only form in which keys are stored or indexed.
///
/// A fast hash is right here because generated keys carry 256 bits of entropy.
pub fn api_key_hash(api_key: &str) -> [u8; 32] {
    Sha256::digest(api_key.as_bytes()).into()
}

/// One Stencil project as Make sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// Public id, `[A-Za-z0-9_-]{1,64}`; part of the ingest URL.
    pub id: String,
    /// Human name shown to operators and Make.
    pub name: String,
    /// SHA-256 of the API key; the key itself is never stored.
    pub api_key_hash: [u8; 32],
    /// Signing secrets that currently verify ingest signatures, newest first.
    pub secrets: Vec<SigningSecret>,
    /// Events per second override; `None` means the configured default.
    pub ingest_rate: Option<u32>,
    /// Creation time (ms).
    pub created_at: i64,
}

/// One webhook signing secret, possibly on its way out after a rotation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SigningSecret {
    /// The secret; its UTF-8 bytes are the HMAC key.
    pub secret: String,
    /// When a rotated-out secret stops verifying (ms); `None` for the current one.
    pub expires_at: Option<i64>,
}

impl SigningSecret {
    /// Whether this secret still verifies at `now` (ms).
    pub fn is_live(&self, now: i64) -> bool {
        self.expires_at.is_none_or(|at| now < at)
    }
}

/// One Make instant-trigger URL attached to one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// `hk_` + random hex.
    pub id: String,
    /// The owning connection; fan-out never crosses it. Shared by the connection's hooks.
    pub connection_id: Arc<str>,
    /// Where deliveries go.
    pub url: String,
    /// The event type it subscribes to (one of [`EVENT_TYPES`]).
    pub event: &'static str,
    /// When set, only events whose payload `template_id` equals it.
    pub template_id: Option<String>,
    /// Creation time (ms).
    pub created_at: i64,
}

impl Hook {
    /// Whether an event of `event_type` for `template_id` goes to this hook.
    pub fn matches(&self, event_type: &str, template_id: Option<&str>) -> bool {
        self.event == event_type && self.template_id.as_deref().is_none_or(|wanted| template_id == Some(wanted))
    }
}

/// An accepted event as Stencil sent it.
#[derive(Debug, Clone)]
pub struct Event {
    /// The payload's `id`, or the SHA-256 of the body.
    pub id: String,
    /// `image.created` unless the payload names another type.
    pub event_type: String,
    /// The exact bytes received.
    pub payload: Bytes,
    /// Acceptance time (ms).
    pub received_at: i64,
}

/// One recorded delivery attempt, as `GET /v1/hooks/{id}/deliveries` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The event's id.
    pub event_id: String,
    /// 1 for the first try.
    pub attempt: u32,
    /// The HTTP status, when the target answered.
    pub status_code: Option<u16>,
    /// What went wrong, when it did not answer or answered badly.
    pub error: Option<String>,
    /// Time from sending to the end of the answer.
    pub duration_ms: u64,
    /// When the attempt started (ms).
    pub at: i64,
}

/// A delivery that ran out of chances, waiting for an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Store id of the delivery (shown as `dlv_<id>`).
    pub id: i64,
    /// The owning connection.
    pub connection_id: String,
    /// The event's id.
    pub event_id: String,
    /// The hook it was for.
    pub hook_id: String,
    /// Attempts made.
    pub attempts: u32,
    /// Status of the last attempt, when the target answered.
    pub last_status: Option<u16>,
    /// Error of the last attempt, when there was one.
    pub last_error: Option<String>,
    /// When it was dead-lettered (ms).
    pub updated_at: i64,
}

/// A delivery claimed by a worker: everything needed to attempt it without the registry.
#[derive(Debug, Clone)]
pub struct DueDelivery {
    /// Store id.
    pub id: i64,
    /// The owning connection.
    pub connection_id: String,
    /// The target hook.
    pub hook_id: String,
    /// The hook's URL when the event was accepted.
    pub url: String,
    /// The event's id (`webhook-id`).
    pub event_id: String,
    /// The exact bytes to send.
    pub payload: Bytes,
    /// Attempts already made.
    pub attempts: u32,
    /// When the event was accepted (ms).
    pub received_at: i64,
}

/// What happens to a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextStep {
    /// The target took it; done.
    Delivered,
    /// Try again at this time (ms).
    RetryAt(i64),
    /// Give up; list it as a dead letter.
    DeadLetter,
}

/// The finished attempt of one claimed delivery, to be recorded.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    /// Store id of the delivery.
    pub delivery_id: i64,
    /// The hook it was for.
    pub hook_id: String,
    /// What the attempt saw.
    pub attempt: Attempt,
    /// The delivery's next state.
    pub next: NextStep,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(template_id: Option<&str>) -> Hook {
        Hook {
            id: "hk_1".into(),
            connection_id: "c".into(),
            url: "https://hook.make.com/x".into(),
            event: IMAGE_CREATED,
            template_id: template_id.map(Into::into),
            created_at: 0,
        }
    }

    #[test]
    fn hooks_match_on_event_and_optional_template() {
        assert!(hook(None).matches(IMAGE_CREATED, None));
        assert!(hook(None).matches(IMAGE_CREATED, Some("t1")));
        assert!(hook(Some("t1")).matches(IMAGE_CREATED, Some("t1")));
        assert!(!hook(Some("t1")).matches(IMAGE_CREATED, Some("t2")));
        assert!(!hook(Some("t1")).matches(IMAGE_CREATED, None));
        assert!(!hook(None).matches("image.deleted", None));
    }

    #[test]
    fn secrets_expire_at_their_deadline() {
        let s = SigningSecret { secret: "s".into(), expires_at: Some(100) };
        assert!(s.is_live(99));
        assert!(!s.is_live(100));
        assert!(SigningSecret { secret: "s".into(), expires_at: None }.is_live(i64::MAX));
    }

    #[test]
    fn tokens_are_prefixed_and_distinct() {
        let a = random_token("hk_", 32);
        assert!(a.starts_with("hk_") && a.len() == 67);
        assert_ne!(a, random_token("hk_", 32));
    }

    #[test]
    fn rfc3339_is_utc_with_millis() {
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}
