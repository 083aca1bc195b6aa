//! Typed errors of the storage layer.
//!
//! Every variant keeps its cause: engine, object-store and decoding failures carry the
//! original error as their [`source`](std::error::Error::source), so a log line can show the
//! whole chain ([`report`]) while clients see only the variant.

use std::error::Error as StdError;
use std::fmt;

/// A boxed error kept as the cause of a [`StoreError`].
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Everything that can go wrong in a storage operation.
///
/// The variants map one-to-one onto client-visible outcomes: the API layer turns each into
/// an HTTP status without looking inside the message.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The conversation, item or key does not exist (or is not visible to the caller).
    #[error("{0} not found")]
    NotFound(String),
    /// The write conflicts with existing data (for example a duplicate item id).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A conditional write's condition did not hold; nothing was written.
    #[error("precondition failed: {message}")]
    PreconditionFailed {
        /// Which condition failed.
        message: String,
        /// Index of the failing operation in a multi-operation write.
        index: Option<usize>,
    },
    /// The caller's scope may see the object but not write it (a user writing shared
    /// memory, or another user's space); nothing was written.
    #[error("forbidden: {message}")]
    Forbidden {
        /// Why not.
        message: String,
        /// Index of the refused operation in a multi-operation write.
        index: Option<usize>,
    },
    /// The request is invalid for the storage layer (bad id, bad key, too large).
    #[error("{0}")]
    Invalid(String),
    /// The object store is unreachable, or the operation did not finish in time.
    /// For a write the outcome is unknown, but never partial.
    #[error("store unavailable: {message}")]
    Unavailable {
        /// What did not happen.
        message: String,
        /// The engine or object-store error, if one caused it.
        #[source]
        source: Option<BoxError>,
    },
    /// Another process opened the store as writer; this process must stop writing.
    #[error("this node was fenced by a newer writer of the same store")]
    Fenced,
    /// This process serves a read-only replica: it takes no writes.
    #[error("this server serves a read-only replica; send writes to the primary")]
    ReadOnly,
    /// Stored data could not be decoded. Never turned into an empty or default value.
    #[error("corrupt record: {what}")]
    Corrupt {
        /// Which record, or which part of it.
        what: String,
        /// The decoding error, if any.
        #[source]
        source: Option<BoxError>,
    },
    /// A value could not be encoded for storage (a server defect, not corrupt data).
    #[error("cannot encode {what}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// The encoder's error.
        #[source]
        source: BoxError,
    },
    /// An unexpected engine error.
    #[error("internal storage error: {message}")]
    Internal {
        /// What failed.
        message: String,
        /// The underlying error, if any.
        #[source]
        source: Option<BoxError>,
    },
}

/// Result alias for storage operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl StoreError {
    /// [`StoreError::Unavailable`] without an underlying error (a timeout, a closed store).
    pub fn unavailable(message: impl Into<String>) -> Self {
        StoreError::Unavailable {
            message: message.into(),
            source: None,
        }
    }

    /// [`StoreError::Corrupt`] for a record that fails a structural check. Logged at error
    /// level here, so no corrupt record goes unreported whoever handles the error.
    pub fn corrupt(what: impl Into<String>) -> Self {
        let what = what.into();
        tracing::error!(what = %what, "corrupt record");
        StoreError::Corrupt { what, source: None }
    }

    /// [`StoreError::Corrupt`] for a record whose decoder failed; logged like
    /// [`StoreError::corrupt`].
    pub fn corrupt_with(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        let what = what.into();
        let source = source.into();
        tracing::error!(what = %what, error = %source, "corrupt record");
        StoreError::Corrupt {
            what,
            source: Some(source),
        }
    }

    /// [`StoreError::Internal`] with its cause.
    pub fn internal(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        StoreError::Internal {
            message: message.into(),
            source: Some(source.into()),
        }
    }
}

impl From<slatedb::Error> for StoreError {
    fn from(e: slatedb::Error) -> Self {
        use slatedb::{CloseReason, ErrorKind};
        match e.kind() {
            ErrorKind::Closed(CloseReason::Fenced) => StoreError::Fenced,
            ErrorKind::Closed(_) | ErrorKind::Unavailable => StoreError::Unavailable {
                message: "the database or its object store is unavailable".into(),
                source: Some(Box::new(e)),
            },
            ErrorKind::Invalid => StoreError::Invalid(e.to_string()),
            ErrorKind::Data => StoreError::Corrupt {
                what: "engine data".into(),
                source: Some(Box::new(e)),
            },
            _ => StoreError::Internal {
                message: "engine error".into(),
                source: Some(Box::new(e)),
            },
        }
    }
}

/// Displays an error with its chain of causes, `outer: cause: root cause`, for log lines.
pub fn report<'a>(e: &'a (dyn StdError + 'static)) -> impl fmt::Display + 'a {
    struct Report<'a>(&'a (dyn StdError + 'static));
    impl fmt::Display for Report<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{}", self.0)?;
            let mut cause = self.0.source();
            while let Some(c) = cause {
                write!(f, ": {c}")?;
                cause = c.source();
            }
            Ok(())
        }
    }
    Report(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_kept_and_reported() {
        let bad = serde_json::from_slice::<serde_json::Value>(b"{").unwrap_err();
        let e = StoreError::corrupt_with("conversation record", bad);
        assert!(e.source().is_some());
        let line = report(&e).to_string();
        assert!(
            line.starts_with("corrupt record: conversation record: "),
            "{line}"
        );
        assert!(line.contains("EOF"), "{line}");
    }
}
