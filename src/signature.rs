//! `X-UseStencil-Signature`: HMAC-SHA256 over the raw body, keyed by the connection's signing
//! secret. Pure functions and a prepared verifier; no IO. Imports `model` only.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::model::SigningSecret;

type HmacSha256 = Hmac<Sha256>;

/// The header Stencil signs its webhooks with.
pub const SIGNATURE_HEADER: &str = "x-usestencil-signature";

/// Lowercase hex HMAC-SHA256 of `body` keyed by `secret`: the value of `X-UseStencil-Signature`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = keyed(secret);
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

fn keyed(secret: &str) -> HmacSha256 {
    HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length")
}

/// Decodes a header value: 64 hex digits in either case, optionally behind `sha256=`.
pub fn parse_header(value: &[u8]) -> Option<[u8; 32]> {
    let value = value.trim_ascii();
    let digits = match value.get(..7) {
        Some(prefix) if prefix.eq_ignore_ascii_case(b"sha256=") => &value[7..],
        _ => value,
    };
    let mut out = [0u8; 32];
    hex::decode_to_slice(digits, &mut out).ok()?;
    Some(out)
}

/// HMAC keys prepared once per secret, so a request only clones a keyed state.
#[derive(Clone)]
pub struct Verifier {
    keys: Vec<(HmacSha256, Option<i64>)>,
}

impl Verifier {
    /// Prepares a verifier for every secret of a connection.
    pub fn new(secrets: &[SigningSecret]) -> Self {
        let keys = secrets.iter().map(|s| (keyed(&s.secret), s.expires_at)).collect();
        Self { keys }
    }

    /// Whether `header` is a valid signature of `body` by a secret still live at `now` (ms).
    ///
    /// Every live secret is tried and each comparison is constant-time, so timing reveals
    /// neither the expected signature nor which secret matched.
    pub fn verify(&self, header: Option<&[u8]>, body: &[u8], now: i64) -> bool {
        let Some(tag) = header.and_then(parse_header) else {
            return false;
        };
        let mut valid = false;
        for (key, expires_at) in &self.keys {
            if expires_at.is_some_and(|at| now >= at) {
                continue;
            }
            let mut mac = key.clone();
            mac.update(body);
            valid |= mac.verify_slice(&tag).is_ok();
        }
        valid
    }
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("keys", &self.keys.len()).finish()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const VECTORS: &str = include_str!("../fixtures/signatures.json");

    #[derive(serde::Deserialize)]
    struct Vector {
        secret: String,
        body: String,
        signature: String,
    }

    fn verifier(secrets: &[(&str, Option<i64>)]) -> Verifier {
        let secrets: Vec<_> =
            secrets.iter().map(|(s, e)| SigningSecret { secret: (*s).into(), expires_at: *e }).collect();
        Verifier::new(&secrets)
    }

    #[test]
    fn matches_the_shared_vectors() {
        let vectors: Vec<Vector> = serde_json::from_str(VECTORS).unwrap();
        assert!(!vectors.is_empty());
        for v in vectors {
            assert_eq!(sign(&v.secret, v.body.as_bytes()), v.signature);
            let check = verifier(&[(&v.secret, None)]);
            assert!(check.verify(Some(v.signature.as_bytes()), v.body.as_bytes(), 0));
        }
    }

    #[test]
    fn accepts_prefix_and_either_case() {
        let sig = sign("secret", b"{}");
        let check = verifier(&[("secret", None)]);
        for header in [sig.clone(), sig.to_uppercase(), format!("sha256={sig}"), format!("SHA256={sig}")] {
            assert!(check.verify(Some(header.as_bytes()), b"{}", 0), "{header}");
        }
    }

    #[test]
    fn rejects_wrong_missing_and_malformed() {
        let check = verifier(&[("secret", None)]);
        assert!(!check.verify(None, b"{}", 0));
        assert!(!check.verify(Some(sign("other", b"{}").as_bytes()), b"{}", 0));
        assert!(!check.verify(Some(sign("secret", b"{ }").as_bytes()), b"{}", 0));
        assert!(!check.verify(Some(b"zz"), b"{}", 0));
        assert!(!check.verify(Some(&sign("secret", b"{}").as_bytes()[..62]), b"{}", 0));
    }

    #[test]
    fn any_single_bit_flip_fails() {
        let check = verifier(&[("secret", None)]);
        let tag = parse_header(sign("secret", b"body").as_bytes()).unwrap();
        for bit in 0..256 {
            let mut flipped = tag;
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(!check.verify(Some(hex::encode(flipped).as_bytes()), b"body", 0));
        }
    }

    #[test]
    fn rotated_secret_verifies_only_inside_its_grace() {
        let check = verifier(&[("new", None), ("old", Some(1_000))]);
        let old = sign("old", b"x");
        assert!(check.verify(Some(old.as_bytes()), b"x", 999));
        assert!(!check.verify(Some(old.as_bytes()), b"x", 1_000));
        assert!(check.verify(Some(sign("new", b"x").as_bytes()), b"x", 5_000));
    }

    proptest! {
        #[test]
        fn header_parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_header(&bytes);
        }

        /// A valid signature verifies; flipping any one bit of the body or the tag does not.
        #[test]
        fn valid_verifies_and_any_single_bit_flip_fails(
            secret in "[ -~]{1,64}",
            body in crate::corpus::payload(),
            flip_body in any::<bool>(),
            at in any::<proptest::sample::Index>(),
            bit in 0u8..8,
        ) {
            let check = verifier(&[(&secret, None)]);
            let signature = sign(&secret, &body);
            prop_assert!(check.verify(Some(signature.as_bytes()), &body, 0));
            if flip_body && !body.is_empty() {
                let mut flipped = body.clone();
                flipped[at.index(body.len())] ^= 1 << bit;
                prop_assert!(!check.verify(Some(signature.as_bytes()), &flipped, 0));
            } else {
                let mut tag = parse_header(signature.as_bytes()).unwrap();
                tag[at.index(32)] ^= 1 << bit;
                prop_assert!(!check.verify(Some(hex::encode(tag).as_bytes()), &body, 0));
            }
        }
    }
}
