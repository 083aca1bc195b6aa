//! `POST /v1/search`: vector, full-text or hybrid search within the caller's scope. The index
//! service behind it is [`mnemo_index::SearchService`].

use crate::auth::{need, Caller};
use crate::error::{ApiError, ApiResult};
use crate::extract::json_body;
use crate::AppState;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use mnemo_index::{item_json, Consistency, MAX_TOP_K};
use mnemo_search::{Filter, Mode, SearchError, SearchQuery, Source};
use mnemo_storage::StoreError;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Parses a client-supplied vector (1–4096 finite numbers); a 400 names `param`.
pub(crate) fn parse_vector(v: &Value, param: &str) -> ApiResult<Vec<f32>> {
    mnemo_index::parse_vector(v).map_err(|e| ApiError::invalid_param(param, e.to_string()))
}

/// Narrows a search.
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = SearchScope)]
struct ScopeBody {
    /// Only this conversation's items.
    conversation_id: Option<String>,
    /// Only memory keys starting with it.
    prefix: Option<String>,
}

/// Filters items.
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = SearchFilter)]
struct FilterBody {
    /// The message role.
    role: Option<String>,
    /// Created at or after (Unix seconds).
    created_after: Option<i64>,
    /// Created before (Unix seconds).
    created_before: Option<i64>,
    /// The conversation's metadata has these values.
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

/// The body of `POST /v1/search`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = SearchRequest)]
struct SearchBody {
    /// Text: BM25 terms and `"quoted phrases"`, or what the built-in embedder embeds.
    query: Option<String>,
    /// A query vector (the tenant's dimension, at most 4096 finite numbers).
    #[schema(value_type = Option<Vec<f64>>)]
    vector: Option<Value>,
    /// `vector`, `text` or `hybrid`.
    mode: Option<String>,
    /// Narrows the search.
    #[serde(default)]
    scope: ScopeBody,
    /// Filters items.
    #[serde(default)]
    filter: FilterBody,
    /// `items` (default) or `memory`.
    source: Option<String>,
    /// Hits wanted, 1–1000 (default 10).
    #[schema(minimum = 1, maximum = 1000)]
    top_k: Option<u64>,
    /// `eventual` (default) or `strong`.
    consistency: Option<String>,
}

/// `POST /v1/search`: vector, full-text or hybrid search within the caller's scope.
#[utoipa::path(post, path = "/v1/search", tag = crate::openapi::QUERY,
    operation_id = "search", summary = "Vector, full-text or hybrid search of items or memory, within the caller's scope",
    request_body = SearchBody,
    responses((status = 200, description = "Hits, best first", body = crate::openapi::SearchResults)))]
pub async fn search(
    State(st): State<AppState>,
    caller: Caller<need::Search>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    let Some(svc) = st.search.clone() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            "search is not enabled on this server",
        ));
    };
    let b: SearchBody = json_body(&headers, body).await?;
    let tenant = caller.scope.tenant.clone();
    let mut vector = b
        .vector
        .as_ref()
        .map(|v| parse_vector(v, "vector"))
        .transpose()?;
    if let Some(v) = &vector {
        if v.iter().all(|x| *x == 0.0) {
            return Err(ApiError::invalid_param("vector", "vector must not be zero"));
        }
    }
    if let (Some(v), Some(d)) = (&vector, svc.index().dimension(tenant.as_str())) {
        // A query vector is checked against the tenant's dimension but never fixes it: only
        // stored vectors do (a query must not decide what the built-in embedder may store).
        if v.len() != d {
            let e = SearchError::DimensionMismatch {
                expected: d,
                got: v.len(),
            };
            return Err(ApiError::from(mnemo_index::IndexError::from(e)).with_param("vector"));
        }
    }
    let mode = match b.mode.as_deref() {
        Some("vector") => Mode::Vector,
        Some("text") => Mode::Text,
        Some("hybrid") => Mode::Hybrid,
        None if vector.is_some() && b.query.is_none() => Mode::Vector,
        None if vector.is_none() => Mode::Text,
        None => Mode::Hybrid,
        Some(_) => {
            return Err(ApiError::invalid_param(
                "mode",
                "mode must be vector, text or hybrid",
            ))
        }
    };
    let source = match b.source.as_deref() {
        None | Some("items") => Source::Items,
        Some("memory") => Source::Memory,
        Some(_) => {
            return Err(ApiError::invalid_param(
                "source",
                "source must be items or memory",
            ))
        }
    };
    let consistency = match b.consistency.as_deref() {
        None | Some("eventual") | Some("default") => Consistency::Eventual,
        Some("strong") => Consistency::Strong,
        Some(_) => {
            return Err(ApiError::invalid_param(
                "consistency",
                "consistency must be eventual or strong",
            ))
        }
    };
    let top_k = b.top_k.unwrap_or(10);
    if top_k == 0 || top_k > MAX_TOP_K as u64 {
        return Err(ApiError::invalid_param(
            "top_k",
            format!("top_k must be 1-{MAX_TOP_K}"),
        ));
    }
    if let Some(q) = &b.query {
        if q.trim().is_empty() {
            return Err(ApiError::invalid_param("query", "query must not be empty"));
        }
    }
    // Text-only vector and hybrid queries: the built-in embedder turns the text into the
    // query vector. A tenant whose vectors have another dimension gets 400 in vector mode;
    // hybrid mode then ranks by text alone, as without an embedder.
    if let (None, Some(text), Mode::Vector | Mode::Hybrid) = (&vector, &b.query, mode) {
        match svc.text_vectors(&tenant) {
            Ok(true) => vector = svc.query_vector(text).await?,
            Ok(false) => {}
            Err(e) if mode == Mode::Vector => return Err(e.into()),
            Err(_) => {}
        }
    }
    if mode == Mode::Vector && vector.is_none() {
        return Err(ApiError::invalid_param(
            "vector",
            if svc.has_embedder() {
                "mode vector needs `vector` or `query`"
            } else {
                "mode vector needs `vector` (this server has no built-in embedder to embed `query`)"
            },
        ));
    }
    let q = SearchQuery {
        tenant: tenant.as_str().to_owned(),
        owner: caller.scope.user.clone(),
        source,
        conversation_id: b.scope.conversation_id.clone(),
        key_prefix: b.scope.prefix.clone(),
        filter: Filter {
            role: b.filter.role,
            created_after: b.filter.created_after,
            created_before: b.filter.created_before,
            metadata: b.filter.metadata,
        },
        mode,
        text: b.query,
        vector,
        top_k: top_k as usize,
    };
    svc.wait_current(&tenant, consistency).await?;
    let hits = svc.search(q).await?;
    // Each hit is read back through the store with the caller's scope: the store's access
    // rule applies to search results as to every other read.
    let mut data = Vec::with_capacity(hits.len());
    for h in hits {
        match source {
            Source::Items => {
                let Some(conv) = h.conversation_id.clone() else {
                    tracing::error!(item = %h.id, "an item hit without its conversation");
                    continue;
                };
                match st.store.get_item(&caller.scope, &conv, &h.id).await {
                    Ok(item) => data.push(json!({
                        "object": "search.result",
                        "item_id": h.id,
                        "conversation_id": conv,
                        "score": h.score,
                        "item": item_json(&item)?,
                    })),
                    // Deleted (or out of scope) since it was indexed: not a result.
                    Err(StoreError::NotFound(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Source::Memory => match st.store.kv_get(&caller.scope, &h.id).await {
                Ok(entry) => {
                    // Rewritten since it was indexed to a value that is not JSON: no longer
                    // searchable, so not a result.
                    let Ok(mut value) = serde_json::from_slice::<Value>(&entry.record.value) else {
                        continue;
                    };
                    if let Some(o) = value.as_object_mut() {
                        o.remove("embedding");
                    }
                    data.push(json!({
                        "object": "search.result",
                        "key": h.id,
                        "score": h.score,
                        "value": value,
                    }));
                }
                Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            },
        }
    }
    Ok(Json(json!({"object": "list", "data": data})))
}
