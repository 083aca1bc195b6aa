//! Approximate nearest-neighbour index (usearch HNSW) for large tenant-wide scopes.
//!
//! Vectors are stored quantised (i8 by default); every candidate is re-scored exactly against
//! the f32 copy in the catalog, so quantisation only affects which candidates are found, not
//! their scores or order.
//!
//! i8 vectors are quantised here, not by usearch: usearch scales each vector to unit length,
//! multiplies by 127 and truncates, so a 384-dimension unit vector (components around ±0.05)
//! uses about a tenth of the i8 range. Instead one scale per graph maps a high quantile of the
//! stored vectors' components to 127 (values beyond it are clamped), and components are
//! rounded; a query gets its own scale (its length does not change the order of inner
//! products). On clustered 384-d vectors, the best 20 candidates by i8 inner product then hold
//! the exact top 10 where usearch's own quantisation needed about 30.

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

/// Share of sampled components allowed beyond the i8 range (clamped to ±127).
const I8_CLAMPED_SHARE: f64 = 1e-4;
/// Vectors sampled to choose a graph's i8 scale.
const I8_SAMPLE: usize = 2048;

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
    quantization: Quantization,
    /// For [`Quantization::I8`], the factor turning a stored vector's components into i8
    /// values (see the module doc); unused otherwise.
    scale: f32,
    /// Readers: add, remove, search (usearch makes these thread-safe). Writer: reserve.
    lock: RwLock<()>,
    /// Removed nodes still in the graph: usearch keeps a removed vector's node (searches walk
    /// through it but never return it) until an add reuses its slot. A loaded graph starts
    /// from the count in its header.
    tombstones: AtomicUsize,
}

impl Ann {
    /// An empty graph. `sample` yields stored vectors (normalised f32), of which up to
    /// [`I8_SAMPLE`] spread over all `count` choose the i8 scale.
    pub fn new<'a>(
        dim: usize,
        quantization: Quantization,
        expansion_search: usize,
        count: usize,
        sample: impl Iterator<Item = &'a [f32]>,
    ) -> Result<Self, SearchError> {
        let index = Index::new(&Self::options(dim, quantization, expansion_search))
            .map_err(|e| SearchError::Internal(e.to_string()))?;
        index
            .reserve_capacity_and_threads((count + count / 4).max(1024), THREADS)
            .map_err(|e| SearchError::Internal(e.to_string()))?;
        let step = (count / I8_SAMPLE).max(1);
        Ok(Ann {
            index,
            quantization,
            scale: i8_scale(dim, sample.step_by(step).take(I8_SAMPLE)),
            lock: RwLock::new(()),
            tombstones: AtomicUsize::new(0),
        })
    }

    /// The i8 scale to save beside the graph and pass back to [`Ann::load`].
    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// A graph saved by [`Ann::save_into`] with its [`Ann::scale`], checked against the
    /// expected dimension and quantisation.
    pub fn load(
        bytes: &[u8],
        scale: f32,
        dim: usize,
        quantization: Quantization,
        expansion_search: usize,
    ) -> Result<Self, SearchError> {
        let bad = |e: String| SearchError::BadSnapshot(format!("ANN graph: {e}"));
        let options = Self::options(dim, quantization, expansion_search);
        let index = Index::new(&options).map_err(|e| SearchError::Internal(e.to_string()))?;
        if !(scale.is_finite() && scale > 0.0) {
            return Err(bad(format!("i8 scale {scale}")));
        }
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
            quantization,
            scale,
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
            match self.quantization {
                Quantization::I8 => self.index.add(*h, &quantize(v, self.scale)),
                _ => self.index.add(*h, v),
            }
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
        match self.quantization {
            Quantization::I8 => self.walk(&quantize_query(query), count, keep),
            _ => self.walk(query, count, keep),
        }
    }

    /// usearch's search, filtered by `keep` if given; the caller holds `lock` for reading.
    fn walk<T: usearch::VectorType>(
        &self,
        query: &[T],
        count: usize,
        keep: Option<&dyn Fn(Handle) -> bool>,
    ) -> Result<Vec<Handle>, SearchError> {
        match keep {
            Some(keep) => self.index.filtered_search(query, count, keep),
            None => self.index.search(query, count),
        }
        .map(|m| m.keys)
        .map_err(|e| SearchError::Internal(e.to_string()))
    }
}

/// The scale mapping the `1 - I8_CLAMPED_SHARE` quantile of the sampled components'
/// magnitudes to 127; without a usable sample, the one mapping 4 / √dim (four standard
/// deviations of a random unit vector's component) to 127.
fn i8_scale<'a>(dim: usize, sample: impl Iterator<Item = &'a [f32]>) -> f32 {
    let mut mags: Vec<f32> = sample
        .flat_map(|v| v.iter().map(|x| x.abs()))
        .filter(|x| x.is_finite())
        .collect();
    let fallback = 127.0 * (dim.max(1) as f32).sqrt() / 4.0;
    if mags.is_empty() {
        return fallback;
    }
    let at = ((mags.len() as f64 * (1.0 - I8_CLAMPED_SHARE)) as usize).min(mags.len() - 1);
    let (_, q, _) = mags.select_nth_unstable_by(at, f32::total_cmp);
    if *q > 0.0 {
        127.0 / *q
    } else {
        fallback
    }
}

/// A query in i8 at its own scale: its largest component maps to ±127 (a query's length does
/// not change the order of inner products).
fn quantize_query(query: &[f32]) -> Vec<i8> {
    let max = query.iter().fold(0f32, |m, x| m.max(x.abs()));
    quantize(query, if max > 0.0 { 127.0 / max } else { 1.0 })
}

/// `v` times `scale`, rounded and clamped to ±127.
fn quantize(v: &[f32], scale: f32) -> Vec<i8> {
    v.iter()
        .map(|x| (x * scale).round().clamp(-127.0, 127.0) as i8)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use rand_distr::{Distribution, Normal};

    fn normalised(mut v: Vec<f32>) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= n);
        v
    }

    /// `n` unit vectors around `clusters` random centres, embedding-like.
    fn clustered(seed: u64, n: usize, dim: usize, clusters: usize) -> Vec<Vec<f32>> {
        let mut rng = StdRng::seed_from_u64(seed);
        let unit = Normal::new(0.0f32, 1.0).unwrap();
        let centres: Vec<Vec<f32>> = (0..clusters)
            .map(|_| normalised((0..dim).map(|_| unit.sample(&mut rng)).collect()))
            .collect();
        let noise = Normal::new(0.0f32, 0.6 / (dim as f32).sqrt()).unwrap();
        (0..n)
            .map(|_| {
                let c = &centres[rng.random_range(0..clusters)];
                normalised(c.iter().map(|x| x + noise.sample(&mut rng)).collect())
            })
            .collect()
    }

    #[test]
    fn the_scale_maps_a_high_quantile_to_127_and_ignores_rare_outliers() {
        // 1,000 vectors of components ±0.05, ±0.1; one component of 0.9 among 100,000.
        let mut vs: Vec<Vec<f32>> = (0..1000)
            .map(|i| {
                (0..100)
                    .map(|j| if (i + j) % 2 == 0 { 0.05 } else { -0.1 })
                    .collect()
            })
            .collect();
        vs[3][7] = 0.9;
        let s = i8_scale(100, vs.iter().map(|v| v.as_slice()));
        assert!((s - 1270.0).abs() < 1e-3, "scale {s}");
        // No usable sample: four standard deviations of a random unit vector's component.
        let s = i8_scale(400, std::iter::empty());
        assert!((s - 127.0 * 20.0 / 4.0).abs() < 1e-3, "scale {s}");
    }

    #[test]
    fn quantisation_rounds_and_clamps() {
        assert_eq!(
            quantize(&[0.0, 0.0149, 0.015, -0.015, 0.5, -2.0, 1.27], 100.0),
            vec![0, 1, 2, -2, 50, -127, 127]
        );
    }

    /// Recall of the exact top 10 within the best `best_n` by i8 inner product, over all of `base`
    /// (no graph: quantisation alone).
    fn i8_recall(
        base: &[Vec<f32>],
        queries: &[Vec<f32>],
        stored: &[Vec<i8>],
        best_n: usize,
        query: impl Fn(&[f32]) -> Vec<i8>,
    ) -> f64 {
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
        let idot = |a: &[i8], b: &[i8]| {
            a.iter()
                .zip(b)
                .map(|(&x, &y)| i32::from(x) * i32::from(y))
                .sum::<i32>()
        };
        let mut hits = 0;
        for q in queries {
            let mut exact: Vec<(f32, usize)> = base.iter().map(|v| dot(q, v)).zip(0..).collect();
            exact.sort_by(|a, b| b.0.total_cmp(&a.0));
            let qi = query(q);
            let mut approx: Vec<(i32, usize)> =
                stored.iter().map(|v| idot(&qi, v)).zip(0..).collect();
            approx.sort_by_key(|x| std::cmp::Reverse(x.0));
            let best: Vec<usize> = approx[..best_n].iter().map(|x| x.1).collect();
            hits += exact[..10].iter().filter(|x| best.contains(&x.1)).count();
        }
        hits as f64 / (queries.len() * 10) as f64
    }

    /// The best 15 of 5,000 clustered vectors by i8 inner product hold the exact top 10, what
    /// lets a search re-score only the best `k + 10`; usearch's own cast (vectors are unit
    /// length, so: times 127, truncated) misses some on the same vectors.
    #[test]
    fn the_best_fifteen_by_i8_score_hold_the_exact_top_ten() {
        let dim = 384;
        let base = clustered(5, 5000, dim, 500);
        let queries = clustered(6, 200, dim, 500);
        let scale = i8_scale(dim, base.iter().map(|v| v.as_slice()));
        let stored: Vec<Vec<i8>> = base.iter().map(|v| quantize(v, scale)).collect();
        let ours = i8_recall(&base, &queries, &stored, 15, quantize_query);
        let usearch_cast = |v: &[f32]| -> Vec<i8> {
            v.iter()
                .map(|x| (x * 127.0).clamp(-127.0, 127.0) as i8)
                .collect()
        };
        let stored_usearch: Vec<Vec<i8>> = base.iter().map(|v| usearch_cast(v)).collect();
        let theirs = i8_recall(&base, &queries, &stored_usearch, 15, usearch_cast);
        // Measured: 1.0 and 0.9685 (best 20: 1.0 and 0.991).
        assert!(ours >= 0.995, "recall@10 within the best 15: {ours}");
        assert!(theirs < 0.98, "usearch's cast: {theirs}");
    }
}
