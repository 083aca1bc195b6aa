//! Per-owner (and small tenant-wide) vector search is exact: it equals a brute-force f64
//! reference on the same clustered data, with filters and after deletes.

mod common;

use std::collections::BTreeMap;

use common::{brute_force, Clustered};
use mnemo_search::{Doc, Filter, IndexOp, Mode, SearchConfig, SearchIndex, SearchQuery, Source};
use rand::Rng;

const DIM: usize = 96;

struct Model {
    docs: Vec<Doc>,
}

impl Model {
    fn matching<'a>(
        &'a self,
        owner: Option<&'a str>,
        conv: Option<&'a str>,
        f: &'a Filter,
    ) -> impl Iterator<Item = (&'a str, &'a [f32])> + 'a {
        self.docs
            .iter()
            .filter(move |d| owner.is_none_or(|o| d.owner.as_deref() == Some(o)))
            .filter(move |d| conv.is_none_or(|c| d.conversation_id.as_deref() == Some(c)))
            .filter(move |d| f.role.as_ref().is_none_or(|r| d.role.as_ref() == Some(r)))
            .filter(move |d| f.created_after.is_none_or(|a| d.created_at >= a))
            .filter(move |d| f.created_before.is_none_or(|b| d.created_at < b))
            .filter(move |d| f.metadata.iter().all(|(k, v)| d.metadata.get(k) == Some(v)))
            .map(|d| (d.id.as_str(), d.vector.as_deref().unwrap()))
    }
}

fn check(index: &SearchIndex, model: &Model, q: &SearchQuery) {
    let hits = index.search(q).unwrap();
    let want = brute_force(
        model.matching(q.owner.as_deref(), q.conversation_id.as_deref(), &q.filter),
        q.vector.as_ref().unwrap(),
        q.top_k,
    );
    assert_eq!(hits.len(), want.len(), "hit count for {q:?}");
    for (i, (h, (wid, ws))) in hits.iter().zip(&want).enumerate() {
        assert!(
            (f64::from(h.score) - ws).abs() < 1e-4,
            "rank {i}: score {} vs reference {ws}",
            h.score
        );
        // Ids must agree except where the reference itself has a near-tie.
        let tie = want
            .iter()
            .enumerate()
            .any(|(j, (_, s))| j != i && (s - ws).abs() < 1e-5);
        if !tie {
            assert_eq!(&h.id, wid, "rank {i} of {q:?}");
        }
    }
}

#[test]
fn owner_scope_equals_brute_force_with_filters_and_deletes() {
    let index = SearchIndex::new(SearchConfig::default()).unwrap();
    let mut data = Clustered::new(7, DIM, 40, 0.6);
    let owners = ["alice", "bob", "carol"];
    let mut model = Model { docs: Vec::new() };
    for i in 0..6000 {
        let v = data.point();
        let rng = data.rng();
        let mut metadata = BTreeMap::new();
        metadata.insert("topic".to_string(), format!("t{}", rng.random_range(0..3)));
        metadata.insert(
            "lang".to_string(),
            ["en", "fr"][rng.random_range(0..2)].into(),
        );
        model.docs.push(Doc {
            tenant: "acme".into(),
            source: Source::Items,
            id: format!("item{i}"),
            owner: Some(owners[i % 3].into()),
            conversation_id: Some(format!("conv{}", rng.random_range(0..10))),
            role: Some(["user", "assistant"][rng.random_range(0..2)].into()),
            created_at: rng.random_range(0..1000),
            metadata,
            text: String::new(),
            vector: Some(v),
            expires_at_ms: None,
        });
    }
    index
        .apply(model.docs.iter().cloned().map(IndexOp::Upsert).collect())
        .unwrap();

    let mut filters = vec![Filter::default()];
    filters.push(Filter {
        role: Some("user".into()),
        ..Filter::default()
    });
    filters.push(Filter {
        created_after: Some(200),
        created_before: Some(700),
        ..Filter::default()
    });
    let mut md = BTreeMap::new();
    md.insert("topic".to_string(), "t1".to_string());
    md.insert("lang".to_string(), "fr".to_string());
    filters.push(Filter {
        role: Some("assistant".into()),
        created_after: Some(100),
        metadata: md,
        ..Filter::default()
    });

    let run_all = |index: &SearchIndex, model: &Model, data: &mut Clustered| {
        for round in 0..10 {
            let qv = data.point();
            for f in &filters {
                for owner in [Some("alice"), Some("carol"), None] {
                    for conv in [None, Some("conv3")] {
                        let mut q = SearchQuery::new("acme", Source::Items, Mode::Vector, 10);
                        q.top_k = [1, 10, 50][round % 3];
                        q.owner = owner.map(Into::into);
                        q.conversation_id = conv.map(Into::into);
                        q.filter = f.clone();
                        q.vector = Some(qv.clone());
                        check(index, model, &q);
                    }
                }
            }
        }
    };
    run_all(&index, &model, &mut data);

    // Delete a third of the documents (single deletes, a whole conversation, re-upserts).
    let mut ops = Vec::new();
    let mut kept = Vec::new();
    for (i, d) in model.docs.drain(..).enumerate() {
        if d.conversation_id.as_deref() == Some("conv5") {
            continue;
        }
        if i % 4 == 0 {
            ops.push(IndexOp::Delete {
                tenant: d.tenant.clone(),
                source: d.source,
                id: d.id.clone(),
            });
            continue;
        }
        kept.push(d);
    }
    ops.push(IndexOp::DeleteConversation {
        tenant: "acme".into(),
        conversation_id: "conv5".into(),
    });
    // Replace some vectors: the old ones must never be found again.
    for d in kept.iter_mut().step_by(7) {
        d.vector = Some(data.point());
        ops.push(IndexOp::Upsert(d.clone()));
    }
    index.apply(ops).unwrap();
    model.docs = kept;
    assert_eq!(index.len("acme"), model.docs.len());
    run_all(&index, &model, &mut data);
}
