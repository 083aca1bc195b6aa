//! The access rule: what a [`Scope`] may read and write. Written once, here, and applied
//! inside the store's read, list and write functions, so every reader (REST, search, SQL,
//! the change stream, exports) gets the same answer.
//!
//! * **Tenants.** Every key starts with its tenant ([`crate::keys`]): a scope never reaches
//!   another tenant's data at all.
//! * **Conversations** belong to the user they were created for (`owner`). A scope acting for
//!   a user sees only that user's conversations; a tenant-wide scope sees all of them.
//!   Anything not visible answers [`StoreError::NotFound`], like something absent.
//! * **Memory.** Keys under `users/<u>/` are user `u`'s space ([`kv_owner`]); every other key
//!   is the tenant's shared space. A scope acting for a user reads the shared space and its
//!   own space, and never another user's (not found). It writes its own space; the shared
//!   space only when an application acts for the user, not when the user does
//!   ([`Scope::as_user`]); another user's space never ([`StoreError::Forbidden`]).
//!   Tenant-wide scopes reach every key.
//! * **Changes** are visible when what changed is: see [`Scope::can_see_change`].

use crate::changelog::{ChangeEntry, ChangeOp};
use crate::ids::Scope;
use crate::{Result, StoreError};

/// The prefix of the per-user memory spaces.
pub const USER_SPACE_PREFIX: &str = "users/";

/// The owner of a memory key in the per-user space `users/<owner>/…`, if it is in it. A key
/// under `users/` without a second `/` has the empty owner: no user reaches it, only
/// tenant-wide callers.
pub fn kv_owner(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(USER_SPACE_PREFIX)?;
    Some(rest.split_once('/').map_or("", |(owner, _)| owner))
}

/// The memory space of a user, `users/<user>/`.
pub fn user_space(user: &str) -> String {
    format!("{USER_SPACE_PREFIX}{user}/")
}

impl Scope {
    /// True when this scope may see a conversation owned by `owner` (`None`: created
    /// without a user, visible tenant-wide only).
    pub fn can_see(&self, owner: Option<&str>) -> bool {
        match &self.user {
            None => true,
            Some(u) => owner == Some(u.as_str()),
        }
    }

    /// True when this scope may read the memory key (invisible keys are not found).
    pub fn can_read_key(&self, key: &str) -> bool {
        match (&self.user, kv_owner(key)) {
            (Some(u), Some(owner)) => owner == u,
            _ => true,
        }
    }

    /// `Ok` when this scope may write the memory key, [`StoreError::Forbidden`] otherwise
    /// (`index`: the operation's position in a batch).
    pub fn check_write_key(&self, key: &str, index: Option<usize>) -> Result<()> {
        let ok = match (&self.user, kv_owner(key)) {
            (Some(u), Some(owner)) => owner == u,
            (Some(_), None) => !self.is_user_principal(),
            (None, _) => true,
        };
        if ok {
            return Ok(());
        }
        let message = if kv_owner(key).is_some() {
            "keys under users/<user>/ are writable only by that user"
        } else {
            "user principals write only under users/<their id>/; shared keys are written by applications"
        };
        Err(StoreError::Forbidden {
            message: message.into(),
            index,
        })
    }

    /// True when this scope may see a change-log entry: changes of conversations and items
    /// by their owner, changes of memory keys by [`Scope::can_read_key`], a user's erasure
    /// by that user. Tenant-wide scopes see every change of their tenant.
    pub fn can_see_change(&self, entry: &ChangeEntry) -> bool {
        match &entry.op {
            ChangeOp::KvPut { key, .. }
            | ChangeOp::KvDeleted { key }
            | ChangeOp::KvExpired { key } => self.can_read_key(key),
            _ => self.can_see(entry.owner.as_deref()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TenantId;

    fn t() -> TenantId {
        TenantId::new("t").unwrap()
    }

    #[test]
    fn kv_owner_parses_the_user_space() {
        assert_eq!(kv_owner("users/alice/notes"), Some("alice"));
        assert_eq!(kv_owner("users/alice"), Some(""));
        assert_eq!(kv_owner("users/"), Some(""));
        assert_eq!(kv_owner("user/alice/x"), None);
        assert_eq!(kv_owner("shared"), None);
        assert_eq!(user_space("alice"), "users/alice/");
    }

    #[test]
    fn memory_rule_for_each_kind_of_scope() {
        let tenant = Scope::tenant(t());
        let app_for_alice = Scope::user(t(), "alice").unwrap();
        let alice = Scope::as_user(t(), "alice").unwrap();
        for key in ["shared", "users/alice/x", "users/bob/x", "users/x"] {
            assert!(tenant.can_read_key(key));
            assert!(tenant.check_write_key(key, None).is_ok());
        }
        for s in [&app_for_alice, &alice] {
            assert!(s.can_read_key("shared"));
            assert!(s.can_read_key("users/alice/x"));
            assert!(!s.can_read_key("users/bob/x"));
            assert!(!s.can_read_key("users/x"));
            assert!(s.check_write_key("users/alice/x", None).is_ok());
            assert!(matches!(
                s.check_write_key("users/bob/x", Some(3)),
                Err(StoreError::Forbidden { index: Some(3), .. })
            ));
        }
        // Shared memory: applications acting for a user write it, users themselves do not.
        assert!(app_for_alice.check_write_key("shared", None).is_ok());
        assert!(alice.check_write_key("shared", None).is_err());
    }

    #[test]
    fn changes_follow_the_rule_of_what_changed() {
        let alice = Scope::as_user(t(), "alice").unwrap();
        let conv = |owner: Option<&str>| {
            ChangeEntry::new(
                ChangeOp::ConversationCreated {
                    conversation_id: "conv_1".into(),
                },
                owner.map(str::to_owned),
            )
        };
        let kv = |key: &str| {
            ChangeEntry::new(
                ChangeOp::KvDeleted { key: key.into() },
                kv_owner(key).map(str::to_owned),
            )
        };
        assert!(alice.can_see_change(&conv(Some("alice"))));
        assert!(!alice.can_see_change(&conv(Some("bob"))));
        assert!(!alice.can_see_change(&conv(None)));
        assert!(alice.can_see_change(&kv("shared")));
        assert!(alice.can_see_change(&kv("users/alice/x")));
        assert!(!alice.can_see_change(&kv("users/bob/x")));
        let erased = ChangeEntry::new(ChangeOp::UserErased {}, Some("bob".into()));
        assert!(!alice.can_see_change(&erased));
        assert!(Scope::tenant(t()).can_see_change(&erased));
    }
}
