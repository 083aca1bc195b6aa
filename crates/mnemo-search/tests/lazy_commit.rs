//! The full-text index is committed lazily (by the first text search that needs it, or in the
//! background about once a second), yet read-your-writes stays exact: a text search sees every
//! write enqueued before it, and never a deleted document.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::doc;
use mnemo_search::{IndexOp, Mode, SearchConfig, SearchIndex, SearchQuery, Source};
use rand::{Rng, SeedableRng};

fn text_query(token: &str) -> SearchQuery {
    let mut q = SearchQuery::new("t", Source::Items, Mode::Text, 10);
    q.text = Some(token.to_string());
    q
}

/// With no other activity (no background commit could have run yet: it waits a second), the
/// text search right after `enqueue` must commit by itself to see the document.
#[test]
fn text_search_right_after_enqueue_sees_the_doc() {
    let index = SearchIndex::new(SearchConfig::default()).unwrap();
    for round in 0..20 {
        let started = Instant::now();
        let id = format!("d{round}");
        let token = format!("lazyword{round}");
        index
            .enqueue(vec![IndexOp::Upsert(doc(
                "t",
                Source::Items,
                &id,
                None,
                &format!("a note with {token}"),
            ))])
            .unwrap();
        let hits = index.search(&text_query(&token)).unwrap();
        let elapsed = started.elapsed();
        assert_eq!(hits.len(), 1, "round {round}: text search missed {id}");
        assert_eq!(hits[0].id, id);
        // The point of the test: this happened before any background commit was due.
        assert!(
            elapsed < Duration::from_millis(900),
            "round {round} took {elapsed:?}: too slow to tell a lazy commit from a background one"
        );
        // Delete, then search again at once: gone.
        index
            .enqueue(vec![IndexOp::Delete {
                tenant: "t".into(),
                source: Source::Items,
                id: id.clone(),
            }])
            .unwrap();
        assert!(index.search(&text_query(&token)).unwrap().is_empty());
    }
}

/// Without any text search, the background commit still makes writes searchable within about a
/// second (the writer's memory stays bounded), and a vector search never needs a commit.
#[test]
fn vector_search_is_immediate_and_background_commit_happens() {
    let index = SearchIndex::new(SearchConfig::default()).unwrap();
    let mut d = doc("t", Source::Items, "v1", Some("o"), "background word");
    d.vector = Some(vec![0.3, 0.4, 0.5]);
    index.enqueue(vec![IndexOp::Upsert(d)]).unwrap();
    let mut vq = SearchQuery::new("t", Source::Items, Mode::Vector, 1);
    vq.vector = Some(vec![0.3, 0.4, 0.5]);
    assert_eq!(index.search(&vq).unwrap()[0].id, "v1");
    // Let the background commit run, then check through a text search (which would commit
    // itself anyway: this only shows nothing breaks when the commit was already done).
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(index.search(&text_query("background")).unwrap().len(), 1);
}

/// Writers and searchers on different threads: whatever a writer has enqueued (and published)
/// is found by every searcher's next text search; whatever it has deleted is never found.
#[test]
fn concurrent_writers_and_searchers() {
    const WRITERS: usize = 4;
    const SEARCHERS: usize = 4;
    const PER_WRITER: usize = 150;
    let index = Arc::new(SearchIndex::new(SearchConfig::default()).unwrap());
    index
        .apply(
            (0..1000)
                .map(|i| {
                    IndexOp::Upsert(doc(
                        "t",
                        Source::Items,
                        &format!("bg{i}"),
                        None,
                        "background chatter about nothing",
                    ))
                })
                .collect(),
        )
        .unwrap();
    // (token, id, state) published only after the enqueue call returned. State: 0 live,
    // 1 delete about to be enqueued, 2 delete enqueued.
    let published: Arc<Mutex<Vec<(String, String, u8)>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let state_of = |p: &Mutex<Vec<(String, String, u8)>>, id: &str| {
        p.lock()
            .unwrap()
            .iter()
            .find(|e| e.1 == id)
            .map_or(0, |e| e.2)
    };
    let set_state = |p: &Mutex<Vec<(String, String, u8)>>, id: &str, st: u8| {
        if let Some(e) = p.lock().unwrap().iter_mut().find(|e| e.1 == id) {
            e.2 = st;
        }
    };

    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let index = index.clone();
            let published = published.clone();
            std::thread::spawn(move || {
                for i in 0..PER_WRITER {
                    let id = format!("w{w}-{i}");
                    let token = format!("tok{w}q{i}");
                    index
                        .enqueue(vec![IndexOp::Upsert(doc(
                            "t",
                            Source::Items,
                            &id,
                            None,
                            &format!("chatter {token}"),
                        ))])
                        .unwrap();
                    published
                        .lock()
                        .unwrap()
                        .push((token.clone(), id.clone(), 0));
                    if i % 3 == 0 {
                        set_state(&published, &id, 1);
                        index
                            .enqueue(vec![IndexOp::Delete {
                                tenant: "t".into(),
                                source: Source::Items,
                                id: id.clone(),
                            }])
                            .unwrap();
                        set_state(&published, &id, 2);
                    }
                }
            })
        })
        .collect();
    let searchers: Vec<_> = (0..SEARCHERS)
        .map(|s| {
            let index = index.clone();
            let published = published.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(s as u64);
                let mut checked = 0usize;
                while !done.load(Ordering::SeqCst) || checked < 50 {
                    let pick = {
                        let p = published.lock().unwrap();
                        if p.is_empty() {
                            None
                        } else {
                            Some(p[rng.random_range(0..p.len())].clone())
                        }
                    };
                    let Some((token, id, before)) = pick else {
                        std::thread::yield_now();
                        continue;
                    };
                    let hits = index.search(&text_query(&token)).unwrap();
                    let found = hits.iter().any(|h| h.id == id);
                    if before == 2 {
                        assert!(!found, "deleted {id} found");
                    } else if before == 0 && !found {
                        // Missing is only allowed if its delete started meanwhile.
                        assert_ne!(
                            state_of(&published, &id),
                            0,
                            "{id} not found after its enqueue"
                        );
                    }
                    checked += 1;
                }
                checked
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    done.store(true, Ordering::SeqCst);
    let checked: usize = searchers.into_iter().map(|s| s.join().unwrap()).sum();
    assert!(checked >= SEARCHERS * 50);
    // Final state: exactly the undeleted documents are found.
    for (token, id, state) in published.lock().unwrap().iter() {
        let hits = index.search(&text_query(token)).unwrap();
        assert_eq!(hits.iter().any(|h| &h.id == id), *state == 0, "{id}");
    }
}
