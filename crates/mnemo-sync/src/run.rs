//! `sync`: make a destination tree hold what a source tree holds.

use crate::copy::{content_md5, copy_with_progress, Copied, CopyParams};
use crate::error::{describe, SyncError};
use crate::merge::{merge, Pair};
use crate::progress::{Event, Progress};
use crate::tree::{open_pair, Entry, Open, Side, Tree};
use futures::{future, StreamExt};
use mnemo_storage::RemotePolicy;
use object_store::ObjectStoreExt;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// At most this many errors (and differences) are kept in a report; the counts stay exact.
pub const MAX_LISTED: usize = 1000;

/// Options of [`sync`].
#[derive(Clone, Copy, Debug)]
pub struct SyncOptions {
    /// Delete destination objects the source lacks, after a pass with no error (never
    /// otherwise).
    pub delete: bool,
    /// Report what would be done; change nothing.
    pub dry_run: bool,
    /// Compare content hashes (MD5) instead of size and modification time (see [`sync`]).
    pub checksum: bool,
    /// Objects copied (or compared, or deleted) at the same time.
    pub transfers: usize,
    /// How bytes that flow through this node are copied.
    pub copy: CopyParams,
    /// Retries and timeouts of remote stores.
    pub policy: RemotePolicy,
    /// Fsync each file written to a local destination (and its directory).
    pub fsync: bool,
    /// Stop starting transfers after this many errors (`0`: never stop; every object is
    /// tried).
    pub max_errors: u64,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            delete: false,
            dry_run: false,
            checksum: false,
            transfers: 4,
            copy: CopyParams::default(),
            policy: RemotePolicy::default(),
            fsync: true,
            max_errors: 0,
        }
    }
}

/// A number of objects and their bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// Objects.
    pub objects: u64,
    /// Their bytes.
    pub bytes: u64,
}

impl Tally {
    pub(crate) fn add(&mut self, bytes: u64) {
        self.objects += 1;
        self.bytes += bytes;
    }
}

/// One failure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ObjectError {
    /// The key (relative to the trees), or `None` for a failure of a whole listing.
    pub path: Option<String>,
    /// What went wrong.
    pub error: String,
}

/// What a [`sync`] did. In a dry run, `copied` and `deleted` count what would be.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// The source tree's URL.
    pub source: String,
    /// The destination tree's URL.
    pub destination: String,
    /// Nothing was changed.
    pub dry_run: bool,
    /// Objects were compared by content hash.
    pub checksum: bool,
    /// Objects copied.
    pub copied: Tally,
    /// Of the copies, those made by the store itself (no byte through this node).
    pub server_side_copies: u64,
    /// Objects already the same at the destination.
    pub skipped: Tally,
    /// Destination objects the source lacks that were deleted (`--delete`).
    pub deleted: Tally,
    /// Destination objects the source lacks that were left in place: no `--delete`, or
    /// deletion was skipped because of errors.
    pub extra: Tally,
    /// Objects that failed (listing failures count one, with no bytes).
    pub errors: Tally,
    /// The first [`MAX_LISTED`] failures.
    pub error_list: Vec<ObjectError>,
    /// More failures than [`MAX_LISTED`] happened.
    pub error_list_truncated: bool,
    /// `--delete` was asked but nothing was deleted because of errors.
    pub delete_skipped: bool,
    /// Every object was considered: false when a listing failed or `max_errors` stopped
    /// the run.
    pub complete: bool,
    /// Wall time of the run.
    pub elapsed_seconds: f64,
}

impl Summary {
    fn new(src: &Tree, dst: &Tree, options: &SyncOptions) -> Self {
        Summary {
            source: src.url().to_string(),
            destination: dst.url().to_string(),
            dry_run: options.dry_run,
            checksum: options.checksum,
            copied: Tally::default(),
            server_side_copies: 0,
            skipped: Tally::default(),
            deleted: Tally::default(),
            extra: Tally::default(),
            errors: Tally::default(),
            error_list: Vec::new(),
            error_list_truncated: false,
            delete_skipped: false,
            complete: true,
            elapsed_seconds: 0.0,
        }
    }

    /// True when the run had no error and considered every object: the destination then
    /// holds everything the source held (and, with `delete`, nothing else).
    pub fn succeeded(&self) -> bool {
        self.errors.objects == 0 && self.complete
    }

    fn fail(&mut self, path: Option<String>, bytes: u64, error: String) {
        self.errors.add(bytes);
        if self.error_list.len() < MAX_LISTED {
            self.error_list.push(ObjectError { path, error });
        } else {
            self.error_list_truncated = true;
        }
    }

    fn record(&mut self, outcome: Outcome, progress: &dyn Progress) {
        match outcome {
            Outcome::Copied {
                key,
                bytes,
                server_side,
            } => {
                tracing::debug!(key = %key, bytes, server_side, "copied");
                self.copied.add(bytes);
                self.server_side_copies += u64::from(server_side);
                progress.finished(&key, Event::Copied);
            }
            Outcome::Skipped { key, bytes } => {
                self.skipped.add(bytes);
                progress.finished(&key, Event::Skipped);
            }
            Outcome::Extra { bytes } => self.extra.add(bytes),
            Outcome::Deleted { key, bytes } => {
                tracing::debug!(key = %key, bytes, "deleted");
                self.deleted.add(bytes);
                progress.finished(&key, Event::Deleted);
            }
            Outcome::Failed { key, bytes, error } => {
                tracing::debug!(key = %key, error = %error, "failed");
                progress.finished(&key, Event::Failed(&error));
                self.fail(Some(key), bytes, error);
            }
            Outcome::Fatal(error) => {
                tracing::debug!(error = %error, "run stopped");
                progress.finished("", Event::Failed(&error));
                self.complete = false;
                self.fail(None, 0, error);
            }
        }
    }
}

/// What became of one pair of the merge.
enum Outcome {
    Copied {
        key: String,
        bytes: u64,
        server_side: bool,
    },
    Skipped {
        key: String,
        bytes: u64,
    },
    Extra {
        bytes: u64,
    },
    Deleted {
        key: String,
        bytes: u64,
    },
    Failed {
        key: String,
        bytes: u64,
        error: String,
    },
    /// A listing failed: the pass stops.
    Fatal(String),
}

/// Makes `dst` hold every object of `src`: copies what the destination lacks or holds
/// differently, and with [`SyncOptions::delete`] deletes what the source lacks.
///
/// The two listings are streamed and merge-joined in byte order of keys (never held in
/// memory); objects are handled [`SyncOptions::transfers`] at a time.
///
/// **When an object is the same** (and skipped):
/// * by default, when both sizes are equal and either the destination is at least as new
///   as the source (last modification, in whole seconds) or both ETags are equal and come
///   from the same kind of store (S3 and S3, Azure and Azure). A copy is always newer than
///   its source, so a second run skips it; a source rewritten later is copied again. A
///   source rewritten with the same size within the second of its last copy, or clocks
///   that disagree, can fool the rule: `checksum` cannot be fooled.
/// * with [`SyncOptions::checksum`], when both sizes and both MD5s are equal (an S3
///   single-part ETag is the MD5 and is not read; anything else is read and hashed).
///
/// A failed object is recorded (key and reason) in the [`Summary`] and the others go on;
/// deletions then do not happen. A listing that fails, or comes out of key order, stops
/// the run (`complete` is false). Errors that prevent starting (a bad URL, a missing source
/// directory, trees that overlap) are returned as `Err`.
pub async fn sync(
    src: &Tree,
    dst: &Tree,
    options: &SyncOptions,
    progress: &dyn Progress,
) -> Result<Summary, SyncError> {
    if options.transfers == 0 {
        return Err(SyncError::InvalidOptions(
            "transfers must be at least 1".into(),
        ));
    }
    options.copy.validate()?;
    let started = Instant::now();
    let dst_open = if options.dry_run {
        Open::EmptyIfMissing
    } else {
        Open::Create
    };
    let (src, dst) = open_pair(src, dst, dst_open, options.policy, options.fsync)?;
    let mut summary = Summary::new(&src.tree, &dst.tree, options);
    copy_pass(&src, &dst, options, progress, &mut summary).await;
    if options.delete && summary.extra.objects > 0 {
        if !summary.succeeded() {
            tracing::warn!("errors during the sync: nothing deleted");
            summary.delete_skipped = true;
        } else if options.dry_run {
            summary.deleted = std::mem::take(&mut summary.extra);
        } else {
            summary.extra = Tally::default();
            delete_pass(&src, &dst, options, progress, &mut summary).await;
        }
    }
    summary.elapsed_seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// Copies what differs; counts the destination's extra objects.
async fn copy_pass(
    src: &Side,
    dst: &Side,
    options: &SyncOptions,
    progress: &dyn Progress,
    summary: &mut Summary,
) {
    let stop = AtomicBool::new(false);
    let mut outcomes = merge(src.list(), src.tree.url(), dst.list(), dst.tree.url())
        .take_while(|_| future::ready(!stop.load(Ordering::Relaxed)))
        .map(|pair| async move {
            match pair {
                Err(e) => Outcome::Fatal(describe(&e)),
                Ok(Pair::Unreadable { key, reason }) => Outcome::Failed {
                    key,
                    bytes: 0,
                    error: reason,
                },
                Ok(Pair::Dst(d)) => Outcome::Extra { bytes: d.size },
                Ok(Pair::Src(s)) => copy_entry(src, dst, s, options, progress).await,
                Ok(Pair::Both(s, d)) => match same(src, dst, &s, &d, options, progress).await {
                    Ok(true) => Outcome::Skipped {
                        key: s.key,
                        bytes: s.size,
                    },
                    Ok(false) => copy_entry(src, dst, s, options, progress).await,
                    Err(e) => Outcome::Failed {
                        key: s.key,
                        bytes: s.size,
                        error: describe(&e),
                    },
                },
            }
        })
        .buffer_unordered(options.transfers);
    while let Some(outcome) = outcomes.next().await {
        summary.record(outcome, progress);
        if options.max_errors > 0
            && summary.errors.objects >= options.max_errors
            && !stop.swap(true, Ordering::Relaxed)
        {
            summary.complete = false;
            tracing::warn!(
                errors = summary.errors.objects,
                "too many errors: no more transfers are started"
            );
        }
    }
}

/// Deletes the destination's objects the source lacks, after an error-free copy pass. The
/// trees are listed again (nothing was kept from the first pass), and the pass stops at the
/// first path the source cannot list: what is under it must not look like extra objects.
async fn delete_pass(
    src: &Side,
    dst: &Side,
    options: &SyncOptions,
    progress: &dyn Progress,
    summary: &mut Summary,
) {
    let stop = AtomicBool::new(false);
    let mut halted: Option<(Option<String>, String)> = None;
    let mut outcomes = merge(src.list(), src.tree.url(), dst.list(), dst.tree.url())
        .take_while(|pair| {
            let go = match pair {
                Ok(Pair::Unreadable { key, reason }) => {
                    halted = Some((Some(key.clone()), reason.clone()));
                    false
                }
                Err(e) => {
                    halted = Some((None, describe(e)));
                    false
                }
                Ok(_) => !stop.load(Ordering::Relaxed),
            };
            future::ready(go)
        })
        .filter_map(|pair| future::ready(pair.ok()))
        .filter_map(|pair| {
            future::ready(match pair {
                Pair::Dst(d) => Some(d),
                _ => None,
            })
        })
        .map(|d| async move {
            let removed = match dst.path(&d.key) {
                Ok(path) => match dst.store.delete(&path).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(SyncError::store("delete", path, e)),
                },
                Err(e) => Err(e),
            };
            match removed {
                Ok(()) => Outcome::Deleted {
                    key: d.key,
                    bytes: d.size,
                },
                Err(e) => Outcome::Failed {
                    key: d.key,
                    bytes: d.size,
                    error: describe(&e),
                },
            }
        })
        .buffer_unordered(options.transfers);
    while let Some(outcome) = outcomes.next().await {
        summary.record(outcome, progress);
        if options.max_errors > 0 && summary.errors.objects >= options.max_errors {
            stop.store(true, Ordering::Relaxed);
        }
    }
    drop(outcomes);
    if stop.load(Ordering::Relaxed) {
        summary.complete = false;
    }
    if let Some((key, error)) = halted {
        match key {
            Some(key) => summary.record(
                Outcome::Failed {
                    key,
                    bytes: 0,
                    error,
                },
                progress,
            ),
            None => summary.record(Outcome::Fatal(error), progress),
        }
        summary.complete = false;
    }
}

/// Copies one source object (or, in a dry run, says it would).
async fn copy_entry(
    src: &Side,
    dst: &Side,
    entry: Entry,
    options: &SyncOptions,
    progress: &dyn Progress,
) -> Outcome {
    if options.dry_run {
        return Outcome::Copied {
            key: entry.key,
            bytes: entry.size,
            server_side: false,
        };
    }
    let copied = async {
        let (from, to) = (src.path(&entry.key)?, dst.path(&entry.key)?);
        copy_with_progress(
            &src.store,
            &from,
            &dst.store,
            &to,
            entry.size,
            &options.copy,
            progress,
        )
        .await
    }
    .await;
    match copied {
        Ok(how) => Outcome::Copied {
            key: entry.key,
            bytes: entry.size,
            server_side: how == Copied::ServerSide,
        },
        Err(e) => Outcome::Failed {
            key: entry.key,
            bytes: entry.size,
            error: describe(&e),
        },
    }
}

/// Whether the destination already holds the source object (see [`sync`] for the rule).
async fn same(
    src: &Side,
    dst: &Side,
    s: &Entry,
    d: &Entry,
    options: &SyncOptions,
    progress: &dyn Progress,
) -> Result<bool, SyncError> {
    if s.size != d.size {
        return Ok(false);
    }
    if !options.checksum {
        return Ok(same_by_metadata(
            s,
            d,
            src.tree.backend() == dst.tree.backend(),
        ));
    }
    let (from, to) = (src.path(&s.key)?, dst.path(&d.key)?);
    let (a, b) = futures::try_join!(
        content_md5(&src.store, &from, s, src.tree.backend(), progress),
        content_md5(&dst.store, &to, d, dst.tree.backend(), progress),
    )?;
    Ok(a == b)
}

/// The default rule: equal sizes, and the destination at least as new as the source or both
/// ETags equal and from the same kind of store.
pub(crate) fn same_by_metadata(s: &Entry, d: &Entry, same_backend: bool) -> bool {
    s.size == d.size
        && (d.modified >= s.modified || (same_backend && s.e_tag.is_some() && s.e_tag == d.e_tag))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(size: u64, modified: i64, e_tag: Option<&str>) -> Entry {
        Entry {
            key: "k".into(),
            size,
            modified,
            e_tag: e_tag.map(str::to_string),
        }
    }

    #[test]
    fn metadata_rule() {
        let s = entry(10, 100, Some("\"e1\""));
        // Same size, destination newer or as new: same.
        assert!(same_by_metadata(&s, &entry(10, 100, None), false));
        assert!(same_by_metadata(&s, &entry(10, 101, None), false));
        // Destination older: different, unless the ETags match on one kind of store.
        assert!(!same_by_metadata(&s, &entry(10, 99, None), false));
        assert!(!same_by_metadata(&s, &entry(10, 99, Some("\"e1\"")), false));
        assert!(same_by_metadata(&s, &entry(10, 99, Some("\"e1\"")), true));
        assert!(!same_by_metadata(&s, &entry(10, 99, Some("\"e2\"")), true));
        assert!(!same_by_metadata(
            &entry(10, 100, None),
            &entry(10, 99, None),
            true
        ));
        // Sizes differ: always different.
        assert!(!same_by_metadata(&s, &entry(11, 200, Some("\"e1\"")), true));
    }
}
