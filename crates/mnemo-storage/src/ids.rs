//! Identifiers: tenants, generated object ids, and validation of client-supplied ones.

use crate::{Result, StoreError};
use rand::RngCore;
use std::fmt;

/// Number of random bytes in a generated id (rendered as twice as many hex characters).
const ID_RANDOM_BYTES: usize = 24;

/// Longest id accepted from a client.
pub const MAX_ID_LEN: usize = 128;

/// Generates an opaque, unguessable id: `prefix` followed by 48 random hex characters
/// (192 bits from the OS-seeded CSPRNG).
pub fn generate(prefix: &str) -> String {
    let mut bytes = [0u8; ID_RANDOM_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    let mut id = String::with_capacity(prefix.len() + 2 * ID_RANDOM_BYTES);
    id.push_str(prefix);
    for b in bytes {
        id.push(char::from(HEX[(b >> 4) as usize]));
        id.push(char::from(HEX[(b & 0xf) as usize]));
    }
    id
}

/// Like [`generate`], with the last `tag.len()` random characters replaced by `tag` (a
/// cluster's shard tag, at most 8 characters of `[0-9a-f]`; anything else is ignored).
pub fn generate_tagged(prefix: &str, tag: Option<&str>) -> String {
    let mut id = generate(prefix);
    if let Some(tag) = tag.filter(|t| t.len() <= 8 && t.bytes().all(|b| HEX.contains(&b))) {
        id.truncate(id.len() - tag.len());
        id.push_str(tag);
    }
    id
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// True when `id` is a well-formed object id: 1–128 characters of `[A-Za-z0-9_-]`.
///
/// Conversation and item ids appear inside storage keys; this charset guarantees they never
/// contain the key separator.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A tenant: the top-level isolation unit. Every storage key starts with it.
///
/// Tenant ids are 1–[`MAX_TENANT_LEN`] characters of `[A-Za-z0-9._-]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

impl TenantId {
    /// The tenant used until authentication assigns one from the token.
    pub const DEFAULT: &'static str = "default";

    /// Validates and wraps a tenant id.
    pub fn new(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        let ok = !id.is_empty()
            && id.len() <= MAX_TENANT_LEN
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if ok {
            Ok(TenantId(id))
        } else {
            Err(StoreError::Invalid(format!("invalid tenant id {id:?}")))
        }
    }

    /// The default tenant.
    pub fn default_tenant() -> Self {
        TenantId(Self::DEFAULT.to_string())
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Longest tenant id, in bytes.
pub const MAX_TENANT_LEN: usize = 64;

/// Longest user id, in bytes.
pub const MAX_USER_LEN: usize = 256;

/// Who a request acts for: always a tenant, and optionally one end user of it.
///
/// With a user, only data owned by that user is visible; without, the whole tenant is. What
/// a scope may read and write is decided in one place, [`crate::access`], and applied inside
/// the store's read, list and write functions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    /// The tenant every key of the request is confined to.
    pub tenant: TenantId,
    /// The end user the request acts for, if any.
    pub user: Option<String>,
    /// True when the caller is that user (a user token), not an application acting for it.
    user_principal: bool,
}

impl Scope {
    /// A tenant-wide scope (an application acting for its tenant).
    pub fn tenant(tenant: TenantId) -> Self {
        Scope {
            tenant,
            user: None,
            user_principal: false,
        }
    }

    /// A scope of an application acting for one user of a tenant. The user id must be
    /// 1–256 bytes with no control characters.
    pub fn user(tenant: TenantId, user: impl Into<String>) -> Result<Self> {
        let user = user.into();
        if user.is_empty() || user.len() > MAX_USER_LEN || user.chars().any(char::is_control) {
            return Err(StoreError::Invalid(format!(
                "user id must be 1-{MAX_USER_LEN} bytes without control characters"
            )));
        }
        Ok(Scope {
            tenant,
            user: Some(user),
            user_principal: false,
        })
    }

    /// A scope of a user acting for themselves (a user token): like [`Scope::user`], except
    /// that the tenant's shared memory is read-only to it.
    pub fn as_user(tenant: TenantId, user: impl Into<String>) -> Result<Self> {
        let mut scope = Scope::user(tenant, user)?;
        scope.user_principal = true;
        Ok(scope)
    }

    /// True when the caller is the user itself rather than an application acting for it.
    pub fn is_user_principal(&self) -> bool {
        self.user_principal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_valid_and_distinct() {
        let t = generate_tagged("conv_", Some("00a7"));
        assert!(t.ends_with("00a7") && t.len() == generate("conv_").len() && is_valid_id(&t));
        assert_eq!(generate_tagged("conv_", Some("XYZ!")).len(), t.len());
        let a = generate("conv_");
        let b = generate("conv_");
        assert!(a.starts_with("conv_") && a.len() == 5 + 48);
        assert!(is_valid_id(&a));
        assert_ne!(a, b);
    }

    #[test]
    fn id_validation() {
        assert!(is_valid_id("msg_abc-DEF_1"));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("a b"));
        assert!(!is_valid_id("../etc"));
        assert!(!is_valid_id(&"a".repeat(129)));
        assert!(TenantId::new("acme.eu-1").is_ok());
        assert!(TenantId::new("a\0b").is_err());
        assert!(Scope::user(TenantId::default_tenant(), "bad\nuser").is_err());
    }
}
