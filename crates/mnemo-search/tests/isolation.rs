//! Scope isolation: a query sees only its tenant, its owner (when given) and its source,
//! whatever the mode, filters or index path (exact scan or ANN).

mod common;

use std::collections::BTreeMap;

use common::{doc, Clustered};
use mnemo_search::{Filter, IndexOp, Mode, SearchConfig, SearchIndex, SearchQuery, Source};

#[test]
fn tenants_owners_and_sources_never_leak() {
    // A low ANN threshold so tenant-wide scopes exercise the ANN path too.
    let cfg = SearchConfig {
        ann_threshold: 200,
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
                    d.role = Some(["user", "assistant"][i % 2].into());
                    d.created_at = i as i64;
                    d.conversation_id = Some(format!("conv{}", i % 4));
                    d.metadata = BTreeMap::from([("k".to_string(), (i % 3).to_string())]);
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

    let filters = [
        Filter::default(),
        Filter {
            role: Some("user".into()),
            ..Filter::default()
        },
        Filter {
            created_after: Some(10),
            created_before: Some(120),
            metadata: BTreeMap::from([("k".to_string(), "1".to_string())]),
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
                            let mut q = SearchQuery::new(t, src, mode, 100);
                            q.owner = owner.map(Into::into);
                            q.filter = f.clone();
                            q.conversation_id = conv.map(Into::into);
                            q.text = Some("secret holidays".into());
                            q.vector = Some(vectors[checked % vectors.len()].clone());
                            let hits = index.search(&q).unwrap();
                            // Role "user" (even i) and conv1 (i % 4 == 1) exclude each other.
                            if !(f.role.is_some() && conv.is_some()) {
                                assert!(!hits.is_empty(), "{q:?}");
                            }
                            for h in hits {
                                let parts: Vec<&str> = h.id.split('/').collect();
                                assert_eq!(parts[0], t, "tenant leak: {} for {q:?}", h.id);
                                if let Some(o) = owner {
                                    assert_eq!(parts[1], o, "owner leak: {} for {q:?}", h.id);
                                }
                                assert_eq!(parts[2], format!("{src:?}"), "source leak");
                                if let Some(c) = conv {
                                    assert_eq!(h.conversation_id.as_deref(), Some(c));
                                }
                            }
                            checked += 1;
                        }
                    }
                }
            }
        }
    }
    assert_eq!(checked, 2 * 3 * 2 * 3 * 3 * 2);

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
