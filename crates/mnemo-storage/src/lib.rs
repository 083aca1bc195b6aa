//! # mnemo-storage
//!
//! The storage layer of mnemo: a [SlateDB](https://slatedb.io) LSM database whose durable copy
//! lives in an object store (local directory, S3 or Azure Blob), and on top of it the two data
//! models every other layer uses:
//!
//! * **conversations** and their ordered items ([`Store::create_conversation`],
//!   [`Store::append_items`], [`Store::list_items`], …), stored so that the newest N items of a
//!   conversation are one reverse range scan;
//! * **key-value memory** with ETags, conditional writes, TTL and atomic batches
//!   ([`Store::kv_put`], [`Store::kv_batch`], …).
//!
//! Every mutation is acknowledged only once durable, and is recorded in a per-tenant change
//! log in the same atomic write ([`ChangeLog`], read by any number of [`Subscriber`]s). Every
//! key starts with the tenant ([`keys`]), so isolation is structural, and what a [`Scope`] may
//! read and write is one rule ([`access`]) applied inside every read, list and write.
//! [`ReadView`]s stream consistent point-in-time scans. See `docs/architecture.md` for the
//! design.
//!
//! ```no_run
//! # async fn demo() -> Result<(), mnemo_storage::StoreError> {
//! use mnemo_storage::{EngineConfig, Scope, Store, StoreLocation, TenantId};
//! let location = StoreLocation::local(std::path::Path::new("./mnemo-data/store"))?;
//! let store = Store::open(EngineConfig::new(location)).await?;
//! let scope = Scope::tenant(TenantId::default_tenant());
//! let (conv, _) = store.create_conversation(&scope, Default::default(), vec![]).await?;
//! assert!(conv.id.starts_with("conv_"));
//! store.close().await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod access;
pub mod audit;
pub mod changelog;
pub mod checkpoint;
pub mod clock;
pub mod consent;
pub mod conversations;
pub mod engine;
mod engine_metrics;
pub mod erase;
mod error;
pub mod expiry;
pub mod feed;
pub mod ids;
pub mod items;
pub mod keys;
pub mod kv;
mod kv_cache;
pub mod location;
mod locks;
mod purge;
pub mod records;
mod tail_cache;
pub mod view;
mod write_through;

pub use audit::AuditEntry;
pub use changelog::{ChangeEntry, ChangeLog, ChangeOp, Subscriber};
pub use checkpoint::{pin_store, Pinned};
pub use consent::Consent;
pub use conversations::{ItemPage, NewItem, Order, VectorWriteBack};
pub use engine::{Engine, EngineConfig, FlushPolicy};
pub use erase::Erased;
pub use error::{report, BoxError, Result, StoreError};
pub use feed::{Cursor, FeedError, FeedPage, FeedStart};
pub use ids::{Scope, TenantId};
pub use kv::{Condition, KvEntry, KvOp, KvPage, KvWritten};
pub use location::{object_store_from_url, RemotePolicy, StoreLocation, UrlParts};
pub use records::{ConversationRecord, KvRecord, StoredItem};
pub use view::{ReadView, Rows};

use locks::StripedLocks;
use std::sync::Arc;
use std::time::Duration;

/// How long change-log entries are kept by default.
pub const DEFAULT_LOG_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Lock stripes serialising writes to conversations (and, separately, to memory keys): two
/// writes wait for each other only if their ids hash to the same stripe.
const LOCK_STRIPES: usize = 4096;

/// The store: conversations, items and key-value memory over one [`Engine`].
pub struct Store {
    engine: Arc<Engine>,
    log: Arc<ChangeLog>,
    /// Purges of deleted conversations' items, run in the background ([`purge`]).
    purges: Arc<purge::Purges>,
    conv_locks: StripedLocks,
    tails: tail_cache::TailCache,
    kv_locks: StripedLocks,
    kv_cache: kv_cache::KvCache,
    audit_seq: tokio::sync::Mutex<std::collections::HashMap<TenantId, u64>>,
    /// Suffix of generated conversation ids ([`EngineConfig::id_tag`]).
    id_tag: Option<String>,
    /// Wall-clock ms of the last successful follow round of a read-only store (0: none).
    followed_ms: std::sync::atomic::AtomicU64,
}

impl Store {
    /// Opens the engine, then finishes any conversation purge a crash or a shutdown
    /// interrupted ([`Store::resume_purges`]).
    pub async fn open(config: EngineConfig) -> Result<Store> {
        let (tails, kv) = (config.tail_cache_bytes, config.kv_cache_bytes);
        let retention = config.change_retention;
        let id_tag = config.id_tag.clone();
        let mut store = Self::around(Engine::open(config).await?, retention, tails, kv);
        store.id_tag = id_tag;
        let resumed = store.resume_purges().await?;
        if resumed > 0 {
            tracing::info!(resumed, "finished interrupted conversation purges");
        }
        Ok(store)
    }

    /// A store around an open engine, with caches of the given sizes.
    fn around(
        engine: Arc<Engine>,
        retention: std::time::Duration,
        tails: usize,
        kv: usize,
    ) -> Store {
        let log = Arc::new(ChangeLog::new(engine.clone(), retention));
        Store {
            purges: purge::Purges::new(engine.clone(), log.clone()),
            log,
            engine,
            conv_locks: StripedLocks::new(LOCK_STRIPES),
            tails: tail_cache::TailCache::new(tails),
            kv_locks: StripedLocks::new(LOCK_STRIPES),
            kv_cache: kv_cache::KvCache::new(kv),
            audit_seq: tokio::sync::Mutex::new(std::collections::HashMap::new()),
            id_tag: None,
            followed_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Opens a store read-only (a replica, or a store another process writes), following it
    /// as it advances (see [`Engine::open_read_only`]). No background work that writes runs;
    /// every write fails with [`StoreError::ReadOnly`]. Call [`Store::spawn_follow`] so that
    /// change-log subscribers (search, change streams) see what the store gains.
    pub async fn open_read_only(
        config: EngineConfig,
        wal_dir: Option<std::path::PathBuf>,
        poll: std::time::Duration,
    ) -> Result<Store> {
        let retention = config.change_retention;
        let engine = Engine::open_read_only(config, wal_dir, poll).await?;
        // No caches: they are kept current by this process's writes, and a replica has none.
        let store = Self::around(engine, retention, 0, 0);
        // What it shows is as new as the store was when it was opened.
        store.followed_ms.store(
            clock::now_ms().max(1) as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(store)
    }

    /// For a read-only store: every `poll`, reads each tenant's newest durable change-log
    /// entry and tells the change log's subscribers about it, as a writer's acknowledgements
    /// do. Stops when the store is dropped.
    pub fn spawn_follow(
        self: &Arc<Self>,
        poll: std::time::Duration,
    ) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(poll).await;
                let Some(store) = weak.upgrade() else { return };
                match store.observe_log().await {
                    Ok(()) => store.followed_ms.store(
                        crate::clock::now_ms().max(1) as u64,
                        std::sync::atomic::Ordering::Relaxed,
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "following the replica's change log failed")
                    }
                }
            }
        })
    }

    /// For a read-only store followed with [`Store::spawn_follow`]: when (wall-clock ms) it
    /// was opened or a follow round last succeeded, so what the store showed then is at most
    /// that old. `None` for a writable store.
    pub fn followed_at_ms(&self) -> Option<u64> {
        match self.followed_ms.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            ms => Some(ms),
        }
    }

    async fn observe_log(&self) -> Result<()> {
        for tenant in self.tenants().await? {
            let head = self.log.durable_head(&tenant).await?;
            if head > 0 {
                self.log.acknowledge(tenant, head);
            }
        }
        Ok(())
    }

    /// The underlying engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The change log: read it, subscribe to it.
    pub fn change_log(&self) -> &ChangeLog {
        &self.log
    }

    /// Where the store lives: its object store and the database's path in it. Derived data
    /// (search index snapshots) is kept beside the database under this path.
    pub fn location(&self) -> &StoreLocation {
        self.engine.location()
    }

    /// True while the store accepts reads and writes.
    pub fn is_ready(&self) -> bool {
        self.engine.is_ready()
    }

    /// Flushes and closes (graceful shutdown). Background purges stop first, between two
    /// chunks (waiting a bounded time for that); the next open finishes them.
    pub async fn close(&self) -> Result<()> {
        self.purges.stop().await;
        self.engine.close().await
    }
}

impl Drop for Store {
    /// A store dropped without [`Store::close`] stops its background purges too (the next
    /// open finishes them).
    fn drop(&mut self) {
        self.purges.stop_now();
    }
}
