//! Search inside SQL: `cosine_similarity(a, b)`, `embed(text)` and the `search(...)` table
//! function, which reads the same index as `/v1/search` (never a table scan).

use crate::tables::{vector_type, QueryContext};
use crate::SqlError;
use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float32Builder, Float64Array, Float64Builder, ListBuilder,
    RecordBatch, StringBuilder,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Float64Type, Schema, SchemaRef};
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{Result as DfResult, ScalarValue};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDFImpl, Signature, TableType, Volatility,
};
use datafusion::physical_plan::ExecutionPlan;
use mnemo_index::SearchService;
use mnemo_search::{Filter, Mode, SearchQuery, Source};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, LazyLock};

/// Largest `top_k` of `search()` (the index's limit).
pub const MAX_TOP_K: usize = 1000;

/// `cosine_similarity(a, b)`: the cosine of the angle between two float lists (null when
/// either is null, empty, zero or the lengths differ).
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct CosineSimilarity {
    signature: Signature,
}

impl CosineSimilarity {
    pub fn new() -> Self {
        CosineSimilarity {
            signature: Signature::any(2, Volatility::Immutable),
        }
    }
}

/// Each row of a list-valued argument as f64 values, or `None`.
fn rows_of(arg: &ColumnarValue, rows: usize) -> DfResult<Vec<Option<Vec<f64>>>> {
    let array: ArrayRef = arg.to_array(rows)?;
    let list = match array.data_type() {
        DataType::List(_) => array.as_list::<i32>().clone(),
        DataType::LargeList(_) | DataType::FixedSizeList(_, _) => {
            let as_list = cast(
                &array,
                &DataType::List(Arc::new(Field::new_list_field(DataType::Float64, true))),
            )?;
            as_list.as_list::<i32>().clone()
        }
        DataType::Null => return Ok(vec![None; rows]),
        other => {
            return Err(SqlError::Invalid(format!(
                "cosine_similarity takes two lists of numbers, not {other}"
            ))
            .into())
        }
    };
    let mut out = Vec::with_capacity(rows);
    for i in 0..list.len() {
        if list.is_null(i) {
            out.push(None);
            continue;
        }
        let values = cast(&list.value(i), &DataType::Float64)
            .map_err(|_| SqlError::Invalid("cosine_similarity takes lists of numbers".into()))?;
        let values: &Float64Array = values.as_primitive::<Float64Type>();
        out.push(Some(values.iter().map(|v| v.unwrap_or(0.0)).collect()));
    }
    Ok(out)
}

/// The cosine of two vectors, `None` when it is undefined.
pub(crate) fn cosine(a: &[f64], b: &[f64]) -> Option<f64> {
    if a.len() != b.len() || a.is_empty() {
        return None;
    }
    let (mut dot, mut na, mut nb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    (na > 0.0 && nb > 0.0).then(|| dot / (na.sqrt() * nb.sqrt()))
}

impl ScalarUDFImpl for CosineSimilarity {
    fn name(&self) -> &str {
        "cosine_similarity"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Float64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let n = args.number_rows;
        let scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let rows = if scalar { 1 } else { n };
        let a = rows_of(&args.args[0], rows)?;
        let b = rows_of(&args.args[1], rows)?;
        let mut out = Float64Builder::with_capacity(rows);
        for (x, y) in a.iter().zip(&b) {
            match (x, y) {
                (Some(x), Some(y)) => out.append_option(cosine(x, y)),
                _ => out.append_null(),
            }
        }
        let array: ArrayRef = Arc::new(out.finish());
        Ok(if scalar {
            ColumnarValue::Scalar(ScalarValue::try_from_array(&array, 0)?)
        } else {
            ColumnarValue::Array(array)
        })
    }
}

/// `embed(text)`: the built-in embedder's vector of a text. A literal text is embedded once,
/// when the query is planned, so the vector is a constant the planner can use.
pub(crate) struct Embed {
    signature: Signature,
    search: Option<Arc<SearchService>>,
}

impl std::fmt::Debug for Embed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Embed")
    }
}

impl PartialEq for Embed {
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}
impl Eq for Embed {}
impl Hash for Embed {
    fn hash<H: Hasher>(&self, state: &mut H) {
        "embed".hash(state)
    }
}

impl Embed {
    pub fn new(search: Option<Arc<SearchService>>) -> Self {
        Embed {
            signature: Signature::exact(vec![DataType::Utf8], Volatility::Immutable),
            search,
        }
    }

    fn vector(&self, text: &str) -> DfResult<Option<Vec<f32>>> {
        let Some(svc) = &self.search else {
            return Err(SqlError::Invalid(
                "embed() needs search to be enabled on the server".into(),
            )
            .into());
        };
        match svc.query_vector_blocking(text).map_err(SqlError::Search)? {
            Some(v) => Ok(Some(v)),
            None => Err(SqlError::Invalid(
                "embed() needs the server's built-in embedder, which is off".into(),
            )
            .into()),
        }
    }
}

/// A vector as a list literal of `embedding`'s type.
pub(crate) fn vector_literal(v: &[f32]) -> ScalarValue {
    let mut b = ListBuilder::new(Float32Builder::with_capacity(v.len()));
    b.values().append_slice(v);
    b.append(true);
    ScalarValue::List(Arc::new(b.finish()))
}

impl ScalarUDFImpl for Embed {
    fn name(&self) -> &str {
        "embed"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(vector_type())
    }

    fn simplify(&self, args: Vec<Expr>, _info: &SimplifyContext) -> DfResult<ExprSimplifyResult> {
        if let [Expr::Literal(ScalarValue::Utf8(Some(text)), _)] = args.as_slice() {
            if let Some(v) = self.vector(text)? {
                return Ok(ExprSimplifyResult::Simplified(Expr::Literal(
                    vector_literal(&v),
                    None,
                )));
            }
        }
        Ok(ExprSimplifyResult::Original(args))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let n = args.number_rows;
        let array = args.args[0].to_array(n)?;
        let texts = array.as_string::<i32>();
        let mut b = ListBuilder::new(Float32Builder::new());
        for t in texts.iter() {
            match t.map(|t| self.vector(t)).transpose()?.flatten() {
                Some(v) => {
                    b.values().append_slice(&v);
                    b.append(true);
                }
                None => b.append(false),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(b.finish())))
    }
}

/// The columns of `search(...)`.
static SEARCH_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("item_id", DataType::Utf8, false),
        Field::new("conversation_id", DataType::Utf8, true),
        Field::new("key", DataType::Utf8, true),
        Field::new("score", DataType::Float64, false),
        Field::new("rank", DataType::Int64, false),
    ]))
});

/// `search(query [, mode [, top_k [, source]]])`, also with named arguments `mode =>`,
/// `top_k =>`, `source =>` (see `crate::statement`).
#[derive(Debug)]
pub(crate) struct SearchFunction;

/// The argument names of `search()`, in positional order.
pub(crate) const SEARCH_ARGS: [&str; 4] = ["query", "mode", "top_k", "source"];

fn literal_string(e: &Expr, what: &str) -> DfResult<Option<String>> {
    match e {
        Expr::Literal(ScalarValue::Null, _) => Ok(None),
        Expr::Literal(v, _) => match v {
            ScalarValue::Utf8(s) | ScalarValue::LargeUtf8(s) | ScalarValue::Utf8View(s) => {
                Ok(s.clone())
            }
            _ => Err(SqlError::Invalid(format!("search(): {what} must be a string")).into()),
        },
        _ => Err(SqlError::Invalid(format!("search(): {what} must be a constant")).into()),
    }
}

impl TableFunctionImpl for SearchFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> DfResult<Arc<dyn TableProvider>> {
        let exprs = args.exprs();
        if exprs.is_empty() || exprs.len() > SEARCH_ARGS.len() {
            return Err(SqlError::Invalid(
                "search() takes a query text and optionally mode, top_k and source".into(),
            )
            .into());
        }
        let text = literal_string(&exprs[0], "the query")?
            .filter(|t| !t.trim().is_empty())
            .ok_or_else(|| SqlError::Invalid("search(): the query must not be empty".into()))?;
        let mode = match exprs
            .get(1)
            .map(|e| literal_string(e, "mode"))
            .transpose()?
            .flatten()
        {
            None => Mode::Hybrid,
            Some(m) => match m.as_str() {
                "vector" => Mode::Vector,
                "text" => Mode::Text,
                "hybrid" => Mode::Hybrid,
                _ => {
                    return Err(SqlError::Invalid(
                        "search(): mode must be vector, text or hybrid".into(),
                    )
                    .into())
                }
            },
        };
        let top_k = match exprs.get(2) {
            None => 10,
            Some(Expr::Literal(v, _)) => match v {
                ScalarValue::Int64(Some(k)) => usize::try_from(*k).unwrap_or(0),
                ScalarValue::Int32(Some(k)) => usize::try_from(*k).unwrap_or(0),
                _ => 0,
            },
            Some(_) => 0,
        };
        if top_k == 0 || top_k > MAX_TOP_K {
            return Err(SqlError::Invalid(format!(
                "search(): top_k must be a constant from 1 to {MAX_TOP_K}"
            ))
            .into());
        }
        let source = match exprs
            .get(3)
            .map(|e| literal_string(e, "source"))
            .transpose()?
            .flatten()
        {
            None => Source::Items,
            Some(s) if s == "items" => Source::Items,
            Some(s) if s == "memory" => Source::Memory,
            Some(_) => {
                return Err(
                    SqlError::Invalid("search(): source must be items or memory".into()).into(),
                )
            }
        };
        Ok(Arc::new(SearchTable {
            call: SearchCall {
                text,
                mode: match mode {
                    Mode::Vector => CallMode::Vector,
                    Mode::Text => CallMode::Text,
                    Mode::Hybrid => CallMode::Hybrid,
                },
                top_k,
                memory: source == Source::Memory,
            },
        }))
    }
}

/// One `search()` call: what the index is asked. A query over several shards sends it to
/// each shard (see `crate::shards`).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct SearchCall {
    text: String,
    mode: CallMode,
    top_k: usize,
    /// Memory keys rather than items.
    memory: bool,
}

#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
enum CallMode {
    Vector,
    Text,
    Hybrid,
}

impl SearchCall {
    fn source(&self) -> Source {
        if self.memory {
            Source::Memory
        } else {
            Source::Items
        }
    }

    /// The permission error, if `access` may not make this call.
    fn check(&self, access: &crate::Access) -> Result<(), SqlError> {
        let needs = if self.memory {
            access.memory
        } else {
            access.conversations
        };
        if access.search && needs {
            return Ok(());
        }
        Err(SqlError::Forbidden {
            table: "search()",
            permission: if access.search {
                if self.memory {
                    "memory.read"
                } else {
                    "conversations.read"
                }
            } else {
                "search"
            },
        })
    }

    /// The hits of one store's index, for the query's caller, ranked from 1.
    pub(crate) async fn run(&self, ctx: &QueryContext) -> Result<RecordBatch, SqlError> {
        self.check(&ctx.access)?;
        let svc = ctx.search.clone().ok_or_else(|| {
            SqlError::Invalid("search() needs search to be enabled on the server".into())
        })?;
        let scope = &ctx.scope;
        svc.wait_current(&scope.tenant, mnemo_index::Consistency::Eventual)
            .await
            .map_err(SqlError::Search)?;
        let mode = match self.mode {
            CallMode::Vector => Mode::Vector,
            CallMode::Text => Mode::Text,
            CallMode::Hybrid => Mode::Hybrid,
        };
        let mut vector = None;
        if mode != Mode::Text && svc.text_vectors(&scope.tenant).map_err(SqlError::Search)? {
            vector = svc
                .query_vector(&self.text)
                .await
                .map_err(SqlError::Search)?;
        }
        let query = SearchQuery {
            tenant: scope.tenant.as_str().to_owned(),
            owner: scope.user.clone(),
            source: self.source(),
            conversation_id: None,
            key_prefix: None,
            filter: Filter::default(),
            mode,
            text: Some(self.text.clone()),
            vector,
            top_k: self.top_k,
        };
        let hits = svc.search(query).await.map_err(SqlError::Search)?;
        // Memory hits name a key; the index applies the scope, and the store's rule is
        // checked again here so a stale index entry never shows a key the caller may not
        // read.
        let hits = hits
            .into_iter()
            .filter(|h| !self.memory || scope.can_read_key(&h.id))
            .map(|h| (h.id, h.conversation_id, f64::from(h.score)));
        self.batch(hits)
            .map_err(|e| SqlError::Internal(e.to_string()))
    }

    /// The hits as the rows of `search()`, ranked in the order given.
    fn batch(
        &self,
        hits: impl Iterator<Item = (String, Option<String>, f64)>,
    ) -> Result<RecordBatch, datafusion::arrow::error::ArrowError> {
        let mut ids = StringBuilder::new();
        let mut convs = StringBuilder::new();
        let mut keys = StringBuilder::new();
        let mut scores = Float64Builder::new();
        let mut ranks = datafusion::arrow::array::Int64Builder::new();
        for (rank, (id, conversation, score)) in hits.enumerate() {
            keys.append_option(self.memory.then_some(id.as_str()));
            ids.append_value(&id);
            convs.append_option(conversation.as_deref());
            scores.append_value(score);
            ranks.append_value(rank as i64 + 1);
        }
        RecordBatch::try_new(
            SEARCH_SCHEMA.clone(),
            vec![
                Arc::new(ids.finish()),
                Arc::new(convs.finish()),
                Arc::new(keys.finish()),
                Arc::new(scores.finish()),
                Arc::new(ranks.finish()),
            ],
        )
    }

    /// The hits of several shards as one answer: the best `top_k` by score (ties in shard
    /// order), ranked again.
    fn merge(&self, parts: &[RecordBatch]) -> Result<RecordBatch, SqlError> {
        let mut hits = Vec::new();
        for b in parts {
            let ids = b.column(0).as_string::<i32>();
            let convs = b.column(1).as_string::<i32>();
            let scores = b.column(3).as_primitive::<Float64Type>();
            for r in 0..b.num_rows() {
                let conversation = convs.is_valid(r).then(|| convs.value(r).to_owned());
                hits.push((ids.value(r).to_owned(), conversation, scores.value(r)));
            }
        }
        hits.sort_by(|a, b| b.2.total_cmp(&a.2));
        hits.truncate(self.top_k);
        self.batch(hits.into_iter())
            .map_err(|e| SqlError::Internal(e.to_string()))
    }
}

/// The result of one `search()` call, computed when the query runs, for its caller.
#[derive(Debug)]
struct SearchTable {
    call: SearchCall,
}

#[async_trait]
impl TableProvider for SearchTable {
    fn schema(&self) -> SchemaRef {
        SEARCH_SCHEMA.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let batch = match crate::shards::Sharded::of(state) {
            Some(sharded) => {
                self.call.check(&sharded.access)?;
                self.call.merge(&sharded.gather(&self.call).await?)?
            }
            None => {
                let ctx = QueryContext::of(state)?;
                self.call.run(&ctx).await?
            }
        };
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            SEARCH_SCHEMA.clone(),
            projection.cloned(),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_is_undefined_for_zero_or_mismatched_vectors() {
        assert_eq!(cosine(&[1.0, 0.0], &[2.0, 0.0]), Some(1.0));
        assert_eq!(cosine(&[1.0, 0.0], &[0.0, 3.0]), Some(0.0));
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), None);
        assert_eq!(cosine(&[1.0], &[1.0, 0.0]), None);
        assert_eq!(cosine(&[], &[]), None);
    }
}
