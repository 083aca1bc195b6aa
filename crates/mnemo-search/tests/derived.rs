//! Derived vectors (`IndexOp::SetVector`): they land only on the document version they were
//! computed for, never bring back a deleted document, and survive re-indexing of the same text
//! with `UpsertKeepDerived` (but not a plain `Upsert`).

mod common;

use common::doc;
use mnemo_search::{text_hash, IndexOp, Mode, SearchConfig, SearchIndex, SearchQuery, Source};

fn set(id: &str, text: &str, v: Vec<f32>) -> IndexOp {
    IndexOp::SetVector {
        tenant: "t".into(),
        source: Source::Items,
        id: id.into(),
        text_hash: text_hash(text),
        vector: v,
    }
}

fn vector_ids(index: &SearchIndex) -> Vec<String> {
    let mut q = SearchQuery::new("t", Source::Items, Mode::Vector, 10);
    q.vector = Some(vec![1.0, 0.0, 0.0]);
    let mut ids: Vec<String> = index
        .search(&q)
        .unwrap()
        .into_iter()
        .map(|h| h.id)
        .collect();
    ids.sort();
    ids
}

#[test]
fn set_vector_lands_only_on_the_version_it_was_computed_for() {
    let index = SearchIndex::new(SearchConfig::default()).unwrap();
    index
        .apply(vec![
            IndexOp::Upsert(doc("t", Source::Items, "a", None, "alpha")),
            IndexOp::Upsert(doc("t", Source::Items, "b", None, "beta")),
            IndexOp::Upsert(doc("t", Source::Items, "c", None, "gamma")),
        ])
        .unwrap();
    assert!(index.needs_vector("t", Source::Items, "a", text_hash("alpha")));
    assert!(!index.needs_vector("t", Source::Items, "a", text_hash("other")));
    assert!(!index.needs_vector("t", Source::Items, "zz", text_hash("alpha")));

    // b is deleted and c replaced by a new text before their vectors arrive.
    index
        .apply(vec![
            IndexOp::Delete {
                tenant: "t".into(),
                source: Source::Items,
                id: "b".into(),
            },
            IndexOp::Upsert(doc("t", Source::Items, "c", None, "gamma two")),
        ])
        .unwrap();
    index
        .apply(vec![
            set("a", "alpha", vec![2.0, 0.0, 0.0]),
            set("b", "beta", vec![1.0, 0.0, 0.0]),
            set("c", "gamma", vec![1.0, 0.0, 0.0]),
        ])
        .unwrap();
    assert_eq!(vector_ids(&index), ["a"]);
    assert_eq!(index.len("t"), 2, "the deleted document must not come back");
    assert!(!index.needs_vector("t", Source::Items, "a", text_hash("alpha")));
    assert!(index.needs_vector("t", Source::Items, "c", text_hash("gamma two")));
    // The text index is unchanged by SetVector.
    let mut q = SearchQuery::new("t", Source::Items, Mode::Text, 10);
    q.text = Some("alpha".into());
    assert_eq!(index.search(&q).unwrap().len(), 1);

    // A second SetVector for a document that has a vector is a no-op.
    index
        .apply(vec![set("a", "alpha", vec![0.0, 1.0, 0.0])])
        .unwrap();
    let mut q = SearchQuery::new("t", Source::Items, Mode::Vector, 10);
    q.vector = Some(vec![1.0, 0.0, 0.0]);
    let hits = index.search(&q).unwrap();
    assert!((hits[0].score - 1.0).abs() < 1e-6);
}

#[test]
fn keep_derived_survives_reindexing_of_the_same_text_only() {
    let index = SearchIndex::new(SearchConfig::default()).unwrap();
    index
        .apply(vec![
            IndexOp::Upsert(doc("t", Source::Items, "a", None, "alpha")),
            IndexOp::Upsert(doc("t", Source::Items, "b", None, "beta")),
            IndexOp::Upsert(doc("t", Source::Items, "c", None, "gamma")),
        ])
        .unwrap();
    index
        .apply(vec![
            set("a", "alpha", vec![1.0, 0.0, 0.0]),
            set("b", "beta", vec![1.0, 0.0, 0.0]),
            set("c", "gamma", vec![1.0, 0.0, 0.0]),
        ])
        .unwrap();
    assert_eq!(vector_ids(&index), ["a", "b", "c"]);
    let mut a = doc("t", Source::Items, "a", None, "alpha");
    a.metadata.insert("topic".into(), "x".into());
    index
        .apply(vec![
            // Same text, new metadata: the derived vector stays.
            IndexOp::UpsertKeepDerived(a),
            // New text: the old vector does not describe it.
            IndexOp::UpsertKeepDerived(doc("t", Source::Items, "b", None, "beta two")),
            // A plain upsert replaces everything.
            IndexOp::Upsert(doc("t", Source::Items, "c", None, "gamma")),
        ])
        .unwrap();
    assert_eq!(vector_ids(&index), ["a"]);
    let mut q = SearchQuery::new("t", Source::Items, Mode::Vector, 10);
    q.vector = Some(vec![1.0, 0.0, 0.0]);
    q.filter.metadata.insert("topic".into(), "x".into());
    assert_eq!(index.search(&q).unwrap().len(), 1);
    // Client vectors are never "kept": they belong to the version that carried them.
    let mut d = doc("t", Source::Items, "d", None, "delta");
    d.vector = Some(vec![1.0, 0.0, 0.0]);
    index.apply(vec![IndexOp::Upsert(d)]).unwrap();
    index
        .apply(vec![IndexOp::UpsertKeepDerived(doc(
            "t",
            Source::Items,
            "d",
            None,
            "delta",
        ))])
        .unwrap();
    assert_eq!(vector_ids(&index), ["a"]);
}

#[test]
fn set_vector_is_validated_like_any_vector() {
    let index = SearchIndex::new(SearchConfig::default()).unwrap();
    index
        .apply(vec![IndexOp::Upsert(doc(
            "t",
            Source::Items,
            "a",
            None,
            "alpha",
        ))])
        .unwrap();
    assert!(index
        .enqueue(vec![set("a", "alpha", vec![0.0; 3])])
        .is_err());
    assert!(index
        .enqueue(vec![set("a", "alpha", vec![f32::NAN, 1.0, 0.0])])
        .is_err());
    // The first vector fixes the tenant's dimension.
    index
        .apply(vec![set("a", "alpha", vec![1.0, 0.0, 0.0])])
        .unwrap();
    assert_eq!(index.dimension("t"), Some(3));
    assert!(index
        .enqueue(vec![set("a", "alpha", vec![1.0, 0.0])])
        .is_err());
}
