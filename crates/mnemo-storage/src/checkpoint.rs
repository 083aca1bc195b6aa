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

async fn open_reader(
    location: &StoreLocation,
    mode: DbReaderMode,
    timeout: Duration,
) -> Result<Arc<DbReader>> {
    let open = DbReader::open(
        location.path.clone(),
        location.object_store.clone(),
        mode,
        reader_options(),
    );
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
        pin_store(engine.location(), Some(id), engine.read_timeout()).await
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
    let mode = match id {
        Some(id) => DbReaderMode::Checkpoint(parse_id(id)?),
        None => DbReaderMode::ManagedCheckpoint,
    };
    let reader = open_reader(location, mode, timeout).await?;
    Ok(Pinned {
        view: ReadView::of_reader(reader.clone(), timeout),
        reader,
        id: id.map(str::to_owned),
    })
}
