//! Typed errors of the storage layer.

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
    /// The request is invalid for the storage layer (bad id, bad key, too large).
    #[error("{0}")]
    Invalid(String),
    /// The object store is unreachable, or the write was not durable in time.
    /// For a write the outcome is unknown, but never partial.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Another process opened the store as writer; this process must stop writing.
    #[error("this node was fenced by a newer writer of the same store")]
    Fenced,
    /// Stored data could not be decoded.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// An unexpected engine error.
    #[error("internal storage error: {0}")]
    Internal(String),
}

/// Result alias for storage operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl From<slatedb::Error> for StoreError {
    fn from(e: slatedb::Error) -> Self {
        use slatedb::{CloseReason, ErrorKind};
        match e.kind() {
            ErrorKind::Closed(CloseReason::Fenced) => StoreError::Fenced,
            ErrorKind::Closed(_) | ErrorKind::Unavailable => StoreError::Unavailable(e.to_string()),
            ErrorKind::Invalid => StoreError::Invalid(e.to_string()),
            ErrorKind::Data => StoreError::Corrupt(e.to_string()),
            _ => StoreError::Internal(e.to_string()),
        }
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Corrupt(e.to_string())
    }
}
