//! Forwarding one request to the node that owns its shard.

use super::{Buffered, ClusterFront, PEER_HEADER, SHARD_HEADER};
use crate::ApiError;
use axum::body::Body;
use axum::http::{HeaderName, StatusCode};
use axum::response::Response;
use futures::StreamExt;
use std::time::Duration;

/// Longest a forwarded request may take (a SQL query's own limit is 30 s by default, a
/// long poll of the change feed at most 60 s).
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// The client nodes forward with: pooled connections, a short connect timeout.
pub(super) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_default()
}

/// Why a forward failed.
pub(super) enum Failure {
    /// The owner refused the request before acting on it (421: no longer the owner), or it
    /// could not be reached: sending it again to the new owner is safe.
    Retry(String),
    /// Anything else: the answer to the client.
    Fatal(ApiError),
}

/// Headers that describe one connection, not the request: never forwarded.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "te"
            | "upgrade"
            | "host"
            | "content-length"
            | "proxy-connection"
    )
}

/// Sends `req` for shard `n` to `node` at `url` and returns its answer. A request that was
/// sent and not answered is not sent again (the owner may have acted on it): if the shard
/// moves away from `node` meanwhile (the owner is paused or cut off), the wait ends with 503.
pub(super) async fn send(
    front: &ClusterFront,
    n: u32,
    node: &str,
    url: &str,
    req: &Buffered,
) -> Result<Response, Failure> {
    let path_and_query = req
        .parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let target = format!("{}{}", url.trim_end_matches('/'), path_and_query);
    let mut out = front
        .client
        .request(req.parts.method.clone(), &target)
        .header(PEER_HEADER, front.map.secret())
        .header(SHARD_HEADER, n.to_string())
        .body(req.body.clone());
    for (name, value) in &req.parts.headers {
        if !hop_by_hop(name) && name.as_str() != PEER_HEADER && name.as_str() != SHARD_HEADER {
            out = out.header(name, value);
        }
    }
    let streaming = req.parts.uri.path().ends_with("/stream");
    if !streaming {
        out = out.timeout(READ_TIMEOUT);
    }
    super::count(n, "forwarded");
    let started = std::time::Instant::now();
    let sent = tokio::select! {
        r = out.send() => r,
        () = super::moved_away(front, n, node) => {
            return Err(Failure::Fatal(super::unavailable(
                n,
                format!("shard {n} moved from node {node} while it held this request; its outcome is unknown: retry"),
            )));
        }
    };
    let resp = match sent {
        Ok(r) => r,
        Err(e) if e.is_connect() => return Err(Failure::Retry(format!("node {node} unreachable"))),
        Err(e) if e.is_timeout() => {
            return Err(Failure::Fatal(super::unavailable(
                n,
                format!("node {node} did not answer in {READ_TIMEOUT:?}"),
            )))
        }
        Err(e) => {
            return Err(Failure::Fatal(super::unavailable(
                n,
                format!("forwarding to node {node} failed: {e}"),
            )))
        }
    };
    if resp.status() == StatusCode::MISDIRECTED_REQUEST {
        return Err(Failure::Retry(format!(
            "node {node} no longer owns shard {n}"
        )));
    }
    metrics::histogram!("mnemo_cluster_forward_seconds").record(started.elapsed().as_secs_f64());
    Ok(into_response(resp, streaming).await)
}

async fn into_response(resp: reqwest::Response, streaming: bool) -> Response {
    let mut builder = Response::builder().status(resp.status());
    for (name, value) in resp.headers() {
        if !hop_by_hop(name) {
            builder = builder.header(name, value);
        }
    }
    let body = if streaming {
        Body::from_stream(
            resp.bytes_stream()
                .map(|r| r.map_err(std::io::Error::other)),
        )
    } else {
        match resp.bytes().await {
            Ok(b) => Body::from(b),
            Err(e) => {
                let err = ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "service_unavailable",
                    format!("reading the owner's answer failed: {e}"),
                );
                return axum::response::IntoResponse::into_response(err);
            }
        }
    };
    builder.body(body).unwrap_or_else(|_| {
        axum::response::IntoResponse::into_response(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "service_unavailable",
            "the owner's answer could not be relayed",
        ))
    })
}
