//! Plans by statement text, so that a statement run again (an application's few query
//! shapes, a prepared statement over the wire) is parsed, planned and optimized once.
//!
//! A plan holds no caller and no data: the tables read the running query's view and scope
//! from its session (see `crate::tables`), and parameters stay placeholders until a run binds
//! them. What a plan must not keep is a value of the moment it was planned, such as
//! `now()` folded into a constant: a plan with any function that is not immutable is never
//! reused.

use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::Result as DfResult;
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::{Expr, LogicalPlan, Volatility};
use datafusion::optimizer::simplify_expressions::SimplifyExpressions;
use datafusion::optimizer::{Optimizer, OptimizerRule};
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

/// Statements kept at most; past it the cache starts again empty (a workload of more
/// distinct statements than this gains little from a cache anyway).
const CAPACITY: usize = 512;

/// A statement planned once.
#[derive(Debug)]
pub(crate) struct Prepared {
    /// The plan; its parameters are placeholders.
    pub plan: LogicalPlan,
    /// Whether `plan` is already analyzed and optimized.
    pub optimized: bool,
    /// The parameters' types by name (`$1`…), `None` where the planner could not tell.
    pub params: HashMap<String, Option<DataType>>,
}

/// Plans by statement text.
#[derive(Default)]
pub(crate) struct PlanCache {
    plans: Mutex<HashMap<String, Arc<Prepared>>>,
}

impl PlanCache {
    /// The plan of `sql`, if it was kept.
    pub fn get(&self, sql: &str) -> Option<Arc<Prepared>> {
        self.plans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(sql)
            .cloned()
    }

    /// Keeps the plan of `sql`.
    pub fn insert(&self, sql: &str, plan: Arc<Prepared>) {
        let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        if plans.len() >= CAPACITY {
            plans.clear();
        }
        plans.insert(sql.to_owned(), plan);
    }
}

/// Whether a plan may serve later runs of its statement: a query (not `EXPLAIN`, `SHOW` or
/// `DESCRIBE`, which are cheap to plan and print plans) whose functions are all immutable.
pub(crate) fn reusable(plan: &LogicalPlan) -> bool {
    if !matches!(
        plan,
        LogicalPlan::Projection(_)
            | LogicalPlan::Filter(_)
            | LogicalPlan::Sort(_)
            | LogicalPlan::Limit(_)
            | LogicalPlan::Aggregate(_)
            | LogicalPlan::Window(_)
            | LogicalPlan::Distinct(_)
            | LogicalPlan::Union(_)
            | LogicalPlan::Join(_)
            | LogicalPlan::SubqueryAlias(_)
            | LogicalPlan::TableScan(_)
    ) {
        return false;
    }
    let mut immutable = true;
    let _ = plan.apply_with_subqueries(|node| {
        node.apply_expressions(|e| {
            e.apply(|e| {
                if let Expr::ScalarFunction(f) = e {
                    if f.func.signature().volatility != Volatility::Immutable {
                        immutable = false;
                        return Ok(TreeNodeRecursion::Stop);
                    }
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    });
    immutable
}

/// The optimizer pass a plan gets after its parameters are bound: expressions over the
/// bound values are folded, the rest of the plan is as it was optimized.
static SIMPLIFY: LazyLock<Optimizer> = LazyLock::new(|| {
    let rules: Vec<Arc<dyn OptimizerRule + Send + Sync>> =
        vec![Arc::new(SimplifyExpressions::new())];
    Optimizer::with_rules(rules)
});

/// `plan` with its constant expressions folded.
pub(crate) fn simplify(state: &SessionState, plan: LogicalPlan) -> DfResult<LogicalPlan> {
    SIMPLIFY.optimize(plan, state, |_, _| {})
}
