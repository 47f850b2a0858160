//! How an ingest request proves it is Stencil's: `X-UseStencil-Signature` (HMAC-SHA256 over the
//! raw body, keyed by the connection's signing secret) or `Authorization: Bearer <secret>`, as
//! the connection's [`IngestAuth`] allows. Pure functions and a prepared verifier; no IO.
//! Imports `model` only.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::model::{IngestAuth, SigningSecret};

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

/// Decodes a header value, optionally behind `sha256=`: 64 hex digits in either case, or the
/// 32 bytes in standard or URL-safe base64, padded or not. Stencil does not document its
/// encoding, so every common one is taken; they cannot be confused (64 characters against 43
/// or 44).
pub fn parse_header(value: &[u8]) -> Option<[u8; 32]> {
    let value = value.trim_ascii();
    let digits = match value.get(..7) {
        Some(prefix) if prefix.eq_ignore_ascii_case(b"sha256=") => &value[7..],
        _ => value,
    };
    let mut out = [0u8; 32];
    if digits.len() == 64 {
        hex::decode_to_slice(digits, &mut out).ok()?;
        return Some(out);
    }
    let unpadded = match digits {
        [rest @ .., b'='] if digits.len() == 44 => rest,
        _ => digits,
    };
    if unpadded.len() != 43 {
        return None;
    }
    let engine = if unpadded.iter().any(|b| matches!(b, b'-' | b'_')) { URL_SAFE_NO_PAD } else { STANDARD_NO_PAD };
    let decoded = engine.decode(unpadded).ok()?;
    out.copy_from_slice(decoded.get(..32).filter(|_| decoded.len() == 32)?);
    Some(out)
}

/// Why an ingest request was not taken as Stencil's. Shown to the connection's owner and
/// operator (counted per connection), never to the sender, which gets one `401` for all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// Neither a signature nor a bearer token.
    MissingCredentials,
    /// A signature that does not verify (or cannot be read).
    InvalidSignature,
    /// An `Authorization` header that is not `Bearer` and a live signing secret.
    InvalidToken,
    /// Only a signature, but the connection takes tokens only.
    SignatureNotAccepted,
    /// Only a bearer token, but the connection takes signatures only.
    TokenNotAccepted,
}

impl Rejection {
    /// Every reason, in a stable order.
    pub const ALL: [Rejection; 5] = [
        Rejection::MissingCredentials,
        Rejection::InvalidSignature,
        Rejection::InvalidToken,
        Rejection::SignatureNotAccepted,
        Rejection::TokenNotAccepted,
    ];

    /// The reason's code, as the API and metrics name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::MissingCredentials => "missing_credentials",
            Rejection::InvalidSignature => "invalid_signature",
            Rejection::InvalidToken => "invalid_token",
            Rejection::SignatureNotAccepted => "signature_not_accepted",
            Rejection::TokenNotAccepted => "token_not_accepted",
        }
    }

    /// What a person should do about it.
    pub fn advice(self) -> &'static str {
        match self {
            Rejection::MissingCredentials => {
                "the request had neither X-UseStencil-Signature nor Authorization: add the custom header \
                 `Authorization: Bearer <signing secret>` to the Stencil webhook (ingest_auth token or either)"
            }
            Rejection::InvalidSignature => {
                "X-UseStencil-Signature did not verify: the webhook's secret in Stencil is not this connection's signing secret"
            }
            Rejection::InvalidToken => {
                "the Authorization header is not `Bearer <this connection's signing secret>` (rotated out, copied wrongly, or without `Bearer `)"
            }
            Rejection::SignatureNotAccepted => {
                "a signature was sent but ingest_auth is token: set ingest_auth to either, or add the Authorization header"
            }
            Rejection::TokenNotAccepted => {
                "a bearer token was sent but ingest_auth is signature: set ingest_auth to token or either"
            }
        }
    }
}

/// A secret as a bearer token is compared: its SHA-256, so every comparison has the same length
/// and is constant-time whatever the token's length.
type TokenDigest = [u8; 32];

/// A connection's secrets, prepared once: HMAC keys for signatures, digests for tokens.
#[derive(Clone)]
pub struct Verifier {
    keys: Vec<(HmacSha256, TokenDigest, Option<i64>)>,
}

impl Verifier {
    /// Prepares a verifier for every secret of a connection.
    pub fn new(secrets: &[SigningSecret]) -> Self {
        let keys = secrets
            .iter()
            .map(|s| (keyed(&s.secret), Sha256::digest(s.secret.as_bytes()).into(), s.expires_at))
            .collect();
        Self { keys }
    }

    /// Checks an ingest request's credentials as `mode` allows: `signature` is the
    /// `X-UseStencil-Signature` value, `authorization` the `Authorization` value.
    ///
    /// # Errors
    /// Why the request is not taken as Stencil's.
    pub fn check(
        &self,
        mode: IngestAuth,
        signature: Option<&[u8]>,
        authorization: Option<&[u8]>,
        body: &[u8],
        now: i64,
    ) -> Result<(), Rejection> {
        let token = authorization.and_then(bearer_token);
        let signed = mode.takes_signature() && signature.is_some() && self.verify(signature, body, now);
        let tokened = mode.takes_token() && token.is_some_and(|t| self.verify_token(t, now));
        if signed || tokened {
            return Ok(());
        }
        Err(match (signature.is_some(), authorization.is_some()) {
            (false, false) => Rejection::MissingCredentials,
            (true, _) if mode.takes_signature() => Rejection::InvalidSignature,
            (_, true) if mode.takes_token() => Rejection::InvalidToken,
            (true, _) => Rejection::SignatureNotAccepted,
            (false, true) => Rejection::TokenNotAccepted,
        })
    }

    /// Whether `token` is a secret still live at `now` (ms), compared in constant time.
    pub fn verify_token(&self, token: &[u8], now: i64) -> bool {
        let given: TokenDigest = Sha256::digest(token).into();
        let mut valid = false;
        for (_, digest, expires_at) in &self.keys {
            if expires_at.is_some_and(|at| now >= at) {
                continue;
            }
            valid |= bool::from(given.ct_eq(digest));
        }
        valid
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
        for (key, _, expires_at) in &self.keys {
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

/// The token of an `Authorization: Bearer <token>` value (the scheme in any case).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    let (scheme, token) = value.split_at_checked(7)?;
    (scheme.eq_ignore_ascii_case(b"bearer ") && !token.trim_ascii().is_empty()).then(|| token.trim_ascii())
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("keys", &self.keys.len()).finish()
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
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
    fn accepts_base64_in_every_spelling() {
        let tag = parse_header(sign("secret", b"{}").as_bytes()).unwrap();
        let check = verifier(&[("secret", None)]);
        let engines = [
            base64::engine::general_purpose::STANDARD,
            base64::engine::general_purpose::STANDARD_NO_PAD,
            base64::engine::general_purpose::URL_SAFE,
            base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ];
        for engine in engines {
            let header = engine.encode(tag);
            assert!(check.verify(Some(header.as_bytes()), b"{}", 0), "{header}");
            assert!(check.verify(Some(format!("sha256={header}").as_bytes()), b"{}", 0), "{header}");
        }
        assert_eq!(parse_header(b"AAAA"), None);
        assert_eq!(parse_header(&[b'A'; 44]), None, "44 characters need padding");
    }

    #[test]
    fn each_mode_takes_what_it_says_and_names_what_was_wrong() {
        let check = verifier(&[("secret", None)]);
        let sig = sign("secret", b"{}");
        let good_sig = Some(sig.as_bytes());
        let bad_sig = Some(&b"00"[..]);
        let good_token = Some(&b"Bearer secret"[..]);
        let bad_token = Some(&b"Bearer other"[..]);
        use IngestAuth::*;
        use Rejection::*;
        type Case<'a> = (IngestAuth, Option<&'a [u8]>, Option<&'a [u8]>, Result<(), Rejection>);
        let cases: [Case<'_>; 14] = [
            (Signature, good_sig, None, Ok(())),
            (Signature, None, good_token, Err(TokenNotAccepted)),
            (Signature, bad_sig, good_token, Err(InvalidSignature)),
            (Signature, None, None, Err(MissingCredentials)),
            (Token, None, good_token, Ok(())),
            (Token, bad_sig, good_token, Ok(())),
            (Token, good_sig, None, Err(SignatureNotAccepted)),
            (Token, None, bad_token, Err(InvalidToken)),
            (Token, None, Some(b"secret"), Err(InvalidToken)),
            (Either, good_sig, None, Ok(())),
            (Either, None, Some(b"bearer   secret "), Ok(())),
            (Either, bad_sig, bad_token, Err(InvalidSignature)),
            (Either, None, bad_token, Err(InvalidToken)),
            (Either, None, None, Err(MissingCredentials)),
        ];
        for (mode, signature, authorization, expected) in cases {
            assert_eq!(
                check.check(mode, signature, authorization, b"{}", 0),
                expected,
                "{mode:?} {:?} {:?}",
                signature.map(String::from_utf8_lossy),
                authorization.map(String::from_utf8_lossy)
            );
        }
    }

    #[test]
    fn tokens_follow_rotation_like_signatures() {
        let check = verifier(&[("new", None), ("old", Some(1_000))]);
        assert!(check.verify_token(b"old", 999));
        assert!(!check.verify_token(b"old", 1_000));
        assert!(check.verify_token(b"new", 5_000));
        assert!(!check.verify_token(b"ne", 0));
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
