//! Erasing a user: every conversation they own and their `users/<user>/` memory space.

use crate::access::{kv_owner, user_space};
use crate::changelog::{ChangeEntry, ChangeOp};
use crate::engine::prefix_range;
use crate::ids::TenantId;
use crate::records::from_json;
use crate::{keys, Result, Store, StoreError};
use serde::Serialize;
use slatedb::WriteBatch;
use std::ops::Bound;

/// Owner-index entries read per round of an erasure.
const ERASE_CHUNK: usize = 256;

/// What [`Store::erase_user`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Erased {
    /// Conversations deleted (with all their items).
    pub conversations: usize,
    /// Keys deleted from the user's `users/<user>/` memory space.
    pub kv_keys: usize,
}

impl Store {
    /// Erases everything a user owns in a tenant: every conversation of the owner index (each
    /// deleted like `DELETE /v1/conversations/{id}`) and every key of the user's memory space
    /// `users/<user>/`, removes every change-log entry that names the user (their
    /// conversations, items, keys, consent, user id), then deletes their research consent
    /// record and logs [`ChangeOp::UserErased`]: the one trace of them the log keeps.
    ///
    /// Unlike a plain delete, it purges the items of their conversations before it returns,
    /// those of conversations deleted earlier and still being purged included: a purge logs
    /// entries naming the owner, and none may follow the scrub of the log. Idempotent: running
    /// it again after a crash finishes the job.
    pub async fn erase_user(&self, tenant: &TenantId, user: &str) -> Result<Erased> {
        let scope = crate::Scope::user(tenant.clone(), user)?;
        let tenant_scope = crate::Scope::tenant(tenant.clone());
        let mut erased = Erased::default();
        let prefix = keys::owner_prefix(tenant, user);
        loop {
            let rows = self
                .engine
                .scan_latest(prefix_range(prefix.clone()), false, ERASE_CHUNK)
                .await?;
            if rows.is_empty() {
                break;
            }
            for kv in rows {
                let conv = keys::parse_owner_entry(tenant, user, &kv.key)
                    .ok_or_else(|| StoreError::corrupt("owner-index key"))?
                    .to_owned();
                match self.delete_conversation_record(&scope, &conv).await {
                    Ok(_) => erased.conversations += 1,
                    // An index entry without its conversation: drop the entry itself, logged
                    // as the conversation's deletion (its owner's listing changes).
                    Err(StoreError::NotFound(_)) => {
                        let mut batch = WriteBatch::new();
                        batch.delete(&kv.key);
                        let e = ChangeEntry::new(
                            ChangeOp::ConversationDeleted {
                                conversation_id: conv,
                            },
                            Some(user.to_owned()),
                        );
                        self.log
                            .write(tenant, batch, vec![e])
                            .await?
                            .durable()
                            .await?;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        // Every conversation of theirs awaiting its purge (these, and any deleted before and
        // still being purged in the background, or left by a failed purge): finished now.
        self.finish_purges(keys::purge(tenant, ""), Some(user))
            .await?;
        let space = user_space(user);
        loop {
            let page = self
                .kv_list(&tenant_scope, &space, None, crate::kv::MAX_BATCH_OPS)
                .await?;
            if page.entries.is_empty() {
                break;
            }
            let ops: Vec<crate::KvOp> = page
                .entries
                .into_iter()
                .map(|e| crate::KvOp::Delete {
                    key: e.key,
                    condition: crate::Condition::default(),
                })
                .collect();
            erased.kv_keys += ops.len();
            self.kv_batch(&tenant_scope, ops).await?;
        }
        self.scrub_log(tenant, user).await?;
        // Their research consent goes with them, in the erasure's own write.
        let mut batch = WriteBatch::new();
        batch.delete(keys::consent(tenant, user));
        let e = ChangeEntry::new(ChangeOp::UserErased {}, Some(user.to_owned()));
        self.log
            .write(tenant, batch, vec![e])
            .await?
            .durable()
            .await?;
        Ok(erased)
    }
}

/// True when a change-log entry names `user`: it is about something the user owns.
fn names_user(e: &ChangeEntry, user: &str) -> bool {
    let key_owner = match &e.op {
        ChangeOp::KvPut { key, .. } | ChangeOp::KvDeleted { key } | ChangeOp::KvExpired { key } => {
            kv_owner(key)
        }
        _ => None,
    };
    e.owner.as_deref() == Some(user) || key_owner == Some(user)
}

impl Store {
    /// Deletes every change-log entry of `tenant` that names `user`. Readers that were
    /// behind never see them; the `user.erased` entry that follows tells them to forget the
    /// user. Walks the tenant's whole retained log.
    async fn scrub_log(&self, tenant: &TenantId, user: &str) -> Result<usize> {
        let (_, end) = prefix_range(keys::space(tenant, keys::Space::Log));
        let mut after = 0;
        let mut removed = 0;
        loop {
            let start = Bound::Excluded(keys::log(tenant, after));
            let rows = self
                .engine
                .scan_latest((start, end.clone()), false, ERASE_CHUNK)
                .await?;
            let Some(last) = rows.last() else {
                return Ok(removed);
            };
            after = keys::seq_in_space(tenant, keys::Space::Log, &last.key)
                .ok_or_else(|| StoreError::corrupt("change-log key"))?;
            let mut batch = WriteBatch::new();
            let mut n = 0;
            for kv in &rows {
                // An entry that does not decode cannot be shown to name anyone; it is logged
                // by the decoder and left.
                match from_json::<ChangeEntry>("change-log entry", &kv.value) {
                    Ok(e) if names_user(&e, user) => {
                        batch.delete(&kv.key);
                        n += 1;
                    }
                    _ => {}
                }
            }
            if n > 0 {
                // The log's own entries: removing them is not itself a change to log.
                self.engine.write(batch).await?.durable().await?;
                removed += n;
            }
        }
    }
}
