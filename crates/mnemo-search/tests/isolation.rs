//! Scope isolation: a query sees only its tenant, its owner (when given) and its source,
//! whatever the mode, filters or index path (exact scan or ANN), and within its scope it finds
//! exactly the documents its filters select.

mod common;

use std::collections::{BTreeMap, HashSet};

use common::{cosine_f64, doc, Clustered};
use mnemo_search::{Filter, IndexOp, Mode, SearchConfig, SearchIndex, SearchQuery, Source};

const ANN_THRESHOLD: usize = 200;
const TOP_K: usize = 100;

/// The fixture's attributes of document `i` (the same in every tenant, owner and source).
fn role(i: usize) -> &'static str {
    ["user", "assistant"][i % 2]
}
fn conversation(i: usize) -> String {
    format!("conv{}", i % 4)
}
fn meta_k(i: usize) -> String {
    (i % 3).to_string()
}

/// Whether document `i` passes `f` (brute force over the fixture's attributes).
fn passes(f: &Filter, i: usize) -> bool {
    f.role.as_deref().is_none_or(|r| r == role(i))
        && f.created_after.is_none_or(|a| i as i64 >= a)
        && f.created_before.is_none_or(|b| (i as i64) < b)
        && f.metadata.iter().all(|(k, v)| k == "k" && *v == meta_k(i))
}

#[test]
fn tenants_owners_and_sources_never_leak() {
    // A low ANN threshold so tenant-wide scopes exercise the ANN path too.
    let cfg = SearchConfig {
        ann_threshold: ANN_THRESHOLD,
        ..SearchConfig::default()
    };
    let index = SearchIndex::new(cfg).unwrap();
    let mut data = Clustered::new(11, 32, 8, 0.5);
    let tenants = ["X", "Y"];
    let owners = ["A", "B", "C"];
    let mut ops = Vec::new();
    // Identical text and (per i) identical vectors in every scope, so only scope separates them.
    let vectors: Vec<Vec<f32>> = (0..150).map(|_| data.point()).collect();
    for t in tenants {
        for o in owners {
            for src in [Source::Items, Source::Memory] {
                for (i, v) in vectors.iter().enumerate() {
                    let id = format!("{t}/{o}/{src:?}/{i}");
                    let mut d = doc(t, src, &id, Some(o), "shared secret words about holidays");
                    d.vector = Some(v.clone());
                    d.role = Some(role(i).into());
                    d.created_at = i as i64;
                    d.conversation_id = Some(conversation(i));
                    d.metadata = BTreeMap::from([("k".to_string(), meta_k(i))]);
                    ops.push(IndexOp::Upsert(d));
                }
            }
        }
    }
    index.apply(ops).unwrap();
    // Wait for the ANN graphs to catch up so the ANN path is used.
    for t in tenants {
        common::wait_ann_built(&index, t, std::time::Duration::from_secs(60));
        assert_eq!(index.stats(t).ann_indexed, 900);
    }

    let meta = |v: &str| BTreeMap::from([("k".to_string(), v.to_string())]);
    let filters = [
        Filter::default(),
        Filter {
            role: Some("user".into()),
            ..Filter::default()
        },
        Filter {
            role: Some("assistant".into()),
            created_before: Some(60),
            ..Filter::default()
        },
        Filter {
            created_after: Some(100),
            ..Filter::default()
        },
        Filter {
            metadata: meta("2"),
            ..Filter::default()
        },
        Filter {
            created_after: Some(10),
            created_before: Some(120),
            metadata: meta("1"),
            ..Filter::default()
        },
        // Selects nothing: the value is never stored.
        Filter {
            metadata: meta("9"),
            ..Filter::default()
        },
    ];
    let mut checked = 0;
    for t in tenants {
        for owner in [Some("A"), Some("B"), None] {
            for src in [Source::Items, Source::Memory] {
                for mode in [Mode::Vector, Mode::Text, Mode::Hybrid] {
                    for f in &filters {
                        for conv in [None, Some("conv1")] {
                            let mut q = SearchQuery::new(t, src, mode, TOP_K);
                            q.owner = owner.map(Into::into);
                            q.filter = f.clone();
                            q.conversation_id = conv.map(Into::into);
                            q.text = Some("secret holidays".into());
                            let qv = vectors[checked % vectors.len()].clone();
                            q.vector = Some(qv.clone());
                            check(&index, &q, &vectors, &qv);
                            checked += 1;
                        }
                    }
                }
            }
        }
    }
    assert_eq!(checked, 2 * 3 * 2 * 3 * 7 * 2);

    // An unknown tenant or owner sees nothing at all.
    for (t, o) in [("Z", None), ("X", Some("nobody"))] {
        for mode in [Mode::Vector, Mode::Text, Mode::Hybrid] {
            let mut q = SearchQuery::new(t, Source::Items, mode, 10);
            q.owner = o.map(|s: &str| s.to_string());
            q.text = Some("secret".into());
            q.vector = Some(vectors[0].clone());
            assert!(index.search(&q).unwrap().is_empty());
        }
    }
}

/// Checks one query against a brute force over the fixture: every hit is in scope and passes
/// every filter, and the hits are exactly the selected documents (all of them when they fit in
/// `top_k`; otherwise `top_k` of them). Vector scores are the true cosines, best first, and on
/// the exact paths they are the brute force's top `top_k`.
fn check(index: &SearchIndex, q: &SearchQuery, vectors: &[Vec<f32>], qv: &[f32]) {
    let owners: Vec<&str> = match &q.owner {
        Some(o) => vec![o.as_str()],
        None => vec!["A", "B", "C"],
    };
    let mut expected: Vec<(String, f64)> = Vec::new();
    for o in &owners {
        for (i, v) in vectors.iter().enumerate() {
            let in_conv = q
                .conversation_id
                .as_deref()
                .is_none_or(|c| c == conversation(i));
            if in_conv && passes(&q.filter, i) {
                let id = format!("{}/{o}/{:?}/{i}", q.tenant, q.source);
                expected.push((id, cosine_f64(v, qv)));
            }
        }
    }
    // Role "user" (even i) and conv1 (i % 4 == 1) exclude each other, as does the metadata
    // value never stored; every other query selects something.
    let none_by_design = (q.filter.role.as_deref() == Some("user") && q.conversation_id.is_some())
        || q.filter.metadata.get("k").map(String::as_str) == Some("9");
    assert_eq!(expected.is_empty(), none_by_design, "fixture for {q:?}");

    let hits = index.search(q).unwrap();
    let want: HashSet<&str> = expected.iter().map(|(id, _)| id.as_str()).collect();
    let mut seen = HashSet::new();
    for h in &hits {
        let parts: Vec<&str> = h.id.split('/').collect();
        assert_eq!(parts[0], q.tenant, "tenant leak: {} for {q:?}", h.id);
        if let Some(o) = &q.owner {
            assert_eq!(parts[1], o, "owner leak: {} for {q:?}", h.id);
        }
        assert_eq!(parts[2], format!("{:?}", q.source), "source leak: {}", h.id);
        let i: usize = parts[3].parse().unwrap();
        assert_eq!(h.conversation_id, Some(conversation(i)), "{}", h.id);
        if let Some(c) = &q.conversation_id {
            assert_eq!(h.conversation_id.as_ref(), Some(c), "{} for {q:?}", h.id);
        }
        let f = &q.filter;
        if let Some(r) = &f.role {
            assert_eq!(role(i), r, "role filter: {} for {q:?}", h.id);
        }
        if let Some(a) = f.created_after {
            assert!(i as i64 >= a, "created_after: {} for {q:?}", h.id);
        }
        if let Some(b) = f.created_before {
            assert!((i as i64) < b, "created_before: {} for {q:?}", h.id);
        }
        for (k, v) in &f.metadata {
            assert!(k == "k" && *v == meta_k(i), "metadata: {} for {q:?}", h.id);
        }
        assert!(
            want.contains(h.id.as_str()),
            "{} not selected by {q:?}",
            h.id
        );
        assert!(seen.insert(h.id.as_str()), "{} returned twice", h.id);
    }
    // With the checks above: all selected documents when they fit, else `top_k` of them.
    assert_eq!(
        hits.len(),
        expected.len().min(q.top_k),
        "hit count for {q:?}"
    );

    if q.mode == Mode::Vector {
        let cosine: BTreeMap<&str, f64> =
            expected.iter().map(|(id, s)| (id.as_str(), *s)).collect();
        for h in &hits {
            let s = cosine[h.id.as_str()];
            assert!(
                (f64::from(h.score) - s).abs() < 1e-4,
                "{}: score {} vs cosine {s}",
                h.id,
                h.score
            );
        }
        assert!(hits.windows(2).all(|w| w[0].score >= w[1].score), "order");
        // Tenant-wide scopes selecting more than the threshold are answered by the ANN graph,
        // whose recall is tested in ann_recall.rs; every other scope is scanned exactly.
        let selected_tenant_wide = if q.conversation_id.is_none() && q.owner.is_none() {
            expected.len()
        } else {
            0
        };
        if selected_tenant_wide <= ANN_THRESHOLD {
            let mut best: Vec<f64> = expected.iter().map(|(_, s)| *s).collect();
            best.sort_by(|a, b| b.total_cmp(a));
            best.truncate(q.top_k);
            for (rank, (h, s)) in hits.iter().zip(&best).enumerate() {
                assert!(
                    (f64::from(h.score) - s).abs() < 1e-4,
                    "rank {rank} of {q:?}: score {} vs brute force {s}",
                    h.score
                );
            }
        }
    }
}
