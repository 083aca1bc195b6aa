//! Keyed pseudonyms: user, conversation and item ids as `HMAC-SHA256(key, kind ‖ 0 ‖ id)`,
//! truncated to 128 bits and written as 32 hex digits.
//!
//! The same key and id always give the same pseudonym, so rows of one user join across tables
//! and versions of a dataset; without the key a pseudonym says nothing about the id. The key
//! is a tenant's own (kept in the store, never in a dataset); [`Pseudonymizer::key_id`] names
//! it without revealing it.

use aws_lc_rs::{digest, hmac};

/// What an id names; part of the HMAC input, so a user and a conversation with the same id
/// get different pseudonyms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdKind {
    /// A user id.
    User,
    /// A conversation id.
    Conversation,
    /// An item id.
    Item,
}

impl IdKind {
    fn tag(self) -> &'static [u8] {
        match self {
            IdKind::User => b"user",
            IdKind::Conversation => b"conversation",
            IdKind::Item => b"item",
        }
    }
}

/// Bytes of a secret key.
pub const KEY_BYTES: usize = 32;

/// Makes pseudonyms with one secret key.
pub struct Pseudonymizer {
    key: hmac::Key,
    key_id: String,
}

impl std::fmt::Debug for Pseudonymizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pseudonymizer")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

impl Pseudonymizer {
    /// A pseudonymizer with `secret` as its key.
    pub fn new(secret: &[u8; KEY_BYTES]) -> Self {
        let id = digest::digest(&digest::SHA256, secret);
        Pseudonymizer {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            key_id: hex(&id.as_ref()[..8]),
        }
    }

    /// A name of the key (the first 8 bytes of its SHA-256, in hex): equal for datasets made
    /// with the same key, and no help in finding it.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The pseudonym of `id`.
    pub fn pseudonym(&self, kind: IdKind, id: &str) -> String {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(kind.tag());
        ctx.update(&[0]);
        ctx.update(id.as_bytes());
        hex(&ctx.sign().as_ref()[..16])
    }
}

/// A new random key.
pub fn new_key() -> Result<[u8; KEY_BYTES], crate::ExportError> {
    let mut key = [0u8; KEY_BYTES];
    aws_lc_rs::rand::fill(&mut key).map_err(|_| crate::ExportError::Random)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_keyed_and_separated_by_kind() {
        let a = Pseudonymizer::new(&[7; KEY_BYTES]);
        let b = Pseudonymizer::new(&[8; KEY_BYTES]);
        let p = a.pseudonym(IdKind::User, "alice");
        assert_eq!(p.len(), 32);
        assert_eq!(p, a.pseudonym(IdKind::User, "alice"));
        assert_ne!(p, b.pseudonym(IdKind::User, "alice"));
        assert_ne!(p, a.pseudonym(IdKind::Conversation, "alice"));
        assert_ne!(p, a.pseudonym(IdKind::User, "alicf"));
        assert_ne!(a.key_id(), b.key_id());
        assert_eq!(a.key_id().len(), 16);
        // HMAC-SHA256 of the documented input, by an independent computation:
        // python3 -c 'import hmac,hashlib;print(hmac.new(bytes([7]*32),b"user\0alice",hashlib.sha256).hexdigest()[:32])'
        assert_eq!(p, "74b4a4cca96bfb55cc8033e978adfb0b");
    }
}
