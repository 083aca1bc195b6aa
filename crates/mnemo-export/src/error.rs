//! Errors of the export crate.

/// What can go wrong in an export.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The system's random source failed.
    #[error("the random source failed")]
    Random,
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
