//! The change feed over HTTP: `GET /v1/changes` (pages, long-poll) and `GET /v1/changes/stream`
//! (Server-Sent Events). Reading, filtering and cursors are the store's
//! ([`mnemo_storage::feed`]); this module shapes events and answers.

use crate::auth::{need, Caller};
use crate::error::{ApiError, ApiResult};
use crate::extract::{limit_param, query_pairs};
use crate::AppState;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use futures::Stream;
use mnemo_storage::{
    ChangeEntry, ChangeOp, Cursor, FeedError, FeedPage, FeedStart, KvRecord, Scope, StoreError,
};
use serde_json::{json, Map, Value};
use std::convert::Infallible;
use std::time::Duration;

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;
/// Longest long-poll wait.
const MAX_WAIT_MS: u64 = 60_000;
/// Events an SSE stream sends per read of the log.
const STREAM_BATCH: usize = 500;

/// The parameters of both routes.
#[derive(Clone, Copy)]
struct FeedQuery {
    start: FeedStart,
    limit: usize,
    wait: Duration,
    body: bool,
}

fn feed_query(raw: Option<&str>, last_event_id: Option<&str>) -> ApiResult<FeedQuery> {
    let mut q = FeedQuery {
        start: FeedStart::Oldest,
        limit: DEFAULT_LIMIT,
        wait: Duration::ZERO,
        body: false,
    };
    let mut after = last_event_id.map(str::to_owned);
    for (k, v) in query_pairs(raw)? {
        match k.as_str() {
            "after" if last_event_id.is_none() => after = Some(v),
            "after" => {}
            "limit" => q.limit = limit_param(&v, MAX_LIMIT)?,
            "wait_ms" => {
                let ms = v
                    .parse::<u64>()
                    .ok()
                    .filter(|ms| *ms <= MAX_WAIT_MS)
                    .ok_or_else(|| {
                        ApiError::invalid_param(
                            "wait_ms",
                            format!("wait_ms must be 0-{MAX_WAIT_MS}"),
                        )
                    })?;
                q.wait = Duration::from_millis(ms);
            }
            "include" if v == "body" => q.body = true,
            "include" => return Err(ApiError::invalid_param("include", "include must be body")),
            _ => {
                return Err(ApiError::invalid_param(
                    k,
                    "unknown parameter (after, limit, wait_ms, include)",
                ))
            }
        }
    }
    q.start = match after.as_deref() {
        None | Some("") => FeedStart::Oldest,
        Some("now") => FeedStart::Now,
        Some(c) => FeedStart::After(Cursor::decode(c).map_err(feed_error)?),
    };
    Ok(q)
}

fn feed_error(e: FeedError) -> ApiError {
    match e {
        FeedError::BadCursor => ApiError::invalid_param("after", "malformed cursor"),
        FeedError::Expired { oldest } => ApiError::new(
            StatusCode::GONE,
            "invalid_request_error",
            format!(
                "the cursor is older than the change log's retention; the oldest valid cursor is {oldest}"
            ),
        )
        .with_param("after")
        .with_code("cursor_expired"),
        FeedError::Store(e) => e.into(),
    }
}

/// An entry as a client sees it; with `body`, the object as the REST API returns it now
/// (null if it is gone: its deletion event follows).
async fn event_json(st: &AppState, scope: &Scope, e: &ChangeEntry, body: bool) -> ApiResult<Value> {
    let mut ev = Map::new();
    ev.insert("id".into(), json!(Cursor::after_seq(e.seq).encode()));
    ev.insert("seq".into(), json!(e.seq));
    ev.insert("at".into(), json!(e.at_ms / 1000));
    ev.insert("type".into(), json!(e.op.event_type()));
    if let Some(c) = e.conversation_id() {
        ev.insert("conversation_id".into(), json!(c));
    }
    match &e.op {
        ChangeOp::ItemsAdded { item_ids, .. }
        | ChangeOp::ItemsDeleted { item_ids, .. }
        | ChangeOp::ItemsPurged { item_ids, .. } => {
            ev.insert("item_ids".into(), json!(item_ids));
        }
        ChangeOp::KvPut { key, version, .. } => {
            ev.insert("key".into(), json!(key));
            if let Some(v) = version {
                ev.insert("etag".into(), json!(KvRecord::etag_of(*v)));
            }
        }
        ChangeOp::KvDeleted { key } | ChangeOp::KvExpired { key } => {
            ev.insert("key".into(), json!(key));
        }
        ChangeOp::ConsentSet { research } => {
            ev.insert("research".into(), json!(research));
        }
        _ => {}
    }
    if let Some(u) = &e.owner {
        ev.insert("user_id".into(), json!(u));
    }
    if body {
        ev.insert("body".into(), current_body(st, scope, e).await?);
    }
    Ok(Value::Object(ev))
}

/// The object an event is about, as the REST API returns it now; null if it is gone.
async fn current_body(st: &AppState, scope: &Scope, e: &ChangeEntry) -> ApiResult<Value> {
    let gone = |r: Result<Value, StoreError>| match r {
        Ok(v) => Ok(v),
        Err(StoreError::NotFound(_)) => Ok(Value::Null),
        Err(e) => Err(ApiError::from(e)),
    };
    match &e.op {
        ChangeOp::ConversationCreated { conversation_id }
        | ChangeOp::ConversationUpdated { conversation_id } => gone(
            st.store
                .get_conversation(scope, conversation_id)
                .await
                .map(|r| crate::conversations::conversation_json(&r)),
        ),
        ChangeOp::ItemsAdded {
            conversation_id,
            item_ids,
        } => {
            let mut items = Vec::with_capacity(item_ids.len());
            for id in item_ids {
                let item = st
                    .store
                    .get_item(scope, conversation_id, id)
                    .await
                    .and_then(|i| mnemo_index::item_json(&i));
                items.push(gone(item)?);
            }
            Ok(Value::Array(items))
        }
        ChangeOp::KvPut { key, .. } => gone(st.store.kv_get(scope, key).await.map(|entry| {
            let value = match std::str::from_utf8(&entry.record.value) {
                Ok(s) => json!(s),
                Err(_) => Value::Null,
            };
            json!({
                "key": entry.key,
                "etag": entry.record.etag(),
                "content_type": entry.record.content_type,
                "size": entry.record.value.len(),
                "value": value,
            })
        })),
        _ => Ok(Value::Null),
    }
}

/// Reads a page; with a wait and nothing new, waits for the tenant's next acknowledgement.
async fn read_page(st: &AppState, scope: &Scope, q: &FeedQuery) -> ApiResult<FeedPage> {
    st.store
        .wait_changes(scope, q.start, q.limit, q.wait)
        .await
        .map_err(feed_error)
}

#[utoipa::path(get, path = "/v1/changes", tag = crate::openapi::QUERY,
    operation_id = "listChanges", summary = "A page of the caller's change feed",
    params(("after" = Option<String>, Query, description = "A cursor: an event's `id`, a page's `next_cursor`, `now`, or absent for the oldest retained event"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Events per read"),
        ("wait_ms" = Option<u32>, Query, minimum = 0, maximum = 60000, description = "Long-poll: wait up to this long for a first event"),
        ("include" = Option<String>, Query, description = "`body`: each event carries the current state of what it names")),
    responses((status = 200, description = "A page of events", body = crate::openapi::ChangePage)))]
/// `GET /v1/changes?after=&limit=&wait_ms=&include=body`
pub async fn list(
    State(st): State<AppState>,
    caller: Caller<need::ChangesRead>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    let q = feed_query(raw.as_deref(), None)?;
    let page = read_page(&st, &caller.scope, &q).await?;
    let mut data = Vec::with_capacity(page.entries.len());
    for e in &page.entries {
        data.push(event_json(&st, &caller.scope, e, q.body).await?);
    }
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "next_cursor": page.next.encode(),
        "has_more": page.has_more,
    })))
}

#[utoipa::path(get, path = "/v1/changes/stream", tag = crate::openapi::QUERY,
    operation_id = "streamChanges", summary = "The change feed as Server-Sent Events (resumable with Last-Event-ID)",
    params(("after" = Option<String>, Query, description = "A cursor: an event's `id`, a page's `next_cursor`, `now`, or absent for the oldest retained event"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Events per read"),
        ("wait_ms" = Option<u32>, Query, minimum = 0, maximum = 60000, description = "Long-poll: wait up to this long for a first event"),
        ("include" = Option<String>, Query, description = "`body`: each event carries the current state of what it names")),
    responses((status = 200, description = "An endless event stream; each `data:` is a change event", content_type = "text/event-stream", body = String)))]
/// `GET /v1/changes/stream`: the same events as Server-Sent Events, `id:` the event's cursor,
/// resumable with `Last-Event-ID`, a heartbeat comment every 15 s.
pub async fn stream(
    State(st): State<AppState>,
    caller: Caller<need::ChangesRead>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let last = headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::invalid_param("Last-Event-ID", "malformed cursor"))
        })
        .transpose()?;
    let mut q = feed_query(raw.as_deref(), last)?;
    q.limit = q.limit.max(STREAM_BATCH);
    // The first read happens now, so a bad or expired cursor is an error answer, not a stream.
    let scope = caller.scope;
    let first = st
        .store
        .read_changes(&scope, q.start, q.limit)
        .await
        .map_err(feed_error)?;
    let state = (
        st,
        scope,
        q,
        Some(first),
        std::collections::VecDeque::<Event>::new(),
    );
    let events = futures::stream::unfold(
        state,
        |(st, scope, mut q, mut pending, mut out)| async move {
            loop {
                if let Some(ev) = out.pop_front() {
                    return Some((Ok(ev), (st, scope, q, pending, out)));
                }
                let page = match pending.take() {
                    Some(p) => p,
                    None => {
                        let wait = FeedQuery {
                            wait: Duration::from_millis(MAX_WAIT_MS),
                            ..q
                        };
                        match read_page(&st, &scope, &wait).await {
                            Ok(p) => p,
                            Err(e) => {
                                tracing::warn!(error = %e.message, "change stream read failed; ending the stream");
                                return None;
                            }
                        }
                    }
                };
                q.start = FeedStart::After(page.next);
                for e in &page.entries {
                    match event_json(&st, &scope, e, q.body).await {
                        Ok(v) => out.push_back(
                            Event::default()
                                .id(Cursor::after_seq(e.seq).encode())
                                .data(v.to_string()),
                        ),
                        Err(err) => {
                            tracing::warn!(error = %err.message, "change stream event failed; ending the stream");
                            return None;
                        }
                    }
                }
            }
        },
    );
    Ok(Sse::new(events).keep_alive(
        KeepAlive::new()
            .interval(Duration::from_secs(15))
            .text("heartbeat"),
    ))
}
