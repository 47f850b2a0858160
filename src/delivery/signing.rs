//! Standard Webhooks signatures of deliveries: `webhook-signature` is a space-separated list of
//! `v1,<base64 of HMAC-SHA256(key, "{webhook-id}.{webhook-timestamp}.{body}")>`, one entry per
//! live key of the hook, where a key is the base64-decoded part of a `whsec_` secret. Receivers
//! that use the official `standardwebhooks` libraries verify it as it is. Pure.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::model::{HOOK_SECRET_PREFIX, SigningSecret};

/// The value of `webhook-signature` for one attempt: a signature by every key of `secrets` still
/// live at `now_ms`, newest key first. Empty when no key is live (a hook never has none: the
/// newest key does not expire).
pub(super) fn signature_header(
    secrets: &[SigningSecret],
    webhook_id: &str,
    timestamp: u64,
    body: &[u8],
    now_ms: i64,
) -> String {
    let mut header = String::new();
    for secret in secrets.iter().filter(|s| s.is_live(now_ms)) {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&key_bytes(&secret.secret)).expect("HMAC takes keys of any length");
        mac.update(webhook_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        if !header.is_empty() {
            header.push(' ');
        }
        header.push_str("v1,");
        header.push_str(&STANDARD.encode(mac.finalize().into_bytes()));
    }
    header
}

/// The HMAC key of a `whsec_` secret: its base64 part decoded, as the libraries read it (a
/// secret that is not base64 signs with its bytes as they are, so it still signs something).
fn key_bytes(secret: &str) -> Vec<u8> {
    let encoded = secret.strip_prefix(HOOK_SECRET_PREFIX).unwrap_or(secret);
    STANDARD.decode(encoded).unwrap_or_else(|_| encoded.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of the Standard Webhooks specification (its `spec/standard-webhooks.md`):
    /// this secret, id, timestamp and body sign to this value.
    #[test]
    fn matches_the_specifications_example() {
        let secret = SigningSecret { secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(), expires_at: None };
        let body = br#"{"test": 2432232314}"#;
        let header = signature_header(&[secret], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, body, 0);
        assert_eq!(header, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn every_live_key_signs_and_expired_ones_do_not() {
        let new = SigningSecret { secret: "whsec_bmV3".into(), expires_at: None };
        let old = SigningSecret { secret: "whsec_b2xk".into(), expires_at: Some(1_000) };
        let both = signature_header(&[new.clone(), old.clone()], "e", 1, b"{}", 999);
        let entries: Vec<&str> = both.split(' ').collect();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0], signature_header(std::slice::from_ref(&new), "e", 1, b"{}", 999));
        assert_eq!(entries[1], signature_header(std::slice::from_ref(&old), "e", 1, b"{}", 999));
        assert_eq!(signature_header(&[new.clone(), old], "e", 1, b"{}", 1_000), entries[0]);
        assert_ne!(entries[0], signature_header(&[new], "e", 2, b"{}", 0), "the timestamp is signed");
    }
}
