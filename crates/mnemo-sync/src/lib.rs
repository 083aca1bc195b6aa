//! Copies between object stores, and consistent replicas of a mnemo store.

pub mod replica;

/// An error of a copy or a replica.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// A replica round, or a promotion, failed.
    #[error("{0}")]
    Replica(String),
}
