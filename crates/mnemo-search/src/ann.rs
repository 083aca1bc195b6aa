//! Approximate nearest-neighbour index (usearch HNSW) for large tenant-wide scopes.
//!
//! Vectors are stored quantised (i8 by default); every candidate is re-scored exactly against
//! the f32 copy in the catalog, so quantisation only affects which candidates are found, not
//! their scores or order.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use parking_lot::RwLock;
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

use crate::catalog::Handle;
use crate::SearchError;

/// Thread contexts reserved in usearch: concurrent searches plus the builder.
const THREADS: usize = 64;

/// A graph is rebuilt once its removed nodes number at least this many...
const REBUILD_MIN_TOMBSTONES: usize = 1024;
/// ...and at least this fraction of its live vectors (one removed node per three live ones).
const REBUILD_TOMBSTONE_RATIO: f64 = 1.0 / 3.0;

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
    /// Removed nodes still in the graph: usearch keeps a removed vector's node (searches walk
    /// through it but never return it) until an add reuses its slot. A loaded graph starts
    /// from the count in its header.
    tombstones: AtomicUsize,
}

impl Ann {
    pub fn new(
        dim: usize,
        quantization: Quantization,
        expansion_search: usize,
        capacity: usize,
    ) -> Result<Self, SearchError> {
        let index = Index::new(&Self::options(dim, quantization, expansion_search))
            .map_err(|e| SearchError::Internal(e.to_string()))?;
        index
            .reserve_capacity_and_threads(capacity.max(1024), THREADS)
            .map_err(|e| SearchError::Internal(e.to_string()))?;
        Ok(Ann {
            index,
            lock: RwLock::new(()),
            tombstones: AtomicUsize::new(0),
        })
    }

    /// A graph saved by [`Ann::save`], checked against the expected dimension and quantisation.
    pub fn load(
        bytes: &[u8],
        dim: usize,
        quantization: Quantization,
        expansion_search: usize,
    ) -> Result<Self, SearchError> {
        let bad = |e: String| SearchError::BadSnapshot(format!("ANN graph: {e}"));
        let options = Self::options(dim, quantization, expansion_search);
        let index = Index::new(&options).map_err(|e| SearchError::Internal(e.to_string()))?;
        let meta = Index::metadata_from_buffer(bytes).map_err(|e| bad(e.to_string()))?;
        if meta.dimensions != dim as u64 || meta.quantization != options.quantization {
            return Err(bad(format!(
                "dimension {} / quantisation differ from {dim} / {quantization:?}",
                meta.dimensions
            )));
        }
        index
            .load_from_buffer(bytes)
            .map_err(|e| bad(e.to_string()))?;
        index.change_expansion_search(expansion_search);
        let size = index.size();
        index
            .reserve_capacity_and_threads((size + size / 4).max(1024), THREADS)
            .map_err(|e| SearchError::Internal(e.to_string()))?;
        Ok(Ann {
            index,
            lock: RwLock::new(()),
            tombstones: AtomicUsize::new(meta.count_deleted as usize),
        })
    }

    /// Appends the graph to `out` as a length (u64 LE) and usearch's bytes, without an
    /// intermediate copy. Waits for an insert in progress, and blocks inserts and searches of
    /// this graph while it copies.
    pub fn save_into(&self, out: &mut Vec<u8>) -> Result<(), SearchError> {
        let _w = self.lock.write();
        let len = self.index.serialized_length();
        out.extend_from_slice(&(len as u64).to_le_bytes());
        let start = out.len();
        out.resize(start + len, 0);
        self.index
            .save_to_buffer(&mut out[start..])
            .map_err(|e| SearchError::Internal(e.to_string()))
    }

    /// Whether the graph holds `handle`.
    pub fn contains(&self, handle: Handle) -> bool {
        let _r = self.lock.read();
        self.index.contains(handle)
    }

    fn options(dim: usize, quantization: Quantization, expansion_search: usize) -> IndexOptions {
        IndexOptions {
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
        }
    }

    /// Vectors in the graph.
    pub fn len(&self) -> usize {
        self.index.size()
    }

    /// Adds vectors (normalised f32) in order, growing the graph's capacity when needed.
    /// Stops early once `stop` is set; returns how many items were processed (a prefix).
    pub fn add_all(
        &self,
        items: &[(Handle, Vec<f32>)],
        stop: &AtomicBool,
    ) -> Result<usize, SearchError> {
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
        for (done, (h, v)) in items.iter().enumerate() {
            if stop.load(Ordering::Relaxed) {
                return Ok(done);
            }
            let _r = self.lock.read();
            if self.index.contains(*h) {
                continue;
            }
            self.index
                .add(*h, v)
                .map_err(|e| SearchError::Internal(e.to_string()))?;
            // An add fills a removed node's slot first.
            let _ = self
                .tombstones
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| t.checked_sub(1));
        }
        Ok(items.len())
    }

    /// Changes the search breadth (`ef`).
    pub fn set_expansion_search(&self, ef: usize) {
        let _w = self.lock.write();
        self.index.change_expansion_search(ef);
    }

    /// Removes a vector (no-op if absent).
    pub fn remove(&self, handle: Handle) {
        let _r = self.lock.read();
        if self.index.remove(handle).is_ok_and(|n| n > 0) {
            self.tombstones.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Removed nodes still in the graph (see the field's doc).
    pub fn tombstones(&self) -> usize {
        self.tombstones.load(Ordering::Relaxed)
    }

    /// Whether so many vectors were removed (and not replaced by adds) that a fresh graph of
    /// the live vectors would search faster and find more: each removed node still costs
    /// distance computations on every walk through it and holds edges live nodes lack.
    pub fn needs_rebuild(&self) -> bool {
        let dead = self.tombstones();
        dead >= REBUILD_MIN_TOMBSTONES && dead as f64 >= self.len() as f64 * REBUILD_TOMBSTONE_RATIO
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
