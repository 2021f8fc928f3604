//! Signed job messages: the controller signs each job message with HMAC-SHA256 over its
//! identifying attributes and its body; the worker verifies before anything else, so a
//! message published by anyone else is never executed.
//!
//! The signed text is, in this order, one `name=value\n` line for each of `job_id`,
//! `tenant_id`, `app_id`, `query_id` and `schema_version` (an absent attribute is an empty
//! value), then the body's bytes. The key id goes in the `signature_key_id` attribute and the
//! signature, lowercase hex, in `signature`.
//!
//! Keys live in a key ring: `key_id:secret` entries, one per line or comma-separated, the
//! secret base64 (standard alphabet) of at least 32 bytes. The signer uses the last entry
//! (the newest); the verifier accepts any: to rotate, add the new key at the end of every
//! worker's ring, then of the controller's, then remove the old one.

use crate::attributes as a;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::collections::HashMap;
use std::fmt;

/// The attributes the signature covers, in signing order.
pub const SIGNED_ATTRIBUTES: [&str; 5] = [a::JOB_ID, a::TENANT_ID, a::APP_ID, a::QUERY_ID, a::SCHEMA_VERSION];
pub const KEY_ID_ATTRIBUTE: &str = "signature_key_id";
pub const SIGNATURE_ATTRIBUTE: &str = "signature";
/// The shortest secret a key ring accepts.
pub const MIN_SECRET_BYTES: usize = 32;

/// A named secret. Its `Debug` never shows the secret.
#[derive(Clone)]
pub struct SigningKey {
    pub id: String,
    secret: Vec<u8>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey").field("id", &self.id).field("secret", &"<redacted>").finish()
    }
}

/// The keys a worker accepts; the last one is the one the controller signs with.
#[derive(Clone, Debug, Default)]
pub struct KeyRing {
    keys: Vec<SigningKey>,
}

/// Why a key ring does not parse. Never contains a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("signing key ring, entry {entry}: {reason}")]
pub struct KeyRingError {
    /// 1-based position of the entry.
    pub entry: usize,
    pub reason: String,
}

impl KeyRing {
    /// Parses `key_id:base64secret` entries separated by newlines or commas; blank entries
    /// and lines starting with `#` are skipped.
    pub fn parse(text: &str) -> Result<KeyRing, KeyRingError> {
        use base64::Engine as _;
        let mut keys: Vec<SigningKey> = Vec::new();
        let entries = text.split(['\n', ',']).map(str::trim).filter(|e| !e.is_empty() && !e.starts_with('#'));
        for (i, entry) in entries.enumerate() {
            let fail = |reason: String| KeyRingError { entry: i + 1, reason };
            let (id, secret) = entry.split_once(':').ok_or_else(|| fail("expected key_id:base64secret".into()))?;
            let id = id.trim();
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
                return Err(fail(format!("key id {id:?} must be letters, digits, '-', '_' or '.'")));
            }
            let secret = base64::engine::general_purpose::STANDARD
                .decode(secret.trim())
                .map_err(|e| fail(format!("key {id}: the secret is not base64 ({e})")))?;
            if secret.len() < MIN_SECRET_BYTES {
                return Err(fail(format!(
                    "key {id}: the secret has {} bytes, at least {MIN_SECRET_BYTES} are needed",
                    secret.len()
                )));
            }
            if keys.iter().any(|k| k.id == id) {
                return Err(fail(format!("key id {id} appears twice")));
            }
            keys.push(SigningKey { id: id.to_owned(), secret });
        }
        Ok(KeyRing { keys })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn ids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.id.as_str()).collect()
    }

    /// The key new messages are signed with: the last one.
    pub fn signing_key(&self) -> Option<&SigningKey> {
        self.keys.last()
    }

    /// Checks a received message; `Ok` names the key that signed it.
    pub fn verify<'a>(&'a self, body: &[u8], attributes: &HashMap<String, String>) -> Result<&'a str, Rejection> {
        let (Some(key_id), Some(signature)) = (attributes.get(KEY_ID_ATTRIBUTE), attributes.get(SIGNATURE_ATTRIBUTE))
        else {
            return Err(Rejection::Unsigned);
        };
        let Some(key) = self.keys.iter().find(|k| &k.id == key_id) else {
            return Err(Rejection::UnknownKey(key_id.chars().take(64).collect()));
        };
        let Some(signature) = decode_hex(signature) else {
            return Err(Rejection::BadSignature);
        };
        let lookup = |name: &str| attributes.get(name).map(String::as_str);
        // `verify_slice` compares in constant time.
        mac(key, body, lookup).verify_slice(&signature).map_err(|_| Rejection::BadSignature)?;
        Ok(&key.id)
    }
}

/// Why a message was refused. Stable codes for the dead-letter reason and metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("the message is not signed (no signature_key_id and signature attributes)")]
    Unsigned,
    #[error("the message is signed with key {0:?}, which this worker does not know")]
    UnknownKey(String),
    #[error("the signature does not match the message: forged, or changed after signing")]
    BadSignature,
}

impl Rejection {
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::Unsigned => "unsigned",
            Rejection::UnknownKey(_) => "unknown_key",
            Rejection::BadSignature => "bad_signature",
        }
    }
}

impl SigningKey {
    /// The `signature_key_id` and `signature` attributes for a message with `body` and the
    /// signed `attributes` (looked up by name; absent ones count as empty).
    pub fn sign<'a>(&self, body: &[u8], attributes: impl Fn(&str) -> Option<&'a str>) -> [(&'static str, String); 2] {
        let tag = mac(self, body, attributes).finalize().into_bytes();
        let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
        [(KEY_ID_ATTRIBUTE, self.id.clone()), (SIGNATURE_ATTRIBUTE, hex)]
    }
}

fn mac<'a>(key: &SigningKey, body: &[u8], attributes: impl Fn(&str) -> Option<&'a str>) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key.secret).expect("HMAC takes a key of any length");
    for name in SIGNED_ATTRIBUTES {
        mac.update(name.as_bytes());
        mac.update(b"=");
        mac.update(attributes(name).unwrap_or("").as_bytes());
        mac.update(b"\n");
    }
    mac.update(body);
    mac
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = "old:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    const NEW: &str = "new:ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";

    fn attributes(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn signed(ring: &KeyRing, body: &[u8]) -> HashMap<String, String> {
        let mut attrs = attributes(&[
            (a::JOB_ID, "j1"),
            (a::TENANT_ID, "acme"),
            (a::APP_ID, "shop"),
            (a::QUERY_ID, "q"),
            (a::SCHEMA_VERSION, "1.0"),
        ]);
        let key = ring.signing_key().expect("a key");
        let sig = key.sign(body, |n| attrs.get(n).map(String::as_str));
        attrs.extend(sig.into_iter().map(|(k, v)| (k.to_owned(), v)));
        attrs
    }

    #[test]
    fn a_signed_message_verifies_and_any_change_is_refused() {
        let ring = KeyRing::parse(&format!("{OLD}\n{NEW}")).expect("ring");
        assert_eq!(ring.ids(), ["old", "new"]);
        assert_eq!(ring.signing_key().map(|k| k.id.as_str()), Some("new"), "the newest signs");
        let attrs = signed(&ring, b"{\"sql\":\"SELECT 1\"}");
        assert_eq!(ring.verify(b"{\"sql\":\"SELECT 1\"}", &attrs), Ok("new"));
        assert_eq!(ring.verify(b"{\"sql\":\"DROP TABLE x\"}", &attrs), Err(Rejection::BadSignature), "body changed");
        let mut other_tenant = attrs.clone();
        other_tenant.insert(a::TENANT_ID.into(), "globex".into());
        assert_eq!(ring.verify(b"{\"sql\":\"SELECT 1\"}", &other_tenant), Err(Rejection::BadSignature));
        let mut garbled = attrs.clone();
        garbled.insert(SIGNATURE_ATTRIBUTE.into(), "zz".into());
        assert_eq!(ring.verify(b"{\"sql\":\"SELECT 1\"}", &garbled), Err(Rejection::BadSignature));
    }

    #[test]
    fn unsigned_unknown_key_and_forged_messages_are_refused_with_their_code() {
        let worker = KeyRing::parse(OLD).expect("ring");
        let body = b"{}";
        assert_eq!(worker.verify(body, &attributes(&[(a::JOB_ID, "j1")])).map_err(|e| e.code()), Err("unsigned"));
        let attacker = KeyRing::parse(NEW).expect("ring");
        assert_eq!(worker.verify(body, &signed(&attacker, body)).map_err(|e| e.code()), Err("unknown_key"));
        // A forger who knows the key id but not the secret.
        let forged = KeyRing::parse("old:ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=").expect("ring");
        assert_eq!(worker.verify(body, &signed(&forged, body)).map_err(|e| e.code()), Err("bad_signature"));
    }

    #[test]
    fn rotation_accepts_both_keys_while_both_are_in_the_ring() {
        let during = KeyRing::parse(&format!("{OLD},{NEW}")).expect("ring");
        let before = KeyRing::parse(OLD).expect("ring");
        let after = KeyRing::parse(NEW).expect("ring");
        assert!(during.verify(b"x", &signed(&before, b"x")).is_ok());
        assert!(during.verify(b"x", &signed(&after, b"x")).is_ok());
        assert!(after.verify(b"x", &signed(&before, b"x")).is_err(), "a removed key is refused");
    }

    #[test]
    fn bad_key_rings_name_the_entry_and_never_the_secret() {
        for (text, needle) in [
            ("nocolon", "entry 1: expected key_id:base64secret"),
            ("k:short", "not base64"),
            ("k:c2hvcnQ=", "at least 32"),
            ("bad id:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=", "key id"),
            (&format!("{OLD}\n{OLD}"), "entry 2: key id old appears twice"),
        ] {
            let e = KeyRing::parse(text).expect_err(text).to_string();
            assert!(e.contains(needle), "{e}");
            assert!(!e.contains("MDEyMzQ1"), "no secret in errors: {e}");
        }
        assert!(KeyRing::parse("# comment\n\n").expect("empty").is_empty());
        assert!(!format!("{:?}", KeyRing::parse(OLD).expect("ring")).contains("MDEy"));
    }
}
