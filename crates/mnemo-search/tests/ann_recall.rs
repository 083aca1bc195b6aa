//! ANN (usearch HNSW, quantised, exact re-scoring) on 100k x 384 clustered, embedding-shaped
//! vectors: recall@10 >= 0.99 against brute force, unfiltered, filtered, after deletes, while
//! a graph with many removed nodes is rebuilt and after the rebuild.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use common::{brute_force, doc, Clustered};
use mnemo_search::{Filter, IndexOp, Mode, SearchConfig, SearchIndex, SearchQuery, Source};

const N: usize = 100_000;
const DIM: usize = 384;
const K: usize = 10;

fn recall(
    index: &SearchIndex,
    vectors: &[Vec<f32>],
    live: &[bool],
    queries: &[Vec<f32>],
    filter: &Filter,
    keep: impl Fn(usize) -> bool + Sync,
) -> f64 {
    // Brute force on two threads (plain f64).
    let ids: Vec<String> = (0..N).map(|i| format!("d{i}")).collect();
    let truth: Vec<Vec<(String, f64)>> = std::thread::scope(|s| {
        let halves: Vec<_> = queries
            .chunks(queries.len().div_ceil(2))
            .map(|qs| {
                let (ids, keep) = (&ids, &keep);
                s.spawn(move || {
                    qs.iter()
                        .map(|q| {
                            brute_force(
                                (0..N)
                                    .filter(|&i| live[i] && keep(i))
                                    .map(|i| (ids[i].as_str(), vectors[i].as_slice())),
                                q,
                                K,
                            )
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        halves.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let mut found = 0;
    for (q, want) in queries.iter().zip(&truth) {
        let mut sq = SearchQuery::new("big", Source::Items, Mode::Vector, K);
        sq.vector = Some(q.clone());
        sq.filter = filter.clone();
        let hits = index.search(&sq).unwrap();
        let got: HashSet<&str> = hits.iter().map(|h| h.id.as_str()).collect();
        for h in &hits {
            let i: usize = h.id[1..].parse().unwrap();
            assert!(
                live[i] && keep(i),
                "hit {} violates filter or was deleted",
                h.id
            );
        }
        found += want
            .iter()
            .filter(|(id, _)| got.contains(id.as_str()))
            .count();
    }
    found as f64 / (queries.len() * K) as f64
}

/// Deletes, in one batch, every document `d{i}` with `pick(i)`, and marks it dead in `live`.
fn delete_where(index: &SearchIndex, live: &mut [bool], pick: impl Fn(usize) -> bool) {
    let dels: Vec<IndexOp> = (0..N)
        .filter(|&i| pick(i))
        .map(|i| {
            live[i] = false;
            IndexOp::Delete {
                tenant: "big".into(),
                source: Source::Items,
                id: format!("d{i}"),
            }
        })
        .collect();
    index.apply(dels).unwrap();
}

#[test]
fn ann_recall_at_10_on_clustered_100k_x_384() {
    let t0 = Instant::now();
    let index = SearchIndex::new(SearchConfig::default()).unwrap();
    let mut data = Clustered::new(42, DIM, 500, 0.6);
    let vectors: Vec<Vec<f32>> = (0..N).map(|_| data.point()).collect();
    for (b, chunk) in vectors.chunks(10_000).enumerate() {
        let ops = chunk
            .iter()
            .enumerate()
            .map(|(j, v)| {
                let i = b * 10_000 + j;
                let mut d = doc(
                    "big",
                    Source::Items,
                    &format!("d{i}"),
                    Some(&format!("o{}", i % 50)),
                    "",
                );
                d.metadata = BTreeMap::from([("half".to_string(), (i % 2).to_string())]);
                d.vector = Some(v.clone());
                IndexOp::Upsert(d)
            })
            .collect();
        index.apply(ops).unwrap();
    }
    let loaded = t0.elapsed();
    let deadline = Instant::now() + Duration::from_secs(600);
    while index.stats("big").ann_pending > 0 {
        assert!(Instant::now() < deadline, "ANN build did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }
    let built = t0.elapsed();
    let st = index.stats("big");
    assert_eq!(st.vectors, N);
    assert_eq!(st.ann_indexed, N, "every vector is in the ANN graph");

    let queries: Vec<Vec<f32>> = (0..200).map(|_| data.point()).collect();
    let mut live = vec![true; N];
    let r = recall(
        &index,
        &vectors,
        &live,
        &queries,
        &Filter::default(),
        |_| true,
    );
    println!("recall@10 unfiltered: {r:.4}");
    assert!(r >= 0.99, "recall@10 {r}");

    // Filtered ANN (half the documents match: too many for the exact fallback).
    let half = Filter {
        metadata: BTreeMap::from([("half".to_string(), "1".to_string())]),
        ..Filter::default()
    };
    let r = recall(&index, &vectors, &live, &queries[..100], &half, |i| {
        i % 2 == 1
    });
    println!("recall@10 filtered (50%): {r:.4}");
    assert!(r >= 0.99, "filtered recall@10 {r}");

    // Deletes are honoured at once.
    delete_where(&index, &mut live, |i| i % 10 == 3);
    let r = recall(
        &index,
        &vectors,
        &live,
        &queries[100..],
        &Filter::default(),
        |_| true,
    );
    println!("recall@10 after deleting 10%: {r:.4}");
    assert!(r >= 0.99, "recall@10 after deletes {r}");
    let st = index.stats("big");
    assert_eq!(st.ann_removed, N / 10, "removed nodes are counted");
    assert_eq!(
        st.ann_rebuilds, 0,
        "10 % removed does not warrant a rebuild"
    );

    // Deleting 30 % more leaves 40k removed nodes beside 60k live vectors: the graph is
    // rebuilt in the background while the old one keeps serving.
    delete_where(&index, &mut live, |i| [0, 1, 5].contains(&(i % 10)));
    let st = index.stats("big");
    assert_eq!(st.vectors, N * 6 / 10);
    assert!(
        st.ann_rebuilds == 1 || st.ann_removed == 0,
        "a rebuild started (or already finished): {st:?}"
    );
    let r = recall(
        &index,
        &vectors,
        &live,
        &queries[..100],
        &Filter::default(),
        |_| true,
    );
    println!("recall@10 after deleting 40%, during the rebuild: {r:.4}");
    assert!(r >= 0.99, "recall@10 during the rebuild {r}");
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let st = index.stats("big");
        if st.ann_rebuilds == 0 {
            assert_eq!(st.ann_removed, 0, "the new graph holds no removed node");
            assert_eq!(
                st.ann_indexed,
                N * 6 / 10,
                "every live vector is in the new graph"
            );
            break;
        }
        assert!(Instant::now() < deadline, "ANN rebuild did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = recall(
        &index,
        &vectors,
        &live,
        &queries[100..],
        &Filter::default(),
        |_| true,
    );
    println!("recall@10 after the rebuild: {r:.4}");
    assert!(r >= 0.99, "recall@10 after the rebuild {r}");
    println!(
        "timings: load {:.1}s, ANN built at {:.1}s, total {:.1}s",
        loaded.as_secs_f64(),
        built.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}
