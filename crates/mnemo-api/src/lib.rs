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
mod connection;
mod conversations;
mod error;
mod exports;
mod extract;
mod items;
mod kv;
pub mod metrics;
mod search;
pub mod sql;

pub use error::{ApiError, ApiResult};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use mnemo_export::ConsentPolicy;
use mnemo_index::SearchService;
use mnemo_sql::SqlEngine;
use mnemo_storage::Store;
use std::sync::Arc;

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

/// Builds the router with every route, JSON fallbacks, the metrics middleware and
/// `Connection: close` on answers that leave a request body unread.
pub fn router(state: AppState) -> Router {
    // `/v1/kv/batch` is the batch endpoint for POST; for other methods it is the key "batch".
    let batch_key = || Ok(Path("batch".to_string()));
    Router::new()
        .route("/v1/conversations", post(conversations::create))
        .route(
            "/v1/conversations/{id}",
            get(conversations::retrieve)
                .post(conversations::update)
                .delete(conversations::delete),
        )
        .route(
            "/v1/conversations/{id}/items",
            get(conversations::list_items).post(conversations::add_items),
        )
        .route(
            "/v1/conversations/{id}/items/{item_id}",
            get(conversations::get_item).delete(conversations::delete_item),
        )
        .route("/v1/search", post(search::search))
        .route("/v1/sql", post(sql::query))
        .route("/v1/changes", get(changes::list))
        .route("/v1/changes/stream", get(changes::stream))
        .route("/v1/kv", get(kv::list))
        .route(
            "/v1/kv/batch",
            post(kv::batch)
                .get(move |s: State<AppState>, c| kv::get(s, c, batch_key()))
                .delete(move |s: State<AppState>, c, h: HeaderMap| kv::delete(s, c, h, batch_key()))
                .put(move |s: State<AppState>, c, h: HeaderMap, q, b| {
                    kv::put(s, c, h, batch_key(), q, b)
                }),
        )
        .route(
            "/v1/kv/{*key}",
            get(kv::get).put(kv::put).delete(kv::delete),
        )
        .merge(
            Router::new()
                .route(
                    "/v1/admin/users/{user}",
                    axum::routing::delete(admin::erase_user),
                )
                .route(
                    "/v1/admin/users/{user}/consent",
                    get(admin::consent_get).put(admin::consent_put),
                )
                .route("/v1/admin/audit", get(admin::audit_log))
                .route("/v1/admin/exports", post(exports::create))
                .route("/v1/admin/exports/refresh", post(exports::refresh))
                .route("/v1/admin/exports/{id}", get(exports::get))
                .route_layer(axum::middleware::from_fn_with_state(
                    state.clone(),
                    admin::audit_denials,
                )),
        )
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics::render))
        .route_layer(axum::middleware::from_fn(metrics::track))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(
            connection::close_when_body_unread,
        ))
        .with_state(state)
}
