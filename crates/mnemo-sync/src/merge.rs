//! Merge-join of two listings in byte order of keys.

use crate::error::SyncError;
use crate::tree::{Entry, Listed, Listing};
use futures::stream::{BoxStream, StreamExt};

/// One step of the merge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Pair {
    /// Only the source has the key.
    Src(Entry),
    /// Only the destination has the key.
    Dst(Entry),
    /// Both have it.
    Both(Entry, Entry),
    /// A path one side could not list.
    Unreadable { key: String, reason: String },
}

/// Merges `src` and `dst` (each in byte order of keys) into one stream of [`Pair`]s in key
/// order. The order of each listing is checked as it is read: an out-of-order key is a
/// [`SyncError::OutOfOrder`], which ends the stream, as does any listing error. Holds one
/// entry per side.
pub(crate) fn merge(
    src: Listing,
    src_name: &str,
    dst: Listing,
    dst_name: &str,
) -> BoxStream<'static, Result<Pair, SyncError>> {
    let merger = Merger {
        src: Cursor::new(src, src_name),
        dst: Cursor::new(dst, dst_name),
    };
    futures::stream::unfold(Some(merger), |merger| async move {
        let mut merger = merger?;
        match merger.next().await {
            None => None,
            Some(Err(e)) => Some((Err(e), None)),
            Some(Ok(pair)) => Some((Ok(pair), Some(merger))),
        }
    })
    .boxed()
}

struct Merger {
    src: Cursor,
    dst: Cursor,
}

impl Merger {
    async fn next(&mut self) -> Option<Result<Pair, SyncError>> {
        for cursor in [&mut self.src, &mut self.dst] {
            match cursor.fill().await {
                Ok(None) => {}
                Ok(Some((key, reason))) => return Some(Ok(Pair::Unreadable { key, reason })),
                Err(e) => return Some(Err(e)),
            }
        }
        let pair = match (self.src.head.take(), self.dst.head.take()) {
            (None, None) => return None,
            (Some(s), None) => Pair::Src(s),
            (None, Some(d)) => Pair::Dst(d),
            (Some(s), Some(d)) => match s.key.cmp(&d.key) {
                std::cmp::Ordering::Less => {
                    self.dst.head = Some(d);
                    Pair::Src(s)
                }
                std::cmp::Ordering::Greater => {
                    self.src.head = Some(s);
                    Pair::Dst(d)
                }
                std::cmp::Ordering::Equal => Pair::Both(s, d),
            },
        };
        Some(Ok(pair))
    }
}

/// One side of the merge: its listing and the entry read ahead.
struct Cursor {
    listing: Listing,
    name: String,
    head: Option<Entry>,
    last: Option<String>,
    done: bool,
}

impl Cursor {
    fn new(listing: Listing, name: &str) -> Self {
        Cursor {
            listing,
            name: name.to_string(),
            head: None,
            last: None,
            done: false,
        }
    }

    /// Reads ahead until an entry is at the head or the listing ends. An unreadable path on
    /// the way is returned at once (`Some((key, reason))`).
    async fn fill(&mut self) -> Result<Option<(String, String)>, SyncError> {
        while self.head.is_none() && !self.done {
            match self.listing.next().await {
                None => self.done = true,
                Some(Err(e)) => return Err(e),
                Some(Ok(Listed::Unreadable { key, reason })) => return Ok(Some((key, reason))),
                Some(Ok(Listed::Entry(entry))) => {
                    if let Some(last) = &self.last {
                        if entry.key.as_str() <= last.as_str() {
                            return Err(SyncError::OutOfOrder {
                                tree: self.name.clone(),
                                previous: last.clone(),
                                next: entry.key,
                            });
                        }
                    }
                    self.last = Some(entry.key.clone());
                    self.head = Some(entry);
                }
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, size: u64) -> Entry {
        Entry {
            key: key.to_string(),
            size,
            modified: 0,
            e_tag: None,
        }
    }

    fn listing(items: Vec<Listed>) -> Listing {
        futures::stream::iter(items.into_iter().map(Ok)).boxed()
    }

    fn entries(keys: &[&str]) -> Listing {
        listing(keys.iter().map(|k| Listed::Entry(entry(k, 1))).collect())
    }

    async fn run(src: Listing, dst: Listing) -> Vec<Result<Pair, String>> {
        merge(src, "src", dst, "dst")
            .map(|r| r.map_err(|e| e.to_string()))
            .collect()
            .await
    }

    #[tokio::test]
    async fn joins_by_key() {
        let got = run(
            entries(&["a", "a-", "a/b", "c", "日"]),
            entries(&["a", "a.b", "a/b", "b", "日本"]),
        )
        .await;
        let want = vec![
            Pair::Both(entry("a", 1), entry("a", 1)),
            Pair::Src(entry("a-", 1)),
            Pair::Dst(entry("a.b", 1)),
            Pair::Both(entry("a/b", 1), entry("a/b", 1)),
            Pair::Dst(entry("b", 1)),
            Pair::Src(entry("c", 1)),
            Pair::Src(entry("日", 1)),
            Pair::Dst(entry("日本", 1)),
        ];
        assert_eq!(got, want.into_iter().map(Ok).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn empty_sides() {
        assert!(run(entries(&[]), entries(&[])).await.is_empty());
        assert_eq!(
            run(entries(&["x"]), entries(&[])).await,
            vec![Ok(Pair::Src(entry("x", 1)))]
        );
        assert_eq!(
            run(entries(&[]), entries(&["x"])).await,
            vec![Ok(Pair::Dst(entry("x", 1)))]
        );
    }

    #[tokio::test]
    async fn out_of_order_listing_stops_the_merge() {
        let got = run(
            entries(&["a", "c", "b", "d"]),
            entries(&["a", "b", "c", "d"]),
        )
        .await;
        assert_eq!(got.len(), 4, "{got:?}");
        assert_eq!(got[0], Ok(Pair::Both(entry("a", 1), entry("a", 1))));
        assert_eq!(got[1], Ok(Pair::Dst(entry("b", 1))));
        assert_eq!(got[2], Ok(Pair::Both(entry("c", 1), entry("c", 1))));
        let err = got[3].clone().unwrap_err();
        assert!(err.contains("src is not in key order"), "{err}");
        // A repeated key is out of order too.
        let got = run(entries(&["a"]), entries(&["a", "a"])).await;
        assert!(got.last().unwrap().is_err(), "{got:?}");
    }

    #[tokio::test]
    async fn unreadable_paths_and_errors_pass_through() {
        let src = listing(vec![
            Listed::Entry(entry("a", 1)),
            Listed::Unreadable {
                key: "locked/".into(),
                reason: "denied".into(),
            },
            Listed::Entry(entry("z", 1)),
        ]);
        let got = run(src, entries(&["m"])).await;
        assert_eq!(
            got,
            vec![
                Ok(Pair::Src(entry("a", 1))),
                Ok(Pair::Unreadable {
                    key: "locked/".into(),
                    reason: "denied".into()
                }),
                Ok(Pair::Dst(entry("m", 1))),
                Ok(Pair::Src(entry("z", 1))),
            ]
        );
        let failing = futures::stream::iter(vec![
            Ok(Listed::Entry(entry("a", 1))),
            Err(SyncError::Internal("listing broke".into())),
        ])
        .boxed();
        let got = run(failing, entries(&["b", "c"])).await;
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[1].clone().unwrap_err().contains("listing broke"));
    }
}
