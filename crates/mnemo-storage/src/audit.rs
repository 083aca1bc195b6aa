//! The admin audit log: who did what to which tenant, append-only.
//!
//! Entries live under `t \0 <tenant> \0 a <seq: u64 BE>` and never expire. `seq` is a
//! per-tenant hybrid logical clock ([`crate::clock::next_seq`]), so entries
//! sort by time and stay ordered across restarts. An entry is durable before the action it
//! records runs: an action is never performed unaudited.

use crate::changelog::newest_seq;
use crate::clock::{next_seq, now_ms};
use crate::engine::prefix_range;
use crate::ids::TenantId;
use crate::records::{from_json, to_json};
use crate::{keys, Result, Store};
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
                None => newest_seq(&self.engine, tenant, keys::Space::Audit).await?,
            };
            let seq = next_seq(last);
            seqs.insert(tenant.clone(), seq);
            entry.seq = seq;
            entry.at_ms = now_ms();
            let value = to_json("audit entry", &entry)?;
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
            .map(|kv| from_json("audit entry", &kv.value))
            .collect::<Result<Vec<AuditEntry>>>()?;
        Ok((entries, more))
    }
}
