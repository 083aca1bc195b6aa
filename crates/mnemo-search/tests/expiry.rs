//! Documents with an expiry (memory values with a TTL): once expired, no search returns one or
//! spends a `top_k` place on it, in any mode, and a restored snapshot keeps the expiry.

mod common;

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::doc;
use mnemo_search::{IndexOp, Mode, SearchConfig, SearchIndex, SearchQuery, Source};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Three memory values of one tenant; `m0` matches the queries best and expires at `m0_expiry`.
fn index_with(m0_expiry: i64) -> SearchIndex {
    let index = SearchIndex::new(SearchConfig::default()).unwrap();
    let docs = [
        (
            "m0",
            "green tea green tea",
            [1.0, 0.0, 0.0],
            Some(m0_expiry),
        ),
        ("m1", "green tea", [0.9, 0.1, 0.0], None),
        ("m2", "tea in the morning", [0.8, 0.2, 0.1], None),
    ];
    let ops = docs
        .into_iter()
        .map(|(id, text, v, exp)| {
            let mut d = doc("t", Source::Memory, id, Some("u1"), text);
            d.vector = Some(v.to_vec());
            d.expires_at_ms = exp;
            IndexOp::Upsert(d)
        })
        .collect();
    index.apply(ops).unwrap();
    index
}

/// Ids found with `top_k` 2 in each mode.
fn found(index: &SearchIndex) -> Vec<Vec<String>> {
    [Mode::Text, Mode::Vector, Mode::Hybrid]
        .into_iter()
        .map(|mode| {
            let mut q = SearchQuery::new("t", Source::Memory, mode, 2);
            q.text = Some("green tea".into());
            q.vector = Some(vec![1.0, 0.0, 0.0]);
            index
                .search(&q)
                .unwrap()
                .into_iter()
                .map(|h| h.id)
                .collect()
        })
        .collect()
}

#[test]
fn expired_documents_are_neither_returned_nor_given_a_place() {
    let expiry = now_ms() + 1500;
    let index = index_with(expiry);
    for ids in found(&index) {
        assert_eq!(ids.len(), 2);
        assert_eq!(ids[0], "m0", "m0 ranks first before it expires: {ids:?}");
    }
    let snapshot = index.snapshot().unwrap();
    while now_ms() <= expiry + 50 {
        std::thread::sleep(Duration::from_millis(50));
    }
    let rest: HashSet<String> = ["m1".to_string(), "m2".to_string()].into();
    for ids in found(&index) {
        assert_eq!(
            ids.iter().cloned().collect::<HashSet<_>>(),
            rest,
            "top 2 after expiry: the two live values, m0 took no place"
        );
    }
    assert_eq!(index.stats("t").docs, 2, "the expired document was dropped");

    let restored = SearchIndex::restore(SearchConfig::default(), &snapshot).unwrap();
    for ids in found(&restored) {
        assert_eq!(ids.iter().cloned().collect::<HashSet<_>>(), rest);
    }
    assert_eq!(restored.stats("t").docs, 2);
}

#[test]
fn a_document_that_arrives_expired_is_never_found() {
    let index = index_with(now_ms() - 1);
    for ids in found(&index) {
        assert_eq!(ids.iter().filter(|id| *id == "m0").count(), 0, "{ids:?}");
        assert_eq!(ids.len(), 2);
    }
}
