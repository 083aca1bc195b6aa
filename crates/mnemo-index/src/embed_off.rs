//! Stand-in for the built-in embedder in builds without the cargo feature `embedder`: the
//! types exist so that the rest of the crate is the same in both builds, but none can be
//! created ([`EmbedderConfig::load`] fails), so the search service never has a pipeline.

use crate::SearchService;
use mnemo_search::{Doc, SearchIndex};
use mnemo_storage::Store;
use std::path::Path;
use std::sync::Arc;

/// Why the built-in embedder could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum EmbedSetupError {
    /// This build has no built-in embedder.
    #[error("this build of mnemo has no built-in embedder (cargo feature `embedder`)")]
    NotBuilt,
}

/// A loaded model; cannot exist in this build.
#[derive(Clone)]
pub enum EmbedderConfig {}

impl EmbedderConfig {
    /// Always fails: this build has no built-in embedder.
    pub fn load(_dir: &Path, _threads: usize) -> Result<Self, EmbedSetupError> {
        Err(EmbedSetupError::NotBuilt)
    }

    /// Length of the model's vectors.
    pub fn dimension(&self) -> usize {
        match *self {}
    }
}

/// The embedding pipeline; cannot exist in this build.
pub enum Pipeline {}

impl Pipeline {
    pub(crate) fn start(
        cfg: EmbedderConfig,
        _store: Arc<Store>,
        _index: Arc<SearchIndex>,
    ) -> Result<Arc<Self>, EmbedSetupError> {
        match cfg {}
    }

    pub(crate) fn dimension(&self) -> usize {
        match *self {}
    }

    pub(crate) fn stop(&self) {
        match *self {}
    }

    pub(crate) fn offer(&self, _doc: &Doc, _pos: u64) {
        match *self {}
    }

    // Called by the search service's backfill scan, which only the real pipeline starts.
    #[allow(dead_code)]
    pub(crate) async fn offer_wait(&self, _doc: &Doc, _pos: u64) {
        match *self {}
    }

    pub(crate) fn ready(&self, _tenant: &str, _target: u64) -> bool {
        match *self {}
    }

    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        match *self {}
    }

    pub(crate) async fn backfill_loop(self: Arc<Self>, _svc: Arc<SearchService>) {
        match *self {}
    }

    pub(crate) fn query_vector(&self, _text: &str) -> Result<Arc<Vec<f32>>, EmbedSetupError> {
        match *self {}
    }
}
