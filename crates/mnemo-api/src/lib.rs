//! # mnemo-api
//!
//! mnemo's HTTP API on [axum]: the OpenAI Conversations API under `/v1/conversations`, the
//! key-value memory API under `/v1/kv`, search under `/v1/search`, SQL under `/v1/sql`, the change feed under `/v1/changes`, administration under
//! `/v1/admin`, `/healthz` and `/metrics`. This crate is routes, extractors, request
//! validation and error shapes only: handlers validate input, call [`mnemo_storage::Store`]
//! or [`mnemo_index::SearchService`] and shape the response. Every error is a JSON body in
//! OpenAI's shape ([`ApiError`]). The contract is documented in `docs/api.md`.
//!
//! ```no_run
//! # async fn demo(store: std::sync::Arc<mnemo_storage::Store>) {
//! let app = mnemo_api::router(mnemo_api::AppState::new(store));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await.unwrap();
//! axum::serve(listener, app).await.unwrap();
//! # }
//! ```

#![warn(missing_docs)]

mod admin;
pub mod auth;
mod changes;
pub mod cluster;
mod connection;
mod conversations;
mod error;
mod exports;
mod extract;
mod kv;
pub mod metrics;
pub mod openapi;
mod search;
pub mod sql;

pub use error::{ApiError, ApiResult};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use mnemo_export::ConsentPolicy;
use mnemo_index::SearchService;
use mnemo_sql::SqlEngine;
use mnemo_storage::Store;
use std::sync::Arc;
use utoipa::{Modify, OpenApi as _};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Default of [`AppState::sql_max_rows`].
pub const DEFAULT_SQL_MAX_ROWS: usize = 10_000;

/// Shared state of all handlers.
#[derive(Clone)]
pub struct AppState {
    /// The store.
    pub store: Arc<Store>,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// Authentication and authorization.
    pub auth: Arc<auth::AuthConfig>,
    /// The search service, when enabled.
    pub search: Option<Arc<SearchService>>,
    /// The SQL engine, when enabled.
    pub sql: Option<Arc<SqlEngine>>,
    /// Most rows of a JSON answer of `/v1/sql` (`truncated: true` past it).
    pub sql_max_rows: usize,
    /// Research consent of users without a record (`--research-consent`).
    pub research_consent: ConsentPolicy,
    /// Research export jobs, when enabled.
    pub exports: Option<Arc<mnemo_export::jobs::Exporter>>,
}

impl AppState {
    /// State over a store, with the process-wide metrics recorder installed and no
    /// authentication (see [`AppState::with_auth`]).
    pub fn new(store: Arc<Store>) -> Self {
        AppState {
            store,
            metrics: metrics::install(),
            auth: Arc::new(auth::AuthConfig::none()),
            search: None,
            sql: None,
            sql_max_rows: DEFAULT_SQL_MAX_ROWS,
            research_consent: ConsentPolicy::default(),
            exports: None,
        }
    }

    /// Enables `/v1/admin/exports`.
    pub fn with_exports(mut self, exporter: Arc<mnemo_export::jobs::Exporter>) -> Self {
        self.exports = Some(exporter);
        self
    }

    /// Sets the research consent of users without a record.
    pub fn with_research_consent(mut self, policy: ConsentPolicy) -> Self {
        self.research_consent = policy;
        self
    }

    /// Enables `/v1/sql`, with at most `max_rows` rows in a JSON answer.
    pub fn with_sql(mut self, engine: Arc<SqlEngine>, max_rows: usize) -> Self {
        self.sql = Some(engine);
        self.sql_max_rows = max_rows;
        self
    }

    /// Enables search.
    pub fn with_search(mut self, search: Arc<SearchService>) -> Self {
        self.search = Some(search);
        self
    }

    /// Replaces the authentication settings.
    pub fn with_auth(mut self, auth: auth::AuthConfig) -> Self {
        self.auth = Arc::new(auth);
        self
    }
}

#[utoipa::path(get, path = "/healthz", tag = openapi::OPERATIONS, operation_id = "health",
    summary = "Whether the store is open",
    responses((status = 200, description = "Serving", body = openapi::Health),
        (status = 503, description = "The store is unavailable", body = openapi::Health)))]
async fn healthz(State(st): State<AppState>) -> impl IntoResponse {
    if st.store.is_ready() {
        (StatusCode::OK, Json(serde_json::json!({"status": "ok"})))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "unavailable"})),
        )
    }
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

/// The parts of the document not collected from routes: its description, the error
/// schema, and the memory routes whose axum path (`{*key}`) is not an OpenAPI template.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "mnemo", description = "Conversation history and memory for AI assistants: the OpenAI Conversations API, key-value memory, search, SQL, the change feed and administration. Every error has OpenAI's shape (`ErrorResponse`)."),
    paths(kv::get, kv::put, kv::delete),
    components(schemas(openapi::ErrorResponse)),
    tags((name = "conversations", description = "The OpenAI Conversations API"),
        (name = "memory", description = "Key-value memory with ETags, conditions and TTLs"),
        (name = "query", description = "Search, SQL and the change feed"),
        (name = "admin", description = "Erasure, consent, audit and research exports (permission `admin`)"),
        (name = "operations", description = "Health, metrics and this document")),
)]
struct ApiDoc;

/// Every documented route but the administration ones.
fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(conversations::create))
        .routes(routes!(
            conversations::retrieve,
            conversations::update,
            conversations::delete
        ))
        .routes(routes!(conversations::list_items, conversations::add_items))
        .routes(routes!(conversations::get_item, conversations::delete_item))
        .routes(routes!(search::search))
        .routes(routes!(sql::query))
        .routes(routes!(changes::list))
        .routes(routes!(changes::stream))
        .routes(routes!(kv::list))
        .routes(routes!(
            kv::batch,
            kv::get_batch_key,
            kv::put_batch_key,
            kv::delete_batch_key
        ))
        .route(
            "/v1/kv/{*key}",
            get(kv::get).put(kv::put).delete(kv::delete),
        )
        .routes(routes!(healthz))
        .routes(routes!(metrics::render))
        .routes(routes!(openapi_json))
}

/// The administration routes (`/v1/admin/…`).
fn admin_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(admin::erase_user))
        .routes(routes!(admin::consent_get, admin::consent_put))
        .routes(routes!(admin::audit_log))
        .routes(routes!(exports::create))
        .routes(routes!(exports::refresh))
        .routes(routes!(exports::get))
}

/// Completes a collected document: security scheme, shared errors, `/openapi.json` itself.
fn finish(mut api: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    api.info.version = env!("CARGO_PKG_VERSION").to_string();
    api.info.license = None;
    api.info.contact = None;
    openapi::Conventions.modify(&mut api);
    api
}

/// The OpenAPI 3.1 document of every route (served at `GET /openapi.json`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, api) = api_routes().merge(admin_routes()).split_for_parts();
    finish(api)
}

/// The document as served: pretty JSON with a final newline (as `docs/openapi.json`).
pub fn openapi_json_text() -> String {
    let mut text = openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

#[utoipa::path(get, path = "/openapi.json", tag = openapi::OPERATIONS, operation_id = "openapi",
    summary = "This document (OpenAPI 3.1)",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object)))]
async fn openapi_json() -> impl IntoResponse {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let doc = DOC.get_or_init(openapi_json_text);
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        doc.as_str(),
    )
}

/// Builds the router with every route, JSON fallbacks, the metrics middleware and
/// `Connection: close` on answers that leave a request body unread.
pub fn router(state: AppState) -> Router {
    let admin = admin_routes().route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        admin::audit_denials,
    ));
    let (routes, _) = api_routes().merge(admin).split_for_parts();
    routes
        .route_layer(axum::middleware::from_fn(metrics::track))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(
            connection::close_when_body_unread,
        ))
        .with_state(state)
}
