//! Research exports (`/v1/admin/exports…`): start a job, read its status. Jobs run in
//! `mnemo_export::jobs`; these routes take the tenant from the verified caller (an admin),
//! audit each start, and never show another tenant's job.

use crate::admin::entry;
use crate::auth::{need, Caller};
use crate::error::{ApiError, ApiResult};
use crate::AppState;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use mnemo_export::jobs::{Exporter, Job, JobSpec};
use mnemo_export::run::DEFAULT_GRACE;
use mnemo_export::{ExportError, Filters, Mode};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// `filter` of an export request.
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ExportFilter)]
pub struct FilterBody {
    /// Only conversations whose metadata has these values.
    #[serde(default)]
    #[schema(value_type = BTreeMap<String, String>)]
    metadata: Map<String, Value>,
}

/// The body of `POST /v1/admin/exports`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportBody {
    /// The dataset: `file:///…`, `s3://…` or `az://…` under the server's `--export-to`.
    to: String,
    /// Only items created at or after this time (Unix seconds).
    since: Option<i64>,
    /// Only items created before this time (Unix seconds).
    until: Option<i64>,
    /// Conversation filters.
    #[serde(default)]
    filter: FilterBody,
    /// Add what changed since the dataset's current version.
    #[serde(default)]
    incremental: bool,
    /// Export an earlier checkpoint again (its id).
    checkpoint: Option<String>,
}

/// The body of `POST /v1/admin/exports/refresh`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshBody {
    /// The dataset.
    to: String,
    /// How long replaced files stay readable after the new version is committed (default 300).
    grace_seconds: Option<u64>,
}

fn exporter(st: &AppState) -> ApiResult<&Arc<Exporter>> {
    st.exports
        .as_ref()
        .ok_or_else(|| ApiError::not_found("research exports are not enabled on this server"))
}

fn export_error(e: ExportError) -> ApiError {
    match e {
        ExportError::Invalid(m) => ApiError::invalid(m),
        ExportError::Source(e) => ApiError::from(e),
        e => {
            tracing::error!(error = %e, "export job could not be recorded");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                format!("export job could not be recorded: {e}"),
            )
        }
    }
}

fn job_json(job: &Job) -> Value {
    serde_json::to_value(job).unwrap_or_else(|_| json!({"id": job.id, "status": job.status}))
}

async fn start(
    st: &AppState,
    caller: &Caller<need::Admin>,
    spec: JobSpec,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let exporter = exporter(st)?;
    let tenant = &caller.identity.tenant;
    let action = match spec.mode {
        Mode::Refresh => "export.refresh",
        _ => "export.start",
    };
    let details = serde_json::to_value(&spec).unwrap_or(Value::Null);
    st.store
        .audit_append(tenant, entry(&caller.identity, action, None, details))
        .await?;
    let job = exporter.submit(tenant, spec).await.map_err(export_error)?;
    Ok((StatusCode::ACCEPTED, Json(job_json(&job))))
}

/// `POST /v1/admin/exports` `{"to", "since"?, "until"?, "filter"?: {"metadata"}, "incremental"?,
/// "checkpoint"?}`: starts an export job (202 with the job).
#[utoipa::path(post, path = "/v1/admin/exports", tag = crate::openapi::ADMIN,
    operation_id = "createExport", summary = "Start a research export job (a server started with --export-to)",
    request_body = ExportBody, responses((status = 202, description = "The job, queued", body = crate::openapi::ExportJob)))]
pub async fn create(
    State(st): State<AppState>,
    caller: Caller<need::Admin>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let body: ExportBody = crate::extract::json_body(&headers, body).await?;
    if let (Some(s), Some(u)) = (body.since, body.until) {
        if s >= u {
            return Err(ApiError::invalid_param(
                "until",
                "`until` must be after `since`",
            ));
        }
    }
    let spec = JobSpec {
        to: body.to,
        mode: if body.incremental {
            Mode::Incremental
        } else {
            Mode::Full
        },
        filters: Filters {
            since: body.since,
            until: body.until,
            metadata: body.filter.metadata,
        },
        grace_seconds: DEFAULT_GRACE.as_secs(),
        checkpoint: body.checkpoint,
    };
    start(&st, &caller, spec).await
}

/// `POST /v1/admin/exports/refresh` `{"to", "grace_seconds"?}`: brings a dataset in line with
/// erasures, consent withdrawals and deletions (202 with the job).
#[utoipa::path(post, path = "/v1/admin/exports/refresh", tag = crate::openapi::ADMIN,
    operation_id = "refreshExport", summary = "Bring a dataset in line with erasures, consent withdrawals and deletions",
    request_body = RefreshBody, responses((status = 202, description = "The job, queued", body = crate::openapi::ExportJob)))]
pub async fn refresh(
    State(st): State<AppState>,
    caller: Caller<need::Admin>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let body: RefreshBody = crate::extract::json_body(&headers, body).await?;
    let spec = JobSpec {
        to: body.to,
        mode: Mode::Refresh,
        filters: Filters::default(),
        grace_seconds: body.grace_seconds.unwrap_or(DEFAULT_GRACE.as_secs()),
        checkpoint: None,
    };
    start(&st, &caller, spec).await
}

/// `GET /v1/admin/exports/{id}`: a job of the caller's tenant.
#[utoipa::path(get, path = "/v1/admin/exports/{id}", tag = crate::openapi::ADMIN,
    operation_id = "getExport", summary = "An export job's status, progress and counts",
    params(("id" = String, Path, description = "The job's id")),
    responses((status = 200, description = "The job", body = crate::openapi::ExportJob)))]
pub async fn get(
    State(st): State<AppState>,
    caller: Caller<need::Admin>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let exporter = exporter(&st)?;
    let not_found = || ApiError::not_found("no such export job");
    let Path(id) = id.map_err(|_| not_found())?;
    match exporter
        .get(&caller.identity.tenant, &id)
        .await
        .map_err(export_error)?
    {
        Some(job) => Ok(Json(job_json(&job))),
        None => Err(not_found()),
    }
}
