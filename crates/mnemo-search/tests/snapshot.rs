//! Snapshots: `restore(snapshot(index))` answers every query (exact per-owner vectors, ANN
//! tenant-wide vectors, text, hybrid, filters) exactly like the original, keeps working after
//! more writes, is consistent when taken under concurrent writes, and a damaged snapshot is
//! refused.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{doc, Clustered};
use mnemo_search::{
    Filter, Hit, IndexOp, Mode, SearchConfig, SearchError, SearchIndex, SearchQuery, Source,
};
use rand::Rng;

const DIM: usize = 64;
const WORDS: [&str; 12] = [
    "tea", "coffee", "lisbon", "flight", "green", "morning", "budget", "piano", "river", "東京",
    "会議", "report",
];

fn cfg() -> SearchConfig {
    SearchConfig {
        ann_threshold: 400,
        ..SearchConfig::default()
    }
}

/// Two tenants, three owners, conversations, roles, metadata, memory keys, docs without
/// vectors, replaced and deleted documents. Returns the query vectors to use.
fn populate(index: &SearchIndex, data: &mut Clustered) -> Vec<Vec<f32>> {
    let mut ops = Vec::new();
    for i in 0..1500 {
        let tenant = if i % 5 == 0 { "b" } else { "a" };
        let owner = format!("u{}", i % 3);
        let mut text = String::new();
        for _ in 0..6 {
            let w = WORDS[data.rng().random_range(0..WORDS.len())];
            text.push_str(w);
            text.push(' ');
        }
        let mut d = doc(tenant, Source::Items, &format!("i{i}"), Some(&owner), &text);
        d.conversation_id = Some(format!("c{}", i % 40));
        d.role = Some(if i % 2 == 0 { "user" } else { "assistant" }.into());
        d.created_at = 1_700_000_000 + i as i64;
        d.metadata = BTreeMap::from([("topic".to_string(), format!("t{}", i % 4))]);
        if i % 10 != 7 {
            d.vector = Some(data.point());
        }
        ops.push(IndexOp::Upsert(d));
    }
    for i in 0..200 {
        let mut d = doc(
            "a",
            Source::Memory,
            &format!("users/u{}/notes/{i}", i % 3),
            Some(&format!("u{}", i % 3)),
            &format!("{} memo", WORDS[i % WORDS.len()]),
        );
        d.vector = Some(data.point());
        ops.push(IndexOp::Upsert(d));
    }
    index.apply(ops).unwrap();
    // Replacements and deletes of all kinds.
    let mut ops = Vec::new();
    for i in (0..1500).step_by(13) {
        let tenant = if i % 5 == 0 { "b" } else { "a" };
        let mut d = doc(
            tenant,
            Source::Items,
            &format!("i{i}"),
            Some(&format!("u{}", i % 3)),
            "replaced text about the river",
        );
        d.conversation_id = Some(format!("c{}", i % 40));
        d.vector = Some(data.point());
        ops.push(IndexOp::Upsert(d));
    }
    for i in (1..1500).step_by(17) {
        let tenant = if i % 5 == 0 { "b" } else { "a" };
        ops.push(IndexOp::Delete {
            tenant: tenant.into(),
            source: Source::Items,
            id: format!("i{i}"),
        });
    }
    ops.push(IndexOp::DeleteConversation {
        tenant: "a".into(),
        conversation_id: "c7".into(),
    });
    index.apply(ops).unwrap();
    (0..12).map(|_| data.point()).collect()
}

fn wait_ann_built(index: &SearchIndex, tenant: &str) {
    common::wait_ann_built(index, tenant, Duration::from_secs(120));
}

/// Every query shape the index answers.
fn queries(vectors: &[Vec<f32>]) -> Vec<SearchQuery> {
    let mut out = Vec::new();
    for (i, v) in vectors.iter().enumerate() {
        let tenant = if i % 4 == 3 { "b" } else { "a" };
        // Tenant-wide vector (ANN for tenant a: more than `ann_threshold` vectors).
        let mut q = SearchQuery::new(tenant, Source::Items, Mode::Vector, 10);
        q.vector = Some(v.clone());
        out.push(q.clone());
        // Per owner (exact), with and without filters.
        q.owner = Some(format!("u{}", i % 3));
        out.push(q.clone());
        q.filter = Filter {
            role: Some("user".into()),
            created_after: Some(1_700_000_100),
            created_before: None,
            metadata: BTreeMap::from([("topic".to_string(), "t2".to_string())]),
        };
        out.push(q.clone());
        // Per conversation.
        let mut q = SearchQuery::new(tenant, Source::Items, Mode::Vector, 5);
        q.vector = Some(v.clone());
        q.conversation_id = Some(format!("c{}", i % 40));
        out.push(q);
        // Text and hybrid.
        let words = format!(
            "{} {}",
            WORDS[i % WORDS.len()],
            WORDS[(i * 5 + 1) % WORDS.len()]
        );
        let mut q = SearchQuery::new(tenant, Source::Items, Mode::Text, 20);
        q.text = Some(words.clone());
        out.push(q.clone());
        q.owner = Some(format!("u{}", (i + 1) % 3));
        q.text = Some(format!("\"{}\" river", WORDS[i % WORDS.len()]));
        out.push(q.clone());
        q.mode = Mode::Hybrid;
        q.vector = Some(v.clone());
        out.push(q);
        // Memory with a key prefix.
        let mut q = SearchQuery::new("a", Source::Memory, Mode::Hybrid, 5);
        q.text = Some("memo tea".into());
        q.vector = Some(v.clone());
        q.key_prefix = Some(format!("users/u{}/", i % 3));
        out.push(q);
    }
    out
}

fn answers(index: &SearchIndex, qs: &[SearchQuery]) -> Vec<Vec<Hit>> {
    qs.iter().map(|q| index.search(q).unwrap()).collect()
}

#[test]
fn restore_answers_exactly_like_the_original() {
    let mut data = Clustered::new(7, DIM, 30, 0.6);
    let index = SearchIndex::new(cfg()).unwrap();
    let vectors = populate(&index, &mut data);
    wait_ann_built(&index, "a");
    assert!(
        index.stats("a").ann_indexed > 400,
        "the ANN path is not exercised"
    );
    let qs = queries(&vectors);
    let before = answers(&index, &qs);
    assert!(before.iter().filter(|h| !h.is_empty()).count() > qs.len() * 3 / 4);

    let bytes = index.snapshot().unwrap();
    let restored = SearchIndex::restore(cfg(), &bytes).unwrap();
    assert_eq!(restored.stats("a"), index.stats("a"));
    assert_eq!(restored.stats("b"), index.stats("b"));
    assert_eq!(restored.dimension("a"), Some(DIM));
    let mut tenants = restored.tenants();
    tenants.sort();
    assert_eq!(tenants, ["a", "b"]);
    assert_eq!(answers(&restored, &qs), before);

    // Both keep working identically after the same further writes (handles continue).
    let mut more = Vec::new();
    for i in 0..300 {
        let mut d = doc(
            "a",
            Source::Items,
            &format!("n{i}"),
            Some("u1"),
            "fresh tea",
        );
        d.vector = Some(data.point());
        more.push(IndexOp::Upsert(d));
    }
    more.push(IndexOp::Delete {
        tenant: "a".into(),
        source: Source::Items,
        id: "i3".into(),
    });
    more.push(IndexOp::DeleteOwner {
        tenant: "b".into(),
        owner: "u2".into(),
    });
    index.apply(more.clone()).unwrap();
    restored.apply(more).unwrap();
    // Compared once both graphs hold the new vectors: while one still scans them exactly and
    // the other has them in its graph, an approximate answer may differ.
    wait_ann_built(&index, "a");
    wait_ann_built(&restored, "a");
    assert_eq!(answers(&restored, &qs), answers(&index, &qs));

    // A snapshot of the restored index restores too.
    let again = SearchIndex::restore(cfg(), &restored.snapshot().unwrap()).unwrap();
    assert_eq!(answers(&again, &qs), answers(&restored, &qs));

    // Deleting a whole tenant.
    again
        .apply(vec![IndexOp::DeleteTenant { tenant: "b".into() }])
        .unwrap();
    assert!(again.is_empty("b"));
    assert_eq!(again.tenants(), ["a"]);
}

/// A snapshot taken while the ANN graph is still being filled restores, and the graph is
/// completed in the background; results equal the original's once both are complete.
#[test]
fn snapshot_while_the_graph_is_being_built() {
    let mut data = Clustered::new(11, DIM, 30, 0.6);
    let index = SearchIndex::new(cfg()).unwrap();
    let vectors = populate(&index, &mut data);
    let bytes = index.snapshot().unwrap();
    let restored = SearchIndex::restore(cfg(), &bytes).unwrap();
    wait_ann_built(&index, "a");
    wait_ann_built(&restored, "a");
    assert_eq!(
        restored.stats("a").ann_indexed,
        index.stats("a").ann_indexed
    );
    assert_same_answers_but_graph_shape(&index, &restored, &queries(&vectors));
}

/// Exact scopes and text must agree exactly; ANN scopes may differ in graph shape (insert
/// order), so their scores are compared instead: recall on this small set is 1.
fn assert_same_answers_but_graph_shape(a: &SearchIndex, b: &SearchIndex, qs: &[SearchQuery]) {
    for (q, (a, b)) in qs
        .iter()
        .zip(answers(a, qs).into_iter().zip(answers(b, qs)))
    {
        if q.mode == Mode::Vector && q.owner.is_none() && q.conversation_id.is_none() {
            let sa: Vec<f32> = a.iter().map(|h| h.score).collect();
            let sb: Vec<f32> = b.iter().map(|h| h.score).collect();
            assert_eq!(sa, sb, "{q:?}");
        } else {
            assert_eq!(a, b, "{q:?}");
        }
    }
}

/// A snapshot written before graphs carried their i8 scale (graph tag 1, usearch's own
/// quantisation) restores with the graph rebuilt from the vectors, not loaded.
#[test]
fn a_graph_saved_without_its_i8_scale_is_rebuilt() {
    let mut data = Clustered::new(13, DIM, 30, 0.6);
    let index = SearchIndex::new(cfg()).unwrap();
    let vectors = populate(&index, &mut data);
    wait_ann_built(&index, "a");
    // Deletes applied while the graph is still being filled may never reach it (or have
    // their slots reused by later adds), so remove a few vectors from the complete graph:
    // a graph loaded rather than rebuilt would keep these removed nodes.
    let deletes = (2..1500)
        .step_by(19)
        .filter(|i| i % 5 != 0 && i % 10 != 7)
        .take(20)
        .map(|i| IndexOp::Delete {
            tenant: "a".into(),
            source: Source::Items,
            id: format!("i{i}"),
        })
        .collect();
    index.apply(deletes).unwrap();
    let removed = index.stats("a").ann_removed;
    assert!(removed > 0, "a loaded graph would keep its removed nodes");

    // Rewrite every graph as the older layout: tag 1, then the graph (no scale). Layout:
    // header (magic 8, version 4, body length 8, crc32 4), then per graph: tag u8, scale u64,
    // graph length u64, usearch's bytes: rows u32, bytes per row u32, the i8 vectors, then
    // usearch's own header, which starts with "usearch".
    let mut bytes = index.snapshot().unwrap();
    let u32_at = |b: &[u8], i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap()) as usize;
    let headers: Vec<usize> = bytes
        .windows(7)
        .enumerate()
        .filter(|(_, w)| *w == b"usearch")
        .map(|(i, _)| i)
        .collect();
    assert!(!headers.is_empty());
    for &header in headers.iter().rev() {
        let graph = (0..header - 8)
            .rev()
            .find(|&g| u32_at(&bytes, g + 4) == DIM && g + 8 + u32_at(&bytes, g) * DIM == header)
            .expect("the graph's vector matrix");
        let tag = graph - 8 - 8 - 1;
        assert_eq!(bytes[tag], 2, "graph tag");
        bytes[tag] = 1;
        bytes.drain(tag + 1..tag + 9);
    }
    let body_len = (bytes.len() - 24) as u64;
    bytes[12..20].copy_from_slice(&body_len.to_le_bytes());
    let crc = crc32fast::hash(&bytes[24..]);
    bytes[20..24].copy_from_slice(&crc.to_le_bytes());

    let restored = SearchIndex::restore(cfg(), &bytes).unwrap();
    wait_ann_built(&restored, "a");
    assert_eq!(restored.stats("a").ann_removed, 0, "the graph was loaded");
    assert_eq!(
        restored.stats("a").ann_indexed,
        index.stats("a").ann_indexed
    );
    assert_same_answers_but_graph_shape(&index, &restored, &queries(&vectors));
}

/// Snapshots taken while a writer keeps applying batches are consistent: every document in a
/// restored catalog is also in its text index and the other way round.
#[test]
fn snapshots_under_concurrent_writes_are_consistent() {
    let cfg = || SearchConfig {
        max_top_k: 1_000_000,
        ..cfg()
    };
    let index = Arc::new(SearchIndex::new(cfg()).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let index = index.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut data = Clustered::new(3, DIM, 10, 0.5);
            let mut i = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let mut ops = Vec::new();
                for _ in 0..5 {
                    let mut d = doc(
                        "t",
                        Source::Items,
                        &format!("d{i}"),
                        Some("o"),
                        &format!("common tok{i}"),
                    );
                    d.vector = Some(data.point());
                    ops.push(IndexOp::Upsert(d));
                    i += 1;
                }
                if i.is_multiple_of(35) {
                    ops.push(IndexOp::Delete {
                        tenant: "t".into(),
                        source: Source::Items,
                        id: format!("d{}", i - 20),
                    });
                }
                // Enqueue only: batches pile up and are applied while snapshots are taken.
                index.enqueue(ops).unwrap();
                std::thread::sleep(Duration::from_micros(300));
            }
            i
        })
    };
    let mut checked = 0;
    for _ in 0..8 {
        std::thread::sleep(Duration::from_millis(60));
        let bytes = index.snapshot().unwrap();
        let r = SearchIndex::restore(cfg(), &bytes).unwrap();
        let n = r.len("t");
        // Catalog view: every document, by an exact vector scan of owner "o" with top_k = n.
        let mut vq = SearchQuery::new("t", Source::Items, Mode::Vector, n.max(1));
        vq.owner = Some("o".into());
        vq.vector = Some(vec![1.0; DIM]);
        // Text view: every document carries "common".
        let mut tq = SearchQuery::new("t", Source::Items, Mode::Text, n.max(1));
        tq.text = Some("common".into());
        if n == 0 {
            continue;
        }
        let mut by_vector: Vec<String> = r.search(&vq).unwrap().into_iter().map(|h| h.id).collect();
        let mut by_text: Vec<String> = r.search(&tq).unwrap().into_iter().map(|h| h.id).collect();
        by_vector.sort();
        by_text.sort();
        assert_eq!(by_vector.len(), n);
        assert_eq!(
            by_text, by_vector,
            "catalog and text index disagree in a snapshot"
        );
        checked += 1;
    }
    stop.store(true, Ordering::SeqCst);
    let written = writer.join().unwrap();
    assert!(
        checked >= 3,
        "only {checked} snapshots checked ({written} docs written)"
    );
}

#[test]
fn damaged_snapshots_are_refused() {
    let mut data = Clustered::new(5, DIM, 10, 0.5);
    let index = SearchIndex::new(cfg()).unwrap();
    populate(&index, &mut data);
    let bytes = index.snapshot().unwrap();
    assert!(SearchIndex::restore(cfg(), &bytes).is_ok());
    let refused = |b: &[u8]| match SearchIndex::restore(cfg(), b) {
        Err(SearchError::BadSnapshot(_)) => true,
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => false,
    };
    // A flipped byte anywhere in the body (checksum), in the magic, or in the version.
    let mut rng = rand::rng();
    for _ in 0..20 {
        let mut b = bytes.clone();
        let at = rng.random_range(24..b.len());
        b[at] ^= 0x40;
        assert!(refused(&b), "byte {at} flipped");
    }
    let mut b = bytes.clone();
    b[0] = b'X';
    assert!(refused(&b));
    // Older formats (version 1 had no derived-vector flags, 2 no expiries) and a future one.
    for version in [1u32, 2, 4, u32::MAX] {
        let mut b = bytes.clone();
        b[8..12].copy_from_slice(&version.to_le_bytes());
        assert!(refused(&b), "version {version} accepted");
    }
    // Truncated, extended, empty.
    assert!(refused(&bytes[..bytes.len() / 2]));
    let mut b = bytes.clone();
    b.push(0);
    assert!(refused(&b));
    assert!(refused(&[]));
    // A dimension contradicting the configuration.
    let mut c = cfg();
    c.dimension_overrides.insert("a".into(), DIM + 1);
    assert!(matches!(
        SearchIndex::restore(c, &bytes),
        Err(SearchError::BadSnapshot(_))
    ));
}
