//! The key layout. Every byte of every storage key is produced here.
//!
//! ```text
//! t \0 <tenant> \0 c <conv_id>                     conversation record (JSON)
//! t \0 <tenant> \0 i <conv_id> \0 <seq: u64 BE>    item (envelope + encoded item JSON)
//! t \0 <tenant> \0 x <conv_id> \0 <item_id>        item id -> seq
//! t \0 <tenant> \0 o <owner> \0 <conv_id>          owner index (erase a user, list a user's conversations)
//! t \0 <tenant> \0 k <key bytes>                   key-value memory
//! t \0 <tenant> \0 l <seq: u64 BE>                 change log
//! t \0 <tenant> \0 a <seq: u64 BE>                 admin audit log (never expires)
//! s \0 purge \0 <tenant> \0 <conv_id>              conversation whose items are still being purged
//! ```
//!
//! Tenants, conversation ids, item ids and owners never contain `\0` (validated at the edge),
//! so every prefix above is unambiguous and a prefix scan never strays into a neighbour.
//! Big-endian sequence numbers make byte order equal numeric order, so the newest N items of
//! a conversation are one reverse scan of its `i` prefix.

use crate::ids::TenantId;

/// Separator between key components.
const SEP: u8 = 0;

/// The keyspaces inside a tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Space {
    /// Conversation records.
    Conversation = b'c',
    /// Conversation items.
    Item = b'i',
    /// Item id index.
    ItemId = b'x',
    /// Owner index.
    Owner = b'o',
    /// Key-value memory.
    Kv = b'k',
    /// Change log.
    Log = b'l',
    /// Admin audit log.
    Audit = b'a',
    /// Research consent records.
    Consent = b'r',
}

/// `t \0 <tenant> \0 <space>`: the prefix of one keyspace of one tenant.
pub fn space(tenant: &TenantId, space: Space) -> Vec<u8> {
    let t = tenant.as_str().as_bytes();
    let mut k = Vec::with_capacity(t.len() + 4 + 64);
    k.extend_from_slice(b"t\0");
    k.extend_from_slice(t);
    k.push(SEP);
    k.push(space as u8);
    k
}

fn with(mut prefix: Vec<u8>, parts: &[&[u8]]) -> Vec<u8> {
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            prefix.push(SEP);
        }
        prefix.extend_from_slice(p);
    }
    prefix
}

/// Key of a conversation record.
pub fn conversation(tenant: &TenantId, conv_id: &str) -> Vec<u8> {
    with(space(tenant, Space::Conversation), &[conv_id.as_bytes()])
}

/// Prefix of all items of a conversation (ends with the separator).
pub fn items_prefix(tenant: &TenantId, conv_id: &str) -> Vec<u8> {
    with(space(tenant, Space::Item), &[conv_id.as_bytes(), b""])
}

/// Key of the item at `seq` in a conversation.
pub fn item(tenant: &TenantId, conv_id: &str, seq: u64) -> Vec<u8> {
    let mut k = items_prefix(tenant, conv_id);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Decodes the sequence number of an item key (`items_prefix(..) <seq: u64 BE>`).
pub fn item_seq(key: &[u8]) -> Option<u64> {
    seq_suffix(key)
}

/// The big-endian `u64` closing a key.
fn seq_suffix(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

/// Decodes the sequence number of a change-log or audit-log key of `tenant` (`space` is
/// [`Space::Log`] or [`Space::Audit`]); `None` for any other key.
pub fn seq_in_space(tenant: &TenantId, space: Space, key: &[u8]) -> Option<u64> {
    let rest = key.strip_prefix(self::space(tenant, space).as_slice())?;
    (rest.len() == 8).then(|| seq_suffix(rest)).flatten()
}

/// Prefix of the item-id index of a conversation.
pub fn item_ids_prefix(tenant: &TenantId, conv_id: &str) -> Vec<u8> {
    with(space(tenant, Space::ItemId), &[conv_id.as_bytes(), b""])
}

/// Key of an item-id index entry.
pub fn item_id(tenant: &TenantId, conv_id: &str, item_id: &str) -> Vec<u8> {
    let mut k = item_ids_prefix(tenant, conv_id);
    k.extend_from_slice(item_id.as_bytes());
    k
}

/// Key of an owner index entry.
pub fn owner(tenant: &TenantId, owner: &str, conv_id: &str) -> Vec<u8> {
    with(
        space(tenant, Space::Owner),
        &[owner.as_bytes(), conv_id.as_bytes()],
    )
}

/// Key of a key-value memory entry.
pub fn kv(tenant: &TenantId, key: &str) -> Vec<u8> {
    kv_bytes(tenant, key.as_bytes())
}

/// Key of a key-value memory entry given as bytes (bounds of key ranges need not be UTF-8).
pub fn kv_bytes(tenant: &TenantId, key: &[u8]) -> Vec<u8> {
    let mut k = space(tenant, Space::Kv);
    k.extend_from_slice(key);
    k
}

/// The memory key of a stored key-value entry of `tenant` (the inverse of [`kv`]).
pub fn parse_kv<'k>(tenant: &TenantId, key: &'k [u8]) -> Option<&'k str> {
    let rest = key.strip_prefix(space(tenant, Space::Kv).as_slice())?;
    std::str::from_utf8(rest).ok()
}

/// Key of a change-log entry.
pub fn log(tenant: &TenantId, seq: u64) -> Vec<u8> {
    let mut k = space(tenant, Space::Log);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Key of an audit-log entry.
pub fn audit(tenant: &TenantId, seq: u64) -> Vec<u8> {
    let mut k = space(tenant, Space::Audit);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Key of a user's research consent record.
pub fn consent(tenant: &TenantId, user: &str) -> Vec<u8> {
    with(space(tenant, Space::Consent), &[user.as_bytes()])
}

/// Prefix of a user's entries in the owner index.
pub fn owner_prefix(tenant: &TenantId, owner: &str) -> Vec<u8> {
    let mut k = space(tenant, Space::Owner);
    k.extend_from_slice(owner.as_bytes());
    k.push(SEP);
    k
}

/// The conversation id of an owner-index key of `owner` (the inverse of [`owner`]).
pub fn parse_owner_entry<'k>(tenant: &TenantId, owner: &str, key: &'k [u8]) -> Option<&'k str> {
    let rest = key.strip_prefix(owner_prefix(tenant, owner).as_slice())?;
    std::str::from_utf8(rest).ok()
}

/// The item id of an item-id index key of a conversation (the inverse of [`item_id`]).
pub fn parse_item_id<'k>(tenant: &TenantId, conv_id: &str, key: &'k [u8]) -> Option<&'k str> {
    let rest = key.strip_prefix(item_ids_prefix(tenant, conv_id).as_slice())?;
    std::str::from_utf8(rest).ok()
}

/// Where a walk over the tenants starts: the first possible tenant key.
pub fn tenants_start() -> Vec<u8> {
    b"t\0".to_vec()
}

/// The exclusive end of every tenant key.
pub fn tenants_end() -> Vec<u8> {
    b"t\x01".to_vec()
}

/// The tenant of a tenant key (`None` if the key is not one, or its tenant is not a valid
/// id), and the first key after all keys of that tenant part, where a walk over the tenants
/// continues (`None` if the key has no tenant part at all).
pub fn parse_tenant(key: &[u8]) -> (Option<TenantId>, Option<Vec<u8>>) {
    let Some(rest) = key.strip_prefix(tenants_start().as_slice()) else {
        return (None, None);
    };
    let Some(end) = rest.iter().position(|b| *b == SEP) else {
        return (None, None);
    };
    let tenant = std::str::from_utf8(&rest[..end])
        .ok()
        .and_then(|t| TenantId::new(t).ok());
    let mut next = tenants_start();
    next.extend_from_slice(&rest[..end]);
    next.push(SEP + 1);
    (tenant, Some(next))
}

/// Prefix of the expiry index: `s \0 expiry \0 <expires_at_ms: u64 BE> <tenant> \0 <key>`,
/// one entry per memory value written with a TTL, in expiry order across tenants.
pub fn expiry_prefix() -> Vec<u8> {
    b"s\0expiry\0".to_vec()
}

/// Key of an expiry-index entry.
pub fn expiry(at_ms: u64, tenant: &TenantId, key: &str) -> Vec<u8> {
    let mut k = expiry_until(at_ms);
    k.extend_from_slice(tenant.as_str().as_bytes());
    k.push(SEP);
    k.extend_from_slice(key.as_bytes());
    k
}

/// The first expiry-index key of values expiring at `at_ms` (the exclusive end of every
/// entry due before it).
pub fn expiry_until(at_ms: u64) -> Vec<u8> {
    let mut k = expiry_prefix();
    k.extend_from_slice(&at_ms.to_be_bytes());
    k
}

/// Splits an expiry-index key into expiry time, tenant and memory key.
pub fn parse_expiry(key: &[u8]) -> Option<(u64, TenantId, String)> {
    let rest = key.strip_prefix(expiry_prefix().as_slice())?;
    let at = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
    let rest = &rest[8..];
    let pos = rest.iter().position(|b| *b == SEP)?;
    let tenant = TenantId::new(std::str::from_utf8(&rest[..pos]).ok()?).ok()?;
    let key = std::str::from_utf8(&rest[pos + 1..]).ok()?.to_string();
    Some((at, tenant, key))
}

/// Prefix of all pending conversation purges.
pub fn purges_prefix() -> Vec<u8> {
    b"s\0purge\0".to_vec()
}

/// Key of a pending conversation purge.
pub fn purge(tenant: &TenantId, conv_id: &str) -> Vec<u8> {
    let mut k = purges_prefix();
    k.extend_from_slice(tenant.as_str().as_bytes());
    k.push(SEP);
    k.extend_from_slice(conv_id.as_bytes());
    k
}

/// Splits a purge key back into tenant and conversation id.
pub fn parse_purge(key: &[u8]) -> Option<(TenantId, String)> {
    let rest = key.strip_prefix(purges_prefix().as_slice())?;
    let pos = rest.iter().position(|b| *b == SEP)?;
    let tenant = TenantId::new(std::str::from_utf8(&rest[..pos]).ok()?).ok()?;
    let conv = std::str::from_utf8(&rest[pos + 1..]).ok()?.to_string();
    Some((tenant, conv))
}

/// The smallest key strictly greater than every key starting with `prefix`, if any.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_keys_sort_by_seq_and_stay_in_prefix() {
        let t = TenantId::default_tenant();
        let a = item(&t, "conv_a", 1);
        let b = item(&t, "conv_a", 256);
        assert!(a < b);
        assert!(a.starts_with(&items_prefix(&t, "conv_a")));
        assert!(!item(&t, "conv_ab", 0).starts_with(&items_prefix(&t, "conv_a")));
        assert_eq!(item_seq(&b), Some(256));
    }

    #[test]
    fn tenants_do_not_share_prefixes() {
        let a = TenantId::new("a").unwrap();
        let ab = TenantId::new("ab").unwrap();
        assert!(!kv(&ab, "x").starts_with(&space(&a, Space::Kv)));
    }

    #[test]
    fn keys_parse_back() {
        let t = TenantId::new("acme").unwrap();
        assert_eq!(seq_in_space(&t, Space::Log, &log(&t, 42)), Some(42));
        assert_eq!(seq_in_space(&t, Space::Audit, &log(&t, 42)), None);
        assert_eq!(seq_in_space(&t, Space::Log, &item(&t, "c", 42)), None);
        assert_eq!(parse_kv(&t, &kv(&t, "users/a/x")), Some("users/a/x"));
        assert_eq!(parse_kv(&TenantId::new("acm").unwrap(), &kv(&t, "x")), None);
        assert_eq!(
            parse_owner_entry(&t, "bob", &owner(&t, "bob", "conv_1")),
            Some("conv_1")
        );
        assert_eq!(
            parse_owner_entry(&t, "bo", &owner(&t, "bob", "conv_1")),
            None
        );
        assert_eq!(
            parse_item_id(&t, "c", &item_id(&t, "c", "msg_1")),
            Some("msg_1")
        );
        let (tenant, next) = parse_tenant(&kv(&t, "x"));
        let next = next.unwrap();
        assert_eq!(tenant, Some(t.clone()));
        assert_eq!(parse_tenant(b"t\0bad tenant\0k").0, None);
        assert!(parse_tenant(b"t\0bad tenant\0k").1.is_some());
        assert!(next > log(&t, u64::MAX) && next > kv(&t, "\u{10ffff}"));
        assert!(next <= space(&TenantId::new("acme0").unwrap(), Space::Conversation));
        assert!(next < tenants_end());
    }

    #[test]
    fn expiry_keys_sort_by_time_and_parse_back() {
        let t = TenantId::new("acme").unwrap();
        let k = expiry(1_000, &t, "users/a/x");
        assert_eq!(
            parse_expiry(&k),
            Some((1_000, t.clone(), "users/a/x".to_string()))
        );
        assert!(k < expiry_until(1_001) && k >= expiry_until(1_000));
        assert!(expiry(999, &TenantId::new("zzz").unwrap(), "z") < k);
    }

    #[test]
    fn purge_keys_round_trip() {
        let t = TenantId::new("acme").unwrap();
        assert_eq!(
            parse_purge(&purge(&t, "conv_1")),
            Some((t, "conv_1".to_string()))
        );
    }

    #[test]
    fn prefix_end_is_exclusive_upper_bound() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff"), None);
    }
}
