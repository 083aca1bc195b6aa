//! A small etcd v3 client over etcd's JSON gateway (`POST {endpoint}/v3/...`).
//!
//! Keys and values travel base64-encoded; 64-bit numbers (lease IDs, revisions, TTLs)
//! come back as JSON strings and are parsed here. Only what the cluster needs is
//! implemented: leases, single-key and prefix reads, puts, and a few transactions.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};

/// Default timeout of one HTTP request to etcd.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// An error talking to etcd.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint answered (connection refused, timeout...).
    #[error("etcd unreachable: {0}")]
    Unreachable(String),
    /// etcd answered with an error status.
    #[error("etcd error (HTTP {status}): {message}")]
    Status {
        /// The HTTP status code.
        status: u16,
        /// etcd's error message (or the body).
        message: String,
    },
    /// The lease named in the request does not exist (expired or revoked).
    #[error("etcd lease not found")]
    LeaseNotFound,
    /// etcd's answer could not be decoded.
    #[error("cannot decode etcd answer: {0}")]
    Decode(String),
    /// The client was configured wrongly (no endpoints...).
    #[error("bad etcd client configuration: {0}")]
    Config(String),
}

/// One key-value pair as stored in etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The raw value.
    pub value: Vec<u8>,
    /// Revision at which the key was created.
    pub create_revision: i64,
    /// Revision of the last modification of the key.
    pub mod_revision: i64,
    /// The lease the key is attached to (0 for none).
    pub lease: i64,
}

/// The result of a range read: the pairs and the store revision at which they were read.
#[derive(Debug, Clone, Default)]
pub struct RangeResult {
    /// The pairs, sorted by key.
    pub kvs: Vec<KeyValue>,
    /// The store revision of the read.
    pub revision: i64,
}

/// A client for etcd's v3 JSON gateway, with failover among several endpoints.
#[derive(Debug)]
pub struct EtcdClient {
    http: reqwest::Client,
    endpoints: Vec<String>,
    /// Index of the endpoint that answered last; tried first.
    preferred: AtomicUsize,
}

impl EtcdClient {
    /// Creates a client. Each entry of `endpoints` may itself hold several comma-separated
    /// URLs (e.g. `http://10.0.0.1:2379,http://10.0.0.2:2379`). Each request times out
    /// after `timeout`.
    pub fn new(endpoints: &[String], timeout: Duration) -> Result<Self, EtcdError> {
        let endpoints: Vec<String> = endpoints
            .iter()
            .flat_map(|e| e.split(','))
            .map(|e| e.trim().trim_end_matches('/').to_string())
            .filter(|e| !e.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err(EtcdError::Config("no etcd endpoint given".into()));
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .no_proxy()
            .build()
            .map_err(|e| EtcdError::Config(e.to_string()))?;
        Ok(Self {
            http,
            endpoints,
            preferred: AtomicUsize::new(0),
        })
    }

    /// The endpoints this client uses.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// POSTs `body` to `path` on the first endpoint that answers.
    async fn call(&self, path: &str, body: &Value) -> Result<Value, EtcdError> {
        let n = self.endpoints.len();
        let start = self.preferred.load(Ordering::Relaxed) % n;
        let mut last_err = String::new();
        for i in 0..n {
            let idx = (start + i) % n;
            let url = format!("{}{}", self.endpoints[idx], path);
            let resp = match self.http.post(&url).json(body).send().await {
                Ok(r) => r,
                Err(e) => {
                    last_err = format!("{url}: {e}");
                    continue;
                }
            };
            self.preferred.store(idx, Ordering::Relaxed);
            let status = resp.status();
            let bytes = match resp.bytes().await {
                Ok(b) => b,
                Err(e) => {
                    last_err = format!("{url}: {e}");
                    continue;
                }
            };
            return decode_response(status.as_u16(), &bytes);
        }
        Err(EtcdError::Unreachable(last_err))
    }

    /// Grants a lease of `ttl_secs` seconds. Returns (lease ID, granted TTL in seconds).
    pub async fn lease_grant(&self, ttl_secs: i64) -> Result<(i64, i64), EtcdError> {
        let v = self
            .call("/v3/lease/grant", &json!({ "TTL": ttl_secs.to_string() }))
            .await?;
        let id = get_i64(&v, "ID");
        if id == 0 {
            return Err(EtcdError::Decode(format!("lease grant without ID: {v}")));
        }
        Ok((id, get_i64(&v, "TTL")))
    }

    /// Renews a lease once. Returns the remaining TTL in seconds; 0 means the lease is gone.
    pub async fn lease_keepalive(&self, id: i64) -> Result<i64, EtcdError> {
        match self
            .call("/v3/lease/keepalive", &json!({ "ID": id.to_string() }))
            .await
        {
            Ok(v) => Ok(get_i64(&v, "TTL").max(0)),
            Err(EtcdError::LeaseNotFound) => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Revokes a lease, deleting every key attached to it. A lease that is already gone
    /// is not an error.
    pub async fn lease_revoke(&self, id: i64) -> Result<(), EtcdError> {
        match self
            .call("/v3/lease/revoke", &json!({ "ID": id.to_string() }))
            .await
        {
            Ok(_) | Err(EtcdError::LeaseNotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The remaining TTL of a lease in seconds, or `None` if the lease is gone.
    pub async fn lease_time_to_live(&self, id: i64) -> Result<Option<i64>, EtcdError> {
        let v = self
            .call("/v3/lease/timetolive", &json!({ "ID": id.to_string() }))
            .await?;
        let ttl = get_i64(&v, "TTL");
        Ok((ttl > 0).then_some(ttl))
    }

    /// Reads one key.
    pub async fn get(&self, key: &str) -> Result<Option<KeyValue>, EtcdError> {
        let v = self
            .call("/v3/kv/range", &json!({ "key": B64.encode(key) }))
            .await?;
        Ok(parse_kvs(&v)?.into_iter().next())
    }

    /// Reads every key starting with `prefix`.
    pub async fn get_prefix(&self, prefix: &str) -> Result<RangeResult, EtcdError> {
        let v = self
            .call(
                "/v3/kv/range",
                &json!({
                    "key": B64.encode(prefix),
                    "range_end": B64.encode(prefix_end(prefix.as_bytes())),
                }),
            )
            .await?;
        Ok(RangeResult {
            kvs: parse_kvs(&v)?,
            revision: header_revision(&v),
        })
    }

    /// Writes a key, attached to `lease` if given. Returns the revision of the write.
    pub async fn put(&self, key: &str, value: &[u8], lease: Option<i64>) -> Result<i64, EtcdError> {
        let v = self
            .call("/v3/kv/put", &put_body(key, value, lease))
            .await?;
        Ok(header_revision(&v))
    }

    /// Creates a key only if it does not exist (compare `create_revision == 0`), attached
    /// to `lease` if given. Returns `Some(revision of the creation)` on success, `None` if
    /// the key already existed.
    pub async fn create(
        &self,
        key: &str,
        value: &[u8],
        lease: Option<i64>,
    ) -> Result<Option<i64>, EtcdError> {
        let body = json!({
            "compare": [{
                "key": B64.encode(key),
                "result": "EQUAL",
                "target": "CREATE",
                "create_revision": "0",
            }],
            "success": [{ "request_put": put_body(key, value, lease) }],
            "failure": [],
        });
        let v = self.call("/v3/kv/txn", &body).await?;
        Ok(txn_succeeded(&v).then(|| header_revision(&v)))
    }

    /// Deletes a key only if its value equals `value`. Returns whether it was deleted.
    pub async fn delete_if_value(&self, key: &str, value: &[u8]) -> Result<bool, EtcdError> {
        let body = json!({
            "compare": [{
                "key": B64.encode(key),
                "result": "EQUAL",
                "target": "VALUE",
                "value": B64.encode(value),
            }],
            "success": [{ "request_delete_range": { "key": B64.encode(key) } }],
            "failure": [],
        });
        let v = self.call("/v3/kv/txn", &body).await?;
        Ok(txn_succeeded(&v))
    }

    /// Deletes a key only if its last modification is at revision `mod_revision`.
    /// Returns whether it was deleted.
    pub async fn delete_if_mod_revision(
        &self,
        key: &str,
        mod_revision: i64,
    ) -> Result<bool, EtcdError> {
        let body = json!({
            "compare": [{
                "key": B64.encode(key),
                "result": "EQUAL",
                "target": "MOD",
                "mod_revision": mod_revision.to_string(),
            }],
            "success": [{ "request_delete_range": { "key": B64.encode(key) } }],
            "failure": [],
        });
        let v = self.call("/v3/kv/txn", &body).await?;
        Ok(txn_succeeded(&v))
    }

    /// Deletes a key unconditionally. Returns whether it existed.
    pub async fn delete(&self, key: &str) -> Result<bool, EtcdError> {
        let v = self
            .call("/v3/kv/deleterange", &json!({ "key": B64.encode(key) }))
            .await?;
        Ok(get_i64(&v, "deleted") > 0)
    }
}

fn put_body(key: &str, value: &[u8], lease: Option<i64>) -> Value {
    let mut body = json!({ "key": B64.encode(key), "value": B64.encode(value) });
    if let Some(lease) = lease {
        body["lease"] = Value::String(lease.to_string());
    }
    body
}

/// The smallest key greater than every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): "\0" means "to the end of the key space" for etcd.
    vec![0]
}

fn decode_response(status: u16, body: &[u8]) -> Result<Value, EtcdError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        if (200..300).contains(&status) {
            EtcdError::Decode(format!("{e}: {}", String::from_utf8_lossy(body)))
        } else {
            EtcdError::Status {
                status,
                message: String::from_utf8_lossy(body).into_owned(),
            }
        }
    })?;
    // Streaming calls (keep-alive) wrap each message as {"result": ...} or {"error": ...}.
    let (v, err) = match v {
        Value::Object(mut m) if m.contains_key("result") || m.contains_key("error") => {
            if let Some(err) = m.remove("error") {
                (Value::Null, Some(err))
            } else {
                (m.remove("result").unwrap_or(Value::Null), None)
            }
        }
        v => (v, None),
    };
    let err = err.or_else(|| (!(200..300).contains(&status)).then(|| v.clone()));
    if let Some(err) = err {
        let message = err
            .get("message")
            .and_then(Value::as_str)
            .or_else(|| err.get("error").and_then(Value::as_str))
            .or_else(|| err.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| err.to_string());
        if message.contains("lease not found") {
            return Err(EtcdError::LeaseNotFound);
        }
        return Err(EtcdError::Status { status, message });
    }
    Ok(v)
}

/// Reads an int64 field that etcd's gateway encodes as a string (or, rarely, a number).
/// A missing field is 0 (proto3 omits defaults).
fn get_i64(v: &Value, field: &str) -> i64 {
    match v.get(field) {
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn header_revision(v: &Value) -> i64 {
    v.get("header").map(|h| get_i64(h, "revision")).unwrap_or(0)
}

fn txn_succeeded(v: &Value) -> bool {
    v.get("succeeded").and_then(Value::as_bool).unwrap_or(false)
}

fn decode_b64(v: &Value, field: &str) -> Result<Vec<u8>, EtcdError> {
    match v.get(field).and_then(Value::as_str) {
        Some(s) => B64
            .decode(s)
            .map_err(|e| EtcdError::Decode(format!("{field}: {e}"))),
        None => Ok(Vec::new()),
    }
}

fn parse_kvs(v: &Value) -> Result<Vec<KeyValue>, EtcdError> {
    let Some(kvs) = v.get("kvs").and_then(Value::as_array) else {
        return Ok(Vec::new());
    };
    kvs.iter()
        .map(|kv| {
            let key = String::from_utf8(decode_b64(kv, "key")?)
                .map_err(|e| EtcdError::Decode(format!("key: {e}")))?;
            Ok(KeyValue {
                key,
                value: decode_b64(kv, "value")?,
                create_revision: get_i64(kv, "create_revision"),
                mod_revision: get_i64(kv, "mod_revision"),
                lease: get_i64(kv, "lease"),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_last_byte() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b""), vec![0]);
    }

    #[test]
    fn decodes_stream_results_and_errors() {
        let v = decode_response(200, br#"{"result":{"ID":"7","TTL":"5"}}"#).unwrap();
        assert_eq!(get_i64(&v, "ID"), 7);
        assert_eq!(get_i64(&v, "TTL"), 5);
        let v = decode_response(200, br#"{"result":{"ID":"7"}}"#).unwrap();
        assert_eq!(get_i64(&v, "TTL"), 0);
        let e = decode_response(
            200,
            br#"{"error":{"grpc_code":5,"http_code":404,"message":"etcdserver: requested lease not found"}}"#,
        )
        .unwrap_err();
        assert!(matches!(e, EtcdError::LeaseNotFound));
        let e = decode_response(400, br#"{"error":"bad","code":3,"message":"bad"}"#).unwrap_err();
        assert!(matches!(e, EtcdError::Status { status: 400, .. }));
    }

    #[test]
    fn parses_kvs() {
        let v: Value = serde_json::from_str(
            r#"{"header":{"revision":"9"},"kvs":[{"key":"L2Ev","create_revision":"3","mod_revision":"4","version":"2","value":"eA==","lease":"12"}],"count":"1"}"#,
        )
        .unwrap();
        let kvs = parse_kvs(&v).unwrap();
        assert_eq!(header_revision(&v), 9);
        assert_eq!(
            kvs,
            vec![KeyValue {
                key: "/a/".into(),
                value: b"x".to_vec(),
                create_revision: 3,
                mod_revision: 4,
                lease: 12,
            }]
        );
    }
}
