//! Administration routes (`/v1/admin/…`), all requiring the `admin` permission, all audited.
//!
//! Every action is appended to the tenant's audit log (durably) before it runs, so nothing
//! is done unaudited; refused attempts (403) are audited too.

use crate::auth::{authenticate, need, Caller, Identity};
use crate::error::{ApiError, ApiResult};
use crate::extract::{limit_param, path, query_pairs};
use crate::AppState;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use axum::Json;
use mnemo_storage::{AuditEntry, Scope};
use serde_json::{json, Value};

const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

pub(crate) fn entry(
    identity: &Identity,
    action: &str,
    target: Option<String>,
    details: Value,
) -> AuditEntry {
    AuditEntry {
        seq: 0,
        at_ms: 0,
        actor: identity.subject.clone(),
        actor_kind: identity.kind.name().to_owned(),
        action: action.to_owned(),
        target,
        details,
    }
}

/// The `{user}` of a path, validated the same way every scope's user is.
fn user_of(identity: &Identity, user: Result<Path<String>, PathRejection>) -> ApiResult<String> {
    let user = path(user)?;
    Scope::user(identity.tenant.clone(), user.as_str())
        .map_err(|e| ApiError::invalid_param("user", e.to_string()))?;
    Ok(user)
}

/// `DELETE /v1/admin/users/{user}`: erases every conversation and the `users/{user}/`
/// memory space of a user of the caller's tenant.
#[utoipa::path(delete, path = "/v1/admin/users/{user}", tag = crate::openapi::ADMIN,
    operation_id = "eraseUser", summary = "Erase a user: their conversations, items, memory and consent",
    params(("user" = String, Path, description = "The user's id")),
    responses((status = 200, description = "Erased", body = crate::openapi::UserErased)))]
pub async fn erase_user(
    State(st): State<AppState>,
    caller: Caller<need::Admin>,
    user: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let user = user_of(&caller.identity, user)?;
    let tenant = &caller.identity.tenant;
    st.store
        .audit_append(
            tenant,
            entry(
                &caller.identity,
                "user.erase",
                Some(user.clone()),
                Value::Null,
            ),
        )
        .await?;
    let erased = st.store.erase_user(tenant, &user).await?;
    tracing::info!(%tenant, user = %user, actor = %caller.identity.subject, ?erased, "user erased");
    Ok(Json(json!({
        "object": "user.erased",
        "user": user,
        "conversations_deleted": erased.conversations,
        "memory_keys_deleted": erased.kv_keys,
    })))
}

/// The body of `PUT /v1/admin/users/{user}/consent`.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsentBody {
    /// Whether the user's history may be exported for research.
    research: bool,
}

fn consent_json(st: &AppState, user: &str, record: Option<&mnemo_storage::Consent>) -> Value {
    json!({
        "object": "user.consent",
        "user": user,
        "research": st.research_consent.allows(record),
        "explicit": record.is_some(),
        "policy": st.research_consent.name(),
        "updated_at": record.map(|c| c.updated_ms.div_euclid(1000)),
    })
}

/// `PUT /v1/admin/users/{user}/consent` `{"research": bool}`: records whether the user's
/// history may go into research exports (audited as `user.consent`).
#[utoipa::path(put, path = "/v1/admin/users/{user}/consent", tag = crate::openapi::ADMIN,
    operation_id = "setConsent", summary = "Record a user's research consent (audited)",
    params(("user" = String, Path, description = "The user's id")), request_body = ConsentBody,
    responses((status = 200, description = "The consent", body = crate::openapi::Consent)))]
pub async fn consent_put(
    State(st): State<AppState>,
    caller: Caller<need::Admin>,
    user: Result<Path<String>, PathRejection>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    let user = user_of(&caller.identity, user)?;
    let body: ConsentBody = crate::extract::json_body(&headers, body).await?;
    let tenant = &caller.identity.tenant;
    st.store
        .audit_append(
            tenant,
            entry(
                &caller.identity,
                "user.consent",
                Some(user.clone()),
                json!({"research": body.research}),
            ),
        )
        .await?;
    let record = st.store.set_consent(tenant, &user, body.research).await?;
    Ok(Json(consent_json(&st, &user, Some(&record))))
}

/// `GET /v1/admin/users/{user}/consent`: the user's research consent, theirs or the policy's.
#[utoipa::path(get, path = "/v1/admin/users/{user}/consent", tag = crate::openapi::ADMIN,
    operation_id = "getConsent", summary = "A user's research consent",
    params(("user" = String, Path, description = "The user's id")),
    responses((status = 200, description = "The consent", body = crate::openapi::Consent)))]
pub async fn consent_get(
    State(st): State<AppState>,
    caller: Caller<need::Admin>,
    user: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let user = user_of(&caller.identity, user)?;
    let record = st.store.consent(&caller.identity.tenant, &user).await?;
    Ok(Json(consent_json(&st, &user, record.as_ref())))
}

/// `GET /v1/admin/audit?after=&limit=`: the tenant's audit log, oldest first.
#[utoipa::path(get, path = "/v1/admin/audit", tag = crate::openapi::ADMIN,
    operation_id = "listAudit", summary = "The tenant's audit log",
    params(("after" = Option<u64>, Query, description = "Start after this sequence number"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Entries per page (default 100)")),
    responses((status = 200, description = "A page of entries", body = crate::openapi::AuditPage)))]
pub async fn audit_log(
    State(st): State<AppState>,
    caller: Caller<need::Admin>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    let (mut after, mut limit) = (None, DEFAULT_PAGE);
    for (k, v) in query_pairs(raw.as_deref())? {
        match k.as_str() {
            "after" => {
                after = Some(
                    v.parse::<u64>()
                        .ok()
                        .filter(|n| i64::try_from(*n).is_ok())
                        .ok_or_else(|| {
                            ApiError::invalid_param("after", "after must be a sequence number")
                        })?,
                )
            }
            "limit" => limit = limit_param(&v, MAX_PAGE)?,
            _ => {}
        }
    }
    let (entries, has_more) = st
        .store
        .audit_list(&caller.identity.tenant, after, limit)
        .await?;
    let next_after = entries.last().filter(|_| has_more).map(|e| e.seq);
    Ok(Json(json!({
        "object": "list",
        "data": entries,
        "has_more": has_more,
        "next_after": next_after,
    })))
}

/// Middleware of the admin routes: audits requests refused with 403 (the caller is
/// authenticated but lacks the permission).
pub async fn audit_denials(State(st): State<AppState>, req: Request<Body>, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let method = parts.method.clone();
    let path = parts.uri.path().to_owned();
    let snapshot = parts.clone();
    let response = next.run(Request::from_parts(parts, body)).await;
    if response.status() == StatusCode::FORBIDDEN {
        if let Ok(identity) = authenticate(&st.auth, &snapshot).await {
            let details = json!({"method": method.as_str()});
            if let Err(e) = st
                .store
                .audit_append(
                    &identity.tenant,
                    entry(&identity, "denied", Some(path), details),
                )
                .await
            {
                tracing::warn!(error = %e, "cannot audit a refused admin request");
            }
        }
    }
    response
}
