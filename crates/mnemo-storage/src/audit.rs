//! The admin audit log: who did what to which tenant, append-only.
//!
//! Entries live under `t \0 <tenant> \0 a <seq: u64 BE>` and never expire. `seq` is a
//! hybrid logical clock (`max(previous + 1, now in microseconds)`, process-wide), so entries
//! sort by time and stay ordered across restarts. An entry is durable before the action it
//! records runs: an action is never performed unaudited.

use crate::changelog::now_ms;
use crate::engine::prefix_range;
use crate::ids::TenantId;
use crate::{keys, Result, Store, StoreError};
use serde::{Deserialize, Serialize};
use slatedb::WriteBatch;
use std::ops::Bound;

/// One audit entry.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AuditEntry {
    /// Position in the tenant's audit log (filled in when appended).
    #[serde(default)]
    pub seq: u64,
    /// Time, milliseconds since the Unix epoch (filled in when appended).
    #[serde(default)]
    pub at_ms: i64,
    /// Who: the subject of the verified principal.
    pub actor: String,
    /// `user`, `application` or `local` (no authentication).
    pub actor_kind: String,
    /// What, e.g. `user.erase`, or `denied` for a refused admin request.
    pub action: String,
    /// On what, e.g. the erased user id or the request path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Free-form details (JSON).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
}

impl Store {
    /// Appends `entry` to `tenant`'s audit log and waits until it is durable. Returns the
    /// stored entry (with `seq` and `at_ms`).
    pub async fn audit_append(
        &self,
        tenant: &TenantId,
        mut entry: AuditEntry,
    ) -> Result<AuditEntry> {
        let pending = {
            let mut seqs = self.audit_seq.lock().await;
            let last = match seqs.get(tenant) {
                Some(s) => *s,
                // First append since start: continue after the newest stored entry, so a
                // clock that moved backwards can never overwrite one.
                None => {
                    let newest = self
                        .engine
                        .scan_latest(
                            prefix_range(keys::space(tenant, keys::Space::Audit)),
                            true,
                            1,
                        )
                        .await?;
                    newest
                        .first()
                        .and_then(|kv| kv.key.rchunks(8).next())
                        .and_then(|b| <[u8; 8]>::try_from(b).ok())
                        .map_or(0, u64::from_be_bytes)
                }
            };
            let now_us = u64::try_from(now_ms().max(0)).unwrap_or(0) * 1000;
            let seq = (last + 1).max(now_us);
            seqs.insert(tenant.clone(), seq);
            entry.seq = seq;
            entry.at_ms = now_ms();
            let value = serde_json::to_vec(&entry)
                .map_err(|e| StoreError::Internal(format!("encoding audit entry: {e}")))?;
            let mut batch = WriteBatch::new();
            batch.put(keys::audit(tenant, seq), value);
            self.engine.write(batch).await?
        };
        pending.durable().await?;
        Ok(entry)
    }

    /// Reads `tenant`'s audit log in order, entries with `seq > after`, at most `limit`.
    /// Returns the entries and whether more follow.
    pub async fn audit_list(
        &self,
        tenant: &TenantId,
        after: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<AuditEntry>, bool)> {
        let (start, end) = prefix_range(keys::space(tenant, keys::Space::Audit));
        let start = match after {
            Some(seq) => Bound::Excluded(keys::audit(tenant, seq)),
            None => start,
        };
        let mut rows = self.engine.scan((start, end), false, limit + 1).await?;
        let more = rows.len() > limit;
        rows.truncate(limit);
        let entries = rows
            .iter()
            .map(|kv| {
                serde_json::from_slice(&kv.value)
                    .map_err(|e| StoreError::Corrupt(format!("audit entry: {e}")))
            })
            .collect::<Result<Vec<AuditEntry>>>()?;
        Ok((entries, more))
    }
}

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
    /// deleted like `DELETE /v1/conversations/{id}`, items purged) and every key of the
    /// user's memory space `users/<user>/`. Idempotent: running it again after a crash
    /// finishes the job.
    pub async fn erase_user(&self, tenant: &TenantId, user: &str) -> Result<Erased> {
        let scope = crate::Scope::user(tenant.clone(), user)?;
        let tenant_scope = crate::Scope::tenant(tenant.clone());
        let mut erased = Erased::default();
        let prefix = keys::owner_prefix(tenant, user);
        loop {
            let rows = self
                .engine
                .scan_latest(prefix_range(prefix.clone()), false, 256)
                .await?;
            if rows.is_empty() {
                break;
            }
            for kv in rows {
                let conv = String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned();
                match self.delete_conversation(&scope, &conv).await {
                    Ok(()) => erased.conversations += 1,
                    // An index entry without its conversation: drop the entry itself.
                    Err(StoreError::NotFound(_)) => {
                        let mut batch = WriteBatch::new();
                        batch.delete(&kv.key);
                        self.engine.write(batch).await?.durable().await?;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let space = format!("users/{user}/");
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
        Ok(erased)
    }
}
