//! A write-ahead log in local segment files for SlateDB databases, through SlateDB's pluggable
//! WAL traits (`slatedb::wal`).
//!
//! SlateDB's own WAL writes one object per flush. On a local directory that is a new file, an
//! fsync of it and of its directory, and a hard link: about three times the cost of what a
//! database log does, which is to append to a preallocated file and `fdatasync` it once per
//! group commit. This crate does the latter:
//!
//! * **Segments.** The log is a run of segment files (`<number>.wal`, 16 MiB by default),
//!   each created ahead of need with its bytes written as zeros and fsynced, so an append
//!   changes no file metadata and `fdatasync` writes only data.
//! * **Group commit.** [`WalWriter::append`](slatedb::wal::WalWriter::append) only encodes the
//!   rows into memory. One I/O thread writes everything appended since its last write as one
//!   or more blocks with a single `pwrite`, calls `fdatasync` once, and then reports the rows
//!   durable. Writers that arrive while a sync runs share the next one.
//! * **Blocks.** Each block carries its length, a CRC-32 of length, id and payload, and an id
//!   one above the previous block's (SlateDB's "WAL file id"). Recovery reads the longest
//!   valid prefix of every segment: a torn or never-written tail fails its checksum or reads
//!   as zeros, and is treated as not written. See `docs/rfcs/0010-local-wal.md`.
//! * **Failure.** A failed write or `fdatasync` closes the log for good: no retried fsync (the
//!   kernel may have dropped the dirty pages and cleared the error). The database then closes
//!   and is reopened, and the reopened log recovers from what is on disk.
//! * **One writer.** [`SegmentWal::open`] takes an exclusive OS lock on the directory, so a
//!   second process cannot write the same log. Within a process, opening the same directory
//!   again shares the lock, and a newer writer fences the older one before it reads the log
//!   (as SlateDB's manifest epoch fences an older writer).
//! * **Retirement.** SlateDB's garbage collector calls [`WalGc`](slatedb::wal::WalGc) with the
//!   block ranges that the current manifest and live checkpoints still need; segments holding
//!   none of them are deleted.
//!
//! Metrics (through the `metrics` facade): `mnemo_store_flushes_total` and
//! `mnemo_store_flush_duration_seconds` count and time each group commit (write and
//! `fdatasync`), as they do for uploads of SlateDB's WAL; `mnemo_wal_bytes_total` counts the
//! bytes written.
//!
//! The log lives on local disk, so it is as durable as that disk: use it for a local store, or
//! beside a remote store when losing the machine's disk may lose the writes not yet flushed to
//! an SST.

mod format;
mod gc;
mod reader;
mod segments;
pub mod ship;
#[cfg(test)]
mod tests;
mod writer;

pub use format::MalformedBlock;
pub use reader::SegmentWalReader;

use slatedb::wal::{WalGc, WalReader, WriterInit};
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

/// The logs this process has open, by canonical directory: a second opening shares the first
/// one's lock (an OS lock would refuse it) and its writer generations.
static OPEN: Mutex<Option<HashMap<PathBuf, Weak<Shared>>>> = Mutex::new(None);

/// Errors of opening or reading a segment log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Another process holds the log's lock: it is writing this store.
    #[error("the write-ahead log in {0} is locked by another process (is another mnemo serving this store?)")]
    Locked(PathBuf),
    /// An I/O error on a file of the log.
    #[error("write-ahead log I/O on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A block that a replay needs is missing: the blocks after it cannot be applied.
    #[error("write-ahead log block {expected} is missing (found block {found} in {segment})")]
    Gap {
        /// The block id the replay needed next.
        expected: u64,
        /// The block id found instead.
        found: u64,
        /// The segment that holds the unexpected block.
        segment: PathBuf,
    },
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

impl From<Error> for slatedb::wal::WalError {
    fn from(e: Error) -> Self {
        match e {
            Error::Gap { .. } => slatedb::wal::WalError::DataError(Arc::new(e)),
            _ => slatedb::wal::WalError::Unavailable(Arc::new(e)),
        }
    }
}

/// Tuning of a segment log.
#[derive(Clone, Copy, Debug)]
pub struct WalOptions {
    /// Size of a segment file. A block larger than a segment gets a segment of its own,
    /// extended past this size.
    pub segment_bytes: u64,
    /// Ask SlateDB to flush its memtable to an L0 SST once this many bytes of log were written
    /// after the memtable's replay point. This bounds both the log kept on disk and the replay
    /// after a crash.
    pub memtable_flush_bytes: u64,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes: 16 << 20,
            memtable_flush_bytes: 64 << 20,
        }
    }
}

/// What the log knows about one segment: the blocks it holds.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SegmentMeta {
    pub(crate) first: Option<u64>,
    pub(crate) last: Option<u64>,
    /// The segment the writer appends to (or the spare it will use next): never retired.
    pub(crate) in_use: bool,
}

/// State shared by the writer, the garbage collector and readers of one log directory.
pub(crate) struct Shared {
    pub(crate) dir: PathBuf,
    pub(crate) options: WalOptions,
    /// Held across each write and sync of the current writer, and by a new writer while it
    /// fences the old one and reads the log. The value is the current writer's generation.
    pub(crate) gate: Mutex<u64>,
    /// The segments and the blocks they hold.
    pub(crate) segments: Mutex<BTreeMap<u64, SegmentMeta>>,
    /// The OS lock on the directory, held for as long as the log is open.
    _lock: File,
    /// Tests: the next sync fails (after its write), as a failing disk's would.
    #[cfg(test)]
    pub(crate) fail_next_sync: std::sync::atomic::AtomicBool,
}

/// Locks a mutex, recovering the data of a poisoned one (a panic elsewhere leaves the
/// protected values consistent: every update is a plain assignment).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A segment log in a local directory, locked for this process.
///
/// Hand [`SegmentWal::writer_init`] to `DbBuilder::with_wal_writer`, [`SegmentWal::gc`] to the
/// garbage collector builder's `with_wal_gc`, and [`SegmentWal::reader`] to readers. Open it
/// once per process and keep it for the process's life: the database may be reopened (after a
/// store failure) with a new `writer_init` of the same log.
#[derive(Clone)]
pub struct SegmentWal {
    shared: Arc<Shared>,
}

impl SegmentWal {
    /// Opens (creating it if missing) the log in `dir` and takes its lock. Fails with
    /// [`Error::Locked`] if another process holds it. If this process has the log open
    /// already, the two share it (and `options` are those of the first opening).
    pub fn open(dir: &Path, options: WalOptions) -> Result<SegmentWal, Error> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let canonical = dir.canonicalize().map_err(|e| Error::io(dir, e))?;
        let mut open = lock(&OPEN);
        let open = open.get_or_insert_with(HashMap::new);
        open.retain(|_, w| w.strong_count() > 0);
        if let Some(shared) = open.get(&canonical).and_then(Weak::upgrade) {
            return Ok(SegmentWal { shared });
        }
        let lock_path = dir.join("LOCK");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io(&lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(Error::Locked(dir.into())),
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&lock_path, e)),
        }
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            options,
            gate: Mutex::new(0),
            segments: Mutex::new(BTreeMap::new()),
            _lock: lock,
            #[cfg(test)]
            fail_next_sync: std::sync::atomic::AtomicBool::new(false),
        });
        open.insert(canonical, Arc::downgrade(&shared));
        Ok(SegmentWal { shared })
    }

    /// The directory of the log.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// A writer initializer for one opening of the database: it fences the previous writer of
    /// this log, recovers the log, and starts a new segment.
    pub fn writer_init(&self) -> Box<dyn WriterInit> {
        Box::new(writer::SegmentWriterInit::new(Arc::clone(&self.shared)))
    }

    /// The garbage collector of the log's segments.
    pub fn gc(&self) -> Arc<dyn WalGc> {
        Arc::new(gc::SegmentGc::new(Arc::clone(&self.shared)))
    }

    /// A reader of the log (for `DbReader`s of the database in this process).
    pub fn reader(&self) -> Arc<dyn WalReader> {
        Arc::new(SegmentWalReader::new(&self.shared.dir))
    }
}
