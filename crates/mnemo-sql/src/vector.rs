//! `ORDER BY cosine_similarity(embedding, <vector>) DESC LIMIT k` over one user's items,
//! planned onto the search index's exact per-user vector search instead of a scan.
//!
//! [`NearestItems`] is a physical optimizer rule. It looks for a top-k sort whose first key
//! is `cosine_similarity` of the items' `embedding` and a constant vector (a list literal or
//! `embed('…')`, which is folded into one at planning), over an items scan confined to one
//! user and nothing else (no conversation, time or other filter between them). It replaces
//! the scan with one that reads only the index's `k` nearest items of that user; the sort
//! stays, and orders those rows by the exact function.

use crate::scan::ScanExec;
use crate::tables::{QueryContext, TableKind};
use crate::SqlError;
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float32Type};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Result as DfResult, ScalarValue};
use datafusion::physical_expr::expressions::{Column, Literal};
use datafusion::physical_expr::{PhysicalExpr, ScalarFunctionExpr};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::ExecutionPlan;
use mnemo_search::{Filter, Mode, SearchQuery, Source};
use mnemo_storage::Scope;
use std::sync::Arc;

/// The rule (see the module documentation).
#[derive(Debug, Default)]
pub(crate) struct NearestItems;

/// A constant vector, if `e` is a list literal of numbers.
fn literal_vector(e: &Arc<dyn PhysicalExpr>) -> Option<Vec<f32>> {
    let lit = e.downcast_ref::<Literal>()?;
    let ScalarValue::List(list) = lit.value() else {
        return None;
    };
    if list.len() != 1 || list.is_null(0) {
        return None;
    }
    let values = cast(&list.value(0), &DataType::Float32).ok()?;
    let values = values.as_primitive::<Float32Type>();
    if values.null_count() > 0 || values.is_empty() {
        return None;
    }
    Some(values.values().to_vec())
}

/// Follows `expr` down to an items scan through projections and pass-through operators;
/// returns the scan and the expression rewritten over the scan's columns.
fn down_to_scan(
    expr: Arc<dyn PhysicalExpr>,
    plan: &Arc<dyn ExecutionPlan>,
) -> Option<(Arc<dyn PhysicalExpr>, Arc<dyn ExecutionPlan>)> {
    if plan.downcast_ref::<ScanExec>().is_some() {
        return Some((expr, plan.clone()));
    }
    if let Some(p) = plan.downcast_ref::<ProjectionExec>() {
        let exprs = p.expr();
        let rewritten = expr
            .transform(|e| match e.downcast_ref::<Column>() {
                Some(c) => match exprs.get(c.index()) {
                    Some(pe) => Ok(Transformed::yes(pe.expr.clone())),
                    None => Err(datafusion::error::DataFusionError::Internal(
                        "projection column out of range".into(),
                    )),
                },
                None => Ok(Transformed::no(e)),
            })
            .ok()?
            .data;
        return down_to_scan(rewritten, p.input());
    }
    if plan.downcast_ref::<RepartitionExec>().is_some()
        || plan.downcast_ref::<CooperativeExec>().is_some()
    {
        return down_to_scan(expr, plan.children().first()?);
    }
    None
}

impl PhysicalOptimizerRule for NearestItems {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        plan.transform_down(|node| {
            let Some(sort) = node.downcast_ref::<SortExec>() else {
                return Ok(Transformed::no(node));
            };
            let Some(k) = sort
                .fetch()
                .filter(|k| (1..=crate::functions::MAX_TOP_K).contains(k))
            else {
                return Ok(Transformed::no(node));
            };
            let first = &sort.expr()[0];
            if !first.options.descending {
                return Ok(Transformed::no(node));
            }
            let Some((expr, scan_plan)) = down_to_scan(first.expr.clone(), sort.input()) else {
                return Ok(Transformed::no(node));
            };
            let Some(scan) = scan_plan.downcast_ref::<ScanExec>() else {
                return Ok(Transformed::no(node));
            };
            let Some(f) = expr.downcast_ref::<ScalarFunctionExpr>() else {
                return Ok(Transformed::no(node));
            };
            if f.name() != "cosine_similarity" || f.args().len() != 2 {
                return Ok(Transformed::no(node));
            }
            let is_embedding = |e: &Arc<dyn PhysicalExpr>| {
                e.downcast_ref::<Column>()
                    .and_then(|c| scan.column_name(c.index()))
                    == Some("embedding")
            };
            let args = f.args();
            let vector = match (is_embedding(&args[0]), is_embedding(&args[1])) {
                (true, false) => literal_vector(&args[1]),
                (false, true) => literal_vector(&args[0]),
                _ => None,
            };
            let eligible = scan.kind() == TableKind::Items
                && scan.single_user().is_some()
                && !scan.narrowed_beyond_user()
                && vector
                    .as_ref()
                    .is_some_and(|v| scan.index_has_vectors(v.len()));
            let (Some(vector), true) = (vector, eligible) else {
                return Ok(Transformed::no(node));
            };
            let nearest: Arc<dyn ExecutionPlan> = scan.nearest(vector, k);
            let input = sort
                .input()
                .clone()
                .transform_up(|n| {
                    Ok(if Arc::ptr_eq(&n, &scan_plan) {
                        Transformed::yes(nearest.clone())
                    } else {
                        Transformed::no(n)
                    })
                })?
                .data;
            let options = ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute);
            Ok(Transformed::yes(
                node.clone().replace_children(vec![input], options)?,
            ))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "mnemo_nearest_items"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// The ids (conversation, item) of the scope's `k` items nearest to `vector`, from the
/// index's exact per-user search, after every write acknowledged so far is indexed.
pub(crate) async fn nearest(
    ctx: &QueryContext,
    scope: &Scope,
    vector: Vec<f32>,
    k: usize,
) -> Result<Vec<(String, String)>, SqlError> {
    let svc = ctx.search.as_ref().ok_or_else(|| {
        SqlError::Invalid("vector ordering needs search to be enabled on the server".into())
    })?;
    svc.wait_current(&scope.tenant, mnemo_index::Consistency::Eventual)
        .await?;
    let query = SearchQuery {
        tenant: scope.tenant.as_str().to_owned(),
        owner: scope.user.clone(),
        source: Source::Items,
        conversation_id: None,
        key_prefix: None,
        filter: Filter::default(),
        mode: Mode::Vector,
        text: None,
        vector: Some(vector),
        top_k: k,
    };
    let hits = svc.search(query).await?;
    Ok(hits
        .into_iter()
        .filter_map(|h| Some((h.conversation_id?, h.id)))
        .collect())
}
