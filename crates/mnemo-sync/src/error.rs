//! Errors of sync and check.

use std::error::Error as StdError;

/// What can go wrong in a sync or a check.
///
/// Errors that stop a run before it starts (a bad URL, bad options, a missing source
/// directory) are returned by [`crate::sync`] and [`crate::check`]; errors on single objects
/// or listings during a run are recorded in the [`crate::Summary`] or
/// [`crate::CheckReport`] instead, and the run goes on with the other objects.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The URL names no tree that can be synced.
    #[error("invalid tree URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The options cannot be used together, or a value is out of range.
    #[error("invalid options: {0}")]
    InvalidOptions(String),
    /// An object-store operation failed (after the client's bounded retries).
    #[error("{op} {path}: {source}")]
    Store {
        /// The operation (`list`, `read`, `write`, `copy`, `delete`).
        op: &'static str,
        /// The object (or prefix) it was about.
        path: String,
        /// The object-store error.
        #[source]
        source: object_store::Error,
    },
    /// A local file-system operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A replica round, or a promotion, failed.
    #[error("{0}")]
    Replica(String),
    /// A listing came out of byte order of keys, so the two trees cannot be merged safely.
    #[error("the listing of {tree} is not in key order: {next:?} came after {previous:?}")]
    OutOfOrder {
        /// The tree whose listing is out of order.
        tree: String,
        /// The key listed before.
        previous: String,
        /// The key that should have come before it.
        next: String,
    },
    /// The source object changed while it was read (its size is not what was listed).
    #[error("{path}: the source changed during the copy (listed {expected} bytes, found {actual}); run again")]
    SourceChanged {
        /// The object.
        path: String,
        /// Its size when listed.
        expected: u64,
        /// Its size (or the bytes read) when copied.
        actual: u64,
    },
    /// The name cannot be an object (or file) name on this tree.
    #[error("invalid object name {path:?}: {reason}")]
    BadName {
        /// The name.
        path: String,
        /// Why not.
        reason: String,
    },
    /// A background task failed.
    #[error("internal error: {0}")]
    Internal(String),
}

impl SyncError {
    pub(crate) fn store(
        op: &'static str,
        path: impl ToString,
        source: object_store::Error,
    ) -> Self {
        SyncError::Store {
            op,
            path: path.to_string(),
            source,
        }
    }

    pub(crate) fn io(op: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        SyncError::Io {
            op,
            path: path.display().to_string(),
            source,
        }
    }
}

/// The error with every cause not already in its text, `error: cause: root cause`: the
/// reason recorded for a failed object.
pub(crate) fn describe(e: &(dyn StdError + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}
