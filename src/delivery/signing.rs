//! Standard Webhooks signatures of deliveries: `webhook-signature` is a space-separated list of
//! `v1,<base64 of HMAC-SHA256(key, "{webhook-id}.{webhook-timestamp}.{body}")>`, one entry per
//! live key of the hook, where a key is the base64-decoded part of a `whsec_` secret. Receivers
//! that use the official `standardwebhooks` libraries verify it as it is. Pure.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The value of `webhook-signature` for one attempt: a signature by each of `keys` (the hook's
/// live keys, newest first).
pub(super) fn signature_header(keys: &[&[u8]], webhook_id: &str, timestamp: u64, body: &[u8]) -> String {
    let mut header = String::new();
    for key in keys {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of the Standard Webhooks specification (its `spec/standard-webhooks.md`):
    /// this secret, id, timestamp and body sign to this value.
    #[test]
    fn matches_the_specifications_example() {
        let key = STANDARD.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let header = signature_header(&[&key], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, body);
        assert_eq!(header, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn every_key_signs_in_order_and_the_timestamp_is_signed() {
        let (new, old): (&[u8], &[u8]) = (b"new", b"old");
        let both = signature_header(&[new, old], "e", 1, b"{}");
        let entries: Vec<&str> = both.split(' ').collect();
        assert_eq!(entries, [signature_header(&[new], "e", 1, b"{}"), signature_header(&[old], "e", 1, b"{}")]);
        assert_ne!(entries[0], signature_header(&[new], "e", 2, b"{}"), "the timestamp is signed");
    }
}
