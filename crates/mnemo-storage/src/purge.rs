//! Purging the items of deleted conversations, in the background.
//!
//! Deleting a conversation is two-phase ([`Store::delete_conversation`]): one atomic write
//! removes the record and its owner-index entry and leaves a purge marker (from then on every
//! read of the conversation is 404), and the purge then deletes its items in chunks and
//! finally the marker. The delete returns after the first write; the purge runs here:
//!
//! * **Bounded.** At most [`PURGE_CONCURRENCY`] purges run at once per store; the others wait
//!   for a turn.
//! * **One purge per conversation.** A conversation being purged is *claimed*; whoever else
//!   wants it purged ([`Store::resume_purges`], an erasure) waits for the claim, then finds
//!   the marker gone and has nothing to do.
//! * **Failures** are logged and retried with a backoff, [`ATTEMPTS`] times; after that the
//!   marker stays, and [`Store::resume_purges`] finishes the purge when the store next opens.
//! * **Shutdown.** Closing (or dropping) the store stops purges between two chunks; the
//!   marker stays and the next open finishes the purge. [`Store::purges_idle`] waits until
//!   none is queued or running.

use crate::changelog::{ChangeEntry, ChangeLog, ChangeOp};
use crate::engine::{prefix_range, Engine};
use crate::ids::TenantId;
use crate::records::StoredItem;
use crate::{keys, Result, Store, StoreError};
use slatedb::WriteBatch;
use std::collections::HashSet;
use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Semaphore};

/// Items deleted per batch when a conversation is purged.
const PURGE_CHUNK: usize = 512;

/// Most background purges running at once in one store.
const PURGE_CONCURRENCY: usize = 2;

/// Attempts of a background purge before it is left to the next open.
const ATTEMPTS: u32 = 5;

/// Wait before the first retry of a failed purge; doubled for each further one.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// Longest wait of [`Purges::stop`] for running purges to reach the end of a chunk; then the
/// store closes under them (their next write fails and the marker stays).
const STOP_WAIT: Duration = Duration::from_secs(30);

/// A conversation: its tenant and id.
type ConvKey = (TenantId, String);

/// The purges of one store (see the module documentation).
pub(crate) struct Purges {
    engine: Arc<Engine>,
    log: Arc<ChangeLog>,
    /// Turns for background purges.
    turns: Semaphore,
    /// Conversations being purged, queued or running; watched by those waiting for one.
    claimed: watch::Sender<HashSet<ConvKey>>,
    /// Set once the store closes: purges stop before their next chunk.
    stopping: watch::Sender<bool>,
}

/// A conversation claimed for purging; dropping it releases the claim.
struct Claim {
    purges: Arc<Purges>,
    key: ConvKey,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.purges.claimed.send_modify(|set| {
            set.remove(&self.key);
        });
    }
}

impl Purges {
    pub(crate) fn new(engine: Arc<Engine>, log: Arc<ChangeLog>) -> Arc<Purges> {
        Arc::new(Purges {
            engine,
            log,
            turns: Semaphore::new(PURGE_CONCURRENCY),
            claimed: watch::Sender::new(HashSet::new()),
            stopping: watch::Sender::new(false),
        })
    }

    fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    fn stopped_error() -> StoreError {
        StoreError::unavailable("the store is closing; the purge is finished at the next open")
    }

    /// Claims a conversation if nobody has.
    fn try_claim(self: &Arc<Self>, tenant: &TenantId, conv: &str) -> Option<Claim> {
        let key = (tenant.clone(), conv.to_owned());
        self.claimed
            .send_if_modified(|set| set.insert(key.clone()))
            .then(|| Claim {
                purges: Arc::clone(self),
                key,
            })
    }

    /// Purges a deleted conversation in the background, when a turn is free. Does nothing if
    /// it is already being purged, or if the store is closing (the next open purges it).
    pub(crate) fn spawn(self: &Arc<Self>, tenant: &TenantId, conv: &str, owner: Option<String>) {
        if self.is_stopping() {
            return;
        }
        let Some(claim) = self.try_claim(tenant, conv) else {
            return;
        };
        // The task owns the claim: it is released whatever becomes of the task.
        tokio::spawn(async move {
            claim.purges.run_in_background(&claim.key, owner).await;
        });
    }

    /// One background purge: waits for a turn, then tries until it succeeds, the store
    /// stops, or [`ATTEMPTS`] failures.
    async fn run_in_background(&self, (tenant, conv): &ConvKey, owner: Option<String>) {
        // The semaphore is closed when the store stops.
        let Ok(_turn) = self.turns.acquire().await else {
            return;
        };
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=ATTEMPTS {
            let err = match self.purge(tenant, conv, owner.clone()).await {
                Ok(()) => return,
                Err(e) => e,
            };
            if self.is_stopping() {
                tracing::info!(%tenant, conversation = %conv, "conversation purge stopped by shutdown; it is finished at the next open");
                return;
            }
            if attempt == ATTEMPTS || matches!(err, StoreError::Fenced) {
                tracing::error!(%tenant, conversation = %conv, attempt, error = %crate::report(&err), "conversation purge failed; it is finished at the next open");
                return;
            }
            tracing::warn!(%tenant, conversation = %conv, attempt, ?backoff, error = %crate::report(&err), "conversation purge failed; retrying");
            let mut stopping = self.stopping.subscribe();
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stopping.wait_for(|s| *s) => return,
            }
            backoff *= 2;
        }
    }

    /// Purges a deleted conversation now, in the caller's task: waits for any purge of it
    /// already under way, then finishes what is left (nothing if that one completed).
    pub(crate) async fn run_now(
        self: &Arc<Self>,
        tenant: &TenantId,
        conv: &str,
        owner: Option<String>,
    ) -> Result<()> {
        let mut claimed = self.claimed.subscribe();
        let _claim = loop {
            if self.is_stopping() {
                return Err(Self::stopped_error());
            }
            if let Some(claim) = self.try_claim(tenant, conv) {
                break claim;
            }
            // Released claims and stops both change a watched value.
            let mut stopping = self.stopping.subscribe();
            tokio::select! {
                _ = claimed.changed() => {}
                _ = stopping.wait_for(|s| *s) => {}
            }
        };
        self.purge(tenant, conv, owner).await
    }

    /// Deletes every item and index entry of a deleted conversation, then its purge marker
    /// (nothing if the marker is already gone: another purge finished it). Each batch of
    /// items is removed with its id-index entries and an [`ChangeOp::ItemsPurged`] entry
    /// naming them. Call with the conversation claimed.
    async fn purge(&self, t: &TenantId, id: &str, owner: Option<String>) -> Result<()> {
        let marker = keys::purge(t, id);
        if self.engine.get_latest(&marker).await?.is_none() {
            return Ok(());
        }
        let mut purged = 0usize;
        loop {
            if self.is_stopping() {
                return Err(Self::stopped_error());
            }
            let rows = self
                .engine
                .scan_latest(prefix_range(keys::items_prefix(t, id)), false, PURGE_CHUNK)
                .await?;
            if rows.is_empty() {
                break;
            }
            let mut batch = WriteBatch::new();
            let mut item_ids = Vec::with_capacity(rows.len());
            for kv in rows {
                batch.delete(&kv.key);
                let decoded = keys::item_seq(&kv.key)
                    .ok_or_else(|| StoreError::corrupt("item key"))
                    .and_then(|seq| StoredItem::decode(seq, kv.value));
                // A corrupt item (already logged) is removed all the same; its id-index entry
                // goes in the sweep below.
                if let Ok(item) = decoded {
                    batch.delete(keys::item_id(t, id, &item.id));
                    item_ids.push(item.id);
                }
            }
            purged += item_ids.len();
            let e = ChangeEntry::new(
                ChangeOp::ItemsPurged {
                    conversation_id: id.to_string(),
                    item_ids,
                },
                owner.clone(),
            );
            self.log.write(t, batch, vec![e]).await?.durable().await?;
        }
        // Id-index entries without their item (none unless an item was corrupt): internal
        // index data, invisible to every reader, so no change-log entry.
        loop {
            if self.is_stopping() {
                return Err(Self::stopped_error());
            }
            let rows = self
                .engine
                .scan_latest(
                    prefix_range(keys::item_ids_prefix(t, id)),
                    false,
                    PURGE_CHUNK,
                )
                .await?;
            if rows.is_empty() {
                break;
            }
            let mut batch = WriteBatch::new();
            for kv in &rows {
                batch.delete(&kv.key);
            }
            self.engine.write(batch).await?.durable().await?;
        }
        let mut batch = WriteBatch::new();
        batch.delete(marker);
        self.engine.write(batch).await?.durable().await?;
        tracing::debug!(tenant = %t, conversation = id, items = purged, "conversation purged");
        Ok(())
    }

    /// Resolves once no purge is queued or running.
    pub(crate) async fn idle(&self) {
        let mut claimed = self.claimed.subscribe();
        // Fails only if the sender is gone, and `self` holds it.
        let _ = claimed.wait_for(HashSet::is_empty).await;
    }

    /// Stops purging at once: queued purges never start, running ones stop before their next
    /// chunk. Markers stay for the next open.
    pub(crate) fn stop_now(&self) {
        self.stopping.send_replace(true);
        self.turns.close();
    }

    /// Stops purging ([`Purges::stop_now`]) and waits, at most [`STOP_WAIT`], until running
    /// purges have stopped.
    pub(crate) async fn stop(&self) {
        self.stop_now();
        if tokio::time::timeout(STOP_WAIT, self.idle()).await.is_err() {
            tracing::warn!(
                ?STOP_WAIT,
                "conversation purges still running at shutdown; they are finished at the next open"
            );
        }
    }
}

impl Store {
    /// Finishes the purges left by an earlier run (interrupted by a crash or a shutdown, or
    /// failed): every purge marker in the store. Called when the store opens, before it
    /// serves; returns how many purges it finished.
    pub async fn resume_purges(&self) -> Result<usize> {
        self.finish_purges(keys::purges_prefix(), None).await
    }

    /// Waits until no conversation purge is queued or running in the background (at once if
    /// none is).
    ///
    /// [`Store::delete_conversation`] returns before the deleted conversation's items are
    /// physically removed; this is for callers (tests, tools) that need them gone. A purge
    /// that stopped (shutdown) or failed for good leaves its marker for the next open, so
    /// after this some markers may remain.
    pub async fn purges_idle(&self) {
        self.purges.idle().await
    }

    /// Finishes, in the caller's task, every pending purge whose marker starts with `prefix`
    /// (and, with `only_owner`, whose conversation that user owned). Returns how many.
    pub(crate) async fn finish_purges(
        &self,
        prefix: Vec<u8>,
        only_owner: Option<&str>,
    ) -> Result<usize> {
        let (mut start, end) = prefix_range(prefix);
        let mut n = 0;
        loop {
            let rows = self
                .engine
                .scan_latest((start, end.clone()), false, PURGE_CHUNK)
                .await?;
            let Some(last) = rows.last() else {
                return Ok(n);
            };
            start = Bound::Excluded(last.key.to_vec());
            for kv in &rows {
                let Some((tenant, conv)) = keys::parse_purge(&kv.key) else {
                    tracing::error!(key = ?kv.key, "corrupt record: purge marker key; skipped");
                    continue;
                };
                // Markers of earlier versions are empty: no owner recorded.
                let owner = std::str::from_utf8(&kv.value)
                    .ok()
                    .filter(|o| !o.is_empty())
                    .map(str::to_owned);
                if only_owner.is_some_and(|user| owner.as_deref() != Some(user)) {
                    continue;
                }
                self.purges.run_now(&tenant, &conv, owner).await?;
                n += 1;
            }
        }
    }
}
