//! `POST /v1/sql`: a read-only SQL query in the caller's scope, answered as JSON rows or as
//! an Arrow IPC stream (`Accept: application/vnd.apache.arrow.stream`).

use crate::auth::{authenticate, Identity, Permission, USER_HEADER};
use crate::extract::json_body;
use crate::{ApiError, ApiResult, AppState};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use futures::StreamExt;
use mnemo_sql::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use mnemo_sql::arrow::datatypes::{DataType, Schema};
use mnemo_sql::arrow::ipc::writer::StreamWriter;
use mnemo_sql::arrow::util::display::{ArrayFormatter, FormatOptions};
use mnemo_sql::{Access, SqlError};
use serde::Deserialize;
use serde_json::{json, Map, Number, Value};

/// The media type of Arrow IPC streams.
pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

/// The body of `POST /v1/sql`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = SqlRequest)]
struct SqlBody {
    /// One statement: SELECT, WITH, EXPLAIN, SHOW or DESCRIBE (PostgreSQL dialect).
    query: String,
    /// Values bound to `$1`, `$2`, …
    #[serde(default)]
    params: Vec<Value>,
}

/// The tables an identity may read: the permissions it holds over REST.
pub fn sql_access(identity: &Identity) -> Access {
    let has = |p| identity.permissions.contains(p);
    Access {
        conversations: has(Permission::ConversationsRead),
        memory: has(Permission::MemoryRead),
        changes: has(Permission::ChangesRead),
        audit: has(Permission::Admin),
        search: has(Permission::Search),
    }
}

impl From<SqlError> for ApiError {
    fn from(e: SqlError) -> Self {
        let code = e.code();
        match e {
            SqlError::Store(e) => e.into(),
            SqlError::Search(e) => e.into(),
            SqlError::Forbidden { .. } => {
                ApiError::new(StatusCode::FORBIDDEN, "permission_error", e.to_string())
                    .with_code(code)
            }
            SqlError::Timeout { .. } => ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request_error",
                e.to_string(),
            )
            .with_code(code),
            SqlError::Shard(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                e.to_string(),
            )
            .with_code(code),
            SqlError::Internal(_) => {
                tracing::error!(error = %e, "SQL engine failure");
                ApiError::internal()
            }
            SqlError::Syntax(_)
            | SqlError::ReadOnly(_)
            | SqlError::Invalid(_)
            | SqlError::Param(_)
            | SqlError::MemoryLimit { .. } => {
                let param = if matches!(e, SqlError::Param(_)) {
                    "params"
                } else {
                    "query"
                };
                ApiError::invalid_param(param, e.to_string()).with_code(code)
            }
        }
    }
}

/// The SQL name of a column type, as `columns[].type` reports it.
pub fn sql_type(t: &DataType) -> String {
    match t {
        DataType::Null => "null".into(),
        DataType::Boolean => "boolean".into(),
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => "smallint".into(),
        DataType::Int32 | DataType::UInt16 => "integer".into(),
        DataType::Int64 | DataType::UInt32 => "bigint".into(),
        DataType::UInt64 | DataType::Decimal128(..) | DataType::Decimal256(..) => "numeric".into(),
        DataType::Float16 | DataType::Float32 => "real".into(),
        DataType::Float64 => "double precision".into(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "text".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "bytea".into(),
        DataType::Timestamp(_, Some(_)) => "timestamptz".into(),
        DataType::Timestamp(_, None) => "timestamp".into(),
        DataType::Date32 | DataType::Date64 => "date".into(),
        DataType::Interval(_) | DataType::Duration(_) => "interval".into(),
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            format!("{}[]", sql_type(f.data_type()))
        }
        other => other.to_string().to_lowercase(),
    }
}

fn float(x: f64) -> Value {
    Number::from_f64(x).map_or(Value::Null, Value::Number)
}

/// One cell as JSON: numbers and booleans as themselves, text as strings, bytes as base64,
/// lists as arrays, structs and maps as objects, times as RFC 3339 text.
fn cell(array: &ArrayRef, row: usize) -> Value {
    if array.is_null(row) {
        return Value::Null;
    }
    macro_rules! prim {
        ($t:ty) => {
            json!(array.as_primitive::<$t>().value(row))
        };
    }
    use mnemo_sql::arrow::datatypes as t;
    match array.data_type() {
        DataType::Boolean => Value::Bool(array.as_boolean().value(row)),
        DataType::Int8 => prim!(t::Int8Type),
        DataType::Int16 => prim!(t::Int16Type),
        DataType::Int32 => prim!(t::Int32Type),
        DataType::Int64 => prim!(t::Int64Type),
        DataType::UInt8 => prim!(t::UInt8Type),
        DataType::UInt16 => prim!(t::UInt16Type),
        DataType::UInt32 => prim!(t::UInt32Type),
        DataType::UInt64 => prim!(t::UInt64Type),
        DataType::Float32 => float(f64::from(array.as_primitive::<t::Float32Type>().value(row))),
        DataType::Float64 => float(array.as_primitive::<t::Float64Type>().value(row)),
        DataType::Utf8 => Value::String(array.as_string::<i32>().value(row).to_owned()),
        DataType::LargeUtf8 => Value::String(array.as_string::<i64>().value(row).to_owned()),
        DataType::Utf8View => Value::String(array.as_string_view().value(row).to_owned()),
        DataType::Binary => b64(array.as_binary::<i32>().value(row)),
        DataType::LargeBinary => b64(array.as_binary::<i64>().value(row)),
        DataType::BinaryView => b64(array.as_binary_view().value(row)),
        DataType::List(_) => list(&array.as_list::<i32>().value(row)),
        DataType::LargeList(_) => list(&array.as_list::<i64>().value(row)),
        DataType::FixedSizeList(..) => list(&array.as_fixed_size_list().value(row)),
        DataType::Struct(fields) => {
            let s = array.as_struct();
            let mut obj = Map::new();
            for (i, f) in fields.iter().enumerate() {
                obj.insert(f.name().clone(), cell(s.column(i), row));
            }
            Value::Object(obj)
        }
        DataType::Map(..) => {
            let m = array.as_map();
            let entries = m.value(row);
            let (keys, values) = (entries.column(0), entries.column(1));
            let mut obj = Map::new();
            for i in 0..entries.len() {
                let k = match cell(keys, i) {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                obj.insert(k, cell(values, i));
            }
            Value::Object(obj)
        }
        _ => {
            let options = FormatOptions::default();
            match ArrayFormatter::try_new(array.as_ref(), &options) {
                Ok(f) => Value::String(f.value(row).to_string()),
                Err(_) => Value::Null,
            }
        }
    }
}

fn b64(bytes: &[u8]) -> Value {
    Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn list(values: &ArrayRef) -> Value {
    Value::Array((0..values.len()).map(|i| cell(values, i)).collect())
}

fn columns(schema: &Schema) -> Value {
    Value::Array(
        schema
            .fields()
            .iter()
            .map(|f| json!({"name": f.name(), "type": sql_type(f.data_type())}))
            .collect(),
    )
}

/// `POST /v1/sql`.
#[utoipa::path(post, path = "/v1/sql", tag = crate::openapi::QUERY,
    operation_id = "sql", summary = "A read-only SQL query over the caller's data",
    request_body = SqlBody,
    responses((status = 200, description = "The answer (JSON), or with `Accept: application/vnd.apache.arrow.stream` an Arrow IPC stream of every row",
        content((crate::openapi::SqlResult = "application/json"), (Vec<u8> = "application/vnd.apache.arrow.stream"))),
        (status = 408, description = "The query ran past `--sql-timeout-ms`", body = crate::openapi::ErrorResponse)))]
pub async fn query(State(st): State<AppState>, req: Request) -> ApiResult<Response> {
    let (parts, body) = req.into_parts();
    let (engine, identity, scope) = sql_caller(&st, &parts).await?;
    let call = SqlCall::read(&parts.headers, body).await?;
    let answer = engine
        .query(scope, sql_access(&identity), &call.query, call.params)
        .await?;
    respond(answer, call.arrow, st.sql_max_rows).await
}

/// The server's SQL engine, the verified caller and the scope it acts in.
async fn sql_caller(
    st: &AppState,
    parts: &axum::http::request::Parts,
) -> ApiResult<(
    std::sync::Arc<mnemo_sql::SqlEngine>,
    Identity,
    mnemo_storage::Scope,
)> {
    let engine = st.sql.clone().ok_or_else(not_enabled)?;
    let identity = authenticate(&st.auth, parts).await?;
    let scope = identity.scope(parts.headers.get(USER_HEADER).map(|v| v.as_bytes()))?;
    Ok((engine, identity, scope))
}

/// 503: the server has no SQL engine.
pub(crate) fn not_enabled() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "service_unavailable",
        "SQL is not enabled on this server",
    )
}

/// A query as a request states it.
pub(crate) struct SqlCall {
    /// The statement.
    pub query: String,
    /// Values of `$1…`.
    pub params: Vec<mnemo_sql::datafusion::common::ScalarValue>,
    /// Whether the answer is wanted as an Arrow IPC stream.
    pub arrow: bool,
}

impl SqlCall {
    /// Reads and checks the body of `POST /v1/sql` and the answer format from `Accept`.
    pub(crate) async fn read(headers: &axum::http::HeaderMap, body: Body) -> ApiResult<SqlCall> {
        let b: SqlBody = json_body(headers, body).await?;
        if b.query.trim().is_empty() {
            return Err(ApiError::invalid_param("query", "query must not be empty"));
        }
        let params = b
            .params
            .iter()
            .enumerate()
            .map(|(i, v)| {
                mnemo_sql::json_param(v).map_err(|e| {
                    ApiError::invalid_param(format!("params[{i}]"), e.to_string())
                        .with_code("sql_invalid_param")
                })
            })
            .collect::<ApiResult<Vec<_>>>()?;
        Ok(SqlCall {
            query: b.query,
            params,
            arrow: wants_arrow(headers),
        })
    }
}

fn wants_arrow(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains(ARROW_STREAM))
}

/// The answer of a query: JSON rows (at most `max_rows`), or an Arrow IPC stream.
pub(crate) async fn respond(
    mut answer: mnemo_sql::Answer,
    arrow: bool,
    max_rows: usize,
) -> ApiResult<Response> {
    // The first batch decides between an answer and an error: planning and scan errors
    // surface here, before any byte of the answer is sent.
    let first = answer.batches.next().await.transpose()?;
    if arrow {
        return arrow_answer(answer, first);
    }
    let mut rows = Vec::new();
    let mut truncated = false;
    let mut batch = first;
    while let Some(b) = batch {
        for r in 0..b.num_rows() {
            if rows.len() == max_rows {
                truncated = true;
                break;
            }
            rows.push(Value::Array(
                b.columns().iter().map(|c| cell(c, r)).collect(),
            ));
        }
        if truncated {
            break;
        }
        batch = answer.batches.next().await.transpose()?;
    }
    Ok(Json(json!({
        "object": "sql.result",
        "columns": columns(&answer.schema),
        "rows": rows,
        "truncated": truncated,
    }))
    .into_response())
}

/// `POST /v1/cluster/shard-read`, between the nodes of a cluster only: one shard's part of a
/// query another node runs (see [`mnemo_sql::SqlEngine::serve_shard`]), for the caller whose
/// credentials the request carries, as an Arrow IPC stream.
pub(crate) async fn shard_read(State(st): State<AppState>, req: Request) -> ApiResult<Response> {
    let (parts, body) = req.into_parts();
    let (engine, identity, scope) = sql_caller(&st, &parts).await?;
    let bytes = crate::extract::read_body(&parts.headers, body, 1 << 20).await?;
    let request = mnemo_sql::ShardRequest::from_json(&bytes)?;
    let mut answer = engine
        .serve_shard(scope, sql_access(&identity), &request)
        .await?;
    let first = answer.batches.next().await.transpose()?;
    arrow_answer(answer, first)
}

/// The answer as an Arrow IPC stream, written batch by batch as the query produces them. An
/// error after the first batch ends the stream early, which readers report as a truncated
/// stream.
fn arrow_answer(answer: mnemo_sql::Answer, first: Option<RecordBatch>) -> ApiResult<Response> {
    let writer = StreamWriter::try_new(Vec::new(), &answer.schema).map_err(|e| {
        tracing::error!(error = %e, "starting an Arrow stream failed");
        ApiError::internal()
    })?;
    let head = futures::stream::iter(first.map(Ok));
    let batches = head.chain(answer.batches);
    let state = (Some(writer), batches.boxed());
    let body = futures::stream::unfold(state, |(writer, mut batches)| async move {
        let mut writer = writer?;
        let take = |w: &mut StreamWriter<Vec<u8>>| bytes::Bytes::from(std::mem::take(w.get_mut()));
        match batches.next().await {
            Some(Ok(batch)) => match writer.write(&batch) {
                Ok(()) => {
                    let chunk = take(&mut writer);
                    Some((Ok(chunk), (Some(writer), batches)))
                }
                Err(e) => Some((Err(std::io::Error::other(e)), (None, batches))),
            },
            Some(Err(e)) => {
                tracing::info!(error = %e, "an Arrow answer stopped early");
                Some((Err(std::io::Error::other(e)), (None, batches)))
            }
            None => match writer.finish() {
                Ok(()) => {
                    let chunk = take(&mut writer);
                    Some((Ok(chunk), (None, batches)))
                }
                Err(e) => Some((Err(std::io::Error::other(e)), (None, batches))),
            },
        }
    });
    let mut resp = Response::new(Body::from_stream(body));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ARROW_STREAM));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mnemo_sql::arrow::datatypes::{Field, TimeUnit};
    use std::sync::Arc;

    #[test]
    fn type_names_are_sql() {
        assert_eq!(sql_type(&DataType::Utf8), "text");
        assert_eq!(
            sql_type(&DataType::Timestamp(
                TimeUnit::Millisecond,
                Some("UTC".into())
            )),
            "timestamptz"
        );
        let list = DataType::List(Arc::new(Field::new_list_field(DataType::Float32, true)));
        assert_eq!(sql_type(&list), "real[]");
    }
}
