//! Handlers of the key-value memory API (`/v1/kv…`).

use crate::auth::{need, Caller};
use crate::error::{ApiError, ApiResult};
use crate::extract::{json_body, limit_param, path, query_pairs, read_body};
use crate::AppState;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use bytes::Bytes;
use mnemo_storage::kv::{MAX_TTL, MAX_VALUE_BYTES};
use mnemo_storage::{Condition, KvOp};
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Duration;

const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";
const DEFAULT_LIST: usize = 100;
const MAX_LIST: usize = 1000;

fn ttl(seconds: &str) -> ApiResult<Duration> {
    seconds
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
        .filter(|d| !d.is_zero() && *d <= MAX_TTL)
        .ok_or_else(|| {
            ApiError::invalid_param(
                "ttl_seconds",
                "ttl_seconds must be an integer from 1 to 315360000",
            )
        })
}

fn header_condition(headers: &HeaderMap) -> ApiResult<Condition> {
    let mut c = Condition::default();
    if let Some(v) = headers.get(header::IF_MATCH) {
        let v = v
            .to_str()
            .map_err(|_| ApiError::invalid_param("If-Match", "If-Match must be ASCII"))?;
        c.if_match = Some(v.split(',').map(|s| s.trim().to_string()).collect());
    }
    if let Some(v) = headers.get(header::IF_NONE_MATCH) {
        if v.as_bytes().trim_ascii() != b"*" {
            return Err(ApiError::invalid_param(
                "If-None-Match",
                "only If-None-Match: * is supported on writes",
            ));
        }
        c.if_none_match_any = true;
    }
    Ok(c)
}

fn etag_header(etag: &str) -> [(header::HeaderName, HeaderValue); 1] {
    [(
        header::ETAG,
        HeaderValue::from_str(etag).unwrap_or(HeaderValue::from_static("\"\"")),
    )]
}

/// Refuses (400) a JSON-object value whose `embedding` is not a valid vector of the tenant's
/// dimension: such values are searchable by that vector.
fn check_memory_vector(
    st: &AppState,
    scope: &mnemo_storage::Scope,
    value: &[u8],
    param: &str,
) -> ApiResult<()> {
    let Some(search) = &st.search else {
        return Ok(());
    };
    if value.trim_ascii_start().first() != Some(&b'{') {
        return Ok(());
    }
    let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(value) else {
        return Ok(());
    };
    if let Some(e) = obj.get("embedding").filter(|e| !e.is_null()) {
        let v = crate::search::parse_vector(e, param)?;
        search
            .check_vector(&scope.tenant, &v)
            .map_err(|e| ApiError::from(e).with_param(param))?;
    }
    Ok(())
}

#[utoipa::path(put, path = "/v1/kv/{key}", tag = crate::openapi::MEMORY,
    operation_id = "putMemory", summary = "Store a value (at most 65,536 bytes) and its media type",
    params(("key" = String, Path, description = "1–1024 bytes of UTF-8, percent-encoded; `/` allowed"), ("If-Match" = Option<String>, Header, description = "Only if the current value has one of these ETags (`*`: any existing value)"),
        ("If-None-Match" = Option<String>, Header, description = "`*`: only if the key is absent"),
        ("ttl_seconds" = Option<u64>, Query, minimum = 1, maximum = 315360000, description = "The key reads as absent after this many seconds")),
    request_body(content = crate::openapi::AnyBytes, content_type = "*/*", description = "The value's bytes; its `Content-Type` is stored"),
    responses((status = 200, description = "Stored", body = crate::openapi::KvWritten,
        headers(("ETag" = String, description = "The new value's ETag"))),
        (status = 412, description = "A condition did not hold", body = crate::openapi::ErrorResponse)))]
/// `PUT /v1/kv/{key}`: stores the raw body.
pub async fn put(
    State(st): State<AppState>,
    caller: Caller<need::MemoryWrite>,
    headers: HeaderMap,
    key: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
    body: Body,
) -> ApiResult<Response> {
    let key = path(key)?;
    let scope = caller.scope;
    scope.check_write_key(&key, None)?;
    let mut ttl_d = None;
    for (k, v) in query_pairs(raw.as_deref())? {
        if k == "ttl_seconds" {
            ttl_d = Some(ttl(&v)?);
        }
    }
    let condition = header_condition(&headers)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or(DEFAULT_CONTENT_TYPE)
        .to_string();
    let value = read_body(&headers, body, MAX_VALUE_BYTES).await?;
    check_memory_vector(&st, &scope, &value, "embedding")?;
    let w = st
        .store
        .kv_put(&scope, &key, value, content_type, ttl_d, condition)
        .await?;
    let etag = w.etag.unwrap_or_default();
    Ok((
        etag_header(&etag),
        Json(json!({"key": w.key, "etag": etag, "size": w.size})),
    )
        .into_response())
}

#[utoipa::path(get, path = "/v1/kv/{key}", tag = crate::openapi::MEMORY,
    operation_id = "getMemory", summary = "Read a value: the exact bytes, with its ETag and media type",
    params(("key" = String, Path, description = "1–1024 bytes of UTF-8, percent-encoded; `/` allowed")),
    responses((status = 200, description = "The value", content_type = "*/*", body = crate::openapi::AnyBytes,
        headers(("ETag" = String, description = "The value's ETag")))))]
/// `GET /v1/kv/{key}`: the exact bytes.
pub async fn get(
    State(st): State<AppState>,
    caller: Caller<need::MemoryRead>,
    key: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let key = path(key)?;
    let e = st.store.kv_get(&caller.scope, &key).await?;
    let ct = HeaderValue::from_str(&e.record.content_type)
        .unwrap_or(HeaderValue::from_static(DEFAULT_CONTENT_TYPE));
    let mut resp = (etag_header(&e.record.etag()), e.record.value).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, ct);
    Ok(resp)
}

#[utoipa::path(delete, path = "/v1/kv/{key}", tag = crate::openapi::MEMORY,
    operation_id = "deleteMemory", summary = "Delete a key",
    params(("key" = String, Path, description = "1–1024 bytes of UTF-8, percent-encoded; `/` allowed"), ("If-Match" = Option<String>, Header, description = "Only if the current value has one of these ETags (`*`: any existing value)")),
    responses((status = 200, description = "Deleted", body = crate::openapi::KvDeleted),
        (status = 412, description = "`If-Match` did not hold", body = crate::openapi::ErrorResponse)))]
/// `DELETE /v1/kv/{key}`
pub async fn delete(
    State(st): State<AppState>,
    caller: Caller<need::MemoryWrite>,
    headers: HeaderMap,
    key: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let key = path(key)?;
    let scope = caller.scope;
    scope.check_write_key(&key, None)?;
    let condition = header_condition(&headers)?;
    if condition.if_none_match_any {
        return Err(ApiError::invalid_param(
            "If-None-Match",
            "If-None-Match is not supported on DELETE",
        ));
    }
    st.store.kv_delete(&scope, &key, condition).await?;
    Ok(Json(json!({"key": key, "deleted": true})))
}

#[utoipa::path(get, path = "/v1/kv", tag = crate::openapi::MEMORY,
    operation_id = "listMemory", summary = "List keys in byte order",
    params(("prefix" = Option<String>, Query, description = "Only keys starting with it"),
        ("after" = Option<String>, Query, description = "Start after this key"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Keys per page (default 100)")),
    responses((status = 200, description = "A page of keys", body = crate::openapi::KvList)))]
/// `GET /v1/kv?prefix=&after=&limit=`
pub async fn list(
    State(st): State<AppState>,
    caller: Caller<need::MemoryRead>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    let (mut prefix, mut after, mut limit) = (String::new(), None, DEFAULT_LIST);
    for (k, v) in query_pairs(raw.as_deref())? {
        match k.as_str() {
            "prefix" => prefix = v,
            "after" => after = Some(v),
            "limit" => limit = limit_param(&v, MAX_LIST)?,
            _ => {}
        }
    }
    let page = st
        .store
        .kv_list(&caller.scope, &prefix, after.as_deref(), limit)
        .await?;
    let data: Vec<Value> = page
        .entries
        .iter()
        .map(|e| {
            json!({
                "key": e.key,
                "size": e.record.value.len(),
                "etag": e.record.etag(),
                "content_type": e.record.content_type,
                "updated_at": e.record.updated_at_ms / 1000,
                "expires_at": e.expires_at_ms.map(|ms| ms / 1000),
            })
        })
        .collect();
    let next_after = if page.has_more {
        page.entries.last().map(|e| e.key.clone())
    } else {
        None
    };
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "has_more": page.has_more,
        "next_after": next_after,
    })))
}

/// One operation of a batch.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
#[schema(as = MemoryBatchOperation)]
enum BatchOp {
    /// Stores a value (`value` as UTF-8 text or `value_base64`).
    Put {
        key: String,
        #[serde(default)]
        value: Option<String>,
        #[serde(default)]
        value_base64: Option<String>,
        #[serde(default)]
        content_type: Option<String>,
        #[serde(default)]
        ttl_seconds: Option<u64>,
        #[serde(default)]
        if_match: Option<String>,
        #[serde(default)]
        if_none_match: Option<String>,
    },
    /// Deletes a key (absent without a condition: succeeds).
    Delete {
        key: String,
        #[serde(default)]
        if_match: Option<String>,
    },
}

/// The body of `POST /v1/kv/batch`.
#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = MemoryBatch)]
struct BatchBody {
    /// 1–100 operations, each key at most once.
    #[schema(min_items = 1, max_items = 100)]
    operations: Vec<BatchOp>,
}

fn batch_condition(
    i: usize,
    if_match: Option<String>,
    if_none_match: Option<String>,
) -> ApiResult<Condition> {
    let if_none_match_any = match if_none_match.as_deref() {
        None => false,
        Some("*") => true,
        Some(_) => {
            return Err(ApiError::invalid_param(
                format!("operations[{i}].if_none_match"),
                "only \"*\" is supported",
            ))
        }
    };
    Ok(Condition {
        if_match: if_match.map(|m| m.split(',').map(|s| s.trim().to_string()).collect()),
        if_none_match_any,
    })
}

fn to_op(i: usize, op: BatchOp) -> ApiResult<KvOp> {
    Ok(match op {
        BatchOp::Put {
            key,
            value,
            value_base64,
            content_type,
            ttl_seconds,
            if_match,
            if_none_match,
        } => {
            let (bytes, default_ct) = match (value, value_base64) {
                (Some(v), None) => (Bytes::from(v), "text/plain; charset=utf-8"),
                (None, Some(b)) => (
                    Bytes::from(
                        base64::engine::general_purpose::STANDARD
                            .decode(b.as_bytes())
                            .map_err(|e| {
                                ApiError::invalid_param(
                                    format!("operations[{i}].value_base64"),
                                    format!("invalid base64: {e}"),
                                )
                            })?,
                    ),
                    DEFAULT_CONTENT_TYPE,
                ),
                _ => {
                    return Err(ApiError::invalid_param(
                        format!("operations[{i}]"),
                        "a put needs exactly one of value and value_base64",
                    ))
                }
            };
            if bytes.len() > MAX_VALUE_BYTES {
                let mut e = ApiError::too_large(MAX_VALUE_BYTES);
                e.param = Some(format!("operations[{i}]"));
                return Err(e);
            }
            KvOp::Put {
                key,
                value: bytes,
                content_type: content_type.unwrap_or_else(|| default_ct.to_string()),
                ttl: ttl_seconds
                    .map(|s| ttl(&s.to_string()))
                    .transpose()
                    .map_err(|e| e.with_param(format!("operations[{i}].ttl_seconds")))?,
                condition: batch_condition(i, if_match, if_none_match)?,
            }
        }
        BatchOp::Delete { key, if_match } => KvOp::Delete {
            key,
            condition: batch_condition(i, if_match, None)?,
        },
    })
}

#[utoipa::path(post, path = "/v1/kv/batch", tag = crate::openapi::MEMORY,
    operation_id = "batchMemory", summary = "Write several keys atomically, with per-key conditions",
    request_body = BatchBody,
    responses((status = 200, description = "Every operation applied", body = crate::openapi::KvBatchResponse),
        (status = 412, description = "A condition did not hold (`param`: `operations[i]`); nothing written", body = crate::openapi::ErrorResponse)))]
/// `POST /v1/kv/batch`: atomic multi-key write.
pub async fn batch(
    State(st): State<AppState>,
    caller: Caller<need::MemoryWrite>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    let b: BatchBody = json_body(&headers, body).await?;
    let ops = b
        .operations
        .into_iter()
        .enumerate()
        .map(|(i, op)| to_op(i, op))
        .collect::<ApiResult<Vec<_>>>()?;
    for (i, op) in ops.iter().enumerate() {
        let key = match op {
            KvOp::Put { key, value, .. } => {
                check_memory_vector(&st, &caller.scope, value, &format!("operations[{i}].value"))?;
                key
            }
            KvOp::Delete { key, .. } => key,
        };
        caller.scope.check_write_key(key, Some(i))?;
    }
    let written = st.store.kv_batch(&caller.scope, ops).await?;
    let data: Vec<Value> = written
        .into_iter()
        .map(|w| json!({"key": w.key, "etag": w.etag, "deleted": w.etag.is_none()}))
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

/// `/v1/kv/batch` is the batch endpoint for POST; for other methods it is the key `batch`.
fn batch_key() -> Result<Path<String>, PathRejection> {
    Ok(Path("batch".to_string()))
}

/// `GET /v1/kv/batch`: the key `batch`.
#[utoipa::path(get, path = "/v1/kv/batch", tag = crate::openapi::MEMORY,
    operation_id = "getMemoryBatchKey", summary = "Read the key `batch` (as `GET /v1/kv/{key}`)",
    responses((status = 200, description = "The value", content_type = "*/*", body = crate::openapi::AnyBytes,
        headers(("ETag" = String, description = "The value's ETag")))))]
pub async fn get_batch_key(
    st: State<AppState>,
    caller: Caller<need::MemoryRead>,
) -> ApiResult<Response> {
    get(st, caller, batch_key()).await
}

/// `PUT /v1/kv/batch`: the key `batch`.
#[utoipa::path(put, path = "/v1/kv/batch", tag = crate::openapi::MEMORY,
    operation_id = "putMemoryBatchKey", summary = "Store the key `batch` (as `PUT /v1/kv/{key}`)",
    params(("If-Match" = Option<String>, Header, description = "Only if the current value has one of these ETags (`*`: any existing value)"),
        ("If-None-Match" = Option<String>, Header, description = "`*`: only if the key is absent"),
        ("ttl_seconds" = Option<u64>, Query, minimum = 1, maximum = 315360000, description = "The key reads as absent after this many seconds")),
    request_body(content = crate::openapi::AnyBytes, content_type = "*/*", description = "The value's bytes; its `Content-Type` is stored"),
    responses((status = 200, description = "Stored", body = crate::openapi::KvWritten,
        headers(("ETag" = String, description = "The new value's ETag"))),
        (status = 412, description = "A condition did not hold", body = crate::openapi::ErrorResponse)))]
pub async fn put_batch_key(
    st: State<AppState>,
    caller: Caller<need::MemoryWrite>,
    headers: HeaderMap,
    query: RawQuery,
    body: Body,
) -> ApiResult<Response> {
    put(st, caller, headers, batch_key(), query, body).await
}

/// `DELETE /v1/kv/batch`: the key `batch`.
#[utoipa::path(delete, path = "/v1/kv/batch", tag = crate::openapi::MEMORY,
    operation_id = "deleteMemoryBatchKey", summary = "Delete the key `batch` (as `DELETE /v1/kv/{key}`)",
    params(("If-Match" = Option<String>, Header, description = "Only if the current value has one of these ETags (`*`: any existing value)")),
    responses((status = 200, description = "Deleted", body = crate::openapi::KvDeleted),
        (status = 412, description = "`If-Match` did not hold", body = crate::openapi::ErrorResponse)))]
pub async fn delete_batch_key(
    st: State<AppState>,
    caller: Caller<need::MemoryWrite>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    delete(st, caller, headers, batch_key()).await
}
