//! Consistent replicas of a live mnemo store (see `docs/rfcs/0011-replicas.md`).
//!
//! A replica is a copy of the store's SlateDB database that SlateDB can open at every moment,
//! at some committed point of the source. Each [`Replicator::round`]:
//!
//! 1. **pins** the source: a detached checkpoint (10 minutes' lifetime) names a manifest whose
//!    files the source's garbage collector keeps while the round runs;
//! 2. copies the **SSTs** that manifest references and the **write-ahead log** after its replay
//!    point: SlateDB's WAL objects (ids consecutive from the replay point, cut at the first
//!    missing one) and, for a source with a local log, the valid prefix of each segment with the
//!    log's `BASE` record (`mnemo_wal::ship`);
//! 3. writes the **manifest last**, create-if-absent: a reader of the replica that sees the new
//!    manifest finds every file it names. A manifest already there with other bytes means
//!    another writer (a promoted replica): the round fails and nothing more is written;
//! 4. records the round in the replica's marker object (`replica.json`) and drops the pin.
//!
//! Files are immutable once written (SSTs, WAL objects, manifests); a shipped segment prefix is
//! replaced by a longer prefix of the same segment, written segment by segment in order, so
//! the replica's log is always a prefix of the source's. Every write acknowledged before a
//! round starts (`as_of_ms` of its report) is in the replica when the round ends.
//!
//! Old files are removed from the replica once no manifest written in the last
//! [`ReplicaOptions::grace`] references them ([`Replicator::collect_garbage`]), so a reader
//! following the replica keeps the files of the manifest it reads.

use crate::SyncError;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use mnemo_storage::StoreLocation;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use slatedb::admin::{Admin, AdminBuilder};
use slatedb::config::CheckpointOptions;
use slatedb::{PathResolver, VersionedManifest};
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The replica's marker object, beside the database's directories: which source it follows
/// and the last round that completed.
pub const MARKER: &str = "replica.json";

/// Where the replica keeps shipped segments of a source's local log (beside `manifest/`,
/// where a local store keeps its own log: a promoted local replica replays them).
pub const LOCAL_WAL: &str = "local-wal";

/// Options of a [`Replicator`].
#[derive(Clone, Debug)]
pub struct ReplicaOptions {
    /// Lifetime of each round's pin on the source (the round must finish within it).
    pub pin_lifetime: Duration,
    /// How long a replica keeps files that its newest manifest no longer needs, for readers
    /// still reading an older manifest.
    pub grace: Duration,
    /// Objects copied at once.
    pub transfers: usize,
}

impl Default for ReplicaOptions {
    fn default() -> Self {
        ReplicaOptions {
            pin_lifetime: Duration::from_secs(600),
            grace: Duration::from_secs(300),
            transfers: 8,
        }
    }
}

/// The replica's marker ([`MARKER`]).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Marker {
    /// The source store (its URL, without secrets).
    pub source: String,
    /// The last round that completed.
    pub round: RoundReport,
}

/// What one round did.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RoundReport {
    /// The source manifest the replica now holds.
    pub manifest_id: u64,
    /// The last write-ahead log id the replica holds (`manifest`'s replay point if none).
    pub wal_id: u64,
    /// When the round pinned the source (ms since the epoch): every write the source
    /// acknowledged before it is in the replica.
    pub as_of_ms: u64,
    /// When the round finished (ms since the epoch).
    pub finished_ms: u64,
    /// `finished_ms - as_of_ms`: how far behind the source the replica was when it finished.
    pub lag_ms: u64,
    /// Objects copied by this round.
    pub copied_objects: u64,
    /// Bytes copied by this round.
    pub copied_bytes: u64,
}

/// Copies a live store to a replica, round by round.
pub struct Replicator {
    src: StoreLocation,
    src_wal_dir: Option<PathBuf>,
    dst: StoreLocation,
    options: ReplicaOptions,
    src_admin: Admin,
    /// Replica paths known to be complete (immutable files only: SSTs and WAL objects).
    present: HashSet<String>,
    /// Shipped segments known final: number → ids of their first and last blocks.
    sealed: BTreeMap<u64, (u64, u64)>,
    /// Shipped prefix length of the newest segment.
    shipped: BTreeMap<u64, usize>,
    started: bool,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn io(e: impl std::fmt::Display) -> SyncError {
    SyncError::Replica(e.to_string())
}

/// `root/sub/name` as an object path.
fn under(root: &str, rel: &str) -> Path {
    Path::from(format!("{}/{rel}", root.trim_end_matches('/')))
}

fn manifest_rel(id: u64) -> String {
    format!("manifest/{id:020}.manifest")
}

fn wal_rel(id: u64) -> String {
    format!("wal/{id:020}.sst")
}

/// The id of a `<20 digits>.<ext>` file name.
fn numbered(name: &str, ext: &str) -> Option<u64> {
    let stem = name.strip_suffix(ext)?;
    (stem.len() == 20).then(|| stem.parse().ok()).flatten()
}

impl Replicator {
    /// A replicator of the store at `src` (its local log in `src_wal_dir`, if it has one) to
    /// the store at `dst`.
    pub fn new(
        src: StoreLocation,
        src_wal_dir: Option<PathBuf>,
        dst: StoreLocation,
        options: ReplicaOptions,
    ) -> Self {
        let src_admin = AdminBuilder::new(src.path.clone(), src.object_store.clone()).build();
        Replicator {
            src,
            src_wal_dir,
            dst,
            options,
            src_admin,
            present: HashSet::new(),
            sealed: BTreeMap::new(),
            shipped: BTreeMap::new(),
            started: false,
        }
    }

    /// Checks the target before the first round: empty, or a replica of this source.
    async fn start(&mut self) -> Result<(), SyncError> {
        let dst = self.dst.object_store.clone();
        let has_manifest = dst
            .list(Some(&under(&self.dst.path, "manifest")))
            .next()
            .await
            .transpose()
            .map_err(io)?
            .is_some();
        if has_manifest {
            match read_marker(&self.dst).await? {
                Some(m) if m.source == self.src.description => {}
                Some(m) => {
                    return Err(SyncError::Replica(format!(
                        "{} is a replica of {}, not of {}",
                        self.dst.description, m.source, self.src.description
                    )))
                }
                None => {
                    return Err(SyncError::Replica(format!(
                        "{} holds a database that is not a replica (no {MARKER}); \
                         replicate into an empty location",
                        self.dst.description
                    )))
                }
            }
        }
        for dir in ["compacted", "wal"] {
            let mut list = dst.list(Some(&under(&self.dst.path, dir)));
            while let Some(meta) = list.next().await {
                let meta = meta.map_err(io)?;
                if let Some(rel) = self.dst_rel(&meta.location) {
                    self.present.insert(rel);
                }
            }
        }
        self.started = true;
        Ok(())
    }

    /// The path of a replica object relative to the replica's database root.
    fn dst_rel(&self, p: &Path) -> Option<String> {
        p.as_ref()
            .strip_prefix(self.dst.path.trim_end_matches('/'))
            .map(|r| r.trim_start_matches('/').to_string())
    }

    /// Runs one round (see the module documentation).
    pub async fn round(&mut self) -> Result<RoundReport, SyncError> {
        if !self.started {
            self.start().await?;
        }
        let as_of_ms = now_ms();
        let pin = self
            .src_admin
            .create_detached_checkpoint(&CheckpointOptions {
                lifetime: Some(self.options.pin_lifetime),
                name: Some("mnemo-replicate".into()),
                ..CheckpointOptions::default()
            })
            .await
            .map_err(io)?;
        let result = self.copy_pinned(pin.manifest_id, as_of_ms).await;
        if let Err(e) = self.src_admin.delete_checkpoint(pin.id).await {
            tracing::warn!(error = %e, "could not remove the round's checkpoint (it expires)");
        }
        result
    }

    async fn copy_pinned(
        &mut self,
        manifest_id: u64,
        as_of_ms: u64,
    ) -> Result<RoundReport, SyncError> {
        let manifest = self
            .src_admin
            .read_manifest(Some(manifest_id))
            .await
            .map_err(io)?
            .ok_or_else(|| io(format!("pinned manifest {manifest_id} is missing")))?;
        let mut report = RoundReport {
            manifest_id,
            as_of_ms,
            ..RoundReport::default()
        };
        // 1. SSTs.
        let mut files = Vec::new();
        for rel in sst_rels(&self.src.path, &manifest)? {
            if !self.present.contains(&rel) {
                files.push(rel);
            }
        }
        // 2. SlateDB's WAL objects after the replay point, consecutive.
        let replay_after = manifest.replay_after_wal_id();
        let mut wal_id = replay_after;
        let src = self.src.object_store.clone();
        let offset = under(&self.src.path, &wal_rel(replay_after));
        let mut ids: Vec<u64> = src
            .list_with_offset(Some(&under(&self.src.path, "wal")), &offset)
            .try_filter_map(|m| async move {
                Ok(m.location.filename().and_then(|n| numbered(n, ".sst")))
            })
            .try_collect()
            .await
            .map_err(io)?;
        ids.sort_unstable();
        for id in ids {
            if id <= wal_id {
                continue;
            }
            if id != wal_id + 1 {
                break;
            }
            wal_id = id;
            let rel = wal_rel(id);
            if !self.present.contains(&rel) {
                files.push(rel);
            }
        }
        let copied = self.copy_all(files).await?;
        report.copied_objects += copied.0;
        report.copied_bytes += copied.1;
        // 3. The local log's segments.
        if let Some(dir) = self.src_wal_dir.clone() {
            let shipped = self.ship_segments(&dir, replay_after, &mut wal_id).await?;
            report.copied_objects += shipped.0;
            report.copied_bytes += shipped.1;
        }
        report.wal_id = wal_id;
        // 4. The manifest, last.
        self.put_manifest(manifest_id).await?;
        report.finished_ms = now_ms();
        report.lag_ms = report.finished_ms.saturating_sub(as_of_ms);
        let marker = Marker {
            source: self.src.description.clone(),
            round: report.clone(),
        };
        let body = serde_json::to_vec_pretty(&marker).map_err(io)?;
        self.dst
            .object_store
            .put(&under(&self.dst.path, MARKER), PutPayload::from(body))
            .await
            .map_err(io)?;
        Ok(report)
    }

    /// Copies `rels` (paths relative to the database root) from source to replica.
    async fn copy_all(&mut self, rels: Vec<String>) -> Result<(u64, u64), SyncError> {
        let src = self.src.clone();
        let dst = self.dst.clone();
        let results: Vec<Result<(String, u64), SyncError>> = futures::stream::iter(rels)
            .map(|rel| {
                let (src, dst) = (src.clone(), dst.clone());
                async move {
                    let bytes = copy_one(
                        &src.object_store,
                        &under(&src.path, &rel),
                        &dst.object_store,
                        &under(&dst.path, &rel),
                    )
                    .await?;
                    Ok((rel, bytes))
                }
            })
            .buffer_unordered(self.options.transfers.max(1))
            .collect()
            .await;
        let (mut n, mut bytes) = (0, 0);
        for r in results {
            let (rel, b) = r?;
            self.present.insert(rel);
            n += 1;
            bytes += b;
        }
        Ok((n, bytes))
    }

    /// Ships the valid prefixes of the local log's segments that hold ids after
    /// `replay_after`, in order, stopping at the first missing id; advances `wal_id`.
    async fn ship_segments(
        &mut self,
        dir: &std::path::Path,
        replay_after: u64,
        wal_id: &mut u64,
    ) -> Result<(u64, u64), SyncError> {
        let (mut n, mut bytes) = (0u64, 0u64);
        let base = mnemo_wal::ship::read_base(dir).map_err(io)?;
        if let Some(base) = base {
            let body = format!("{base}\n");
            self.dst
                .object_store
                .put(
                    &under(
                        &self.dst.path,
                        &format!("{LOCAL_WAL}/{}", mnemo_wal::ship::BASE_FILE),
                    ),
                    PutPayload::from(body.into_bytes()),
                )
                .await
                .map_err(io)?;
        }
        let start = replay_after.max(base.unwrap_or(0));
        *wal_id = (*wal_id).max(start);
        let numbers = mnemo_wal::ship::segment_numbers(dir).map_err(io)?;
        // Segments followed by one that held blocks at the previous round: the writer had
        // moved past them before this round, so what is read now is their final content.
        let mut seen_blocks_after = false;
        let mut pending = Vec::new();
        for number in numbers.into_iter().rev() {
            if seen_blocks_after {
                pending.push(number);
            }
            if self.shipped.contains_key(&number) || self.sealed.contains_key(&number) {
                seen_blocks_after = true;
            }
        }
        let numbers = mnemo_wal::ship::segment_numbers(dir).map_err(io)?;
        for number in numbers {
            if let Some(&(first, last)) = self.sealed.get(&number) {
                // Final and shipped whole: its blocks are in the replica.
                if first > *wal_id + 1 {
                    break;
                }
                *wal_id = (*wal_id).max(last);
                continue;
            }
            let d = dir.to_path_buf();
            let prefix =
                tokio::task::spawn_blocking(move || mnemo_wal::ship::read_prefix(&d, number))
                    .await
                    .map_err(io)?
                    .map_err(io)?;
            let Some((first, last)) = prefix.ids else {
                // No block yet (a preallocated spare, or a segment a crash left empty).
                continue;
            };
            if first > *wal_id + 1 {
                // A gap (the segment before it was read before it was whole): stop here.
                break;
            }
            let len = prefix.bytes.len();
            if last > start && self.shipped.get(&number) != Some(&len) {
                let path = under(&self.dst.path, &format!("{LOCAL_WAL}/{}", prefix.file_name));
                self.dst
                    .object_store
                    .put(&path, PutPayload::from(Bytes::from(prefix.bytes)))
                    .await
                    .map_err(io)?;
                n += 1;
                bytes += len as u64;
            }
            self.shipped.insert(number, len);
            *wal_id = (*wal_id).max(last);
            if pending.contains(&number) {
                self.sealed.insert(number, (first, last));
            }
        }
        Ok((n, bytes))
    }

    /// Writes source manifest `id` to the replica, create-if-absent.
    async fn put_manifest(&self, id: u64) -> Result<(), SyncError> {
        let rel = manifest_rel(id);
        let body = read_all(&self.src.object_store, &under(&self.src.path, &rel)).await?;
        let path = under(&self.dst.path, &rel);
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self
            .dst
            .object_store
            .put_opts(&path, PutPayload::from(body.clone()), opts)
            .await
        {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => {
                let there = read_all(&self.dst.object_store, &path).await?;
                if there == body {
                    Ok(())
                } else {
                    Err(SyncError::Replica(format!(
                        "{} has another manifest {id}: the replica was promoted or is written \
                         by another process; stopping",
                        self.dst.description
                    )))
                }
            }
            Err(e) => Err(io(e)),
        }
    }

    /// Removes replica files that no manifest written in the last `grace` needs, and those
    /// manifests' older predecessors. Returns how many objects went.
    pub async fn collect_garbage(&mut self) -> Result<u64, SyncError> {
        let dst_admin =
            AdminBuilder::new(self.dst.path.clone(), self.dst.object_store.clone()).build();
        let store = self.dst.object_store.clone();
        let cutoff = chrono_cutoff(self.options.grace);
        let manifests: Vec<object_store::ObjectMeta> = store
            .list(Some(&under(&self.dst.path, "manifest")))
            .try_collect()
            .await
            .map_err(io)?;
        let mut ids: Vec<(u64, object_store::ObjectMeta)> = manifests
            .into_iter()
            .filter_map(|m| {
                let id = m
                    .location
                    .filename()
                    .and_then(|n| numbered(n, ".manifest"))?;
                Some((id, m))
            })
            .collect();
        ids.sort_by_key(|(id, _)| *id);
        let Some(newest) = ids.last().map(|(id, _)| *id) else {
            return Ok(0);
        };
        // Manifests a reader may still read: the newest, and any written within the grace.
        let (keep, old): (Vec<_>, Vec<_>) = ids
            .into_iter()
            .partition(|(id, m)| *id == newest || m.last_modified > cutoff);
        let mut needed = HashSet::new();
        let mut min_replay = u64::MAX;
        for (id, _) in &keep {
            let Some(m) = dst_admin.read_manifest(Some(*id)).await.map_err(io)? else {
                continue;
            };
            needed.extend(sst_rels(&self.dst.path, &m)?);
            min_replay = min_replay.min(m.replay_after_wal_id());
        }
        let mut doomed: Vec<Path> = old.into_iter().map(|(_, m)| m.location).collect();
        for dir in ["compacted", "wal"] {
            let mut list = store.list(Some(&under(&self.dst.path, dir)));
            while let Some(meta) = list.next().await {
                let meta = meta.map_err(io)?;
                if meta.last_modified > cutoff {
                    continue;
                }
                let Some(rel) = self.dst_rel(&meta.location) else {
                    continue;
                };
                let name = meta.location.filename().unwrap_or_default();
                let unneeded = if dir == "compacted" {
                    !needed.contains(&rel)
                } else {
                    numbered(name, ".sst").is_some_and(|id| id <= min_replay)
                };
                if unneeded {
                    doomed.push(meta.location);
                    self.present.remove(&rel);
                }
            }
        }
        doomed.extend(self.unneeded_segments(min_replay).await?);
        let n = doomed.len() as u64;
        for path in doomed {
            match store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(io(e)),
            }
        }
        Ok(n)
    }

    /// Shipped segments all of whose blocks are at or before `replay_after` (the oldest replay
    /// point a kept manifest has): no replay reads them.
    async fn unneeded_segments(&mut self, replay_after: u64) -> Result<Vec<Path>, SyncError> {
        let mut out = Vec::new();
        let store = self.dst.object_store.clone();
        let metas: Vec<object_store::ObjectMeta> = store
            .list(Some(&under(&self.dst.path, LOCAL_WAL)))
            .try_collect()
            .await
            .map_err(io)?;
        let mut segs: Vec<(u64, Path)> = metas
            .into_iter()
            .filter_map(|m| {
                let n = m.location.filename().and_then(|f| numbered(f, ".wal"))?;
                Some((n, m.location))
            })
            .collect();
        segs.sort_by_key(|(n, _)| *n);
        // A segment is unneeded when the next one's first block is at or before the replay
        // point + 1 (so every block of this one is at or before it).
        for pair in segs.windows(2) {
            let next = &pair[1];
            // A final segment's first id is known from shipping it; others are read.
            let first = match self.sealed.get(&next.0) {
                Some(&(first, _)) => Some(first),
                None => mnemo_wal::ship::first_block_id(&read_all(&store, &next.1).await?),
            };
            if let Some(first) = first {
                if first <= replay_after + 1 {
                    out.push(pair[0].1.clone());
                    self.sealed.remove(&pair[0].0);
                    self.shipped.remove(&pair[0].0);
                }
            }
        }
        Ok(out)
    }
}

fn chrono_cutoff(grace: Duration) -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now() - chrono::Duration::from_std(grace).unwrap_or_default()
}

/// The paths (relative to the database root) of the SSTs a manifest references.
fn sst_rels(root: &str, manifest: &VersionedManifest) -> Result<Vec<String>, SyncError> {
    let resolver = PathResolver::new(root.to_string(), manifest);
    let prefix = format!("{}/", root.trim_end_matches('/'));
    let mut out = Vec::new();
    for view in manifest.all_sst_views() {
        let path = resolver.sst_path(&view.sst.id);
        let rel = path.as_ref().strip_prefix(&prefix).ok_or_else(|| {
            SyncError::Replica(format!(
                "SST {path} is outside the database (a clone's); replicas of clones are not supported"
            ))
        })?;
        out.push(rel.to_string());
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// Copies one object of the database (streamed, in parts when large).
async fn copy_one(
    src: &Arc<dyn ObjectStore>,
    from: &Path,
    dst: &Arc<dyn ObjectStore>,
    to: &Path,
) -> Result<u64, SyncError> {
    let size = src.head(from).await.map_err(io)?.size;
    crate::copy_object(src, from, dst, to, size, &crate::CopyParams::default()).await?;
    Ok(size)
}

/// Reads a whole object.
async fn read_all(store: &Arc<dyn ObjectStore>, path: &Path) -> Result<Bytes, SyncError> {
    store.get(path).await.map_err(io)?.bytes().await.map_err(io)
}

/// Reads a replica's marker; `None` if the location is not a replica.
pub async fn read_marker(location: &StoreLocation) -> Result<Option<Marker>, SyncError> {
    match location
        .object_store
        .get(&under(&location.path, MARKER))
        .await
    {
        Ok(r) => {
            let body = r.bytes().await.map_err(io)?;
            Ok(Some(serde_json::from_slice(&body).map_err(io)?))
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(io(e)),
    }
}

/// What [`promote`] did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Promoted {
    /// The replica's last completed round: every write its source acknowledged before
    /// `round.as_of_ms` is in the promoted store.
    pub round: RoundReport,
    /// Checkpoints of the source found in the replica's manifest and removed.
    pub checkpoints_removed: usize,
    /// Shipped local-log segments replayed into the database (a remote replica of a source
    /// with a local log).
    pub segments_replayed: usize,
}

/// Turns a replica into a writable store (disaster recovery). Stop the replicator first: a
/// replicator still running fails at its next manifest and writes nothing more.
///
/// The source's checkpoints are removed from the replica's manifest (their manifests are not
/// in the replica). The database is then opened once as a writer, which fences any other
/// writer and replays the write-ahead log; on a remote replica, segments shipped from a source
/// with a local log are downloaded to `work_dir`, replayed and flushed to an SST. The marker
/// goes last: an interrupted promotion can be run again.
pub async fn promote(
    location: &StoreLocation,
    work_dir: &std::path::Path,
) -> Result<Promoted, SyncError> {
    let marker = read_marker(location).await?.ok_or_else(|| {
        SyncError::Replica(format!(
            "{} is not a replica (no {MARKER}): nothing to promote",
            location.description
        ))
    })?;
    let admin = AdminBuilder::new(location.path.clone(), location.object_store.clone()).build();
    let checkpoints = admin.list_checkpoints(None).await.map_err(io)?;
    for c in &checkpoints {
        admin.delete_checkpoint(c.id).await.map_err(io)?;
    }
    let mut config = mnemo_storage::EngineConfig::new(location.clone());
    let mut segments_replayed = 0;
    let mut fetched = None;
    if location.local_dir.is_none() {
        let segs: Vec<object_store::ObjectMeta> = location
            .object_store
            .list(Some(&under(&location.path, LOCAL_WAL)))
            .try_collect()
            .await
            .map_err(io)?;
        if !segs.is_empty() {
            let dir = work_dir.join("promote-wal");
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(io)?;
            }
            std::fs::create_dir_all(&dir).map_err(io)?;
            for meta in &segs {
                let name = meta.location.filename().unwrap_or_default().to_string();
                let body = read_all(&location.object_store, &meta.location).await?;
                std::fs::write(dir.join(&name), &body).map_err(io)?;
                segments_replayed += usize::from(name.ends_with(".wal"));
            }
            config.wal_dir = Some(dir.clone());
            fetched = Some((dir, segs));
        }
    }
    let engine = mnemo_storage::Engine::open(config).await.map_err(io)?;
    // Closing flushes the memtable when the log is local: the object store then holds all.
    engine.close().await.map_err(io)?;
    if let Some((dir, segs)) = fetched {
        for meta in segs {
            location
                .object_store
                .delete(&meta.location)
                .await
                .map_err(io)?;
        }
        std::fs::remove_dir_all(&dir).map_err(io)?;
    }
    location
        .object_store
        .delete(&under(&location.path, MARKER))
        .await
        .map_err(io)?;
    Ok(Promoted {
        round: marker.round,
        checkpoints_removed: checkpoints.len(),
        segments_replayed,
    })
}

/// Keeps a local copy of a remote replica's shipped log segments in `dir`, for a read-only
/// server following the replica ([`mnemo_storage::Engine::open_read_only`] reads it). One pass:
/// downloads segments (in order) whose size changed, and `BASE`; removes those gone.
pub async fn fetch_segments(
    location: &StoreLocation,
    dir: &std::path::Path,
) -> Result<u64, SyncError> {
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut metas: Vec<object_store::ObjectMeta> = location
        .object_store
        .list(Some(&under(&location.path, LOCAL_WAL)))
        .try_collect()
        .await
        .map_err(io)?;
    metas.sort_by(|a, b| a.location.cmp(&b.location));
    let mut names = HashSet::new();
    let mut fetched = 0;
    // BASE first, then segments in number order: a reader never sees a later segment
    // without the earlier ones.
    metas.sort_by_key(|m| m.location.filename() != Some(mnemo_wal::ship::BASE_FILE));
    for meta in metas {
        let name = meta.location.filename().unwrap_or_default().to_string();
        names.insert(name.clone());
        let local = dir.join(&name);
        let same = std::fs::metadata(&local).is_ok_and(|m| m.len() == meta.size);
        if same && name != mnemo_wal::ship::BASE_FILE {
            continue;
        }
        let body = read_all(&location.object_store, &meta.location).await?;
        let tmp = dir.join(format!("{name}.part"));
        std::fs::write(&tmp, &body).map_err(io)?;
        std::fs::rename(&tmp, &local).map_err(io)?;
        fetched += 1;
    }
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name().to_string_lossy().to_string();
        if name.ends_with(".wal") && !names.contains(&name) {
            std::fs::remove_file(entry.path()).map_err(io)?;
        }
    }
    Ok(fetched)
}
