//! Modes and sources: hybrid reciprocal-rank fusion and its fallbacks, Memory key prefixes in
//! vector search.

mod common;

use common::doc;
use mnemo_search::{IndexOp, Mode, SearchConfig, SearchIndex, SearchQuery, Source};

fn upsert(tenant: &str, id: &str, v: Vec<f32>) -> IndexOp {
    let mut d = doc(tenant, Source::Items, id, None, "text");
    d.vector = Some(v);
    IndexOp::Upsert(d)
}

#[test]
fn hybrid_falls_back_to_the_input_given() {
    let index = SearchIndex::new(SearchConfig::default()).unwrap();
    index
        .apply(vec![upsert("t", "a", vec![1.0, 0.0]), {
            let mut d = doc("t", Source::Items, "b", None, "apples");
            d.vector = Some(vec![0.0, 1.0]);
            IndexOp::Upsert(d)
        }])
        .unwrap();
    let mut q = SearchQuery::new("t", Source::Items, Mode::Hybrid, 5);
    q.text = Some("apples".into());
    let hits = index.search(&q).unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].id, "b");
    let mut tq = q.clone();
    tq.mode = Mode::Text;
    assert_eq!(
        index.search(&tq).unwrap(),
        hits,
        "text-only hybrid equals text mode"
    );
    let mut q = SearchQuery::new("t", Source::Items, Mode::Hybrid, 5);
    q.vector = Some(vec![1.0, 0.1]);
    let hits = index.search(&q).unwrap();
    assert_eq!(hits[0].id, "a");
    assert!(
        (hits[0].score - 1.0 / 1.01f32.sqrt()).abs() < 1e-5,
        "cosine score"
    );
}

#[test]
fn hybrid_fuses_by_reciprocal_rank() {
    let index = SearchIndex::new(SearchConfig::default()).unwrap();
    // Text ranks: A, C, D (B has no match). Vector ranks for q = [1, 0]: B, C, D, A.
    let docs = [
        ("A", "alpha beta alpha beta", [0.1, 1.0]),
        ("B", "unrelated words", [1.0, 0.0]),
        ("C", "alpha beta and a few more words here", [0.9, 0.1]),
        (
            "D",
            "alpha and then many many other words in a much longer sentence",
            [0.7, 0.3],
        ),
    ];
    let ops = docs
        .iter()
        .map(|(id, text, v)| {
            let mut d = doc("t", Source::Items, id, None, text);
            d.vector = Some(v.to_vec());
            IndexOp::Upsert(d)
        })
        .collect();
    index.apply(ops).unwrap();
    let mut q = SearchQuery::new("t", Source::Items, Mode::Text, 4);
    q.text = Some("alpha beta".into());
    let text: Vec<String> = index
        .search(&q)
        .unwrap()
        .into_iter()
        .map(|h| h.id)
        .collect();
    assert_eq!(text, ["A", "C", "D"]);
    q.mode = Mode::Hybrid;
    q.vector = Some(vec![1.0, 0.0]);
    let hits = index.search(&q).unwrap();
    let ids: Vec<&str> = hits.iter().map(|h| h.id.as_str()).collect();
    // C = 2/62, A = 1/61 + 1/64, D = 2/63, B = 1/61.
    assert_eq!(ids, ["C", "A", "D", "B"]);
    let want = [2.0 / 62.0, 1.0 / 61.0 + 1.0 / 64.0, 2.0 / 63.0, 1.0 / 61.0];
    for (h, w) in hits.iter().zip(want) {
        assert!(
            (f64::from(h.score) - w).abs() < 1e-6,
            "{}: {} vs {w}",
            h.id,
            h.score
        );
    }
}

#[test]
fn memory_key_prefix_scopes_vector_search() {
    let index = SearchIndex::new(SearchConfig::default()).unwrap();
    let ops = ["users/u1/a", "users/u1/b", "users/u10/a", "users/u2/a"]
        .iter()
        .enumerate()
        .map(|(i, key)| {
            let mut d = doc("t", Source::Memory, key, None, "value");
            d.vector = Some(vec![1.0, i as f32 * 0.1]);
            IndexOp::Upsert(d)
        })
        .collect();
    index.apply(ops).unwrap();
    let mut q = SearchQuery::new("t", Source::Memory, Mode::Vector, 10);
    q.vector = Some(vec![1.0, 0.0]);
    q.key_prefix = Some("users/u1/".into());
    let ids: Vec<String> = index
        .search(&q)
        .unwrap()
        .into_iter()
        .map(|h| h.id)
        .collect();
    assert_eq!(ids, ["users/u1/a", "users/u1/b"]);
    q.source = Source::Items;
    assert!(index.search(&q).unwrap().is_empty());
}
