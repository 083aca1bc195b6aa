//! Merging the answers of several shards into one: memory listings in key order, search hits
//! by score, change-feed pages by time with a cursor that holds a position per shard.
//!
//! The functions take and return the JSON shapes of mnemo's API (`docs/api.md`): a shard's
//! answer is exactly what a single server answers, and the merged answer has the same shape.

use serde_json::{json, Value};
use std::collections::BTreeMap;

/// The prefix of a cluster's change-feed cursor.
const FEED_CURSOR_PREFIX: &str = "m1";

/// A position in a cluster's change feed: for each shard, the sequence number of the last
/// change read from it (absent: before its oldest retained change). Opaque to clients.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FeedCursor {
    positions: BTreeMap<u32, u64>,
}

/// A change-feed cursor that is not one of this cluster's.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed cursor")]
pub struct BadCursor;

impl FeedCursor {
    /// The position in shard `n` (0: before its oldest change).
    pub fn position(&self, shard: u32) -> u64 {
        self.positions.get(&shard).copied().unwrap_or(0)
    }

    /// Moves shard `n` to `seq`.
    pub fn set(&mut self, shard: u32, seq: u64) {
        if seq == 0 {
            self.positions.remove(&shard);
        } else {
            self.positions.insert(shard, seq);
        }
    }

    /// The cursor as clients see it: `m1` then `_<shard>-<seq>` per shard, in hex.
    pub fn encode(&self) -> String {
        let mut s = String::from(FEED_CURSOR_PREFIX);
        for (shard, seq) in &self.positions {
            s.push_str(&format!("_{shard:x}-{seq:x}"));
        }
        s
    }

    /// Parses a cursor a client sent back; shards must be below `shards`.
    pub fn decode(s: &str, shards: u32) -> Result<FeedCursor, BadCursor> {
        let rest = s.strip_prefix(FEED_CURSOR_PREFIX).ok_or(BadCursor)?;
        let mut c = FeedCursor::default();
        if rest.is_empty() {
            return Ok(c);
        }
        for part in rest.strip_prefix('_').ok_or(BadCursor)?.split('_') {
            let (shard, seq) = part.split_once('-').ok_or(BadCursor)?;
            let shard = u32::from_str_radix(shard, 16).map_err(|_| BadCursor)?;
            let seq = u64::from_str_radix(seq, 16).map_err(|_| BadCursor)?;
            if shard >= shards || seq == 0 || c.positions.insert(shard, seq).is_some() {
                return Err(BadCursor);
            }
        }
        Ok(c)
    }
}

/// The cursor a single shard understands for position `seq` (`c1` and 16 hex digits), or
/// `None` for the start of its log.
pub fn shard_cursor(seq: u64) -> Option<String> {
    (seq > 0).then(|| format!("c1{seq:016x}"))
}

fn data(page: &Value) -> Vec<Value> {
    page.get("data")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn has_more(page: &Value) -> bool {
    page.get("has_more")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// Merges pages of `GET /v1/kv` from several shards, each asked for the same `after` and
/// `limit`: the first `limit` keys in byte order. `next_after` is the last key returned when
/// more remain on any shard.
pub fn merge_keys(pages: &[Value], limit: usize) -> Value {
    let mut all: Vec<Value> = pages.iter().flat_map(data).collect();
    all.sort_by(|a, b| {
        let k = |v: &Value| {
            v.get("key")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        k(a).cmp(&k(b))
    });
    let more = all.len() > limit || pages.iter().any(has_more);
    all.truncate(limit);
    let next_after = if more {
        all.last().and_then(|e| e.get("key")).cloned()
    } else {
        None
    };
    json!({"object": "list", "data": all, "has_more": more, "next_after": next_after})
}

/// Merges the hits of `POST /v1/search` from several shards: the best `top_k` by score
/// (ties: the order the shards were given in).
pub fn merge_hits(pages: &[Value], top_k: usize) -> Value {
    let mut all: Vec<Value> = pages.iter().flat_map(data).collect();
    let score = |v: &Value| v.get("score").and_then(Value::as_f64).unwrap_or(f64::MIN);
    all.sort_by(|a, b| score(b).total_cmp(&score(a)));
    all.truncate(top_k);
    json!({"object": "list", "data": all})
}

/// One shard's page of `GET /v1/changes`.
pub struct ShardPage {
    /// The shard.
    pub shard: u32,
    /// Its answer.
    pub page: Value,
}

fn seq_of(event: &Value) -> u64 {
    event.get("seq").and_then(Value::as_u64).unwrap_or(0)
}

fn next_seq(page: &Value) -> Option<u64> {
    let c = page.get("next_cursor")?.as_str()?;
    u64::from_str_radix(c.strip_prefix("c1")?, 16).ok()
}

/// Merges change-feed pages read from `from` into one page of at most `limit` events:
/// each shard's events in their order, interleaved by time (`at`, then shard). Every event's
/// `id` becomes the cluster cursor right after it; `next_cursor` the cursor after the page.
/// Shards without a page keep their position.
pub fn merge_changes(from: &FeedCursor, pages: Vec<ShardPage>, limit: usize) -> Value {
    let mut pos = from.clone();
    // A shard read from "now" or from a position its log has moved past starts right before
    // its first event, or at its page's end when it had none.
    let mut queues: Vec<Queue> = pages
        .into_iter()
        .map(|p| {
            let q = Queue::of(p);
            match q.entries.front() {
                Some(first) => pos.set(q.shard, seq_of(first).saturating_sub(1)),
                None => {
                    if let Some(n) = q.next {
                        pos.set(q.shard, n);
                    }
                }
            }
            q
        })
        .collect();
    let out = interleave(&mut queues, &mut pos, limit, "at", |o, shard, pos| {
        o.insert("id".into(), json!(pos.encode()));
        o.insert("shard".into(), json!(shard));
    });
    let mut more = false;
    for q in &queues {
        if q.entries.is_empty() {
            if let Some(n) = q.next {
                pos.set(q.shard, n.max(pos.position(q.shard)));
            }
            more |= q.more;
        } else {
            more = true;
        }
    }
    json!({"object": "list", "data": out, "next_cursor": pos.encode(), "has_more": more})
}

/// Merges pages of `GET /v1/admin/audit` read after `from` (each shard from its own
/// position) into one page of at most `limit` entries, oldest first by time (`at_ms`, then
/// shard), each shard's entries in their order. Every entry gets its `shard` and the
/// `cursor` right after it; `next_after` is the cursor after the page while more remain.
pub fn merge_audit(from: &FeedCursor, pages: Vec<ShardPage>, limit: usize) -> Value {
    let mut pos = from.clone();
    let mut queues: Vec<Queue> = pages.into_iter().map(Queue::of).collect();
    let out = interleave(&mut queues, &mut pos, limit, "at_ms", |o, shard, pos| {
        o.insert("shard".into(), json!(shard));
        o.insert("cursor".into(), json!(pos.encode()));
    });
    let more = queues.iter().any(|q| q.more || !q.entries.is_empty());
    let next_after = more.then(|| pos.encode());
    json!({"object": "list", "data": out, "has_more": more, "next_after": next_after})
}

/// One shard's page, being merged.
struct Queue {
    shard: u32,
    entries: std::collections::VecDeque<Value>,
    /// The shard's `next_cursor` position, if its page had one.
    next: Option<u64>,
    more: bool,
}

impl Queue {
    fn of(p: ShardPage) -> Queue {
        Queue {
            shard: p.shard,
            entries: data(&p.page).into(),
            next: next_seq(&p.page),
            more: has_more(&p.page),
        }
    }
}

/// Takes up to `limit` entries from the queues, oldest first by the millisecond time in
/// `field` (then by shard), each queue in its order; moves `pos` past each entry taken and
/// lets `mark` annotate it with its shard and the cursor after it.
fn interleave(
    queues: &mut [Queue],
    pos: &mut FeedCursor,
    limit: usize,
    field: &str,
    mark: impl Fn(&mut serde_json::Map<String, Value>, u32, &FeedCursor),
) -> Vec<Value> {
    let at = |v: &Value| v.get(field).and_then(Value::as_i64).unwrap_or(0);
    let mut out = Vec::new();
    while out.len() < limit {
        let Some(q) = queues
            .iter_mut()
            .filter(|q| !q.entries.is_empty())
            .min_by_key(|q| (q.entries.front().map(at), q.shard))
        else {
            break;
        };
        let Some(mut e) = q.entries.pop_front() else {
            break;
        };
        pos.set(q.shard, seq_of(&e));
        if let Some(o) = e.as_object_mut() {
            mark(o, q.shard, pos);
        }
        out.push(e);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_strangers() {
        let mut c = FeedCursor::default();
        assert_eq!(c.encode(), "m1");
        c.set(3, 0x1f);
        c.set(10, 2);
        assert_eq!(c.encode(), "m1_3-1f_a-2");
        assert_eq!(FeedCursor::decode(&c.encode(), 64), Ok(c.clone()));
        assert_eq!(FeedCursor::decode("m1", 64), Ok(FeedCursor::default()));
        for bad in [
            "c10000000000000001",
            "m1_",
            "m1_3",
            "m1_3-0",
            "m1_40-1",
            "m1_3-1_3-2",
            "m1x",
        ] {
            assert_eq!(FeedCursor::decode(bad, 64), Err(BadCursor), "{bad}");
        }
    }

    #[test]
    fn keys_merge_in_order_with_a_global_next_after() {
        let a = json!({"data": [{"key": "a"}, {"key": "c"}], "has_more": false});
        let b = json!({"data": [{"key": "b"}, {"key": "d"}], "has_more": true});
        let m = merge_keys(&[a.clone(), b.clone()], 3);
        let keys: Vec<&str> = m["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["key"].as_str().unwrap())
            .collect();
        assert_eq!(keys, ["a", "b", "c"]);
        assert_eq!(m["next_after"], "c");
        let m = merge_keys(&[a, json!({"data": [], "has_more": false})], 5);
        assert_eq!(m["has_more"], false);
        assert_eq!(m["next_after"], Value::Null);
    }

    #[test]
    fn hits_merge_by_score() {
        let a = json!({"data": [{"k": 1, "score": 0.9}, {"k": 2, "score": 0.1}]});
        let b = json!({"data": [{"k": 3, "score": 0.5}]});
        let m = merge_hits(&[a, b], 2);
        let ks: Vec<i64> = m["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["k"].as_i64().unwrap())
            .collect();
        assert_eq!(ks, [1, 3]);
    }

    #[test]
    fn changes_interleave_by_time_and_resume_per_shard() {
        let ev = |seq: u64, at: i64| json!({"id": format!("c1{seq:016x}"), "seq": seq, "at": at});
        let p0 = json!({"data": [ev(4, 10), ev(5, 30)], "next_cursor": "c10000000000000005", "has_more": false});
        let p1 =
            json!({"data": [ev(7, 20)], "next_cursor": "c10000000000000007", "has_more": false});
        let p2 = json!({"data": [], "next_cursor": "c10000000000000009", "has_more": false});
        let pages = vec![
            ShardPage { shard: 0, page: p0 },
            ShardPage { shard: 1, page: p1 },
            ShardPage { shard: 2, page: p2 },
        ];
        let m = merge_changes(&FeedCursor::default(), pages, 2);
        let d = m["data"].as_array().unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(
            (d[0]["shard"].as_u64(), d[1]["shard"].as_u64()),
            (Some(0), Some(1))
        );
        // After the page: shard 0 after seq 4 (seq 5 not yet read), shard 1 after 7, shard 2 after 9.
        let next = FeedCursor::decode(m["next_cursor"].as_str().unwrap(), 64).unwrap();
        assert_eq!(
            (next.position(0), next.position(1), next.position(2)),
            (4, 7, 9)
        );
        assert_eq!(m["has_more"], true);
        // The first event's id resumes right after it: shard 0 at 4, shard 1 before 7.
        let first = FeedCursor::decode(d[0]["id"].as_str().unwrap(), 64).unwrap();
        assert_eq!((first.position(0), first.position(1)), (4, 6));
    }

    #[test]
    fn audit_pages_merge_by_time_with_a_cursor_per_entry() {
        let a =
            json!({"data": [{"seq": 1, "at_ms": 10}, {"seq": 2, "at_ms": 30}], "has_more": false});
        let b = json!({"data": [{"seq": 5, "at_ms": 20}], "has_more": true});
        let pages = vec![
            ShardPage { shard: 0, page: a },
            ShardPage { shard: 3, page: b },
        ];
        let m = merge_audit(&FeedCursor::default(), pages, 2);
        let seqs: Vec<u64> = m["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, vec![1, 5]);
        assert_eq!(m["data"][1]["cursor"], "m1_0-1_3-5");
        assert_eq!(m["has_more"], true);
        assert_eq!(m["next_after"], "m1_0-1_3-5");
    }
}
