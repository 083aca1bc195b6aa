//! Typed errors of the index service.

use mnemo_search::SearchError;
use mnemo_storage::StoreError;

/// Everything that can go wrong in the index service.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// Reading the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The search index refused or failed an operation.
    #[error(transparent)]
    Search(#[from] SearchError),
    /// The index did not catch up with the writes acknowledged before a search in time.
    #[error("the search index did not catch up with earlier writes in time")]
    Behind,
    /// A text query cannot be embedded: the tenant's stored vectors have another dimension
    /// than the built-in embedder's.
    #[error(
        "this tenant's vectors have {stored} dimensions but the server's built-in embedder \
         makes {model}-dimensional vectors, so text cannot be searched by vector here: pass a \
         `vector` of {stored} numbers, or use mode text"
    )]
    TextDimension {
        /// The tenant's dimension.
        stored: usize,
        /// The model's dimension.
        model: usize,
    },
    /// The built-in embedder could not be set up.
    #[error(transparent)]
    Embedder(#[from] crate::embed::EmbedSetupError),
    /// Embedding a query text failed.
    #[error("embedding the query failed: {0}")]
    Embedding(String),
    /// A background task of the service failed (panicked or was cancelled).
    #[error("index task failed")]
    Task(#[from] tokio::task::JoinError),
}
