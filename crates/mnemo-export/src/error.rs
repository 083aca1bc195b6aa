//! Errors of the export crate.

/// What can go wrong in an export.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The system's random source failed.
    #[error("the random source failed")]
    Random,
    /// Writing or reading Parquet failed.
    #[error("parquet: {0}")]
    Parquet(String),
}
