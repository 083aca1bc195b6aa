//! Errors returned by the search library.

/// Everything that can go wrong in a search or an index write.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SearchError {
    /// The vector contains NaN or infinity, is empty, or has zero length.
    #[error("invalid vector: {0}")]
    InvalidVector(String),
    /// The vector's dimension differs from the tenant's.
    #[error("vector dimension {got} does not match the tenant's dimension {expected}")]
    DimensionMismatch {
        /// The tenant's dimension.
        expected: usize,
        /// The dimension given.
        got: usize,
    },
    /// The mode's input (text or vector) is missing, or the text is empty.
    #[error("empty query: {0}")]
    EmptyQuery(&'static str),
    /// `top_k` is 0 or above the configured maximum.
    #[error("top_k {got} out of range 1..={max}")]
    TopKOutOfRange {
        /// The value given.
        got: usize,
        /// The configured maximum.
        max: usize,
    },
    /// Earlier writes were not indexed within the configured wait timeout.
    #[error("index did not catch up with earlier writes in time")]
    Timeout,
    /// A snapshot given to [`crate::SearchIndex::restore`] is corrupt, truncated, of an unknown
    /// format version, or inconsistent with the configuration. Rebuild the index instead.
    #[error("unusable search snapshot: {0}")]
    BadSnapshot(String),
    /// A failure inside the index (full-text engine, ANN, indexer thread).
    #[error("search index failure: {0}")]
    Internal(String),
}

impl From<tantivy::TantivyError> for SearchError {
    fn from(e: tantivy::TantivyError) -> Self {
        SearchError::Internal(e.to_string())
    }
}
