//! The HTTP front of a cluster node (`mnemo serve --cluster-etcd …`): every request is
//! routed to the shard that holds its data. A shard this node owns answers through its own
//! [`crate::router`]; a shard another node owns is forwarded there (one hop, authenticated by
//! the cluster's secret); operations over a whole tenant fan out to the shards and merge.
//! Membership, leases and placement are [`mnemo_cluster`]'s; this module only moves requests.
//!
//! Headers: `X-Mnemo-Node` names the node that answered a shard's request and
//! `X-Mnemo-Shard` the shard. Between nodes, `X-Mnemo-Peer` carries the cluster's secret and
//! `X-Mnemo-Shard` names the shard the request is for, so the owner never forwards again.

mod fanout;
mod forward;
mod sql;
mod target;

pub use sql::SHARD_READ_PATH;

use crate::{ApiError, ApiResult};
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures::future::BoxFuture;
use mnemo_cluster::{ClusterStatus, Route};
use mnemo_index::SearchService;
use mnemo_storage::Store;
use std::sync::Arc;
use std::time::Duration;
use target::Target;
use tower_service::Service;

/// Names the node that answered.
pub const NODE_HEADER: &str = "x-mnemo-node";
/// Names the shard a request was answered by (and, between nodes, is for).
pub const SHARD_HEADER: &str = "x-mnemo-shard";
/// Carries the cluster's secret on requests between nodes.
pub const PEER_HEADER: &str = "x-mnemo-peer";

/// Largest request body the front buffers (a request is read whole before it is routed).
const MAX_BODY: usize = 64 << 20;

/// A shard this node has open for writing: its store, its search, and the API over them.
pub struct LocalShard {
    /// The shard's number.
    pub shard: u32,
    /// The API over this shard alone ([`crate::router`] of its own [`crate::AppState`]).
    pub router: Router,
    /// The shard's store.
    pub store: Arc<Store>,
    /// The shard's search service, when enabled.
    pub search: Option<Arc<SearchService>>,
    /// On a writer: the research export jobs of the tenants whose shard this is, stopped
    /// when the shard is handed over.
    pub exporter: Option<Arc<mnemo_export::jobs::Exporter>>,
}

/// What the front needs of the cluster: who owns each shard, and whether this node may
/// answer for a shard it owns. [`mnemo_cluster::Cluster`] implements it.
pub trait ShardMap: Send + Sync + 'static {
    /// Number of shards.
    fn shards(&self) -> u32;
    /// This node's id.
    fn node_id(&self) -> &str;
    /// The secret nodes present to each other.
    fn secret(&self) -> &str;
    /// Where shard `n` is served now.
    fn route(&self, shard: u32) -> Route<LocalShard>;
    /// Waits up to `timeout` while shard `n` has no owner.
    fn wait_route(&self, shard: u32, timeout: Duration) -> BoxFuture<'_, Route<LocalShard>>;
    /// Re-reads the owners now (a peer said it no longer owns a shard).
    fn refresh(&self);
    /// True while this node holds shard `n` under a valid lease: checked after a shard
    /// answered and before the answer is sent.
    fn may_acknowledge(&self, shard: u32) -> bool;
    /// True while this node's lease is valid.
    fn lease_valid(&self) -> bool;
    /// This node's view of the cluster.
    fn status(&self) -> ClusterStatus;
}

impl<O> ShardMap for mnemo_cluster::Cluster<O>
where
    O: mnemo_cluster::ShardOpener<Shard = LocalShard>,
{
    fn shards(&self) -> u32 {
        mnemo_cluster::Cluster::shards(self)
    }
    fn node_id(&self) -> &str {
        mnemo_cluster::Cluster::node_id(self)
    }
    fn secret(&self) -> &str {
        mnemo_cluster::Cluster::secret(self)
    }
    fn route(&self, shard: u32) -> Route<LocalShard> {
        mnemo_cluster::Cluster::route(self, shard)
    }
    fn wait_route(&self, shard: u32, timeout: Duration) -> BoxFuture<'_, Route<LocalShard>> {
        Box::pin(mnemo_cluster::Cluster::wait_route(self, shard, timeout))
    }
    fn refresh(&self) {
        mnemo_cluster::Cluster::refresh(self)
    }
    fn may_acknowledge(&self, shard: u32) -> bool {
        mnemo_cluster::Cluster::may_acknowledge(self, shard)
    }
    fn lease_valid(&self) -> bool {
        mnemo_cluster::Cluster::lease_valid(self)
    }
    fn status(&self) -> ClusterStatus {
        mnemo_cluster::Cluster::status(self)
    }
}

/// Names the lag bound of a replica's answer, in ms (a reader node's reads).
pub const LAG_HEADER: &str = "x-mnemo-replica-lag-ms";
/// `strong` sends a read on a reader node to the shard's owner (read-your-writes).
pub const CONSISTENCY_HEADER: &str = "x-mnemo-consistency";

/// The shards a reader node follows read-only; reads are served from them.
pub type Replicas = mnemo_cluster::Replicas<LocalShard>;

impl mnemo_cluster::Followed for LocalShard {
    fn shard(&self) -> u32 {
        self.shard
    }
    fn followed_at_ms(&self) -> Option<u64> {
        self.store.followed_at_ms()
    }
}

/// Now, in ms since the Unix epoch (the clock replicas' lag is measured by).
pub fn now_ms() -> u64 {
    u64::try_from(mnemo_storage::clock::now_ms()).unwrap_or(0)
}

/// Each followed shard's lag bound in ms (`null` before its first round).
fn replica_status(r: &Replicas) -> serde_json::Value {
    r.lags(now_ms())
        .into_iter()
        .map(|(n, lag)| serde_json::json!({"shard": n, "lag_ms": lag}))
        .collect()
}

/// The state of a cluster node's front.
#[derive(Clone)]
pub struct ClusterFront {
    map: Arc<dyn ShardMap>,
    auth: Arc<crate::auth::AuthConfig>,
    client: reqwest::Client,
    /// How long a request waits for a shard without an owner (a failover in progress).
    owner_wait: Duration,
    /// On a reader node: the shards it follows.
    replicas: Option<Arc<Replicas>>,
    /// Runs queries over several shards.
    sql: Option<Arc<mnemo_sql::SqlEngine>>,
    /// Most rows of a JSON SQL answer.
    sql_max_rows: usize,
}

impl ClusterFront {
    /// A front over `map`, authenticating callers with `auth` (the same settings as every
    /// shard's API). `owner_wait`: how long a request for a shard without an owner waits for
    /// one (the lease TTL plus the time to open a shard is a good choice).
    pub fn new(
        map: Arc<dyn ShardMap>,
        auth: crate::auth::AuthConfig,
        owner_wait: Duration,
    ) -> Self {
        ClusterFront {
            map,
            auth: Arc::new(auth),
            client: forward::client(),
            owner_wait,
            replicas: None,
            sql: None,
            sql_max_rows: crate::DEFAULT_SQL_MAX_ROWS,
        }
    }

    /// Runs `POST /v1/sql` over several shards with `engine` (made with
    /// [`mnemo_sql::SqlEngine::for_shards`]), with at most `max_rows` rows in a JSON answer.
    pub fn with_sql(mut self, engine: Arc<mnemo_sql::SqlEngine>, max_rows: usize) -> Self {
        self.sql = Some(engine);
        self.sql_max_rows = max_rows;
        self
    }

    /// A reader node's front: reads are answered from `replicas` (unless they ask for the
    /// owner), everything else is forwarded to the owners.
    pub fn with_replicas(mut self, replicas: Arc<Replicas>) -> Self {
        self.replicas = Some(replicas);
        self
    }
}

/// The API of one shard on a cluster node: [`crate::router`], plus the route through which
/// other nodes read the shard's part of a query ([`SHARD_READ_PATH`]).
pub fn shard_router(state: crate::AppState) -> Router {
    Router::new()
        .route(SHARD_READ_PATH, axum::routing::post(crate::sql::shard_read))
        .with_state(state.clone())
        .merge(crate::router(state))
}

/// The router of a cluster node: every route goes through the front.
pub fn router(front: ClusterFront) -> Router {
    crate::metrics::install();
    Router::new()
        .fallback(handle)
        .layer(axum::middleware::from_fn(
            crate::connection::close_when_body_unread,
        ))
        .with_state(front)
}

async fn handle(State(front): State<ClusterFront>, req: Request) -> Response {
    match dispatch(&front, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// A request read whole, so it can be sent more than once.
#[derive(Clone)]
pub(crate) struct Buffered {
    pub(crate) parts: axum::http::request::Parts,
    pub(crate) body: Bytes,
}

impl Buffered {
    fn to_request(&self) -> Request {
        Request::from_parts(self.parts.clone(), Body::from(self.body.clone()))
    }

    /// The same request to `path` with another query string (fan-outs rewrite cursors).
    pub(crate) fn with_path_query(&self, path: &str, query: &str) -> Buffered {
        let mut b = self.clone();
        let uri = if query.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{query}")
        };
        if let Ok(u) = uri.parse() {
            b.parts.uri = u;
        }
        b
    }
}

async fn dispatch(front: &ClusterFront, req: Request) -> ApiResult<Response> {
    let path = req.uri().path().to_owned();
    match path.as_str() {
        "/healthz" => return Ok(health(front)),
        "/metrics" => {
            return Ok((
                [(
                    axum::http::header::CONTENT_TYPE,
                    "text/plain; version=0.0.4",
                )],
                crate::metrics::install().render(),
            )
                .into_response())
        }
        "/openapi.json" => {
            return Ok((
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                crate::openapi_json_text(),
            )
                .into_response())
        }
        "/v1/cluster/status" => {
            let mut v = serde_json::to_value(front.map.status()).unwrap_or_default();
            if let Some(r) = &front.replicas {
                v["replicas"] = replica_status(r);
            }
            return Ok(axum::Json(v).into_response());
        }
        _ => {}
    }
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("request bodies are limited to {MAX_BODY} bytes"),
        )
    })?;
    let req = Buffered { parts, body };
    if let Some(peer) = req.parts.headers.get(PEER_HEADER) {
        return serve_peer(front, peer.as_bytes(), &req).await;
    }
    let (identity, scope) = caller(front, &req).await?;
    match target::classify(&req, &scope, front.map.shards())? {
        Target::Shard(n) => to_shard(front, n, &req).await,
        // Refused (and audited) once, by the caller's own shard.
        Target::FanOut(target::FanOut::Audit, shards)
            if !identity
                .permissions
                .contains(crate::auth::Permission::Admin) =>
        {
            to_shard(front, shards.first().copied().unwrap_or(0), &req).await
        }
        Target::FanOut(kind, shards) => fanout::run(front, kind, &shards, &req).await,
        Target::Sql(shards) => sql::query(front, &req, &identity, scope, shards, false).await,
    }
}

/// The verified caller of a request, and the scope it acts in.
async fn caller(
    front: &ClusterFront,
    req: &Buffered,
) -> ApiResult<(crate::auth::Identity, mnemo_storage::Scope)> {
    let identity = crate::auth::authenticate(&front.auth, &req.parts).await?;
    let user = req.parts.headers.get(crate::auth::USER_HEADER);
    let scope = identity.scope(user.map(|v| v.as_bytes()))?;
    Ok((identity, scope))
}

fn health(front: &ClusterFront) -> Response {
    let valid = front.map.lease_valid();
    let status = if valid {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": if valid { "ok" } else { "unavailable" },
        "node": front.map.node_id(),
    });
    (status, axum::Json(body)).into_response()
}

/// A request from another node: served by the named shard if this node owns it, else 421.
async fn serve_peer(front: &ClusterFront, token: &[u8], req: &Buffered) -> ApiResult<Response> {
    if !same_secret(token, front.map.secret().as_bytes()) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "bad peer credentials",
        )
        .with_code("invalid_peer"));
    }
    let shard = req
        .parts
        .headers
        .get(SHARD_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|n| *n < front.map.shards())
        .ok_or_else(|| ApiError::invalid_param(SHARD_HEADER, "a peer request names its shard"))?;
    // A shard this node is still opening is waited for; one another node owns is refused,
    // and the sender asks that node instead.
    let route = match front.map.route(shard) {
        Route::Unavailable => front.map.wait_route(shard, front.owner_wait).await,
        r => r,
    };
    match route {
        // A user's query sent to the node of the user's shard runs here over the shards
        // the user can see.
        Route::Local(_) if req.parts.uri.path() == "/v1/sql" => {
            let (identity, scope) = caller(front, req).await?;
            let shards = target::visible(&scope, front.map.shards());
            sql::query(front, req, &identity, scope, shards, true).await
        }
        Route::Local(local) => serve_local(front, shard, local, req).await,
        _ => Err(not_owner(shard)),
    }
}

fn not_owner(shard: u32) -> ApiError {
    ApiError::new(
        StatusCode::MISDIRECTED_REQUEST,
        "service_unavailable",
        format!("this node does not own shard {shard}"),
    )
    .with_code("not_owner")
}

/// Compares two secrets in time independent of where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(crate) fn unavailable(shard: u32, message: impl Into<String>) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "service_unavailable",
        message,
    )
    .with_code("shard_unavailable")
    .with_param(format!("shard {shard}"))
}

/// Serves a request on shard `n`, wherever it is: locally, or forwarded to its owner.
pub(crate) async fn to_shard(front: &ClusterFront, n: u32, req: &Buffered) -> ApiResult<Response> {
    if let Some(replica) = front
        .replicas
        .as_ref()
        .filter(|_| is_read(req) && !wants_owner(req))
        .and_then(|r| r.get(n))
    {
        return Ok(serve_replica(front, n, replica, req).await);
    }
    if !front.map.lease_valid() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            "this node has no valid lease (etcd unreachable?): it answers for no shard; retry",
        )
        .with_code("lease_lost"));
    }
    let mut retried = false;
    loop {
        let route = match front.map.route(n) {
            Route::Unavailable => front.map.wait_route(n, front.owner_wait).await,
            r => r,
        };
        match route {
            Route::Local(local) => return serve_local(front, n, local, req).await,
            Route::Unavailable => {
                return Err(unavailable(
                    n,
                    format!("shard {n} has no owner yet (a node is taking it over); retry"),
                ))
            }
            Route::Remote { node, url } => match forward::send(front, n, &node, &url, req).await {
                Ok(r) => return Ok(r),
                Err(forward::Failure::Retry(why)) if !retried => {
                    tracing::info!(shard = n, node = %node, why = %why, "owner moved; retrying once");
                    retried = true;
                    front.map.refresh();
                    wait_moved(front, n, &node).await;
                }
                Err(forward::Failure::Retry(why)) => {
                    return Err(unavailable(n, format!("shard {n}: {why}; retry")))
                }
                Err(forward::Failure::Fatal(e)) => return Err(e),
            },
        }
    }
}

/// Counts a request for shard `n` by how it was served (`local`, `replica`, `forwarded`).
pub(crate) fn count(n: u32, served: &'static str) {
    metrics::counter!("mnemo_cluster_requests_total", "shard" => n.to_string(), "served" => served)
        .increment(1);
}

/// True for requests that only read: a reader node may answer them from a replica. Export
/// jobs are not: their owner runs them and knows their progress.
fn is_read(req: &Buffered) -> bool {
    let path = req.parts.uri.path();
    if path.starts_with("/v1/admin/exports") {
        return false;
    }
    match req.parts.method {
        axum::http::Method::GET | axum::http::Method::HEAD => true,
        axum::http::Method::POST => path == "/v1/search" || path == "/v1/sql",
        _ => false,
    }
}

/// True when a read asks for read-your-writes: `X-Mnemo-Consistency: strong`, or a search
/// with `"consistency": "strong"`. The owner answers those.
fn wants_owner(req: &Buffered) -> bool {
    let header = req
        .parts
        .headers
        .get(CONSISTENCY_HEADER)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"strong"));
    header
        || (req.parts.uri.path() == "/v1/search"
            && serde_json::from_slice::<serde_json::Value>(&req.body)
                .is_ok_and(|b| b["consistency"] == "strong"))
}

/// Serves a read from a replica this reader node follows, with its lag bound.
async fn serve_replica(
    front: &ClusterFront,
    n: u32,
    replica: Arc<LocalShard>,
    req: &Buffered,
) -> Response {
    let mut resp = call_shard(front, n, replica, req, "replica").await;
    if let Some(lag) = front.replicas.as_ref().and_then(|r| r.lag_ms(n, now_ms())) {
        resp.headers_mut()
            .insert(LAG_HEADER, HeaderValue::from(lag));
    }
    resp
}

/// Answers a request with a shard open on this node (owned, or a replica), its answer
/// marked with this node and the shard.
async fn call_shard(
    front: &ClusterFront,
    n: u32,
    shard: Arc<LocalShard>,
    req: &Buffered,
    served: &'static str,
) -> Response {
    count(n, served);
    // The shard is held until it has answered: closing it waits for requests in flight.
    let mut router = shard.router.clone();
    let mut resp = match router.call(req.to_request()).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    drop(shard);
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(front.map.node_id()) {
        h.insert(NODE_HEADER, v);
    }
    h.insert(SHARD_HEADER, HeaderValue::from(n));
    resp
}

/// Waits (up to the owner wait) until shard `n` is no longer routed to `node`.
pub(crate) async fn wait_moved(front: &ClusterFront, n: u32, node: &str) {
    let _ = tokio::time::timeout(front.owner_wait, moved_away(front, n, node)).await;
}

/// Resolves once shard `n` is routed to a node other than `node` (never while it stays).
pub(crate) async fn moved_away(front: &ClusterFront, n: u32, node: &str) {
    loop {
        match front.map.route(n) {
            Route::Remote { node: now, .. } if now == node => {}
            Route::Unavailable => {}
            _ => return,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Serves a request on a shard this node holds. The answer is sent only if the node still
/// holds the shard under a valid lease once the shard has answered: a node that lost its
/// lease meanwhile (paused, cut off from etcd) acknowledges nothing.
async fn serve_local(
    front: &ClusterFront,
    n: u32,
    local: Arc<LocalShard>,
    req: &Buffered,
) -> ApiResult<Response> {
    let resp = call_shard(front, n, local, req, "local").await;
    if !front.map.may_acknowledge(n) {
        metrics::counter!("mnemo_cluster_unacknowledged_total").increment(1);
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            format!("this node lost shard {n}'s lease while serving the request; its outcome is unknown: retry"),
        )
        .with_code("lease_lost"));
    }
    Ok(resp)
}
