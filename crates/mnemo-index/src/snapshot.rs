//! Search index snapshots in the object store, so a restart does not re-index everything.
//!
//! * **Taking one.** The tail task applies the change log in rounds; between two rounds (or at
//!   shutdown, after waiting for the round in progress) the service copies each tenant's
//!   indexed log position and serialises the index ([`SearchIndex::snapshot`]). Every change
//!   up to those positions is in the index, so the positions are a consistent replay point.
//!   The upload runs in its own task, after the tail has moved on; one at a time. A snapshot
//!   is taken when `interval` has passed and some position moved; the last [`KEEP`] are kept.
//! * **Restoring.** At start the newest usable snapshot is restored; then for every tenant of
//!   the store: if the log still holds the entry at the snapshot's position (entries expire in
//!   commit order, so all later ones are there too), the log is replayed from it (the same
//!   code as the tail: deletes and erasures are log entries like any write); otherwise the
//!   tenant is dropped from the index and rebuilt from the store. Tenants gone from the store
//!   are dropped. An unusable snapshot falls back to an older one, then to a full rebuild.
//!
//! A snapshot file is `<db path>/search/snapshots/<generation, 20 digits>.snap` in the store's
//! own object store (beside SlateDB's `manifest/`, `wal/` and `compacted/`, which SlateDB alone
//! lists). Layout:
//!
//! ```text
//! magic "MNEMOSNP" | version u32 LE | header length u32 LE | header (JSON) | crc32 of header u32 LE
//! | index snapshot (SearchIndex::snapshot: its own magic, version and CRC-32)
//! ```
//!
//! The JSON header records when the snapshot was taken and, per tenant, the change-log
//! position it reflects (every change up to it is in the index). Objects are written whole
//! (`put`, or a multipart upload completed at the end), so a crash never leaves a partial
//! `.snap`: at worst an unfinished upload, which is not listed.

use crate::{IndexError, SearchService};
use bytes::Bytes;
use mnemo_search::{IndexOp, SearchConfig, SearchError, SearchIndex};
use mnemo_storage::clock::now_ms;
use mnemo_storage::{StoreLocation, TenantId};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MAGIC: &[u8; 8] = b"MNEMOSNP";
const VERSION: u32 = 1;
/// Snapshots kept in the store; older ones are deleted after a successful upload.
pub const KEEP: usize = 2;
/// Snapshots up to this size are one `put`; larger ones a multipart upload of such parts.
const PART: usize = 16 << 20;

/// What went wrong with a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Object store failure (listing, reading, writing, deleting).
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    /// The file is not a snapshot this build can read (corrupt, truncated, other version).
    #[error("unusable snapshot {path}: {reason}")]
    Bad {
        /// The object.
        path: String,
        /// Why.
        reason: String,
    },
    /// The index could not be restored or serialised.
    #[error("search index: {0}")]
    Index(#[from] SearchError),
}

/// The JSON header of a snapshot file.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SnapshotHeader {
    /// When the snapshot was taken, ms since the Unix epoch.
    pub taken_at_ms: i64,
    /// Per tenant, the change-log position the index reflects.
    pub positions: BTreeMap<String, u64>,
}

/// A snapshot read back from the store.
pub struct Loaded {
    /// Its generation (the number in its name).
    pub generation: u64,
    /// Its header.
    pub header: SnapshotHeader,
    /// The restored index (threads running).
    pub index: SearchIndex,
}

/// Where snapshots are kept: the store's object store, under `<db path>/search/snapshots/`.
#[derive(Clone)]
pub struct SnapshotStore {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
}

fn bad(path: &Path, reason: impl std::fmt::Display) -> SnapshotError {
    SnapshotError::Bad {
        path: path.to_string(),
        reason: reason.to_string(),
    }
}

/// The file bytes for `header` and an index snapshot: (prefix with header, index bytes).
pub fn encode(header: &SnapshotHeader, index: Vec<u8>) -> (Bytes, Bytes) {
    let json = serde_json::to_vec(header).unwrap_or_else(|_| b"{}".to_vec());
    let mut head = Vec::with_capacity(json.len() + 20);
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(&VERSION.to_le_bytes());
    head.extend_from_slice(&(json.len() as u32).to_le_bytes());
    head.extend_from_slice(&json);
    head.extend_from_slice(&crc32fast::hash(&json).to_le_bytes());
    (Bytes::from(head), Bytes::from(index))
}

/// Splits a snapshot file into its header and the index snapshot bytes (not yet checked: the
/// index checks its own checksum when restored).
pub fn decode(bytes: &[u8]) -> Result<(SnapshotHeader, &[u8]), String> {
    if bytes.len() < 16 || &bytes[..8] != MAGIC {
        return Err("not a mnemo search snapshot file".into());
    }
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if version != VERSION {
        return Err(format!(
            "snapshot file version {version} (this build reads {VERSION})"
        ));
    }
    let len = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]) as usize;
    let json = bytes.get(16..16 + len).ok_or("truncated header")?;
    let crc = bytes.get(16 + len..20 + len).ok_or("truncated header")?;
    if crc32fast::hash(json).to_le_bytes() != crc {
        return Err("header checksum mismatch".into());
    }
    let header: SnapshotHeader =
        serde_json::from_slice(json).map_err(|e| format!("header: {e}"))?;
    Ok((header, &bytes[20 + len..]))
}

impl SnapshotStore {
    /// Snapshots of the store at `location`.
    pub fn new(location: &StoreLocation) -> Self {
        let base = location.path.trim_matches('/');
        let prefix = if base.is_empty() {
            Path::from("search/snapshots")
        } else {
            Path::from(format!("{base}/search/snapshots"))
        };
        SnapshotStore {
            store: location.object_store.clone(),
            prefix,
        }
    }

    fn path(&self, generation: u64) -> Path {
        self.prefix.clone().join(format!("{generation:020}.snap"))
    }

    /// Generations present, newest first.
    pub async fn list(&self) -> Result<Vec<u64>, SnapshotError> {
        let listed = match self.store.list_with_delimiter(Some(&self.prefix)).await {
            Ok(l) => l,
            Err(object_store::Error::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out: Vec<u64> = listed
            .objects
            .iter()
            .filter_map(|o| o.location.filename()?.strip_suffix(".snap")?.parse().ok())
            .collect();
        out.sort_unstable_by(|a, b| b.cmp(a));
        Ok(out)
    }

    /// Restores the newest usable snapshot, trying older ones if it is unusable. `None` when
    /// there is none (or none usable): rebuild from the store.
    pub async fn load_newest(&self, cfg: &SearchConfig) -> Result<Option<Loaded>, SnapshotError> {
        for generation in self.list().await? {
            let path = self.path(generation);
            let bytes = match self.store.get(&path).await {
                Ok(r) => r.bytes().await?,
                Err(object_store::Error::NotFound { .. }) => continue, // pruned meanwhile
                Err(e) => return Err(e.into()),
            };
            let restored = {
                let cfg = cfg.clone();
                tokio::task::spawn_blocking(move || {
                    let (header, index) = decode(&bytes)?;
                    let index = SearchIndex::restore(cfg, index).map_err(|e| e.to_string())?;
                    Ok::<_, String>((header, index))
                })
                .await
                .map_err(|e| bad(&path, e))?
            };
            match restored {
                Ok((header, index)) => {
                    return Ok(Some(Loaded {
                        generation,
                        header,
                        index,
                    }))
                }
                Err(reason) => {
                    metrics::counter!("mnemo_search_snapshots_rejected_total").increment(1);
                    tracing::warn!(%path, %reason, "search snapshot unusable; trying an older one");
                }
            }
        }
        Ok(None)
    }

    /// Writes a snapshot as generation `generation`, then deletes all but the newest
    /// [`KEEP`]. Returns the bytes written.
    pub async fn save(
        &self,
        generation: u64,
        header: &SnapshotHeader,
        index: Vec<u8>,
    ) -> Result<usize, SnapshotError> {
        let path = self.path(generation);
        let (head, body) = encode(header, index);
        let total = head.len() + body.len();
        if total <= PART {
            let payload: PutPayload = [head, body].into_iter().collect();
            self.store.put(&path, payload).await?;
        } else {
            let upload = self.store.put_multipart(&path).await?;
            let mut w = WriteMultipart::new_with_chunk_size(upload, PART);
            w.put(head);
            let mut rest = body;
            while !rest.is_empty() {
                if let Err(e) = w.wait_for_capacity(4).await {
                    let _ = w.abort().await;
                    return Err(e.into());
                }
                let n = rest.len().min(PART);
                w.put(rest.split_to(n));
            }
            w.finish().await?;
        }
        self.prune().await?;
        Ok(total)
    }

    /// Deletes every snapshot but the newest [`KEEP`].
    pub async fn prune(&self) -> Result<(), SnapshotError> {
        for old in self.list().await?.into_iter().skip(KEEP) {
            match self.store.delete(&self.path(old)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// Snapshot settings of the search service.
#[derive(Clone, Debug, Default)]
pub struct SnapshotOptions {
    /// Minimum time between two snapshots (one is taken only if the index changed).
    /// Zero turns snapshots off: none is loaded at start, none is written.
    pub interval: Duration,
}

/// Snapshot state of a running service.
pub(crate) struct Snapshots {
    store: SnapshotStore,
    interval: Duration,
    /// Held by the tail for each round of applying the log, and by a snapshot while it copies
    /// the positions and serialises the index.
    round: tokio::sync::Mutex<()>,
    /// One upload at a time; shutdown waits for the one running.
    upload: tokio::sync::Mutex<()>,
    /// Positions of the newest snapshot written or restored (none is due while unchanged).
    last: std::sync::Mutex<Option<BTreeMap<String, u64>>>,
    /// Generation of the newest snapshot written or restored.
    generation: AtomicU64,
    /// When the next snapshot may be taken.
    due: std::sync::Mutex<tokio::time::Instant>,
    /// What the start-up restore did (tests and diagnostics).
    resumed: std::sync::Mutex<Option<Resumed>>,
}

/// What a start from a snapshot did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Resumed {
    /// Generation of the snapshot restored.
    pub generation: u64,
    /// Documents in the index as restored.
    pub restored_docs: usize,
    /// Tenants whose change log was replayed from the snapshot's position.
    pub replayed: usize,
    /// Tenants rebuilt from the store (no usable position).
    pub rebuilt: usize,
    /// Tenants dropped (gone from the store).
    pub dropped: usize,
}

/// A serialised snapshot on its way to the store.
struct Taken {
    generation: u64,
    serialize_seconds: f64,
    header: SnapshotHeader,
    index: Vec<u8>,
}

impl Snapshots {
    /// `None` when snapshots are off.
    pub(crate) fn new(location: &StoreLocation, options: &SnapshotOptions) -> Option<Self> {
        if options.interval.is_zero() {
            return None;
        }
        Some(Snapshots {
            store: SnapshotStore::new(location),
            interval: options.interval,
            round: tokio::sync::Mutex::new(()),
            upload: tokio::sync::Mutex::new(()),
            last: std::sync::Mutex::new(None),
            generation: AtomicU64::new(0),
            due: std::sync::Mutex::new(tokio::time::Instant::now() + options.interval),
            resumed: std::sync::Mutex::new(None),
        })
    }

    /// The newest usable snapshot, restored; `None` (logged) if there is none or the store
    /// cannot be read: the caller rebuilds from the store.
    pub(crate) async fn load(&self, cfg: &SearchConfig) -> Option<Loaded> {
        let started = Instant::now();
        match self.store.load_newest(cfg).await {
            Ok(Some(l)) => {
                self.generation.store(l.generation, Ordering::SeqCst);
                *self.last.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(l.header.positions.clone());
                metrics::gauge!("mnemo_search_restore_seconds")
                    .set(started.elapsed().as_secs_f64());
                Some(l)
            }
            Ok(None) => {
                tracing::info!(
                    "no search snapshot in the store; building the index from the store"
                );
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read search snapshots; building the index from the store");
                None
            }
        }
    }
}

impl SearchService {
    /// Seeds the index restored from a snapshot with its positions, replays each tenant's log
    /// from there, and rebuilds tenants whose position is unusable. See the module docs.
    pub(crate) async fn resume(
        &self,
        header: &SnapshotHeader,
        started: Instant,
    ) -> Result<(), IndexError> {
        let restored_docs: usize = self.index.tenants().iter().map(|t| self.index.len(t)).sum();
        let log = self.store.change_log();
        let tenants = self.store.tenants().await?;
        let in_store: HashSet<&str> = tenants.iter().map(TenantId::as_str).collect();
        let age_ms = now_ms().saturating_sub(header.taken_at_ms);
        let young = age_ms >= 0 && (age_ms as u128) < log.retention().as_millis();
        let mut dropped = 0usize;
        for t in self.index.tenants() {
            if !in_store.contains(t.as_str()) {
                self.apply(vec![IndexOp::DeleteTenant { tenant: t }], 0)
                    .await?;
                dropped += 1;
            }
        }
        let (mut replayed, mut rebuild) = (0usize, Vec::new());
        for tenant in tenants {
            let newest = log.newest(&tenant).await?;
            let position = header.positions.get(tenant.as_str()).copied();
            let usable = match position {
                Some(0) => young && newest == 0,
                Some(p) => p <= newest && log.retains(&tenant, p).await?,
                None => false,
            };
            match position {
                Some(p) if usable => {
                    self.set_indexed(&tenant, p);
                    self.catch_up(&tenant, newest).await?;
                    replayed += 1;
                }
                _ => {
                    tracing::info!(%tenant, ?position, "search snapshot has no usable position for the tenant; rebuilding it");
                    self.apply(
                        vec![IndexOp::DeleteTenant {
                            tenant: tenant.as_str().to_owned(),
                        }],
                        0,
                    )
                    .await?;
                    rebuild.push(tenant);
                }
            }
        }
        let rebuilt = rebuild.len();
        let rebuilt_docs = self.rebuild(rebuild).await?;
        metrics::gauge!("mnemo_search_restored_docs").set(restored_docs as f64);
        if let Some(s) = &self.snapshots {
            *s.resumed.lock().unwrap_or_else(|e| e.into_inner()) = Some(Resumed {
                generation: s.generation.load(Ordering::SeqCst),
                restored_docs,
                replayed,
                rebuilt,
                dropped,
            });
        }
        tracing::info!(
            restored_docs,
            tenants_replayed = replayed,
            tenants_rebuilt = rebuilt,
            rebuilt_docs,
            tenants_dropped = dropped,
            snapshot_age_seconds = age_ms as f64 / 1000.0,
            seconds = started.elapsed().as_secs_f64(),
            "search index restored from snapshot"
        );
        Ok(())
    }

    /// Held by the tail while it applies one round of log entries.
    pub(crate) async fn tail_round(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match &self.snapshots {
            Some(s) => Some(s.round.lock().await),
            None => None,
        }
    }

    /// Resolves when a periodic snapshot is due (never when snapshots are off).
    pub(crate) async fn snapshot_due(&self) {
        match &self.snapshots {
            Some(s) => {
                let due = *s.due.lock().unwrap_or_else(|e| e.into_inner());
                tokio::time::sleep_until(due).await
            }
            None => std::future::pending().await,
        }
    }

    /// Called by the tail between rounds: if a snapshot is due and the index changed since the
    /// last one, serialises it now and uploads it in the background.
    pub(crate) async fn snapshot_if_due(self: &Arc<Self>) {
        let Some(s) = &self.snapshots else { return };
        {
            let mut due = s.due.lock().unwrap_or_else(|e| e.into_inner());
            if tokio::time::Instant::now() < *due {
                return;
            }
            *due = tokio::time::Instant::now() + s.interval;
        }
        if s.upload.try_lock().is_err() {
            return; // the previous upload is still running: try at the next due time
        }
        match self.take_snapshot().await {
            Ok(None) => {}
            Ok(Some(taken)) => {
                let svc = self.clone();
                tokio::spawn(async move {
                    if let Some(s) = &svc.snapshots {
                        let _one = s.upload.lock().await;
                        svc.upload(taken).await;
                    }
                });
            }
            Err(e) => {
                metrics::counter!("mnemo_search_snapshots_total", "result" => "error").increment(1);
                tracing::warn!(error = %e, "search snapshot failed");
            }
        }
    }

    /// At clean shutdown: waits for a running upload, then writes a last snapshot if the index
    /// changed since the newest one. Does nothing when snapshots are off.
    pub async fn shutdown(&self) {
        let Some(s) = &self.snapshots else { return };
        let _one = s.upload.lock().await;
        match self.take_snapshot().await {
            Ok(Some(taken)) => self.upload(taken).await,
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "search snapshot at shutdown failed"),
        }
    }

    /// Copies the positions and serialises the index between two tail rounds. `None` when
    /// nothing changed since the newest snapshot.
    async fn take_snapshot(&self) -> Result<Option<Taken>, SnapshotError> {
        let Some(s) = &self.snapshots else {
            return Ok(None);
        };
        let round = s.round.lock().await;
        let positions: BTreeMap<String, u64> = {
            let m = self.indexed.lock().unwrap_or_else(|e| e.into_inner());
            m.iter().map(|(t, p)| (t.as_str().to_owned(), *p)).collect()
        };
        if s.last.lock().unwrap_or_else(|e| e.into_inner()).as_ref() == Some(&positions) {
            return Ok(None);
        }
        let taken_at_ms = now_ms();
        let started = Instant::now();
        let index = self.index.clone();
        let bytes = tokio::task::spawn_blocking(move || index.snapshot())
            .await
            .map_err(|e| SnapshotError::Index(SearchError::Internal(e.to_string())))??;
        drop(round);
        let serialize_seconds = started.elapsed().as_secs_f64();
        metrics::gauge!("mnemo_search_snapshot_serialize_seconds").set(serialize_seconds);
        let generation = (taken_at_ms.max(0) as u64).max(s.generation.load(Ordering::SeqCst) + 1);
        s.generation.store(generation, Ordering::SeqCst);
        Ok(Some(Taken {
            generation,
            serialize_seconds,
            header: SnapshotHeader {
                taken_at_ms,
                positions,
            },
            index: bytes,
        }))
    }

    /// Writes a taken snapshot and prunes old ones; logs the outcome.
    async fn upload(&self, taken: Taken) {
        let Some(s) = &self.snapshots else { return };
        let started = Instant::now();
        let positions = taken.header.positions.clone();
        match s
            .store
            .save(taken.generation, &taken.header, taken.index)
            .await
        {
            Ok(bytes) => {
                *s.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(positions);
                metrics::counter!("mnemo_search_snapshots_total", "result" => "ok").increment(1);
                metrics::gauge!("mnemo_search_snapshot_bytes").set(bytes as f64);
                metrics::gauge!("mnemo_search_snapshot_upload_seconds")
                    .set(started.elapsed().as_secs_f64());
                tracing::info!(
                    generation = taken.generation,
                    bytes,
                    serialize_seconds = taken.serialize_seconds,
                    upload_seconds = started.elapsed().as_secs_f64(),
                    "search snapshot written"
                );
            }
            Err(e) => {
                metrics::counter!("mnemo_search_snapshots_total", "result" => "error").increment(1);
                tracing::warn!(error = %e, "search snapshot upload failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use mnemo_search::{Mode, SearchQuery, Source};
    use mnemo_storage::{EngineConfig, NewItem, Scope, Store};

    fn tmp(name: &str) -> std::path::PathBuf {
        let d =
            std::env::temp_dir().join(format!("mnemo-{name}-{}-{}", std::process::id(), now_ms()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn item(text: &str) -> NewItem {
        NewItem {
            id: mnemo_storage::ids::generate("msg_"),
            client_id: false,
            json: Bytes::from(
                serde_json::json!({"type": "message", "role": "user", "content": text}).to_string(),
            ),
            vector: None,
        }
    }

    fn ids(index: &SearchIndex, source: Source, text: &str) -> Vec<String> {
        let mut q = SearchQuery::new("default", source, Mode::Text, 100);
        q.text = Some(text.into());
        let mut v: Vec<String> = index
            .search(&q)
            .unwrap()
            .into_iter()
            .map(|h| h.id)
            .collect();
        v.sort();
        v
    }

    const HOUR: SnapshotOptions = SnapshotOptions {
        interval: Duration::from_secs(3600),
    };

    fn hourly() -> crate::SearchOptions {
        crate::SearchOptions {
            snapshots: HOUR,
            ..Default::default()
        }
    }

    /// A store at `loc` and its search service, snapshotting hourly (not during a test).
    async fn open(loc: &StoreLocation) -> (Arc<Store>, Arc<SearchService>) {
        let store = Arc::new(Store::open(EngineConfig::new(loc.clone())).await.unwrap());
        let svc = SearchService::start_with(store.clone(), hourly())
            .await
            .unwrap();
        (store, svc)
    }

    /// A user erased after the snapshot stays erased after a restore: `erase_user` writes
    /// `conversation.deleted` / `kv.deleted` log entries, which the restart replays. The
    /// snapshot itself still holds the user's documents (checked), so the test fails if
    /// replay does not happen.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn erased_user_does_not_come_back_after_restore() {
        let dir = tmp("erase");
        let loc = StoreLocation::local(&dir).unwrap();
        let tenant = TenantId::default_tenant();
        let alice = Scope::user(tenant.clone(), "alice").unwrap();
        let bob = Scope::user(tenant.clone(), "bob").unwrap();
        let (store, svc) = open(&loc).await;
        store
            .create_conversation(&alice, Default::default(), vec![item("zebra alice one")])
            .await
            .unwrap();
        let (bob_conv, bob_items) = store
            .create_conversation(&bob, Default::default(), vec![item("zebra bob one")])
            .await
            .unwrap();
        store
            .kv_put(
                &Scope::tenant(tenant.clone()),
                "users/alice/profile",
                Bytes::from_static(br#"{"note": "zebra memo"}"#),
                "application/json".into(),
                None,
                Default::default(),
            )
            .await
            .unwrap();
        svc.wait_current(&tenant, crate::Consistency::Eventual)
            .await
            .unwrap();
        assert_eq!(ids(svc.index(), Source::Items, "zebra").len(), 2);
        // Snapshot now (the shutdown path writes one whenever the index changed).
        svc.shutdown().await;
        let snaps = SnapshotStore::new(&loc);
        assert_eq!(snaps.list().await.unwrap().len(), 1);

        // After the snapshot: erase alice, add to bob; then "crash" (no further snapshot).
        let erased = store.erase_user(&tenant, "alice").await.unwrap();
        assert_eq!((erased.conversations, erased.kv_keys), (1, 1));
        store
            .append_items(&bob, &bob_conv.id, vec![item("zebra bob two")])
            .await
            .unwrap();
        svc.wait_current(&tenant, crate::Consistency::Eventual)
            .await
            .unwrap();
        let want_items = ids(svc.index(), Source::Items, "zebra");
        assert_eq!(want_items.len(), 2);
        assert!(want_items.contains(&bob_items[0].id));
        assert!(ids(svc.index(), Source::Memory, "zebra").is_empty());
        store.close().await.unwrap();

        // The snapshot still has alice's documents...
        let old = snaps
            .load_newest(&SearchConfig::default())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ids(&old.index, Source::Items, "zebra").len(), 2);
        assert_eq!(ids(&old.index, Source::Memory, "zebra").len(), 1);
        drop(old);

        // ...but the restarted service, restored from it, does not.
        let (store, svc2) = open(&loc).await;
        let resumed = svc2
            .snapshots
            .as_ref()
            .and_then(|s| *s.resumed.lock().unwrap())
            .expect("restored from the snapshot");
        assert_eq!((resumed.replayed, resumed.rebuilt), (1, 0));
        assert_eq!(resumed.restored_docs, 3);
        assert_eq!(ids(svc2.index(), Source::Items, "zebra"), want_items);
        assert!(ids(svc2.index(), Source::Memory, "zebra").is_empty());
        // And it equals a full rebuild.
        let rebuilt = SearchService::start(store.clone()).await.unwrap();
        assert_eq!(ids(rebuilt.index(), Source::Items, "zebra"), want_items);
        store.close().await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A position the log no longer holds (as after retention trimmed it) makes that tenant
    /// rebuild from the store instead of replaying.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tenant_without_usable_position_is_rebuilt() {
        let dir = tmp("trim");
        let loc = StoreLocation::local(&dir).unwrap();
        let tenant = TenantId::default_tenant();
        let bob = Scope::user(tenant.clone(), "bob").unwrap();
        let (store, svc) = open(&loc).await;
        store
            .create_conversation(&bob, Default::default(), vec![item("zebra first")])
            .await
            .unwrap();
        svc.wait_current(&tenant, crate::Consistency::Eventual)
            .await
            .unwrap();
        svc.shutdown().await;
        // Rewrite the snapshot with a position that is not in the log, as a newer generation.
        let snaps = SnapshotStore::new(&loc);
        let gen = snaps.list().await.unwrap()[0];
        let mut loaded = snaps
            .load_newest(&SearchConfig::default())
            .await
            .unwrap()
            .unwrap();
        loaded.header.positions.insert("default".into(), 1);
        snaps
            .save(gen + 1, &loaded.header, loaded.index.snapshot().unwrap())
            .await
            .unwrap();
        store
            .create_conversation(&bob, Default::default(), vec![item("zebra second")])
            .await
            .unwrap();
        store.close().await.unwrap();

        let (store, svc2) = open(&loc).await;
        let resumed = svc2
            .snapshots
            .as_ref()
            .and_then(|s| *s.resumed.lock().unwrap())
            .expect("restored from the snapshot");
        assert_eq!(resumed.generation, gen + 1);
        assert_eq!((resumed.replayed, resumed.rebuilt), (0, 1));
        assert_eq!(ids(svc2.index(), Source::Items, "zebra").len(), 2);
        store.close().await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn header_round_trip_and_damage() {
        let h = SnapshotHeader {
            taken_at_ms: 42,
            positions: BTreeMap::from([("acme".to_string(), 7)]),
        };
        let (head, body) = encode(&h, vec![1, 2, 3]);
        let mut file = head.to_vec();
        file.extend_from_slice(&body);
        let (got, index) = decode(&file).unwrap();
        assert_eq!(got, h);
        assert_eq!(index, &[1, 2, 3]);
        for i in 0..head.len() {
            let mut f = file.clone();
            f[i] ^= 0x10;
            assert!(decode(&f).is_err(), "flipped header byte {i} accepted");
        }
        assert!(decode(&file[..10]).is_err());
    }

    #[tokio::test]
    async fn keeps_the_newest_two() {
        let dir = std::env::temp_dir().join(format!("mnemo-snap-{}", std::process::id()));
        let loc = StoreLocation::local(&dir).unwrap();
        let snaps = SnapshotStore::new(&loc);
        assert!(snaps.list().await.unwrap().is_empty());
        let index = SearchIndex::new(SearchConfig::default()).unwrap();
        for g in [5, 9, 7] {
            snaps
                .save(g, &SnapshotHeader::default(), index.snapshot().unwrap())
                .await
                .unwrap();
        }
        assert_eq!(snaps.list().await.unwrap(), vec![9, 7]);
        let loaded = snaps
            .load_newest(&SearchConfig::default())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(loaded.generation, 9);
        // A damaged newest snapshot falls back to the older one.
        let p = dir.join("db/search/snapshots/00000000000000000009.snap");
        let mut b = std::fs::read(&p).unwrap();
        let last = b.len() - 1;
        b[last] ^= 1;
        std::fs::write(&p, b).unwrap();
        let loaded = snaps
            .load_newest(&SearchConfig::default())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(loaded.generation, 7);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
