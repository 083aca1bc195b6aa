//! `POST /v1/sql` on a cluster: the query runs on one node over the shards its caller can
//! see ([`mnemo_sql::SqlEngine::query_shards`]). Shards open on that node are read directly;
//! the others are asked for their part of each scan with `POST /v1/cluster/shard-read`,
//! routed like any request for a shard (one hop, one retry when the owner moved) and
//! answered in Arrow by the owner, for the same caller's credentials.
//!
//! A query acting for one user runs on the node of the user's shard, where its items and
//! vectors are; a tenant-wide query runs on the node that was asked.

use super::{to_shard, Buffered, ClusterFront, LocalShard, LAG_HEADER};
use crate::auth::Identity;
use crate::sql::{respond, sql_access, SqlCall, ARROW_STREAM};
use crate::{ApiError, ApiResult};
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, Method};
use axum::response::Response;
use futures::StreamExt;
use mnemo_cluster::placement::id_tag;
use mnemo_cluster::Route;
use mnemo_sql::{BatchStream, RemoteShard, Shard, ShardRequest, ShardSource, SqlError};
use mnemo_storage::Scope;
use std::sync::Arc;

/// Where shards send their part of a query (a route of each shard's own API).
pub const SHARD_READ_PATH: &str = "/v1/cluster/shard-read";

/// Runs a query over `shards` (the caller's own first) for a caller the front verified. A
/// user's query whose shard is on another node is sent there (`peer`: it came from another
/// node and runs here).
pub(super) async fn query(
    front: &ClusterFront,
    req: &Buffered,
    identity: &Identity,
    scope: Scope,
    shards: Vec<u32>,
    peer: bool,
) -> ApiResult<Response> {
    // The caller's own shard (a scope always sees at least one).
    let first = shards.first().copied().unwrap_or(0);
    let strong = super::wants_owner(req);
    if shards.len() == 1 || (scope.user.is_some() && !peer && local(front, first, strong).is_none())
    {
        // One shard answers alone; a user's query runs where the user's shard is.
        return to_shard(front, first, req).await;
    }
    let Some(engine) = front.sql.clone() else {
        return Err(crate::sql::not_enabled());
    };
    let call = SqlCall::read(&req.parts.headers, Body::from(req.body.clone())).await?;
    let mut held: Vec<Arc<LocalShard>> = Vec::new();
    let mut lag: Option<u64> = None;
    let mut parts = Vec::with_capacity(shards.len());
    for &n in &shards {
        let source = match local(front, n, strong) {
            Some((shard, replica_lag)) => {
                super::count(
                    n,
                    if replica_lag.is_some() {
                        "replica"
                    } else {
                        "local"
                    },
                );
                lag = lag.max(replica_lag);
                let source = ShardSource::Local {
                    store: shard.store.clone(),
                    search: shard.search.clone(),
                };
                held.push(shard);
                source
            }
            None => ShardSource::Remote(Arc::new(PeerShard {
                front: front.clone(),
                shard: n,
                template: req.clone(),
            })),
        };
        parts.push(Shard {
            source,
            id_tag: Some(id_tag(n)),
            user_data: scope.user.is_none() || n == first,
        });
    }
    let mut answer = engine
        .query_shards(parts, scope, sql_access(identity), &call.query, call.params)
        .await?;
    // The local shards stay open until the answer has been sent (closing one waits for the
    // requests it serves).
    answer.batches = answer
        .batches
        .map(move |b| {
            let _ = &held;
            b
        })
        .boxed();
    let mut resp = respond(answer, call.arrow, front.sql_max_rows).await?;
    if let Ok(v) = HeaderValue::from_str(front.map.node_id()) {
        resp.headers_mut().insert(super::NODE_HEADER, v);
    }
    if let Some(lag) = lag {
        resp.headers_mut()
            .insert(LAG_HEADER, HeaderValue::from(lag));
    }
    Ok(resp)
}

/// Shard `n` open on this node for reading: owned under a valid lease, or (on a reader node,
/// unless the read asks for the owner) a replica with its lag bound.
fn local(front: &ClusterFront, n: u32, strong: bool) -> Option<(Arc<LocalShard>, Option<u64>)> {
    if let Some(replicas) = front.replicas.as_ref().filter(|_| !strong) {
        if let Some(shard) = replicas.get(n) {
            return Some((
                shard,
                Some(replicas.lag_ms(n, super::now_ms()).unwrap_or(0)),
            ));
        }
    }
    match front.map.route(n) {
        Route::Local(shard) => Some((shard, None)),
        _ => None,
    }
}

/// A shard of a query that another node serves, asked through the front's routing with the
/// credentials of the query's request.
struct PeerShard {
    front: ClusterFront,
    shard: u32,
    /// The query's request: its headers (the caller's credentials) are sent along.
    template: Buffered,
}

#[async_trait::async_trait]
impl RemoteShard for PeerShard {
    async fn read(&self, request: ShardRequest) -> Result<BatchStream, SqlError> {
        let n = self.shard;
        let mut req = self.template.with_path_query(SHARD_READ_PATH, "");
        req.parts.method = Method::POST;
        req.body = Bytes::from(request.to_json());
        let h = &mut req.parts.headers;
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::ACCEPT, HeaderValue::from_static(ARROW_STREAM));
        h.remove(header::CONTENT_LENGTH);
        let resp = to_shard(&self.front, n, &req)
            .await
            .map_err(|e| failed(n, &e))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = axum::body::to_bytes(resp.into_body(), 64 << 10)
                .await
                .unwrap_or_default();
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| status.to_string());
            return Err(SqlError::Shard(format!(
                "shard {n} could not be read: {message}"
            )));
        }
        Ok(mnemo_sql::arrow_stream(resp.into_body().into_data_stream()))
    }

    fn label(&self) -> String {
        self.shard.to_string()
    }
}

fn failed(n: u32, e: &ApiError) -> SqlError {
    SqlError::Shard(format!("shard {n} could not be read: {}", e.message))
}
