//! Shared test helpers: documents, clustered embedding-shaped vectors, brute-force reference.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mnemo_search::{Doc, SearchIndex, Source, TenantStats};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

pub fn doc(tenant: &str, source: Source, id: &str, owner: Option<&str>, text: &str) -> Doc {
    Doc {
        tenant: tenant.into(),
        source,
        id: id.into(),
        owner: owner.map(Into::into),
        conversation_id: None,
        role: None,
        created_at: 0,
        metadata: BTreeMap::new(),
        text: text.into(),
        vector: None,
        expires_at_ms: None,
    }
}

pub fn normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    for x in v.iter_mut() {
        *x = (f64::from(*x) / n) as f32;
    }
}

/// Embedding-shaped data: `clusters` gaussian centres on the unit sphere, each point a centre
/// plus isotropic noise (`noise` per coordinate, relative to 1/sqrt(dim)), normalised.
pub struct Clustered {
    rng: StdRng,
    centres: Vec<Vec<f32>>,
    noise: Normal<f32>,
    dim: usize,
}

impl Clustered {
    pub fn new(seed: u64, dim: usize, clusters: usize, noise: f32) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let unit = Normal::new(0.0f32, 1.0).unwrap();
        let centres = (0..clusters)
            .map(|_| {
                let mut c: Vec<f32> = (0..dim).map(|_| unit.sample(&mut rng)).collect();
                normalize(&mut c);
                c
            })
            .collect();
        let noise = Normal::new(0.0f32, noise / (dim as f32).sqrt()).unwrap();
        Clustered {
            rng,
            centres,
            noise,
            dim,
        }
    }

    pub fn point(&mut self) -> Vec<f32> {
        let c = self.rng.random_range(0..self.centres.len());
        let mut v: Vec<f32> = (0..self.dim)
            .map(|i| self.centres[c][i] + self.noise.sample(&mut self.rng))
            .collect();
        normalize(&mut v);
        v
    }

    pub fn rng(&mut self) -> &mut StdRng {
        &mut self.rng
    }
}

/// Plain f64 cosine similarity (no shortcuts), the reference for exactness tests.
pub fn cosine_f64(a: &[f32], b: &[f32]) -> f64 {
    let (mut d, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        d += x * y;
        na += x * x;
        nb += y * y;
    }
    d / (na.sqrt() * nb.sqrt())
}

/// Top-k of `(id, score)` by brute force, best first (ties by id).
pub fn brute_force<'a>(
    items: impl Iterator<Item = (&'a str, &'a [f32])>,
    q: &[f32],
    k: usize,
) -> Vec<(String, f64)> {
    let mut all: Vec<(String, f64)> = items
        .map(|(id, v)| (id.to_string(), cosine_f64(v, q)))
        .collect();
    all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    all.truncate(k);
    all
}

/// Polls `tenant`'s counters until `done` holds, failing the test after `timeout`; returns the
/// counters that satisfied it. For background work: ANN graph fills and rebuilds.
pub fn wait_for_stats(
    index: &SearchIndex,
    tenant: &str,
    timeout: Duration,
    what: &str,
    done: impl Fn(&TenantStats) -> bool,
) -> TenantStats {
    let deadline = Instant::now() + timeout;
    loop {
        let st = index.stats(tenant);
        if done(&st) {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "{what} within {timeout:?}: {st:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until every vector of `tenant` is in its ANN graph (see [`wait_for_stats`]).
pub fn wait_ann_built(index: &SearchIndex, tenant: &str, timeout: Duration) {
    wait_for_stats(index, tenant, timeout, "ANN graph complete", |st| {
        st.ann_pending == 0
    });
}
