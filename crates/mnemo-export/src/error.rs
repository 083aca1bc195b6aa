//! Errors of the export crate.

/// What can go wrong in an export.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The request cannot be carried out as given (a bad URL, an incremental run without a
    /// dataset, …); nothing was written.
    #[error("{0}")]
    Invalid(String),
    /// The system's random source failed.
    #[error("the random source failed")]
    Random,
    /// Reading the mnemo store failed.
    #[error("source store: {0}")]
    Source(#[from] mnemo_storage::StoreError),
    /// Opening a cluster's shard for reading failed.
    #[error("shard {shard}: {source}")]
    Shard {
        /// The shard's name.
        shard: String,
        /// What failed.
        source: mnemo_storage::StoreError,
    },
    /// The dataset's object store failed.
    #[error("dataset store: {0}")]
    Store(String),
    /// A dataset object is not what mnemo wrote.
    #[error("corrupt dataset: {0}")]
    Corrupt(String),
    /// Writing or reading Parquet failed.
    #[error("parquet: {0}")]
    Parquet(String),
}
