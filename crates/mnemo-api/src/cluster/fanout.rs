//! Requests over many shards: each shard answers as a single server would, and the answers
//! are merged by [`mnemo_cluster::merge`]. When a shard refuses, its answer is the answer.

use super::target::FanOut;
use super::{Buffered, ClusterFront};
use crate::extract::query_pairs;
use crate::{ApiError, ApiResult};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{FuturesUnordered, StreamExt};
use mnemo_cluster::merge::{self, FeedCursor, ShardPage};
use serde_json::Value;
use std::time::Duration;

/// Why a fan-out has no merged answer: an error of its own, or the answer of the first
/// shard that refused, passed on as the shard gave it.
enum Failed {
    Own(ApiError),
    Shard(Response),
}

impl From<ApiError> for Failed {
    fn from(e: ApiError) -> Self {
        Failed::Own(e)
    }
}

impl IntoResponse for Failed {
    fn into_response(self) -> Response {
        match self {
            Failed::Own(e) => e.into_response(),
            Failed::Shard(r) => r,
        }
    }
}

type Merged<T> = Result<T, Failed>;

/// Runs a fan-out over `shards`.
pub(super) async fn run(
    front: &ClusterFront,
    kind: FanOut,
    shards: &[u32],
    req: &Buffered,
) -> ApiResult<Response> {
    Ok(merged(front, kind, shards, req)
        .await
        .unwrap_or_else(IntoResponse::into_response))
}

async fn merged(
    front: &ClusterFront,
    kind: FanOut,
    shards: &[u32],
    req: &Buffered,
) -> Merged<Response> {
    match kind {
        FanOut::KvList => {
            let limit = query_pairs(req.parts.uri.query())?
                .into_iter()
                .find(|(k, _)| k == "limit")
                .and_then(|(_, v)| v.parse::<usize>().ok())
                .unwrap_or(100);
            let pages = all(front, shards, |_| req.clone()).await?;
            Ok(axum::Json(merge::merge_keys(&pages, limit)).into_response())
        }
        FanOut::Search => {
            let top_k = serde_json::from_slice::<Value>(&req.body)
                .ok()
                .and_then(|b| b.get("top_k")?.as_u64())
                .unwrap_or(10) as usize;
            let pages = all(front, shards, |_| req.clone()).await?;
            Ok(axum::Json(merge::merge_hits(&pages, top_k)).into_response())
        }
        FanOut::Changes => {
            let q = FeedQuery::parse(req, front.map.shards())?;
            let page = read_changes(front, shards, req, &q, q.wait_ms).await?;
            Ok(axum::Json(page).into_response())
        }
        FanOut::ChangesStream => stream_changes(front, shards, req).await,
        FanOut::Audit => audit(front, shards, req).await,
    }
}

/// `GET /v1/admin/audit` over shards: `after` is a cluster cursor (`m1…`, an entry's
/// `cursor` or a page's `next_after`); each shard is read after its own position.
async fn audit(front: &ClusterFront, shards: &[u32], req: &Buffered) -> Merged<Response> {
    let mut from = FeedCursor::default();
    let mut limit = 100usize;
    for (k, v) in query_pairs(req.parts.uri.query())? {
        match k.as_str() {
            "after" => {
                from = FeedCursor::decode(&v, front.map.shards()).map_err(|_| {
                    ApiError::invalid_param(
                        "after",
                        "after must be a cursor of this cluster's audit log (an entry's cursor or next_after)",
                    )
                })?
            }
            "limit" => {
                limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| {
                        ApiError::invalid_param("limit", "limit must be from 1 to 1000")
                    })?
            }
            _ => {}
        }
    }
    let pages = all(front, shards, |n| {
        let mut q = format!("limit={limit}");
        let pos = from.position(n);
        if pos > 0 {
            q.push_str(&format!("&after={pos}"));
        }
        req.with_path_query("/v1/admin/audit", &q)
    })
    .await?;
    let pages = shards
        .iter()
        .zip(pages)
        .map(|(&shard, page)| ShardPage { shard, page })
        .collect();
    Ok(axum::Json(merge::merge_audit(&from, pages, limit)).into_response())
}

/// Sends one request per shard (built by `make`) and returns their JSON answers in the
/// order of `shards`; the first shard that refuses answers for all.
async fn all(
    front: &ClusterFront,
    shards: &[u32],
    make: impl Fn(u32) -> Buffered,
) -> Merged<Vec<Value>> {
    futures::future::join_all(shards.iter().map(|&n| {
        let r = make(n);
        async move { page(front, n, &r).await }
    }))
    .await
    .into_iter()
    .collect()
}

/// Shard `n`'s JSON answer to `req`.
async fn page(front: &ClusterFront, n: u32, req: &Buffered) -> Merged<Value> {
    let resp = super::to_shard(front, n, req).await?;
    if !resp.status().is_success() {
        return Err(Failed::Shard(resp));
    }
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .map_err(|e| super::unavailable(n, format!("reading shard {n}'s answer failed: {e}")))?;
    serde_json::from_slice(&body)
        .map_err(|_| super::unavailable(n, format!("shard {n} answered something not JSON")).into())
}

/// Every shard is read a page at a time (the stream too).
const CHANGES: &str = "/v1/changes";

/// The parameters of a change-feed read over shards.
struct FeedQuery {
    /// `None`: from the oldest retained change; `Some(None)`: from now.
    from: Option<Option<FeedCursor>>,
    limit: usize,
    wait_ms: u64,
    /// The query parameters passed on to every shard (`include`).
    rest: Vec<(String, String)>,
}

impl FeedQuery {
    fn parse(req: &Buffered, shards: u32) -> ApiResult<FeedQuery> {
        let last_event_id = req
            .parts
            .headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut q = FeedQuery {
            from: None,
            limit: 100,
            wait_ms: 0,
            rest: Vec::new(),
        };
        let mut after = last_event_id.clone();
        for (k, v) in query_pairs(req.parts.uri.query())? {
            match k.as_str() {
                "after" if last_event_id.is_none() => after = Some(v),
                "after" => {}
                "limit" => q.limit = v.parse().unwrap_or(q.limit),
                "wait_ms" => q.wait_ms = v.parse().unwrap_or(0),
                _ => q.rest.push((k, v)),
            }
        }
        q.from = match after.as_deref() {
            None | Some("") => None,
            Some("now") => Some(None),
            Some(c) => Some(Some(FeedCursor::decode(c, shards).map_err(|_| {
                ApiError::invalid_param(
                    "after",
                    "malformed cursor (a cluster's cursors start with m1)",
                )
            })?)),
        };
        Ok(q)
    }

    /// The query string for shard `n` at `from` (`None`: now), waiting `wait_ms`.
    fn for_shard(&self, n: u32, from: Option<&FeedCursor>, wait_ms: u64) -> String {
        let mut pairs: Vec<(String, String)> = self.rest.clone();
        pairs.push(("limit".into(), self.limit.to_string()));
        if wait_ms > 0 {
            pairs.push(("wait_ms".into(), wait_ms.to_string()));
        }
        match from {
            None => pairs.push(("after".into(), "now".into())),
            Some(c) => {
                if let Some(s) = merge::shard_cursor(c.position(n)) {
                    pairs.push(("after".into(), s));
                }
            }
        }
        let enc = |s: &str| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        pairs
            .iter()
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect::<Vec<_>>()
            .join("&")
    }
}

/// Reads one merged page of the change feed. With `wait_ms`, and nothing to read at once,
/// waits for the first shard that has something.
async fn read_changes(
    front: &ClusterFront,
    shards: &[u32],
    req: &Buffered,
    q: &FeedQuery,
    wait_ms: u64,
) -> Merged<Value> {
    let start = q.from.clone().unwrap_or(Some(FeedCursor::default()));
    let base = start.clone().unwrap_or_default();
    let pages = all(front, shards, |n| {
        let mut r = req.with_path_query(CHANGES, &q.for_shard(n, start.as_ref(), 0));
        r.parts.headers.remove("last-event-id");
        r
    })
    .await?;
    let pages: Vec<ShardPage> = shards
        .iter()
        .zip(pages)
        .map(|(&shard, page)| ShardPage { shard, page })
        .collect();
    let merged = merge::merge_changes(&base, pages, q.limit);
    let empty = merged["data"].as_array().is_none_or(|d| d.is_empty());
    if !empty || wait_ms == 0 {
        return Ok(merged);
    }
    // Nothing yet: wait on every shard from where the page ended, and take the first that
    // has something. The others' waits are dropped (their positions do not move).
    let from = merged["next_cursor"]
        .as_str()
        .and_then(|c| FeedCursor::decode(c, front.map.shards()).ok())
        .unwrap_or_default();
    let mut waits: FuturesUnordered<_> = shards
        .iter()
        .map(|&n| {
            let mut r = req.with_path_query(CHANGES, &q.for_shard(n, Some(&from), wait_ms));
            r.parts.headers.remove("last-event-id");
            async move { (n, page(front, n, &r).await) }
        })
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
    loop {
        let next = tokio::time::timeout_at(deadline, waits.next()).await;
        let Ok(Some((n, page))) = next else {
            return Ok(merged);
        };
        let page = page?;
        if page["data"].as_array().is_some_and(|d| !d.is_empty()) {
            return Ok(merge::merge_changes(
                &from,
                vec![ShardPage { shard: n, page }],
                q.limit,
            ));
        }
    }
}

/// `GET /v1/changes/stream` over shards: merged pages as Server-Sent Events, each event's
/// `id` a cluster cursor (resumable with `Last-Event-ID`).
async fn stream_changes(front: &ClusterFront, shards: &[u32], req: &Buffered) -> Merged<Response> {
    let mut q = FeedQuery::parse(req, front.map.shards())?;
    q.limit = q.limit.max(500);
    // The first read happens now, so a bad or expired cursor is an error answer, not a stream.
    let first = read_changes(front, shards, req, &q, 0).await?;
    let state = (
        front.clone(),
        shards.to_vec(),
        req.clone(),
        q,
        Some(first),
        std::collections::VecDeque::<Event>::new(),
    );
    let events = futures::stream::unfold(
        state,
        |(front, shards, req, mut q, mut pending, mut out)| async move {
            loop {
                if let Some(ev) = out.pop_front() {
                    return Some((
                        Ok::<_, std::convert::Infallible>(ev),
                        (front, shards, req, q, pending, out),
                    ));
                }
                let page = match pending.take() {
                    Some(p) => p,
                    None => match read_changes(&front, &shards, &req, &q, 60_000).await {
                        Ok(p) => p,
                        Err(e) => {
                            let status = e.into_response().status();
                            tracing::warn!(%status, "cluster change stream read failed; ending the stream");
                            return None;
                        }
                    },
                };
                if let Some(next) = page["next_cursor"]
                    .as_str()
                    .and_then(|c| FeedCursor::decode(c, front.map.shards()).ok())
                {
                    q.from = Some(Some(next));
                }
                for e in page["data"].as_array().into_iter().flatten() {
                    let id = e["id"].as_str().unwrap_or_default().to_owned();
                    out.push_back(Event::default().id(id).data(e.to_string()));
                }
            }
        },
    );
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}
