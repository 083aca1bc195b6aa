//! The tables: their schemas, which of a query's filters each turns into key ranges, and
//! the [`TableProvider`]s that read them.
//!
//! A provider holds no data and no caller: it is shared by every query, and so are the plans
//! built over it. When a query runs, its scan takes the query's [`QueryContext`] (one
//! [`ReadView`] of the store and the verified scope) from the session, and reads through that
//! view with that scope, so the access rule of `mnemo-storage` decides what a query can see;
//! no filter, join or function can widen it.

use crate::scan::{ScanExec, ScanPlan};
use crate::{Access, SqlError};
use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{Result as DfResult, ScalarValue};
use datafusion::logical_expr::{
    BinaryExpr, Expr, Operator, TableProviderFilterPushDown, TableType,
};
use datafusion::physical_plan::ExecutionPlan;
use mnemo_index::SearchService;
use mnemo_storage::{ReadView, Scope};
use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::{Arc, LazyLock};

/// What every table of one query shares: the consistent view and the caller's scope. It is
/// an extension of the query's session configuration; [`QueryContext::of`] finds it.
pub(crate) struct QueryContext {
    /// The store at the moment the query started.
    pub view: ReadView,
    /// Whom the query acts for.
    pub scope: Scope,
    /// Which tables the caller may read.
    pub access: Access,
    /// The search service, for `search()` and vector ordering.
    pub search: Option<Arc<SearchService>>,
}

/// The tables every query can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum TableKind {
    /// `conversations`
    Conversations,
    /// `items`
    Items,
    /// `memory`
    Memory,
    /// `changes`
    Changes,
    /// `audit`
    Audit,
}

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

fn utf8(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Utf8, nullable)
}

/// The element type of `embedding` (and of vectors passed to the vector functions).
pub(crate) fn vector_type() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(DataType::Float32, true)))
}

static SCHEMAS: LazyLock<[SchemaRef; 5]> = LazyLock::new(|| {
    [
        Arc::new(Schema::new(vec![
            utf8("id", false),
            utf8("user_id", true),
            Field::new("created_at", ts(), false),
            Field::new("updated_at", ts(), false),
            utf8("metadata", false),
            Field::new("item_count", DataType::Int64, false),
        ])),
        Arc::new(Schema::new(vec![
            utf8("conversation_id", false),
            utf8("item_id", false),
            Field::new("seq", DataType::Int64, false),
            utf8("parent_id", true),
            utf8("type", true),
            utf8("role", true),
            utf8("text", true),
            utf8("content", true),
            Field::new("created_at", ts(), false),
            utf8("user_id", true),
            Field::new("embedding", vector_type(), true),
        ])),
        Arc::new(Schema::new(vec![
            utf8("key", false),
            utf8("user_id", true),
            Field::new("value", DataType::Binary, false),
            utf8("value_text", true),
            utf8("value_json", true),
            utf8("content_type", false),
            utf8("etag", false),
            Field::new("size", DataType::Int64, false),
            Field::new("updated_at", ts(), false),
            Field::new("expires_at", ts(), true),
        ])),
        Arc::new(Schema::new(vec![
            Field::new("seq", DataType::Int64, false),
            Field::new("at", ts(), false),
            utf8("op", false),
            utf8("conversation_id", true),
            Field::new(
                "item_ids",
                DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true))),
                true,
            ),
            utf8("key", true),
            utf8("user_id", true),
        ])),
        Arc::new(Schema::new(vec![
            Field::new("seq", DataType::Int64, false),
            Field::new("at", ts(), false),
            utf8("actor", false),
            utf8("actor_kind", false),
            utf8("action", false),
            utf8("target", true),
            utf8("details", true),
        ])),
    ]
});

impl TableKind {
    /// Every table.
    pub const ALL: [TableKind; 5] = [
        TableKind::Conversations,
        TableKind::Items,
        TableKind::Memory,
        TableKind::Changes,
        TableKind::Audit,
    ];

    /// The table's name in SQL.
    pub fn name(self) -> &'static str {
        match self {
            TableKind::Conversations => "conversations",
            TableKind::Items => "items",
            TableKind::Memory => "memory",
            TableKind::Changes => "changes",
            TableKind::Audit => "audit",
        }
    }

    /// The table's columns.
    pub fn schema(self) -> SchemaRef {
        SCHEMAS[self as usize].clone()
    }

    /// The permission reading the table needs (the same as reading it over REST).
    pub fn permission(self) -> &'static str {
        match self {
            TableKind::Conversations | TableKind::Items => "conversations.read",
            TableKind::Memory => "memory.read",
            TableKind::Changes => "changes.read",
            TableKind::Audit => "admin",
        }
    }

    pub(crate) fn allowed(self, access: &Access) -> bool {
        match self {
            TableKind::Conversations | TableKind::Items => access.conversations,
            TableKind::Memory => access.memory,
            TableKind::Changes => access.changes,
            TableKind::Audit => access.audit,
        }
    }

    /// The column that orders rows by time, for bounds on it.
    fn time_column(self) -> &'static str {
        match self {
            TableKind::Changes | TableKind::Audit => "at",
            TableKind::Memory => "updated_at",
            TableKind::Conversations | TableKind::Items => "created_at",
        }
    }
}

impl QueryContext {
    /// The context of the query `session` runs. Every session the engine plans in has one.
    pub(crate) fn of(session: &dyn Session) -> DfResult<Arc<QueryContext>> {
        session
            .config()
            .get_extension::<QueryContext>()
            .ok_or_else(|| SqlError::Internal("a scan outside of a query".into()).into())
    }
}

/// One table, shared by every query; its scans read the running query's view.
#[derive(Debug)]
pub(crate) struct Table {
    kind: TableKind,
}

impl std::fmt::Debug for QueryContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryContext")
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl Table {
    pub(crate) fn new(kind: TableKind) -> Self {
        Table { kind }
    }
}

/// A filter of the form `column <op> literal`, with the column on either side.
fn column_op_literal(e: &Expr) -> Option<(&str, Operator, &ScalarValue)> {
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = e else {
        return None;
    };
    match (left.as_ref(), right.as_ref()) {
        (Expr::Column(c), Expr::Literal(v, _)) => Some((c.name.as_str(), *op, v)),
        (Expr::Literal(v, _), Expr::Column(c)) => Some((c.name.as_str(), op.swap()?, v)),
        _ => None,
    }
}

/// Whether a filter is never true: a null or false constant, or a comparison with null.
fn never_true(e: &Expr) -> bool {
    match e {
        Expr::Literal(v, _) => v.is_null() || *v == ScalarValue::Boolean(Some(false)),
        e => column_op_literal(e).is_some_and(|(_, op, v)| {
            v.is_null()
                && matches!(
                    op,
                    Operator::Eq
                        | Operator::NotEq
                        | Operator::Lt
                        | Operator::LtEq
                        | Operator::Gt
                        | Operator::GtEq
                )
        }),
    }
}

/// `e` with each parameter (`$1`…) replaced by an example value of its type. Plans are made
/// before parameters are bound (and reused with other values), so whether a filter narrows
/// a scan is decided on the filter's shape; a value of the same type narrows it the same way
/// (a null, which narrows nothing, is handled by the scan: see [`never_true`]). `None` when
/// a parameter's type is unknown.
fn bound_example(e: &Expr) -> Option<std::borrow::Cow<'_, Expr>> {
    use datafusion::common::tree_node::{Transformed, TreeNode};
    if !e
        .exists(|e| Ok(matches!(e, Expr::Placeholder(_))))
        .unwrap_or(true)
    {
        return Some(std::borrow::Cow::Borrowed(e));
    }
    e.clone()
        .transform(|e| match e {
            Expr::Placeholder(p) => {
                let t = p.field.as_ref().map(|f| f.data_type().clone());
                let v = match t {
                    Some(DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8) => {
                        ScalarValue::Utf8(Some("p".to_owned()))
                    }
                    Some(t) => ScalarValue::new_zero(&t)?,
                    None => {
                        return Err(datafusion::error::DataFusionError::Plan(
                            "untyped parameter".into(),
                        ))
                    }
                };
                Ok(Transformed::yes(Expr::Literal(v, None)))
            }
            e => Ok(Transformed::no(e)),
        })
        .ok()
        .map(|t| std::borrow::Cow::Owned(t.data))
}

fn string_of(v: &ScalarValue) -> Option<&str> {
    match v {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => Some(s),
        _ => None,
    }
}

/// A timestamp literal in milliseconds, rounded down (`floor`) or up.
fn millis_of(v: &ScalarValue, floor: bool) -> Option<i64> {
    let round = |x: i64, per_ms: i64| {
        if floor {
            x.div_euclid(per_ms)
        } else {
            x.div_euclid(per_ms) + i64::from(x.rem_euclid(per_ms) != 0)
        }
    };
    Some(match v {
        ScalarValue::TimestampSecond(Some(s), _) => s.checked_mul(1000)?,
        ScalarValue::TimestampMillisecond(Some(ms), _) => *ms,
        ScalarValue::TimestampMicrosecond(Some(us), _) => round(*us, 1000),
        ScalarValue::TimestampNanosecond(Some(ns), _) => round(*ns, 1_000_000),
        _ => return None,
    })
}

/// The literal prefix of a LIKE pattern, and whether the pattern is exactly `prefix%`.
fn like_prefix(pattern: &str) -> (String, bool) {
    let mut prefix = String::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '%' => return (prefix, chars.as_str().is_empty()),
            '_' | '\\' => return (prefix, false),
            c => prefix.push(c),
        }
    }
    (prefix, false)
}

/// What one filter contributes to a scan, if anything.
#[derive(Debug)]
enum Narrowing {
    /// Only these ids (conversations.id, items.conversation_id).
    Ids(BTreeSet<String>),
    /// Only this user's rows.
    User(String),
    /// Only memory keys with this prefix.
    KeyPrefix(String),
    /// A lower bound on the time column, ms.
    From(Bound<i64>),
    /// An upper bound on the time column, ms.
    Until(Bound<i64>),
    /// Both bounds (inclusive) of an equality on the time column, ms.
    Between(i64, i64),
    /// A lower bound on `seq` (changes, audit).
    SeqFrom(i64),
}

impl Table {
    /// What a filter narrows, and whether the scan applies it exactly (then DataFusion does
    /// not evaluate it again).
    fn narrowing(&self, e: &Expr) -> Option<(Narrowing, bool)> {
        use TableKind as K;
        if let Expr::InList(list) = e {
            let Expr::Column(c) = list.expr.as_ref() else {
                return None;
            };
            let id_column = matches!(
                (self.kind, c.name.as_str()),
                (K::Conversations, "id") | (K::Items, "conversation_id")
            );
            if !id_column || list.negated {
                return None;
            }
            // A null in the list matches nothing.
            let ids = list
                .list
                .iter()
                .filter(|v| !matches!(v, Expr::Literal(v, _) if v.is_null()))
                .map(|v| match v {
                    Expr::Literal(v, _) => string_of(v).map(str::to_owned),
                    _ => None,
                })
                .collect::<Option<BTreeSet<_>>>()?;
            return Some((Narrowing::Ids(ids), true));
        }
        if let Expr::Like(like) = e {
            if self.kind != K::Memory || like.negated || like.case_insensitive {
                return None;
            }
            let (Expr::Column(c), Expr::Literal(v, _)) =
                (like.expr.as_ref(), like.pattern.as_ref())
            else {
                return None;
            };
            if c.name != "key" || like.escape_char.is_some() {
                return None;
            }
            let (prefix, _) = like_prefix(string_of(v)?);
            return Some((Narrowing::KeyPrefix(prefix), false));
        }
        if let Expr::ScalarFunction(f) = e {
            if self.kind == K::Memory && f.name() == "starts_with" && f.args.len() == 2 {
                if let (Expr::Column(c), Expr::Literal(v, _)) = (&f.args[0], &f.args[1]) {
                    if c.name == "key" {
                        return Some((Narrowing::KeyPrefix(string_of(v)?.to_owned()), false));
                    }
                }
            }
            return None;
        }
        let (column, op, value) = column_op_literal(e)?;
        match (self.kind, column, op) {
            (K::Conversations, "id", Operator::Eq)
            | (K::Items, "conversation_id", Operator::Eq) => {
                let id = string_of(value)?.to_owned();
                Some((Narrowing::Ids(BTreeSet::from([id])), true))
            }
            (K::Conversations | K::Items, "user_id", Operator::Eq) => {
                Some((Narrowing::User(string_of(value)?.to_owned()), true))
            }
            (K::Memory, "user_id", Operator::Eq) => {
                let user = string_of(value)?;
                (!user.is_empty() && !user.contains('/')).then(|| {
                    (
                        Narrowing::KeyPrefix(mnemo_storage::access::user_space(user)),
                        false,
                    )
                })
            }
            (K::Memory, "key", Operator::Eq) => {
                Some((Narrowing::KeyPrefix(string_of(value)?.to_owned()), false))
            }
            (K::Changes | K::Audit, "seq", op) => {
                let v = match value {
                    ScalarValue::Int64(Some(v)) => *v,
                    _ => return None,
                };
                match op {
                    Operator::Gt => Some((Narrowing::SeqFrom(v.checked_add(1)?), false)),
                    Operator::GtEq | Operator::Eq => Some((Narrowing::SeqFrom(v), false)),
                    _ => None,
                }
            }
            (kind, col, op) if col == kind.time_column() => match op {
                Operator::Gt => Some((
                    Narrowing::From(Bound::Excluded(millis_of(value, true)?)),
                    false,
                )),
                Operator::GtEq => Some((
                    Narrowing::From(Bound::Included(millis_of(value, true)?)),
                    false,
                )),
                Operator::Lt => Some((
                    Narrowing::Until(Bound::Excluded(millis_of(value, false)?)),
                    false,
                )),
                Operator::LtEq => Some((
                    Narrowing::Until(Bound::Included(millis_of(value, false)?)),
                    false,
                )),
                Operator::Eq => Some((
                    Narrowing::Between(millis_of(value, true)?, millis_of(value, false)?),
                    false,
                )),
                _ => None,
            },
            _ => None,
        }
    }

    /// Folds the filters a scan can use into its plan.
    fn plan(&self, filters: &[Expr]) -> ScanPlan {
        let mut plan = ScanPlan::new(self.kind);
        for f in filters {
            let Some((n, _)) = self.narrowing(f) else {
                // A filter planned over a parameter may meet a null once bound; it is then
                // never true, and the scan is the one to say so (it was pushed down exactly).
                if never_true(f) {
                    plan.pushed.push(f.to_string());
                    plan.empty = true;
                }
                continue;
            };
            plan.pushed.push(f.to_string());
            match n {
                Narrowing::Ids(ids) => {
                    plan.ids = Some(match plan.ids.take() {
                        Some(prev) => prev.intersection(&ids).cloned().collect(),
                        None => ids,
                    })
                }
                Narrowing::User(u) => match &plan.user {
                    Some(prev) if *prev != u => plan.empty = true,
                    _ => plan.user = Some(u),
                },
                Narrowing::KeyPrefix(p) => match plan.key_prefix.take() {
                    Some(prev) if p.starts_with(&prev) => plan.key_prefix = Some(p),
                    Some(prev) if prev.starts_with(&p) => plan.key_prefix = Some(prev),
                    Some(_) => plan.empty = true,
                    None => plan.key_prefix = Some(p),
                },
                Narrowing::From(b) => plan.from = tighter_lower(plan.from, b),
                Narrowing::Until(b) => plan.until = tighter_upper(plan.until, b),
                Narrowing::Between(lo, hi) => {
                    plan.from = tighter_lower(plan.from, Bound::Included(lo));
                    plan.until = tighter_upper(plan.until, Bound::Included(hi));
                }
                Narrowing::SeqFrom(s) => plan.seq_from = plan.seq_from.max(Some(s)),
            }
        }
        plan
    }
}

fn tighter_lower(a: Bound<i64>, b: Bound<i64>) -> Bound<i64> {
    use Bound::*;
    match (a, b) {
        (Unbounded, x) | (x, Unbounded) => x,
        (Included(x), Included(y)) => Included(x.max(y)),
        (Excluded(x), Excluded(y)) => Excluded(x.max(y)),
        (Included(i), Excluded(e)) | (Excluded(e), Included(i)) => {
            if i > e {
                Included(i)
            } else {
                Excluded(e)
            }
        }
    }
}

fn tighter_upper(a: Bound<i64>, b: Bound<i64>) -> Bound<i64> {
    use Bound::*;
    match (a, b) {
        (Unbounded, x) | (x, Unbounded) => x,
        (Included(x), Included(y)) => Included(x.min(y)),
        (Excluded(x), Excluded(y)) => Excluded(x.min(y)),
        (Included(i), Excluded(e)) | (Excluded(e), Included(i)) => {
            if i < e {
                Included(i)
            } else {
                Excluded(e)
            }
        }
    }
}

#[async_trait]
impl TableProvider for Table {
    fn schema(&self) -> SchemaRef {
        self.kind.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(
                |f| match bound_example(f).and_then(|f| self.narrowing(&f)) {
                    Some((_, true)) => TableProviderFilterPushDown::Exact,
                    Some((_, false)) => TableProviderFilterPushDown::Inexact,
                    None => TableProviderFilterPushDown::Unsupported,
                },
            )
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let sharded = crate::shards::Sharded::of(state);
        let access = match &sharded {
            Some(s) => s.access,
            None => QueryContext::of(state)?.access,
        };
        if !self.kind.allowed(&access) {
            return Err(SqlError::Forbidden {
                table: self.kind.name(),
                permission: self.kind.permission(),
            }
            .into());
        }
        let mut plan = self.plan(filters);
        plan.fetch = limit;
        // Walks over many conversations are split among the session's partitions.
        if matches!(self.kind, TableKind::Items | TableKind::Conversations)
            && plan.ids.is_none()
            && limit.is_none()
            && !plan.empty
        {
            plan.partitions = state.config().target_partitions().max(1);
        }
        match sharded {
            Some(s) => s.scan(plan, projection.cloned()),
            None => Ok(Arc::new(ScanExec::new(
                QueryContext::of(state)?,
                plan,
                projection.cloned(),
            )?)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_prefixes_stop_at_the_first_wildcard() {
        assert_eq!(like_prefix("users/a/%"), ("users/a/".to_owned(), true));
        assert_eq!(like_prefix("users/a_b%"), ("users/a".to_owned(), false));
        assert_eq!(like_prefix("abc"), ("abc".to_owned(), false));
        assert_eq!(like_prefix("%x"), (String::new(), false));
    }

    #[test]
    fn timestamps_round_outwards() {
        let ns = ScalarValue::TimestampNanosecond(Some(1_500_000), None);
        assert_eq!(millis_of(&ns, true), Some(1));
        assert_eq!(millis_of(&ns, false), Some(2));
        let us = ScalarValue::TimestampMicrosecond(Some(-1500), None);
        assert_eq!(millis_of(&us, true), Some(-2));
        assert_eq!(millis_of(&us, false), Some(-1));
    }

    #[test]
    fn bounds_tighten() {
        use Bound::*;
        assert_eq!(tighter_lower(Included(3), Excluded(3)), Excluded(3));
        assert_eq!(tighter_lower(Included(4), Excluded(3)), Included(4));
        assert_eq!(tighter_upper(Included(3), Excluded(3)), Excluded(3));
        assert_eq!(tighter_upper(Unbounded, Excluded(3)), Excluded(3));
    }
}
