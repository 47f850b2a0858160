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

/// Prefix of the keys that sign deliveries, as Standard Webhooks spells them: the rest is the
/// base64 of the HMAC key.
pub const HOOK_SECRET_PREFIX: &str = "whsec_";

/// Random bytes in a hook's signing key (Standard Webhooks suggests 24 to 64).
const HOOK_KEY_BYTES: usize = 32;

/// One hook signing key: the HMAC key that a `whsec_` secret spells in base64.
pub type HookKey = [u8; HOOK_KEY_BYTES];

/// Longest template id, in the payload or the ingest URL's `template_id` parameter.
pub const MAX_TEMPLATE_ID_LEN: usize = 128;

/// Whether `id` is a template id the relay takes: 1–128 characters of `[A-Za-z0-9._-]`. Stencil's
/// template ids are UUIDs; the rule keeps filters, URLs and terminal output free of surprises.
pub fn is_valid_template_id(id: &str) -> bool {
    (1..=MAX_TEMPLATE_ID_LEN).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `Ok` for a valid template id, else the rule it breaks, for the error the caller answers with.
pub fn check_template_id(id: &str) -> Result<(), String> {
    if is_valid_template_id(id) {
        Ok(())
    } else {
        Err(format!("template_id must be 1 to {MAX_TEMPLATE_ID_LEN} characters of A-Z, a-z, 0-9, '.', '_' and '-'"))
    }
}

/// A fresh hook signing key as a `whsec_` secret.
pub fn new_hook_secret() -> String {
    HookKeys::generate().current_secret()
}

/// A hook's signing keys, kept as the raw key bytes: a million hooks hold a million of them in
/// the registry, and the common case — one key, not expiring — needs no allocation at all.
/// Stored (and shown) as `whsec_` secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookKeys {
    /// One key, the usual case.
    One(HookKey),
    /// During a rotation: newest first; older ones sign until their expiry (ms).
    Rotating(Box<[(HookKey, Option<i64>)]>),
}

impl HookKeys {
    /// One fresh key from the operating system's randomness.
    pub fn generate() -> Self {
        let mut key = [0u8; HOOK_KEY_BYTES];
        getrandom::fill(&mut key).expect("the OS random source is unavailable");
        Self::One(key)
    }

    fn all(&self) -> &[(HookKey, Option<i64>)] {
        match self {
            Self::One(_) => &[],
            Self::Rotating(keys) => keys,
        }
    }

    /// The newest key.
    pub fn current(&self) -> &HookKey {
        match self {
            Self::One(key) => key,
            Self::Rotating(keys) => &keys[0].0,
        }
    }

    /// The newest key as a `whsec_` secret.
    pub fn current_secret(&self) -> String {
        secret_of(self.current())
    }

    /// The keys that still sign at `now` (ms), newest first.
    pub fn live(&self, now: i64) -> Vec<&HookKey> {
        match self {
            Self::One(key) => vec![key],
            Self::Rotating(keys) => {
                keys.iter().filter(|(_, expires)| expires.is_none_or(|at| now < at)).map(|(key, _)| key).collect()
            }
        }
    }

    /// A new key first; the keys still live at `now` keep signing until `retire_at` at the
    /// latest (earlier if they were already on their way out); the rest are dropped.
    pub fn rotated(&self, now: i64, retire_at: i64) -> Self {
        let mut keys = vec![(*Self::generate().current(), None)];
        let older: Vec<(HookKey, Option<i64>)> = match self {
            Self::One(key) => vec![(*key, None)],
            Self::Rotating(_) => self.all().to_vec(),
        };
        keys.extend(
            older
                .into_iter()
                .filter(|(_, expires)| expires.is_none_or(|at| now < at))
                .map(|(key, expires)| (key, Some(expires.map_or(retire_at, |at| at.min(retire_at))))),
        );
        Self::Rotating(keys.into())
    }

    /// As stored: the secrets, newest first, with their expiry.
    pub fn to_stored(&self) -> Vec<SigningSecret> {
        match self {
            Self::One(key) => vec![SigningSecret { secret: secret_of(key), expires_at: None }],
            Self::Rotating(keys) => keys
                .iter()
                .map(|(key, expires_at)| SigningSecret { secret: secret_of(key), expires_at: *expires_at })
                .collect(),
        }
    }

    /// From the stored secrets, newest first.
    ///
    /// # Errors
    /// No secret, or one that is not `whsec_` and the base64 of a 32-byte key.
    pub fn from_stored(stored: &[SigningSecret]) -> Result<Self, String> {
        use base64::Engine as _;
        let decode = |s: &SigningSecret| -> Result<(HookKey, Option<i64>), String> {
            let encoded = s.secret.strip_prefix(HOOK_SECRET_PREFIX).ok_or("a hook key without whsec_")?;
            let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).map_err(|e| e.to_string())?;
            let key = HookKey::try_from(bytes.as_slice()).map_err(|_| "a hook key that is not 32 bytes")?;
            Ok((key, s.expires_at))
        };
        let keys = stored.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
        match keys.as_slice() {
            [] => Err("a hook without a key".into()),
            [(key, None)] => Ok(Self::One(*key)),
            _ => Ok(Self::Rotating(keys.into())),
        }
    }
}

fn secret_of(key: &HookKey) -> String {
    use base64::Engine as _;
    format!("{HOOK_SECRET_PREFIX}{}", base64::engine::general_purpose::STANDARD.encode(key))
}

/// How Stencil proves that an ingest request is its own, per connection.
///
/// Stencil's dashboard offers custom headers on every webhook (the documented way to
/// authenticate is `Authorization: Bearer …`) and names `X-UseStencil-Signature` for webhooks
/// with a secret; which one a user can set up depends on their Stencil plan and habits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IngestAuth {
    /// `X-UseStencil-Signature`: HMAC-SHA256 of the body keyed by a signing secret.
    #[default]
    Signature,
    /// `Authorization: Bearer <signing secret>`.
    Token,
    /// Either of the two.
    Either,
}

impl IngestAuth {
    /// Every mode, as the API names them.
    pub const ALL: [IngestAuth; 3] = [IngestAuth::Signature, IngestAuth::Token, IngestAuth::Either];

    /// The name used in the API, the CLI and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            IngestAuth::Signature => "signature",
            IngestAuth::Token => "token",
            IngestAuth::Either => "either",
        }
    }

    /// The mode named `name`, if there is one.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|mode| mode.as_str() == name)
    }

    /// Whether a valid signature is enough.
    pub fn takes_signature(self) -> bool {
        self != IngestAuth::Token
    }

    /// Whether a valid bearer token is enough.
    pub fn takes_token(self) -> bool {
        self != IngestAuth::Signature
    }
}

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
    /// What an ingest request must carry to be taken as Stencil's.
    pub ingest_auth: IngestAuth,
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
    /// When set, only events of this template. A boxed `str` rather than a `String`: with a
    /// million hooks in the registry, 8 bytes less puts each hook in a smaller allocation class.
    pub template_id: Option<Box<str>>,
    /// The keys that sign its deliveries; a rotated-out key keeps signing (beside the new one)
    /// until it expires.
    pub keys: HookKeys,
    /// Creation time (ms).
    pub created_at: i64,
    /// Auto-disabled after failing for `RELAY_DISABLE_AFTER`: new events are not queued for it
    /// and nothing is sent until it is enabled again.
    pub disabled: bool,
}

impl Hook {
    /// Whether an event of `event_type` for `template_id` goes to this hook.
    pub fn matches(&self, event_type: &str, template_id: Option<&str>) -> bool {
        self.event == event_type && self.template_id.as_deref().is_none_or(|wanted| template_id == Some(wanted))
    }
}

/// A connection's hooks as the registry and the store's snapshots share them: each hook behind an
/// `Arc`, so that changing the list (an attach, a detach, a key rotation) copies pointers, not
/// hooks.
pub type Hooks = Arc<[Arc<Hook>]>;

/// An accepted event as Stencil sent it.
#[derive(Debug, Clone)]
pub struct Event {
    /// The payload's `id`, or the SHA-256 of the body.
    pub id: String,
    /// `image.created` unless the payload names another type.
    pub event_type: String,
    /// The template it was made from: the payload's `template_id`, else the ingest URL's.
    pub template_id: Option<String>,
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

/// What the operator's overview shows of the store: per connection its backlog and dead
/// letters, and the hooks that fail most.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overview {
    /// The connections with pending deliveries, dead letters or events in the last 24 hours,
    /// by id.
    pub connections: Vec<ConnectionLoad>,
    /// The hooks with the longest failure streaks (or disabled, or paused), most first:
    /// `(hook id, connection id, url, health)`.
    pub failing_hooks: Vec<(String, String, String, HookHealth)>,
}

/// What one connection has waiting, buried and received, as the operator view shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionLoad {
    /// The connection's id.
    pub id: String,
    /// Deliveries waiting or in flight.
    pub pending: u64,
    /// Dead letters.
    pub dead_letters: u64,
    /// Events received in the current hour and the 23 before it (counted by the hour).
    pub events_24h: u64,
}

/// Events one connection received in one hour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HourCount {
    /// The connection's id.
    pub connection_id: String,
    /// Milliseconds since the epoch divided by [`HOUR_MS`].
    pub hour: i64,
    /// How many.
    pub events: u64,
}

/// An hour in milliseconds: the unit of [`HourCount::hour`].
pub const HOUR_MS: i64 = 3_600_000;

/// One delivery of an event, as the dashboard shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventDelivery {
    /// Store id of the delivery (shown as `dlv_<id>`).
    pub id: i64,
    /// The hook it is for.
    pub hook_id: String,
    /// `pending` (waiting or in flight), `delivered` or `dead`.
    pub state: &'static str,
    /// Attempts made.
    pub attempts: u32,
    /// Status of the last attempt, when the target answered.
    pub last_status: Option<u16>,
    /// Error of the last attempt, when there was one.
    pub last_error: Option<String>,
    /// When it last changed (ms).
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
    /// When its lease runs out (ms, this instance's clock): an attempt that could not end by
    /// then is not started, for the delivery may be another instance's by then.
    pub lease_until: i64,
    /// Its hook's streak as stored when the delivery was claimed, where another instance may
    /// have been the hook's sender before (PostgreSQL); `None` where this instance's own
    /// record of the hook is the whole truth.
    pub streak: Option<Streak>,
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
    /// The hook's failure streak after this attempt, when it is to be stored (it changed, or
    /// the stored last success is getting old).
    pub streak: Option<Streak>,
}

/// A hook's run of failures and what it led to, as stored with the hook. A hook with no
/// failures and no pause has the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Streak {
    /// Attempts failed in a row since the last success.
    pub failures: u32,
    /// When the first of them was made (ms).
    pub failing_since: Option<i64>,
    /// The hook is paused until then (ms). It stays set once the pause is over until an
    /// attempt succeeds: while set, one attempt at a time probes the hook.
    pub paused_until: Option<i64>,
    /// When an attempt last succeeded (ms).
    pub last_success_at: Option<i64>,
}

/// How a hook stands, as the hook API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookStatus {
    /// Deliveries flow.
    Active,
    /// Nothing is sent until `paused_until`.
    Paused,
    /// Nothing is sent until it is enabled.
    Disabled,
}

impl HookStatus {
    /// Every status, in the order metrics list them.
    pub const ALL: [Self; 3] = [Self::Active, Self::Paused, Self::Disabled];

    /// The API's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Paused => "paused",
            Self::Disabled => "disabled",
        }
    }
}

/// A hook's health as the hook API shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HookHealth {
    /// Its stored streak.
    pub streak: Streak,
    /// When it was disabled (ms).
    pub disabled_at: Option<i64>,
}

impl HookHealth {
    /// The status at `now` (ms).
    pub fn status(&self, now: i64) -> HookStatus {
        if self.disabled_at.is_some() {
            HookStatus::Disabled
        } else if self.streak.paused_until.is_some_and(|until| until > now) {
            HookStatus::Paused
        } else {
            HookStatus::Active
        }
    }
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
            keys: HookKeys::generate(),
            created_at: 0,
            disabled: false,
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
    fn hook_secrets_are_standard_webhooks_keys() {
        use base64::Engine as _;
        let secret = new_hook_secret();
        let key = secret.strip_prefix(HOOK_SECRET_PREFIX).unwrap();
        assert_eq!(base64::engine::general_purpose::STANDARD.decode(key).unwrap().len(), HOOK_KEY_BYTES);
        assert_ne!(secret, new_hook_secret());
    }

    #[test]
    fn hook_keys_rotate_with_an_overlap_and_round_trip_through_storage() {
        let keys = HookKeys::generate();
        assert_eq!(HookKeys::from_stored(&keys.to_stored()).unwrap(), keys);
        let rotated = keys.rotated(1_000, 5_000);
        assert_ne!(rotated.current(), keys.current());
        assert_eq!(rotated.live(4_999), [rotated.current(), keys.current()]);
        assert_eq!(rotated.live(5_000), [rotated.current()], "the old key retires at the overlap's end");
        assert_eq!(HookKeys::from_stored(&rotated.to_stored()).unwrap(), rotated);
        let again = rotated.rotated(6_000, 10_000);
        assert_eq!(again.to_stored().len(), 2, "a retired key is dropped");
        assert!(HookKeys::from_stored(&[]).is_err());
        let short = SigningSecret { secret: "whsec_c2hvcnQ=".into(), expires_at: None };
        assert!(HookKeys::from_stored(&[short]).is_err());
        assert_eq!(std::mem::size_of::<HookKeys>(), 40, "no allocation for the common case");
    }

    #[test]
    fn template_ids_are_short_and_plain() {
        for ok in ["2b6c4e8a-1d3f-4a5b-8c7d-9e0f1a2b3c4d", "a", "T_1.v2", &"x".repeat(128)] {
            assert!(is_valid_template_id(ok), "{ok}");
        }
        for bad in ["", "a b", "t/1", "\u{1b}[1A", &"x".repeat(129), "é"] {
            assert!(!is_valid_template_id(bad), "{bad}");
        }
    }

    #[test]
    fn ingest_auth_names_round_trip() {
        for mode in IngestAuth::ALL {
            assert_eq!(IngestAuth::parse(mode.as_str()), Some(mode));
        }
        assert_eq!(IngestAuth::parse("hmac"), None);
        assert_eq!(IngestAuth::default(), IngestAuth::Signature);
    }

    #[test]
    fn rfc3339_is_utc_with_millis() {
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}
