//! Read-your-writes under concurrent writers: a document enqueued is found by the very next
//! search (text and vector), and a delete disappears at once. No refresh call, no sleep.

mod common;

use std::sync::Arc;

use common::{doc, Clustered};
use mnemo_search::{IndexOp, Mode, SearchConfig, SearchIndex, SearchQuery, Source};

#[test]
fn concurrent_writers_see_their_writes_immediately() {
    run(SearchConfig::default());
}

/// Tenant-wide searches go through the ANN graph; new vectors wait in the exact-scanned
/// pending set while the builder thread moves them into the graph concurrently.
#[test]
fn concurrent_writers_see_their_writes_immediately_in_ann_scopes() {
    let index = run(SearchConfig {
        ann_threshold: 500,
        ..SearchConfig::default()
    });
    assert!(
        index.stats("t").ann_indexed > 0,
        "the ANN path was not used"
    );
}

fn run(cfg: SearchConfig) -> Arc<SearchIndex> {
    const THREADS: usize = 8;
    const ROUNDS: usize = 60;
    let index = Arc::new(SearchIndex::new(cfg).unwrap());
    // Background documents so searches have competition.
    let mut data = Clustered::new(3, 48, 16, 0.5);
    let bg: Vec<IndexOp> = (0..2000)
        .map(|i| {
            let mut d = doc(
                "t",
                Source::Items,
                &format!("bg{i}"),
                Some(&format!("w{}", i % THREADS)),
                "background chatter",
            );
            d.vector = Some(data.point());
            IndexOp::Upsert(d)
        })
        .collect();
    index.apply(bg).unwrap();

    let workers: Vec<_> = (0..THREADS)
        .map(|w| {
            let index = index.clone();
            std::thread::spawn(move || {
                let mut data = Clustered::new(100 + w as u64, 48, 16, 0.5);
                let owner = format!("w{w}");
                for r in 0..ROUNDS {
                    let id = format!("new-{w}-{r}");
                    let token = format!("zq{w}x{r}");
                    let v = data.point();
                    let mut d = doc(
                        "t",
                        Source::Items,
                        &id,
                        Some(&owner),
                        &format!("note {token} here"),
                    );
                    d.vector = Some(v.clone());
                    // Only enqueue: no waiting before the search.
                    index.enqueue(vec![IndexOp::Upsert(d)]).unwrap();

                    let mut tq = SearchQuery::new("t", Source::Items, Mode::Text, 5);
                    tq.owner = Some(owner.clone());
                    tq.text = Some(token.clone());
                    let hits = index.search(&tq).unwrap();
                    assert_eq!(hits.len(), 1, "text search missed {id}");
                    assert_eq!(hits[0].id, id);

                    let mut vq = SearchQuery::new("t", Source::Items, Mode::Vector, 1);
                    vq.vector = Some(v.clone());
                    vq.owner = if r % 2 == 0 {
                        Some(owner.clone())
                    } else {
                        None
                    };
                    let hits = index.search(&vq).unwrap();
                    assert_eq!(hits[0].id, id, "vector search missed {id}");
                    assert!(hits[0].score > 0.9999);

                    index
                        .enqueue(vec![IndexOp::Delete {
                            tenant: "t".into(),
                            source: Source::Items,
                            id: id.clone(),
                        }])
                        .unwrap();
                    assert!(
                        index.search(&tq).unwrap().is_empty(),
                        "deleted {id} found by text"
                    );
                    let hits = index.search(&vq).unwrap();
                    assert!(
                        hits.is_empty() || hits[0].id != id,
                        "deleted {id} found by vector"
                    );
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(index.len("t"), 2000);
    index
}
