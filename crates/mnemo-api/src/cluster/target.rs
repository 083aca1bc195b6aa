//! Which shard (or shards) a request is for, from its route and the caller's verified scope.
//!
//! * A user's data (conversations, items, `users/<u>/` memory) lives on the shard of
//!   hash(tenant, user); a tenant's shared memory, and conversations created without a user,
//!   on the shard of hash(tenant). A conversation id ends with its shard's tag, so a request
//!   naming a conversation goes to its shard whoever calls.
//! * A tenant's research export jobs are kept and run on the shard of hash(tenant); a job
//!   reads every shard.
//! * Operations over many users (memory listings, search, the change feed) fan out to the
//!   shards the scope can see: all of them for a tenant-wide caller; the user's shard and the
//!   tenant's for a caller acting for one user.

use super::Buffered;
use crate::extract::query_pairs;
use crate::{ApiError, ApiResult};
use axum::http::{Method, StatusCode};
use mnemo_cluster::placement::{shard_of, shard_of_id, shard_of_key, visible_shards};
use mnemo_storage::access::kv_owner;
use mnemo_storage::Scope;

/// Where a request goes.
#[derive(Debug, PartialEq)]
pub(super) enum Target {
    /// One shard.
    Shard(u32),
    /// Several shards, answers merged.
    FanOut(FanOut, Vec<u32>),
    /// `POST /v1/sql` over the shards the scope can see (the caller's first).
    Sql(Vec<u32>),
}

/// The fan-out operations.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum FanOut {
    /// `GET /v1/kv`: pages merged in key order.
    KvList,
    /// `POST /v1/search`: hits merged by score.
    Search,
    /// `GET /v1/changes`: pages merged by time, with a cursor per shard.
    Changes,
    /// `GET /v1/changes/stream`: the same, as Server-Sent Events.
    ChangesStream,
    /// `GET /v1/admin/audit`: pages merged by time, with a cursor per shard.
    Audit,
}

/// Classifies a request.
pub(super) fn classify(req: &Buffered, scope: &Scope, shards: u32) -> ApiResult<Target> {
    let tenant = scope.tenant.as_str();
    let home = shard_of(shards, tenant, scope.user.as_deref());
    let visible = || visible(scope, shards);
    let path = req.parts.uri.path();
    let method = &req.parts.method;
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let t = match segments.as_slice() {
        ["v1", "conversations"] => Target::Shard(home),
        ["v1", "conversations", id, ..] => Target::Shard(shard_of_id(shards, id).unwrap_or(home)),
        ["v1", "kv"] => {
            let prefix = query_pairs(req.parts.uri.query())?
                .into_iter()
                .find(|(k, _)| k == "prefix")
                .map(|(_, v)| v)
                .unwrap_or_default();
            // A prefix inside one user's space is on that user's shard alone.
            match kv_owner(&prefix) {
                Some(owner) if prefix.len() > "users/".len() + owner.len() => {
                    Target::Shard(shard_of_key(shards, tenant, &prefix))
                }
                _ => Target::FanOut(FanOut::KvList, visible()),
            }
        }
        ["v1", "kv", "batch"] if method == Method::POST => {
            Target::Shard(batch_shard(&req.body, tenant, shards)?.unwrap_or(home))
        }
        ["v1", "kv", ..] => {
            let raw = path.strip_prefix("/v1/kv/").unwrap_or_default();
            let key = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
            Target::Shard(shard_of_key(shards, tenant, &key))
        }
        ["v1", "search"] => Target::FanOut(FanOut::Search, visible()),
        ["v1", "sql"] => Target::Sql(visible()),
        // Between nodes only (they send it to a shard directly, never through here).
        ["v1", "cluster", ..] => return Err(ApiError::not_found(format!("no route {path}"))),
        ["v1", "changes"] => Target::FanOut(FanOut::Changes, visible()),
        ["v1", "changes", "stream"] => Target::FanOut(FanOut::ChangesStream, visible()),
        ["v1", "admin", "users", user, ..] => {
            let user = percent_encoding::percent_decode_str(user).decode_utf8_lossy();
            Target::Shard(shard_of(shards, tenant, Some(&user)))
        }
        // A tenant's export jobs are run and kept by its shard's owner; they read every shard.
        ["v1", "admin", "exports", ..] => Target::Shard(shard_of(shards, tenant, None)),
        // The tenant's whole log, whoever asks (an admin).
        ["v1", "admin", "audit"] => Target::FanOut(FanOut::Audit, (0..shards).collect()),
        // Anything else is answered (404, 405) by the caller's own shard.
        _ => Target::Shard(home),
    };
    Ok(t)
}

/// The shards a scope can see data on (the user's first): see
/// [`mnemo_cluster::placement::visible_shards`].
pub(super) fn visible(scope: &Scope, shards: u32) -> Vec<u32> {
    visible_shards(shards, scope.tenant.as_str(), scope.user.as_deref())
}

/// The one shard every key of a memory batch is on; 400 `cross_shard_batch` if they are on
/// several (a batch is atomic, and atomicity holds within one shard). `None` when the body
/// names no key (the shard answers the validation error).
fn batch_shard(body: &[u8], tenant: &str, shards: u32) -> ApiResult<Option<u32>> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Ok(None);
    };
    let mut found: Option<u32> = None;
    let ops = v.get("operations").and_then(|o| o.as_array());
    for key in ops
        .into_iter()
        .flatten()
        .filter_map(|op| op.get("key")?.as_str())
    {
        let s = shard_of_key(shards, tenant, key);
        match found {
            Some(f) if f != s => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "a batch is atomic within one shard: its keys must all be in one user's space \
                     (users/<u>/…) or all shared",
                )
                .with_code("cross_shard_batch")
                .with_param("operations"))
            }
            _ => found = Some(s),
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Bytes;
    use mnemo_storage::TenantId;

    fn req(method: Method, uri: &str, body: &str) -> Buffered {
        let (parts, ()) = axum::http::Request::builder()
            .method(method)
            .uri(uri)
            .body(())
            .unwrap()
            .into_parts();
        Buffered {
            parts,
            body: Bytes::from(body.to_owned()),
        }
    }

    #[test]
    fn user_data_goes_to_the_users_shard() {
        let t = TenantId::new("t").unwrap();
        let alice = Scope::user(t.clone(), "alice").unwrap();
        let app = Scope::tenant(t);
        let n = 64;
        let a = shard_of(n, "t", Some("alice"));
        let shared = shard_of(n, "t", None);
        assert_ne!(a, shared, "pick users whose shards differ");
        let c = |s: &Scope, m, u: &str, b: &str| classify(&req(m, u, b), s, n).unwrap();
        assert_eq!(
            c(&alice, Method::POST, "/v1/conversations", "{}"),
            Target::Shard(a)
        );
        assert_eq!(
            c(&app, Method::POST, "/v1/conversations", "{}"),
            Target::Shard(shared)
        );
        let id = format!(
            "conv_{}{}",
            "0".repeat(44),
            mnemo_cluster::placement::id_tag(5)
        );
        assert_eq!(
            c(
                &app,
                Method::GET,
                &format!("/v1/conversations/{id}/items"),
                ""
            ),
            Target::Shard(5)
        );
        assert_eq!(
            c(&app, Method::GET, "/v1/kv/users%2Falice%2Fx", ""),
            Target::Shard(a)
        );
        assert_eq!(
            c(&app, Method::GET, "/v1/kv/users/alice/x", ""),
            Target::Shard(a)
        );
        assert_eq!(
            c(&alice, Method::GET, "/v1/kv/prefs", ""),
            Target::Shard(shared)
        );
        assert_eq!(
            c(&app, Method::GET, "/v1/kv?prefix=users/alice/", ""),
            Target::Shard(a)
        );
        assert_eq!(
            c(&alice, Method::GET, "/v1/kv", ""),
            Target::FanOut(FanOut::KvList, vec![a, shared])
        );
        assert_eq!(
            c(&app, Method::POST, "/v1/search", "{}"),
            Target::FanOut(FanOut::Search, (0..n).collect())
        );
        assert_eq!(
            c(&app, Method::DELETE, "/v1/admin/users/alice", ""),
            Target::Shard(a)
        );
        let batch = r#"{"operations":[{"op":"put","key":"users/alice/a","value":"1"},{"op":"delete","key":"prefs"}]}"#;
        let e = classify(&req(Method::POST, "/v1/kv/batch", batch), &app, n).unwrap_err();
        assert_eq!(e.code, Some("cross_shard_batch"));
        let one = r#"{"operations":[{"op":"put","key":"users/alice/a","value":"1"}]}"#;
        assert_eq!(c(&app, Method::POST, "/v1/kv/batch", one), Target::Shard(a));
        assert_eq!(
            c(&app, Method::POST, "/v1/sql", "{}"),
            Target::Sql((0..n).collect())
        );
        assert_eq!(
            c(&alice, Method::POST, "/v1/sql", "{}"),
            Target::Sql(vec![a, shared])
        );
        for s in [&app, &alice] {
            assert_eq!(
                c(s, Method::POST, "/v1/admin/exports", "{}"),
                Target::Shard(shared)
            );
            assert_eq!(
                c(s, Method::GET, "/v1/admin/exports/export_1", ""),
                Target::Shard(shared)
            );
        }
        let e = classify(&req(Method::POST, "/v1/cluster/shard-read", "{}"), &app, n).unwrap_err();
        assert_eq!(e.status, StatusCode::NOT_FOUND);
    }
}
