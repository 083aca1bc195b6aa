//! Bad input gets typed errors: NaN/inf, wrong dimension, zero vector, empty query, top_k out
//! of range, and the dimension fixed by the first write is race-free.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::doc;
use mnemo_search::{IndexOp, Mode, SearchConfig, SearchError, SearchIndex, SearchQuery, Source};

fn upsert(tenant: &str, id: &str, v: Vec<f32>) -> IndexOp {
    let mut d = doc(tenant, Source::Items, id, None, "text");
    d.vector = Some(v);
    IndexOp::Upsert(d)
}

fn vq(tenant: &str, v: Vec<f32>) -> SearchQuery {
    let mut q = SearchQuery::new(tenant, Source::Items, Mode::Vector, 5);
    q.vector = Some(v);
    q
}

#[test]
fn invalid_vectors_are_rejected() {
    let index = SearchIndex::new(SearchConfig::default()).unwrap();
    for bad in [
        vec![1.0, f32::NAN, 0.0],
        vec![f32::INFINITY, 0.0, 0.0],
        vec![0.0, f32::NEG_INFINITY, 1.0],
        vec![0.0, 0.0, 0.0],
        vec![],
    ] {
        assert!(
            matches!(
                index.check_vector("t", &bad),
                Err(SearchError::InvalidVector(_))
            ),
            "{bad:?}"
        );
        assert!(matches!(
            index.enqueue(vec![upsert("t", "a", bad.clone())]),
            Err(SearchError::InvalidVector(_))
        ));
        assert!(matches!(
            index.search(&vq("t", bad.clone())),
            Err(SearchError::InvalidVector(_))
        ));
    }
    // Nothing was fixed or indexed by the rejected writes.
    assert_eq!(index.dimension("t"), None);
    assert_eq!(index.len("t"), 0);

    index
        .apply(vec![upsert("t", "a", vec![1.0, 2.0, 3.0])])
        .unwrap();
    assert_eq!(index.dimension("t"), Some(3));
    let mismatch = SearchError::DimensionMismatch {
        expected: 3,
        got: 2,
    };
    assert_eq!(index.check_vector("t", &[1.0, 2.0]), Err(mismatch.clone()));
    assert_eq!(
        index.enqueue(vec![upsert("t", "b", vec![1.0, 2.0])]),
        Err(mismatch.clone())
    );
    assert_eq!(index.search(&vq("t", vec![1.0, 2.0])), Err(mismatch));
    // A batch with one bad vector enqueues nothing.
    assert!(index
        .enqueue(vec![
            upsert("t", "c", vec![1.0, 1.0, 1.0]),
            upsert("t", "d", vec![f32::NAN, 1.0, 1.0])
        ])
        .is_err());
    index.apply(vec![]).unwrap();
    assert_eq!(index.len("t"), 1);
    // Other tenants have their own dimension; configured ones are fixed up front.
    index.apply(vec![upsert("u", "a", vec![1.0, 2.0])]).unwrap();
    assert_eq!(index.dimension("u"), Some(2));
    let cfg = SearchConfig {
        dimension_overrides: [("v".to_string(), 4)].into(),
        ..SearchConfig::default()
    };
    let index2 = SearchIndex::new(cfg).unwrap();
    assert_eq!(index2.dimension("v"), Some(4));
    assert_eq!(
        index2.check_vector("v", &[1.0, 2.0, 3.0]),
        Err(SearchError::DimensionMismatch {
            expected: 4,
            got: 3
        })
    );
    // Searching a tenant without vectors is fine and empty.
    assert!(index2.search(&vq("w", vec![1.0])).unwrap().is_empty());
}

#[test]
fn empty_queries_and_top_k_bounds() {
    let index = SearchIndex::new(SearchConfig {
        max_top_k: 50,
        ..SearchConfig::default()
    })
    .unwrap();
    for mode in [Mode::Vector, Mode::Text, Mode::Hybrid] {
        let q = SearchQuery::new("t", Source::Items, mode, 5);
        assert!(
            matches!(index.search(&q), Err(SearchError::EmptyQuery(_))),
            "{mode:?}"
        );
    }
    let mut q = SearchQuery::new("t", Source::Items, Mode::Text, 5);
    q.text = Some("  ".into());
    assert!(matches!(index.search(&q), Err(SearchError::EmptyQuery(_))));
    // Text mode ignores a vector; vector mode needs one even with text.
    q.vector = Some(vec![1.0]);
    assert!(matches!(index.search(&q), Err(SearchError::EmptyQuery(_))));
    let mut q = SearchQuery::new("t", Source::Items, Mode::Vector, 5);
    q.text = Some("words".into());
    assert!(matches!(index.search(&q), Err(SearchError::EmptyQuery(_))));

    for k in [0, 51, usize::MAX] {
        let mut q = SearchQuery::new("t", Source::Items, Mode::Text, k);
        q.text = Some("x".into());
        assert_eq!(
            index.search(&q),
            Err(SearchError::TopKOutOfRange { got: k, max: 50 })
        );
    }
    let mut q = SearchQuery::new("t", Source::Items, Mode::Text, 50);
    q.text = Some("x".into());
    assert!(index.search(&q).unwrap().is_empty());
}

#[test]
fn first_dimension_is_race_free() {
    for round in 0..20 {
        let index = Arc::new(SearchIndex::new(SearchConfig::default()).unwrap());
        let tenant = format!("fresh{round}");
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let index = index.clone();
                let tenant = tenant.clone();
                std::thread::spawn(move || {
                    let dim = 2 + i % 2; // half the writers use 2, half 3
                    let r = index.enqueue(vec![upsert(&tenant, &format!("d{i}"), vec![1.0; dim])]);
                    (dim, r.is_ok())
                })
            })
            .collect();
        let results: Vec<(usize, bool)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let fixed = index.dimension(&tenant).unwrap();
        for (dim, ok) in &results {
            assert_eq!(*ok, *dim == fixed, "dim {dim} vs fixed {fixed}");
        }
        index.apply(vec![]).unwrap();
        assert_eq!(index.len(&tenant), 4);
    }
}

#[test]
fn search_times_out_when_the_indexer_lags() {
    let index = SearchIndex::new(SearchConfig {
        wait_timeout: Duration::ZERO,
        ..SearchConfig::default()
    })
    .unwrap();
    let ops: Vec<IndexOp> = (0..30_000)
        .map(|i| {
            IndexOp::Upsert(doc(
                "t",
                Source::Items,
                &format!("d{i}"),
                None,
                "some words to index",
            ))
        })
        .collect();
    index.enqueue(ops).unwrap();
    let mut q = SearchQuery::new("t", Source::Items, Mode::Text, 5);
    q.text = Some("words".into());
    assert_eq!(index.search(&q), Err(SearchError::Timeout));
}
