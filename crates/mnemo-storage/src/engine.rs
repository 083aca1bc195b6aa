//! The engine: one SlateDB instance, durable writes with group commit, and the reopen path.
//!
//! * **Writes** go to SlateDB's WAL buffer and memtable ([`Engine::write`]); the caller then
//!   awaits [`PendingWrite::durable`], which returns once the WAL holding the write is durable.
//!   Nothing is acknowledged before that.
//! * **Where the WAL lives.** With a WAL directory ([`EngineConfig::wal_dir`], the default for
//!   a local store) the log is `mnemo-wal`'s preallocated segment files: a write is durable
//!   once its block is written and `fdatasync`ed, one sync per group of concurrent writes.
//!   Otherwise (a remote store) it is SlateDB's WAL in the object store: a write is durable
//!   once the WAL object holding it is uploaded.
//! * **Group commit on the object store.** In [`FlushPolicy::OnDemand`] mode a single flusher
//!   task uploads the WAL as soon as a write is waiting and the previous upload is done: one
//!   writer pays one object PUT, many concurrent writers share each PUT. In
//!   [`FlushPolicy::Interval`] mode SlateDB's own timer uploads every interval (fewer, bigger
//!   PUTs; higher latency).
//! * **Reads** see only durable data ([`DurabilityLevel::Remote`]), so a client never reads a
//!   value that a crash could take back. Read-check-write sequences under a key lock use
//!   [`Engine::get_latest`], which also sees writes still on their way to durability.
//! * **Failures.** Object-store requests retry a bounded number of times; a write not durable
//!   within `write_timeout` fails with [`StoreError::Unavailable`]. When SlateDB closes itself
//!   after a fatal WAL error the engine reopens the database in the background (clients get 503
//!   meanwhile). A fenced engine (another writer opened the store) never reopens.

use crate::location::StoreLocation;
use crate::{Result, StoreError};
use bytes::Bytes;
use mnemo_wal::{SegmentWal, WalOptions};
use slatedb::config::{
    CompactionWorkerOptions, CompactorOptions, DurabilityLevel, FlushOptions, FlushType,
    GarbageCollectorDirectoryOptions, GarbageCollectorOptions, ReadOptions, ScanOptions, Settings,
};
use slatedb::{
    Db, DbIterator, DbReader, DbSnapshot, GarbageCollectorBuilder, IterationOrder, WriteBatch,
    WriteHandle,
};
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

pub use slatedb::KeyValue;

/// A range of storage keys: `(start, end)` bounds.
pub type KeyRange = (Bound<Vec<u8>>, Bound<Vec<u8>>);

/// The range of every key starting with `prefix`.
pub fn prefix_range(prefix: Vec<u8>) -> KeyRange {
    let end = match crate::keys::prefix_end(&prefix) {
        Some(e) => Bound::Excluded(e),
        None => Bound::Unbounded,
    };
    (Bound::Included(prefix), end)
}

/// When the write-ahead log is uploaded to the object store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushPolicy {
    /// Upload as soon as a write waits and no upload is running (adaptive group commit).
    /// Lowest latency; one object PUT per group of concurrent writes.
    OnDemand,
    /// Upload on a fixed timer. Each write waits up to the interval; fewer object PUTs.
    Interval(Duration),
}

/// How to open the engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// The durable store.
    pub location: StoreLocation,
    /// Local directory caching object-store reads (SSD), if any.
    pub cache_dir: Option<PathBuf>,
    /// Size limit of the read cache in bytes.
    pub cache_size_bytes: usize,
    /// Capacity of the in-memory block cache (SST data blocks), bytes.
    pub block_cache_bytes: u64,
    /// Capacity of the store's cache of conversation tails (records and newest items), bytes;
    /// 0 disables it.
    pub tail_cache_bytes: usize,
    /// Capacity of the store's cache of key-value memory (recently written or read values),
    /// bytes; 0 disables it.
    pub kv_cache_bytes: usize,
    /// WAL upload policy (for a WAL in the object store).
    pub flush: FlushPolicy,
    /// Keep the write-ahead log in segment files in this local directory instead of the
    /// object store. Default: beside the database for a local store, `None` (the object
    /// store) for a remote one. With a remote store, writes acknowledged but not yet flushed
    /// to an SST live only on this machine's disk until the memtable is flushed.
    pub wal_dir: Option<PathBuf>,
    /// A write not durable within this time, or a read not complete within it, fails with 503.
    pub write_timeout: Duration,
    /// Retries SlateDB makes of a failed object-store call before giving up.
    pub max_store_retries: u32,
    /// How often the compactor looks for work: the scheduler for L0 SSTs to compact, the
    /// worker for jobs to claim, and the scheduler for finished jobs to commit. Writes stall
    /// once L0 is full and the memtables behind it reach SlateDB's unflushed-bytes limit, so
    /// under a heavy write load this bounds the stall (see RFC 0006). Each look is an
    /// object-store read: 100 ms on a local store, 1 s (SlateDB's manifest poll) on a remote one.
    pub compaction_poll: Duration,
    /// How long the change log keeps entries for its readers (they are stored an hour
    /// longer, see [`crate::ChangeLog::grace`]).
    pub change_retention: Duration,
    /// A fixed suffix of every conversation id this store generates (4 lowercase hex
    /// characters, replacing the last 4 random ones), so that a cluster can tell a
    /// conversation's shard from its id alone. `None`: ids are all random.
    pub id_tag: Option<String>,
}

impl EngineConfig {
    /// Defaults for a location: on-demand flush, 10 s write timeout, 4 GiB disk cache,
    /// SlateDB's default 512 MiB block cache, compaction polls every 100 ms on a local store
    /// and every 1 s on a remote one.
    pub fn new(location: StoreLocation) -> Self {
        EngineConfig {
            cache_dir: None,
            cache_size_bytes: 4 << 30,
            block_cache_bytes: slatedb::db_cache::DEFAULT_BLOCK_CACHE_CAPACITY,
            tail_cache_bytes: 1 << 30,
            kv_cache_bytes: 256 << 20,
            flush: FlushPolicy::OnDemand,
            write_timeout: Duration::from_secs(10),
            max_store_retries: 3,
            compaction_poll: if location.remote {
                Duration::from_secs(1)
            } else {
                Duration::from_millis(100)
            },
            change_retention: crate::DEFAULT_LOG_RETENTION,
            id_tag: None,
            wal_dir: location.local_wal_dir(),
            location,
        }
    }

    /// Garbage collection: SlateDB's defaults, with the local WAL's segments looked at every
    /// 30 s (a segment goes once no manifest or checkpoint references its blocks).
    fn gc_options() -> GarbageCollectorOptions {
        GarbageCollectorOptions {
            wal_options: Some(GarbageCollectorDirectoryOptions {
                interval: Some(WAL_GC_INTERVAL),
                min_age: WAL_GC_INTERVAL,
                dry_run: false,
            }),
            ..GarbageCollectorOptions::default()
        }
    }

    fn settings(&self) -> Settings {
        let mut s = Settings {
            object_store_max_retries: Some(self.max_store_retries),
            ..Settings::default()
        };
        s.flush_interval = Some(match self.flush {
            // The timer is only a backstop here: the flusher task uploads on demand.
            FlushPolicy::OnDemand => Duration::from_millis(100),
            FlushPolicy::Interval(d) => d,
        });
        let poll = self.compaction_poll;
        s.compactor_options = Some(CompactorOptions {
            poll_interval: poll,
            commit_compacted_interval: poll,
            worker: Some(CompactionWorkerOptions {
                compactions_poll_interval: poll,
                ..CompactionWorkerOptions::default()
            }),
            ..CompactorOptions::default()
        });
        if let Some(dir) = &self.cache_dir {
            s.object_store_cache_options.root_folder = Some(dir.clone());
            s.object_store_cache_options.max_cache_size_bytes = Some(self.cache_size_bytes);
        }
        s
    }
}

/// How often the local WAL's retired segments are removed, and how long one stays after its
/// last write at least.
const WAL_GC_INTERVAL: Duration = Duration::from_secs(30);

/// Bytes a scan fetches per read of an SST (whole blocks, never past the range's last block).
const SCAN_READ_AHEAD_BYTES: usize = 256 * 1024;

const OPEN: u8 = 0;
const REOPENING: u8 = 1;
const FENCED: u8 = 2;
const CLOSED: u8 = 3;

/// A SlateDB database with durable writes, group commit and automatic reopen.
pub struct Engine {
    /// The database (`None` for a read-only engine, which reads through `reader`).
    db: RwLock<Option<Arc<Db>>>,
    state: AtomicU8,
    config: EngineConfig,
    /// The local segment WAL (locked for this process), when the WAL is local.
    wal: Option<SegmentWal>,
    /// A read-only engine's reader (then `db` is never used: every write fails with
    /// [`StoreError::ReadOnly`]).
    reader: Option<Arc<DbReader>>,
    flush_wanted: Notify,
}

/// What reads go to: the open database, or a replica's reader.
enum ReadHandle {
    Db(Arc<Db>),
    Reader(Arc<DbReader>),
}

impl ReadHandle {
    async fn get_key_value(
        &self,
        key: &[u8],
        opts: &ReadOptions,
    ) -> std::result::Result<Option<KeyValue>, slatedb::Error> {
        match self {
            ReadHandle::Db(db) => db.get_key_value_with_options(key, opts).await,
            ReadHandle::Reader(r) => r.get_key_value_with_options(key, opts).await,
        }
    }

    async fn scan(
        &self,
        range: KeyRange,
        opts: &ScanOptions,
    ) -> std::result::Result<DbIterator, slatedb::Error> {
        match self {
            ReadHandle::Db(db) => db.scan_with_options(range, opts).await,
            ReadHandle::Reader(r) => r.scan_with_options(range, opts).await,
        }
    }
}

/// A write that is in the memtable but not yet acknowledged.
#[must_use = "a write is not acknowledged until `durable()` returns Ok"]
pub(crate) struct PendingWrite<'a> {
    engine: &'a Arc<Engine>,
    handle: WriteHandle,
}

impl PendingWrite<'_> {
    /// Waits until the write is durable in the object store (or fails with 503 after the
    /// write timeout).
    pub(crate) async fn durable(self) -> Result<()> {
        let engine = self.engine;
        if engine.flusher_runs() {
            engine.flush_wanted.notify_one();
        }
        let started = Instant::now();
        let res =
            tokio::time::timeout(engine.config.write_timeout, self.handle.await_durable()).await;
        metrics::histogram!("mnemo_store_durable_wait_seconds")
            .record(started.elapsed().as_secs_f64());
        match res {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(engine.failed(e)),
            Err(_) => {
                metrics::counter!("mnemo_store_write_errors_total", "reason" => "timeout")
                    .increment(1);
                Err(StoreError::unavailable(format!(
                    "write not durable within {:?}",
                    engine.config.write_timeout
                )))
            }
        }
    }
}

/// Runs an engine read, failing with [`StoreError::Unavailable`] after `timeout`.
pub(crate) async fn bounded<T>(
    timeout: Duration,
    fut: impl std::future::Future<Output = Result<T, slatedb::Error>>,
) -> Result<T> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(StoreError::unavailable(format!(
            "read did not complete within {timeout:?}"
        ))),
    }
}

/// Options of every scan: in key order or reversed, blocks kept in the block cache.
pub(crate) fn scan_options(durability: DurabilityLevel, descending: bool) -> ScanOptions {
    ScanOptions {
        durability_filter: durability,
        order: if descending {
            IterationOrder::Descending
        } else {
            IterationOrder::Ascending
        },
        // Keep scanned blocks in the block cache (SlateDB's scan default is not to), so a
        // conversation read twice is served from memory like a point read.
        cache_blocks: true,
        // Fetch the blocks of a bounded range in one read per SST rather than one read per
        // block: fetches never go past the blocks that cover the range.
        read_ahead_bytes: SCAN_READ_AHEAD_BYTES,
        ..ScanOptions::default()
    }
}

/// True when no key can fall in `range` (start after end, or equal with an excluded bound).
pub(crate) fn is_empty(range: &KeyRange) -> bool {
    use Bound::{Excluded, Included};
    match range {
        (Included(s), Included(e)) => s > e,
        (Included(s) | Excluded(s), Included(e) | Excluded(e)) => s >= e,
        _ => false,
    }
}

/// False for an entry past its TTL. SlateDB drops expired entries only when compacting, so
/// every read path filters them here.
pub(crate) fn live(kv: &KeyValue) -> bool {
    kv.expire_ts.is_none_or(|at| at > crate::clock::now_ms())
}

fn remote_read() -> ReadOptions {
    ReadOptions {
        durability_filter: DurabilityLevel::Remote,
        ..ReadOptions::default()
    }
}

impl Engine {
    /// Opens (or creates) the database and starts the flusher task.
    pub async fn open(config: EngineConfig) -> Result<Arc<Engine>> {
        let wal = match &config.wal_dir {
            Some(dir) => Some(Self::open_wal(&config, dir).await?),
            None => None,
        };
        let db = Self::open_db(&config, wal.as_ref()).await?;
        let engine = Arc::new(Engine {
            db: RwLock::new(Some(Arc::new(db))),
            state: AtomicU8::new(OPEN),
            config,
            wal,
            reader: None,
            flush_wanted: Notify::new(),
        });
        if engine.flusher_runs() {
            tokio::spawn(Self::flusher(Arc::clone(&engine)));
        }
        // Register every series at zero so dashboards and alerts see them before the first event.
        metrics::counter!("mnemo_store_flushes_total").increment(0);
        if engine.wal.is_some() {
            metrics::counter!("mnemo_wal_bytes_total").increment(0);
        }
        metrics::counter!("mnemo_store_reopens_total").increment(0);
        for reason in ["engine", "timeout"] {
            metrics::counter!("mnemo_store_write_errors_total", "reason" => reason).increment(0);
        }
        Ok(engine)
    }

    /// Opens the database read-only, following it as another process (a replicator, or the
    /// writer) advances it: new manifests are picked up every `poll`, and writes in the
    /// database's log are replayed, from SlateDB's WAL objects or, with `wal_dir`, from a
    /// local segment log (`mnemo-wal`). Performs no object-store writes: every write fails with
    /// [`StoreError::ReadOnly`].
    pub async fn open_read_only(
        config: EngineConfig,
        wal_dir: Option<PathBuf>,
        poll: Duration,
    ) -> Result<Arc<Engine>> {
        let options = slatedb::config::DbReaderOptions {
            manifest_poll_interval: poll,
            ..slatedb::config::DbReaderOptions::default()
        };
        let mut builder = DbReader::builder(
            config.location.path.clone(),
            config.location.object_store.clone(),
        )
        .with_options(options)
        .with_reader_mode(slatedb::DbReaderMode::FollowLatest);
        if let Some(dir) = &wal_dir {
            builder = builder.with_wal_reader(Arc::new(mnemo_wal::SegmentWalReader::new(dir)));
        }
        let reader = bounded(config.write_timeout, builder.build()).await?;
        Ok(Arc::new(Engine {
            db: RwLock::new(None),
            state: AtomicU8::new(OPEN),
            config,
            wal: None,
            reader: Some(Arc::new(reader)),
            flush_wanted: Notify::new(),
        }))
    }

    /// True when writes ask the flusher task for an upload: an object-store WAL on demand.
    /// The local WAL's I/O thread syncs by itself as soon as a write arrives.
    fn flusher_runs(&self) -> bool {
        self.wal.is_none() && self.config.flush == FlushPolicy::OnDemand
    }

    /// Opens (and locks) the local WAL in `dir`. The first time a database gets a local WAL,
    /// writes still only in its object-store WAL are first flushed to an SST: the local WAL's
    /// replay does not read the object-store one.
    async fn open_wal(config: &EngineConfig, dir: &std::path::Path) -> Result<SegmentWal> {
        let bad = |e: mnemo_wal::Error| StoreError::Invalid(e.to_string());
        if !dir.exists() {
            let db = Self::open_db(config, None).await?;
            db.flush_with_options(FlushOptions {
                flush_type: FlushType::MemTable,
            })
            .await?;
            db.close().await?;
            tracing::info!(dir = %dir.display(), "the write-ahead log moves to local segments");
        }
        SegmentWal::open(dir, WalOptions::default()).map_err(bad)
    }

    async fn open_db(config: &EngineConfig, wal: Option<&SegmentWal>) -> Result<Db> {
        use slatedb::db_cache::foyer::{FoyerCache, FoyerCacheOptions};
        use slatedb::db_cache::{DbCache, SplitCache, DEFAULT_META_CACHE_CAPACITY};
        let foyer = |bytes: u64| -> Arc<dyn DbCache> {
            Arc::new(FoyerCache::new_with_opts(FoyerCacheOptions {
                max_capacity: bytes,
                ..Default::default()
            }))
        };
        let cache = SplitCache::new()
            .with_block_cache(Some(foyer(config.block_cache_bytes)))
            .with_meta_cache(Some(foyer(DEFAULT_META_CACHE_CAPACITY)))
            .build();
        let mut builder = Db::builder(
            config.location.path.clone(),
            config.location.object_store.clone(),
        )
        .with_settings(config.settings())
        .with_db_cache(Arc::new(cache), 0)
        .with_metrics_recorder(Arc::new(crate::engine_metrics::FacadeRecorder));
        if let Some(wal) = wal {
            let gc = GarbageCollectorBuilder::new(
                config.location.path.clone(),
                config.location.object_store.clone(),
            )
            .with_options(EngineConfig::gc_options())
            .with_wal_gc(wal.gc());
            builder = builder
                .with_wal_writer(wal.writer_init())
                .with_gc_builder(gc);
        }
        Ok(builder.build().await?)
    }

    /// The flusher: one WAL upload at a time, started whenever writes are waiting.
    async fn flusher(engine: Arc<Engine>) {
        loop {
            engine.flush_wanted.notified().await;
            match engine.state.load(Ordering::Acquire) {
                CLOSED => return,
                OPEN => {}
                _ => continue,
            }
            let Some(db) = engine.current() else { return };
            let started = Instant::now();
            match db.flush().await {
                Ok(()) => {
                    metrics::counter!("mnemo_store_flushes_total").increment(1);
                    metrics::histogram!("mnemo_store_flush_duration_seconds")
                        .record(started.elapsed().as_secs_f64());
                }
                Err(err) => {
                    let err = engine.failed(err);
                    tracing::warn!(error = %err, "WAL flush failed");
                }
            }
        }
    }

    fn current(&self) -> Option<Arc<Db>> {
        // A poisoned lock only means a panic elsewhere while swapping; the Arc inside is intact.
        self.db.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The database, for a write (or a read that needs the writer).
    fn db(&self) -> Result<Arc<Db>> {
        if self.reader.is_some() {
            return Err(StoreError::ReadOnly);
        }
        match self.state.load(Ordering::Acquire) {
            OPEN => self.current().ok_or(StoreError::ReadOnly),
            REOPENING => Err(StoreError::unavailable("store is reopening")),
            FENCED => Err(StoreError::Fenced),
            _ => Err(StoreError::unavailable("store is closed")),
        }
    }

    /// Classifies an engine error and, when the database closed itself, starts a reopen.
    fn failed(self: &Arc<Self>, e: slatedb::Error) -> StoreError {
        let closed = matches!(e.kind(), slatedb::ErrorKind::Closed(_));
        let err = StoreError::from(e);
        metrics::counter!("mnemo_store_write_errors_total", "reason" => "engine").increment(1);
        if matches!(err, StoreError::Fenced) {
            if self.state.swap(FENCED, Ordering::AcqRel) != FENCED {
                tracing::error!("fenced by a newer writer; this node no longer writes");
            }
        } else if closed {
            self.start_reopen();
        }
        err
    }

    fn start_reopen(self: &Arc<Self>) {
        if self
            .state
            .compare_exchange(OPEN, REOPENING, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        tracing::warn!("database closed after a store failure; reopening");
        let engine = Arc::clone(self);
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(200);
            loop {
                if engine.state.load(Ordering::Acquire) != REOPENING {
                    return;
                }
                match Self::open_db(&engine.config, engine.wal.as_ref()).await {
                    Ok(db) => {
                        *engine.db.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(db));
                        engine.state.store(OPEN, Ordering::Release);
                        metrics::counter!("mnemo_store_reopens_total").increment(1);
                        tracing::info!("database reopened");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, ?backoff, "reopen failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        });
    }

    /// What reads go to: the database, or the replica's reader.
    fn read_handle(&self) -> Result<ReadHandle> {
        match &self.reader {
            Some(r) => Ok(ReadHandle::Reader(Arc::clone(r))),
            None => self.db().map(ReadHandle::Db),
        }
    }

    /// The reader of a read-only engine ([`Engine::open_read_only`]); `None` for a writer.
    pub fn reader(&self) -> Option<Arc<DbReader>> {
        self.reader.clone()
    }

    /// True for a read-only engine (a replica): every write fails with
    /// [`StoreError::ReadOnly`].
    pub fn is_read_only(&self) -> bool {
        self.reader.is_some()
    }

    /// True while the database is open for reads (and, unless read-only, writes).
    pub fn is_ready(&self) -> bool {
        self.state.load(Ordering::Acquire) == OPEN
    }

    /// Where the store lives (for logs).
    pub fn describe(&self) -> &str {
        &self.config.location.description
    }

    /// The directory of the local write-ahead log, if the WAL is local.
    pub fn wal_dir(&self) -> Option<&std::path::Path> {
        self.wal.as_ref().map(|w| w.dir())
    }

    /// The object store holding the database and the database's path in it. Derived data
    /// (search index snapshots) is kept beside the database under this path.
    pub fn location(&self) -> &StoreLocation {
        &self.config.location
    }

    /// Reads the durable value of a key.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        Ok(self.get_entry(key).await?.map(|kv| kv.value))
    }

    /// Reads the durable value of a key with its metadata (expiry).
    pub async fn get_entry(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        let handle = self.read_handle()?;
        let kv = self
            .bounded(handle.get_key_value(key, &remote_read()))
            .await?;
        Ok(kv.filter(live))
    }

    /// Reads the newest value of a key, including writes not yet durable. Use only under the
    /// key's lock, to decide what to write next.
    pub async fn get_latest(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        let handle = self.read_handle()?;
        let kv = self
            .bounded(handle.get_key_value(key, &ReadOptions::default()))
            .await?;
        Ok(kv.filter(live))
    }

    /// Runs an engine read, failing with 503 if it takes longer than the write timeout (a read
    /// that misses the cache during an object-store outage must not hang).
    async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, slatedb::Error>>,
    ) -> Result<T> {
        bounded(self.config.write_timeout, fut).await
    }

    /// Scans up to `limit` durable entries in `range`, in key order or reversed.
    pub async fn scan(
        &self,
        range: KeyRange,
        descending: bool,
        limit: usize,
    ) -> Result<Vec<KeyValue>> {
        self.scan_with(range, descending, limit, DurabilityLevel::Remote)
            .await
    }

    /// Like [`Engine::scan`], but includes writes not yet durable (use under a lock).
    pub async fn scan_latest(
        &self,
        range: KeyRange,
        descending: bool,
        limit: usize,
    ) -> Result<Vec<KeyValue>> {
        self.scan_with(range, descending, limit, DurabilityLevel::Memory)
            .await
    }

    async fn scan_with(
        &self,
        range: KeyRange,
        descending: bool,
        limit: usize,
        durability: DurabilityLevel,
    ) -> Result<Vec<KeyValue>> {
        if is_empty(&range) {
            // SlateDB panics on an empty range; an empty range simply has no entries.
            return Ok(Vec::new());
        }
        let opts = scan_options(durability, descending);
        let handle = self.read_handle()?;
        let read = async {
            let mut it = handle.scan(range, &opts).await?;
            let mut out = Vec::with_capacity(limit.min(1024));
            while out.len() < limit {
                match it.next().await? {
                    Some(kv) if live(&kv) => out.push(kv),
                    Some(_) => {}
                    None => break,
                }
            }
            Ok(out)
        };
        let out = self.bounded(read).await?;
        Ok(out)
    }

    /// A point-in-time view of the database at a durable point: every write that reached the
    /// memtable before the call is in it (the call waits until those are durable), nothing
    /// written after. Reads of the view are consistent with one another.
    pub(crate) async fn snapshot(&self) -> Result<Arc<DbSnapshot>> {
        let db = self.db()?;
        let snapshot = db.snapshot()?;
        // Everything up to the snapshot's sequence number is uploaded before it is read, so the
        // view never shows a write a crash could take back.
        self.bounded(db.flush()).await?;
        Ok(snapshot)
    }

    /// Creates a checkpoint of the database (see [`crate::checkpoint`]).
    pub(crate) async fn create_checkpoint(
        &self,
        scope: slatedb::config::CheckpointScope,
        options: &slatedb::config::CheckpointOptions,
    ) -> Result<slatedb::CheckpointCreateResult> {
        let db = self.db()?;
        self.bounded(db.create_checkpoint(scope, options)).await
    }

    /// The limit on any single read (the write timeout).
    pub(crate) fn read_timeout(&self) -> Duration {
        self.config.write_timeout
    }

    /// Applies a batch atomically to the memtable. Await [`PendingWrite::durable`] before
    /// acknowledging. Crate-private: every mutation goes through the store, which writes its
    /// change-log entry in the same batch.
    pub(crate) async fn write(self: &Arc<Self>, batch: WriteBatch) -> Result<PendingWrite<'_>> {
        let db = self.db()?;
        match db.write(batch).await {
            Ok(handle) => Ok(PendingWrite {
                engine: self,
                handle,
            }),
            Err(e) => Err(self.failed(e)),
        }
    }

    /// Flushes everything and closes the database (graceful shutdown).
    pub async fn close(&self) -> Result<()> {
        if self.state.swap(CLOSED, Ordering::AcqRel) != OPEN {
            return Ok(());
        }
        self.flush_wanted.notify_one();
        if let Some(reader) = &self.reader {
            reader.close().await?;
            return Ok(());
        }
        let Some(db) = self.current() else {
            return Ok(());
        };
        db.flush().await?;
        if self.wal.is_some() {
            // After a clean shutdown the object store alone holds every write: the store can
            // be copied, or opened without this machine's log.
            db.flush_with_options(FlushOptions {
                flush_type: FlushType::MemTable,
            })
            .await?;
        }
        db.close().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The compactor's three polls follow `compaction_poll`: 100 ms on a local store, so a
    /// full L0 is compacted at once instead of at SlateDB's 5 s poll.
    #[test]
    fn the_compactor_polls_at_the_configured_interval() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = EngineConfig::new(StoreLocation::local(dir.path()).unwrap());
        assert_eq!(config.compaction_poll, Duration::from_millis(100));
        config.compaction_poll = Duration::from_millis(250);
        let compactor = config.settings().compactor_options.unwrap();
        assert_eq!(compactor.poll_interval, Duration::from_millis(250));
        assert_eq!(
            compactor.commit_compacted_interval,
            Duration::from_millis(250)
        );
        let worker = compactor.worker.unwrap();
        assert_eq!(worker.compactions_poll_interval, Duration::from_millis(250));
        // Everything else stays SlateDB's default.
        assert_eq!(
            worker.max_concurrent_compactions,
            CompactionWorkerOptions::default().max_concurrent_compactions
        );
    }
}
