//! Snapshot benchmark (not a test): what a snapshot costs and what restoring saves.
//!
//! ```text
//! cargo run --release -p mnemo-search --example snapshot_bench -- [--n 100000] [--dim 384]
//! ```
//!
//! Builds an index of `n` documents (~40 words of text each, clustered `dim`-d vectors, 1000
//! owners, one tenant so the tenant-wide scope has an ANN graph), then reports:
//! the time to index it (text + vectors) and to fill the ANN graph, the snapshot time and size,
//! the restore time, and for the text index alone the time to re-index the same text (the
//! alternative to shipping tantivy's files).

use std::time::{Duration, Instant};

use mnemo_search::{Doc, IndexOp, SearchConfig, SearchIndex, Source};

#[path = "../tests/common/mod.rs"]
mod common;
use common::Clustered;
use rand::Rng;

const WORDS: usize = 5000;

fn main() {
    let mut n = 100_000usize;
    let mut dim = 384usize;
    let v: Vec<String> = std::env::args().skip(1).collect();
    for pair in v.chunks(2) {
        let val = pair.get(1).cloned().unwrap_or_default();
        match pair[0].as_str() {
            "--n" => n = val.parse().expect("--n"),
            "--dim" => dim = val.parse().expect("--dim"),
            other => panic!("unknown argument {other}"),
        }
    }
    let mut data = Clustered::new(1, dim, 500, 0.6);
    let vocab: Vec<String> = (0..WORDS).map(|i| format!("w{i:x}q")).collect();
    let mut docs = Vec::with_capacity(n);
    for i in 0..n {
        let mut text = String::new();
        for _ in 0..40 {
            // Zipf-ish: small word numbers are frequent.
            let r: f64 = data.rng().random();
            text.push_str(&vocab[((r * r * r) * WORDS as f64) as usize % WORDS]);
            text.push(' ');
        }
        let mut d = Doc {
            tenant: "t".into(),
            source: Source::Items,
            id: format!("item_{i:08}"),
            owner: Some(format!("user{}", i % 1000)),
            conversation_id: Some(format!("conv{}", i / 50)),
            role: Some("user".into()),
            created_at: 1_700_000_000 + i as i64,
            metadata: Default::default(),
            text,
            vector: None,
            expires_at_ms: None,
        };
        d.vector = Some(data.point());
        docs.push(d);
    }
    let cfg = SearchConfig::default();

    let index = SearchIndex::new(cfg.clone()).expect("index");
    let t = Instant::now();
    for chunk in docs.chunks(2000) {
        index
            .apply(chunk.iter().cloned().map(IndexOp::Upsert).collect())
            .expect("apply");
    }
    let indexing = t.elapsed();
    while index.stats("t").ann_pending > 0 {
        std::thread::sleep(Duration::from_millis(50));
    }
    let graph = t.elapsed();
    println!("documents: {n} x {dim}-d vectors, 40 words of text each");
    println!(
        "index from scratch: {:.2} s to apply (text + vectors), {:.2} s until the ANN graph is full",
        indexing.as_secs_f64(),
        graph.as_secs_f64()
    );

    // Text alone, re-indexed (the alternative to shipping the segment files).
    let text_only = SearchIndex::new(cfg.clone()).expect("index");
    let t = Instant::now();
    for chunk in docs.chunks(2000) {
        text_only
            .apply(
                chunk
                    .iter()
                    .cloned()
                    .map(|mut d| {
                        d.vector = None;
                        IndexOp::Upsert(d)
                    })
                    .collect(),
            )
            .expect("apply");
    }
    let mut q = mnemo_search::SearchQuery::new("t", Source::Items, mnemo_search::Mode::Text, 1);
    q.text = Some("w1q".into());
    text_only.search(&q).expect("search (forces the commit)");
    println!("text alone, re-indexed: {:.2} s", t.elapsed().as_secs_f64());
    drop(text_only);

    for round in 1..=2 {
        let t = Instant::now();
        let bytes = index.snapshot().expect("snapshot");
        let snap = t.elapsed();
        let t = Instant::now();
        let restored = SearchIndex::restore(cfg.clone(), &bytes).expect("restore");
        let restore = t.elapsed();
        assert_eq!(restored.stats("t"), index.stats("t"));
        println!(
            "round {round}: snapshot {:.3} s, {:.1} MB; restore {:.3} s",
            snap.as_secs_f64(),
            bytes.len() as f64 / 1e6,
            restore.as_secs_f64()
        );
    }
}
