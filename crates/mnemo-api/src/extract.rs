//! Request extraction with JSON errors: bodies with size limits, JSON parsing, the acting
//! user, and path/query rejections turned into 400s.

use crate::error::{ApiError, ApiResult};
use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::Path;
use axum::http::{header, HeaderMap};
use serde::de::DeserializeOwned;

/// Largest JSON body accepted by the conversation routes.
pub const MAX_JSON_BODY: usize = 1024 * 1024;

/// Reads a whole body, failing with 413 past `limit` bytes. The rest of a body that is too
/// large is not read (the response then closes the connection: see `connection.rs`).
pub async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> ApiResult<Bytes> {
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit as u64 {
            return Err(ApiError::too_large(limit));
        }
    }
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::too_large(limit))
}

/// Reads and parses a JSON object body (400 on malformed JSON, a value other than an object or
/// wrong types, 413 when too large).
pub async fn json_body<T: DeserializeOwned>(headers: &HeaderMap, body: Body) -> ApiResult<T> {
    let bytes = read_body(headers, body, MAX_JSON_BODY).await?;
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        None => {
            return Err(ApiError::invalid(
                "request body is empty; expected a JSON object",
            ))
        }
        // A struct also deserializes from an array of its fields; the API takes objects only.
        Some(b'{') => {}
        Some(_) => {
            return Err(ApiError::invalid(
                "invalid JSON body: expected a JSON object",
            ))
        }
    }
    let de = &mut serde_json::Deserializer::from_slice(&bytes);
    let value = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let err = ApiError::invalid(format!("invalid JSON body: {inner}"));
        if path.is_empty() || path == "." || path == "?" {
            err
        } else {
            err.with_param(path)
        }
    })?;
    de.end()
        .map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))?;
    Ok(value)
}

/// Decodes a query string into `(name, value)` pairs, strictly: a value that is not valid
/// UTF-8 after percent-decoding is a 400, never silently replaced.
pub fn query_pairs(raw: Option<&str>) -> ApiResult<Vec<(String, String)>> {
    let decode = |s: &str| -> ApiResult<String> {
        let plus = s.replace('+', " ");
        percent_encoding::percent_decode_str(&plus)
            .decode_utf8()
            .map(|c| c.into_owned())
            .map_err(|_| ApiError::invalid("query parameters must be valid UTF-8"))
    };
    raw.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}

/// Parses a `limit` query parameter: an integer from 1 to `max` (else 400).
pub fn limit_param(v: &str, max: usize) -> ApiResult<usize> {
    v.parse::<usize>()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| ApiError::invalid_param("limit", format!("limit must be 1-{max}")))
}

/// Unwraps a path extraction, turning a rejection into a JSON 400.
pub fn path<T>(p: Result<Path<T>, PathRejection>) -> ApiResult<T> {
    p.map(|Path(v)| v)
        .map_err(|e| ApiError::invalid(format!("invalid path: {}", e.body_text())))
}
