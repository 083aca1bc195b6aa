//! Pinned checkpoints: one durable point of the database that a read-only reader keeps
//! reading, however the database moves on meanwhile (research exports read through them).
//!
//! A checkpoint is SlateDB's: a manifest the garbage collector must keep, with every file it
//! names. [`Store::pin_checkpoint`] creates one holding every write acknowledged before the
//! call; [`pin_store`] opens a store another process may be writing (the `mnemo export`
//! command beside a running server).

use crate::engine::bounded;
use crate::view::ReadView;
use crate::{Result, StoreError, StoreLocation};
use slatedb::config::{CheckpointOptions, CheckpointScope, DbReaderOptions};
use slatedb::{DbReader, DbReaderMode};
use std::sync::Arc;
use std::time::Duration;

/// How long a reader of another process's store goes without looking for newer state: its
/// view must not move while an export runs.
const READER_POLL: Duration = Duration::from_secs(12 * 3600);

/// A read-only reader held at one point of the store, and a [`ReadView`] of that point.
pub struct Pinned {
    view: ReadView,
    reader: Arc<DbReader>,
    id: Option<String>,
}

impl Pinned {
    /// The view: every read sees the same point.
    pub fn view(&self) -> &ReadView {
        &self.view
    }

    /// The checkpoint's id, when the point is a named checkpoint (it can be read again with
    /// [`Store::pin_existing`] until it expires).
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// Closes the reader (a reader's own checkpoint is removed).
    pub async fn close(self) -> Result<()> {
        drop(self.view);
        self.reader.close().await?;
        Ok(())
    }
}

fn reader_options() -> DbReaderOptions {
    DbReaderOptions {
        manifest_poll_interval: READER_POLL,
        checkpoint_lifetime: READER_POLL * 2 + Duration::from_secs(1),
        ..DbReaderOptions::default()
    }
}

/// Cache of a pinned reader: an export reads every block once, so a small block cache (the
/// engine's default is 512 MiB) and room for SST indexes and filters.
const READER_BLOCK_CACHE_BYTES: u64 = 16 << 20;
const READER_META_CACHE_BYTES: u64 = 64 << 20;

/// Opens a reader; `wal_dir` is the database's local write-ahead log, if it has one (the
/// reader replays the writes not yet in an SST from it).
async fn open_reader(
    location: &StoreLocation,
    wal_dir: Option<&std::path::Path>,
    mode: DbReaderMode,
    timeout: Duration,
) -> Result<Arc<DbReader>> {
    use slatedb::db_cache::foyer::{FoyerCache, FoyerCacheOptions};
    use slatedb::db_cache::{DbCache, SplitCache};
    let foyer = |bytes: u64| -> Arc<dyn DbCache> {
        Arc::new(FoyerCache::new_with_opts(FoyerCacheOptions {
            max_capacity: bytes,
            ..Default::default()
        }))
    };
    let cache = SplitCache::new()
        .with_block_cache(Some(foyer(READER_BLOCK_CACHE_BYTES)))
        .with_meta_cache(Some(foyer(READER_META_CACHE_BYTES)))
        .build();
    let mut builder = DbReader::builder(location.path.clone(), location.object_store.clone())
        .with_options(reader_options())
        .with_reader_mode(mode)
        .with_db_cache(Arc::new(cache), 0);
    if let Some(dir) = wal_dir {
        builder = builder.with_wal_reader(Arc::new(mnemo_wal::SegmentWalReader::new(dir)));
    }
    let open = builder.build();
    Ok(Arc::new(bounded(timeout, open).await?))
}

fn parse_id(id: &str) -> Result<uuid::Uuid> {
    uuid::Uuid::parse_str(id).map_err(|_| StoreError::Invalid(format!("checkpoint id {id:?}")))
}

impl crate::Store {
    /// Creates a checkpoint holding every write acknowledged before the call, kept for
    /// `lifetime` (then the garbage collector may reclaim its files), and opens a reader on it.
    pub async fn pin_checkpoint(&self, lifetime: Duration, name: &str) -> Result<Pinned> {
        let engine = self.engine();
        let options = CheckpointOptions {
            lifetime: Some(lifetime),
            name: Some(name.to_owned()),
            ..CheckpointOptions::default()
        };
        let created = engine
            .create_checkpoint(CheckpointScope::All, &options)
            .await?;
        let id = created.id.to_string();
        let reader = open_reader(
            engine.location(),
            engine.wal_dir(),
            DbReaderMode::Checkpoint(created.id),
            engine.read_timeout(),
        )
        .await?;
        Ok(Pinned {
            view: ReadView::of_reader(reader.clone(), engine.read_timeout()),
            reader,
            id: Some(id),
        })
    }

    /// Opens a reader on an existing checkpoint of this store (made by
    /// [`Store::pin_checkpoint`]); invalid if the id is malformed, an error if it expired.
    pub async fn pin_existing(&self, id: &str) -> Result<Pinned> {
        let engine = self.engine();
        pin_at(
            engine.location(),
            engine.wal_dir(),
            Some(id),
            engine.read_timeout(),
        )
        .await
    }
}

/// Opens the store at `location` read-only, whether or not another process writes it: at
/// checkpoint `id`, or (`None`) at everything durable now, under a checkpoint of the reader's
/// own that is removed when it closes.
pub async fn pin_store(
    location: &StoreLocation,
    id: Option<&str>,
    timeout: Duration,
) -> Result<Pinned> {
    // A local store has a local log only if it was written with one (a cluster's shards keep
    // theirs in the object store): a reader given a log directory reads no other log.
    let wal_dir = location.local_wal_dir().filter(|d| d.exists());
    pin_at(location, wal_dir.as_deref(), id, timeout).await
}

async fn pin_at(
    location: &StoreLocation,
    wal_dir: Option<&std::path::Path>,
    id: Option<&str>,
    timeout: Duration,
) -> Result<Pinned> {
    let mode = match id {
        Some(id) => DbReaderMode::Checkpoint(parse_id(id)?),
        None => DbReaderMode::ManagedCheckpoint,
    };
    let reader = open_reader(location, wal_dir, mode, timeout).await?;
    Ok(Pinned {
        view: ReadView::of_reader(reader.clone(), timeout),
        reader,
        id: id.map(str::to_owned),
    })
}
