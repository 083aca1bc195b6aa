//! Approximate nearest-neighbour index (usearch HNSW) for large tenant-wide scopes.
//!
//! Vectors are stored quantised (i8 by default); every candidate is re-scored exactly against
//! the f32 copy in the catalog, so quantisation only affects which candidates are found, not
//! their scores or order.

use parking_lot::RwLock;
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

use crate::catalog::Handle;
use crate::SearchError;

/// Thread contexts reserved in usearch: concurrent searches plus the builder.
const THREADS: usize = 64;

/// Quantisation of the vectors inside the HNSW graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantization {
    /// 32-bit floats (no loss, 4 bytes per dimension).
    F32,
    /// 16-bit floats.
    F16,
    /// 8-bit integers (1 byte per dimension).
    I8,
}

/// One HNSW graph over the vectors of a (tenant, source).
pub(crate) struct Ann {
    index: Index,
    /// Readers: add, remove, search (usearch makes these thread-safe). Writer: reserve.
    lock: RwLock<()>,
}

impl Ann {
    pub fn new(
        dim: usize,
        quantization: Quantization,
        expansion_search: usize,
        capacity: usize,
    ) -> Result<Self, SearchError> {
        let options = IndexOptions {
            dimensions: dim,
            metric: MetricKind::IP,
            quantization: match quantization {
                Quantization::F32 => ScalarKind::F32,
                Quantization::F16 => ScalarKind::F16,
                Quantization::I8 => ScalarKind::I8,
            },
            connectivity: 16,
            expansion_add: 128,
            expansion_search,
            multi: false,
        };
        let index = Index::new(&options).map_err(|e| SearchError::Internal(e.to_string()))?;
        index
            .reserve_capacity_and_threads(capacity.max(1024), THREADS)
            .map_err(|e| SearchError::Internal(e.to_string()))?;
        Ok(Ann {
            index,
            lock: RwLock::new(()),
        })
    }

    /// Vectors in the graph.
    pub fn len(&self) -> usize {
        self.index.size()
    }

    /// Adds vectors (normalised f32), growing the graph's capacity when needed.
    pub fn add_all(&self, items: &[(Handle, Vec<f32>)]) -> Result<(), SearchError> {
        let need = self.index.size() + items.len();
        if need > self.index.capacity() {
            let _w = self.lock.write();
            let cap = self.index.capacity();
            if need > cap {
                self.index
                    .reserve_capacity_and_threads(need.max(cap * 2), THREADS)
                    .map_err(|e| SearchError::Internal(e.to_string()))?;
            }
        }
        let _r = self.lock.read();
        for (h, v) in items {
            self.index
                .add(*h, v)
                .map_err(|e| SearchError::Internal(e.to_string()))?;
        }
        Ok(())
    }

    /// Changes the search breadth (`ef`).
    pub fn set_expansion_search(&self, ef: usize) {
        let _w = self.lock.write();
        self.index.change_expansion_search(ef);
    }

    /// Removes a vector (no-op if absent).
    pub fn remove(&self, handle: Handle) {
        let _r = self.lock.read();
        let _ = self.index.remove(handle);
    }

    /// Up to `count` candidate handles near `query`, only those accepted by `keep` if given.
    pub fn candidates(
        &self,
        query: &[f32],
        count: usize,
        keep: Option<&dyn Fn(Handle) -> bool>,
    ) -> Result<Vec<Handle>, SearchError> {
        let _r = self.lock.read();
        let m = match keep {
            Some(keep) => self.index.filtered_search(query, count, keep),
            None => self.index.search(query, count),
        }
        .map_err(|e| SearchError::Internal(e.to_string()))?;
        Ok(m.keys)
    }
}
