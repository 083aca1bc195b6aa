//! SQL over mnemo's store: `conversations`, `items`, `memory`, `changes` and `audit`, with
//! search and vector functions, planned and run by DataFusion.
//!
//! Every query gets its own session: one consistent [`mnemo_storage::ReadView`] of the store
//! (it sees every write acknowledged before the query started, nothing later) and table
//! providers built from the verified caller's [`Scope`]. The scope is not a filter a query
//! could avoid: the providers can only read through it, with `mnemo-storage`'s access rule.
//! Statements are read-only, and each query runs under a time limit and a memory limit.
//!
//! A query can also read several shards (a cluster's stores), some on this node and some on
//! others: see [`SqlEngine::query_shards`] and the `shards` module.
//!
//! This crate has no HTTP or wire protocol in it; `mnemo-api` serves [`SqlEngine::query`] as
//! `POST /v1/sql` and `mnemo-pgwire` over the PostgreSQL protocol.

mod error;
mod functions;
mod params;
mod plan_cache;
mod scan;
mod shards;
mod statement;
mod tables;
mod vector;

pub use datafusion;
pub use datafusion::arrow;
pub use error::SqlError;
pub use params::json_param;
pub use shards::{arrow_stream, BatchStream, RemoteShard, Shard, ShardRequest, ShardSource};
pub use tables::TableKind;

use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::ScalarValue;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::{SessionState, SessionStateBuilder};
use datafusion::execution::{FunctionRegistry, TaskContext};
use datafusion::logical_expr::ScalarUDF;
use datafusion::physical_plan::{execute_stream, ExecutionPlan};
use datafusion::prelude::SessionConfig;
use futures::stream::BoxStream;
use futures::StreamExt;
use mnemo_index::SearchService;
use mnemo_storage::{Scope, Store};
use plan_cache::{PlanCache, Prepared};
use std::sync::Arc;
use std::time::Duration;
use tables::{QueryContext, Table};

/// Limits of the SQL engine.
#[derive(Clone, Debug)]
pub struct SqlConfig {
    /// A query (planning and every row of its answer) must finish within this time.
    pub timeout: Duration,
    /// Memory one query's operators (sorts, joins, aggregations) may hold.
    pub memory_limit_bytes: usize,
    /// Threads of work one query may split into.
    pub target_partitions: usize,
}

impl Default for SqlConfig {
    fn default() -> Self {
        SqlConfig {
            timeout: Duration::from_secs(30),
            memory_limit_bytes: 512 << 20,
            target_partitions: 2,
        }
    }
}

/// Which tables a caller may read: the permissions it holds over REST.
#[derive(Clone, Copy, Debug, Default)]
pub struct Access {
    /// `conversations.read`: `conversations` and `items`.
    pub conversations: bool,
    /// `memory.read`: `memory`.
    pub memory: bool,
    /// `changes.read`: `changes`.
    pub changes: bool,
    /// `admin`: `audit`.
    pub audit: bool,
    /// `search`: `search()` and vector ordering through the index.
    pub search: bool,
}

/// The answer of a query: its columns and a stream of row batches.
pub struct Answer {
    /// The columns.
    pub schema: SchemaRef,
    /// The rows, in batches, read as they are consumed. Stops with an error when the query
    /// runs past its time limit or memory limit.
    pub batches: BoxStream<'static, Result<RecordBatch, SqlError>>,
}

/// What a statement takes and returns, without running it (for prepared statements).
#[derive(Debug)]
pub struct Described {
    /// Parameter types by position (`$1` first); `None` where the type is not known.
    pub params: Vec<Option<DataType>>,
    /// The answer's columns.
    pub schema: SchemaRef,
}

/// The SQL engine of a server.
pub struct SqlEngine {
    /// The store a single server's queries read; `None` for an engine that only runs
    /// queries over shards.
    store: Option<Arc<Store>>,
    search: Option<Arc<SearchService>>,
    config: SqlConfig,
    /// Functions, tables and rules every query shares; each query runs in a copy of it
    /// that carries the query's own [`QueryContext`].
    base: SessionState,
    /// Plans by statement text.
    plans: PlanCache,
}

impl SqlEngine {
    /// An engine over `store`; with a search service, `search()`, `embed()` and vector
    /// ordering use its index.
    pub fn new(store: Arc<Store>, search: Option<Arc<SearchService>>, config: SqlConfig) -> Self {
        let base = base_state(&config, search.clone());
        SqlEngine {
            store: Some(store),
            search,
            config,
            base,
            plans: PlanCache::default(),
        }
    }

    /// An engine that runs queries over shards only ([`SqlEngine::query_shards`]), as a
    /// cluster node's front does; `embed()` is not available in it.
    pub fn for_shards(config: SqlConfig) -> Self {
        SqlEngine {
            store: None,
            search: None,
            base: base_state(&config, None),
            config,
            plans: PlanCache::default(),
        }
    }

    /// The engine's limits.
    pub fn config(&self) -> &SqlConfig {
        &self.config
    }

    /// The store of a single server's queries.
    fn store(&self) -> Result<&Arc<Store>, SqlError> {
        self.store
            .as_ref()
            .ok_or_else(|| SqlError::Internal("this engine runs queries over shards only".into()))
    }

    /// What a query reads of one store: a fresh view of it, and the caller.
    async fn context(
        store: &Store,
        search: Option<Arc<SearchService>>,
        scope: Scope,
        access: Access,
    ) -> Result<Arc<QueryContext>, SqlError> {
        let view = store.read_view().await?;
        Ok(Arc::new(QueryContext {
            view,
            scope,
            access,
            search,
        }))
    }

    /// A session for one query, carrying `context` (what its scans read).
    fn state_with<T: std::any::Any + Send + Sync>(&self, context: Arc<T>) -> SessionState {
        let mut state = self.base.clone();
        state.config_mut().set_extension(context);
        // `now()` and friends are the time the query started.
        state.mark_start_execution();
        state
    }

    /// A session for one query of `scope`, over a fresh view of the store.
    async fn session(&self, scope: Scope, access: Access) -> Result<SessionState, SqlError> {
        let ctx = Self::context(self.store()?, self.search.clone(), scope, access).await?;
        Ok(self.state_with(ctx))
    }

    /// The plan of `sql`: from the cache when the same text was planned before.
    async fn prepare(&self, state: &SessionState, sql: &str) -> Result<Arc<Prepared>, SqlError> {
        if let Some(hit) = self.plans.get(sql) {
            metrics::counter!("mnemo_sql_plans_total", "cache" => "hit").increment(1);
            return Ok(hit);
        }
        let statement = statement::parse(sql)?;
        let plan = state
            .statement_to_plan(statement)
            .await
            .map_err(|e| self.classify(e))?;
        let params = plan
            .get_parameter_types()
            .map_err(|e| SqlError::Param(e.strip_backtrace()))?;
        let reusable = plan_cache::reusable(&plan);
        // A plan is optimized once, with its parameters unbound, when nothing in it
        // depends on the moment it runs. Otherwise (or when the optimizer needs the
        // parameters' values to type them) each run optimizes it after binding.
        let (plan, optimized) = match reusable.then(|| state.optimize(&plan).ok()).flatten() {
            Some(optimized) => (optimized, true),
            None => (plan, false),
        };
        let prepared = Arc::new(Prepared {
            plan,
            optimized,
            params,
        });
        let cache = if reusable {
            self.plans.insert(sql, prepared.clone());
            "miss"
        } else {
            "bypass"
        };
        metrics::counter!("mnemo_sql_plans_total", "cache" => cache).increment(1);
        Ok(prepared)
    }

    fn classify(&self, e: datafusion::error::DataFusionError) -> SqlError {
        SqlError::from_datafusion(e, self.config.memory_limit_bytes)
    }

    /// The physical plan of `prepared` with `params` bound, ready to run in `state`.
    async fn physical(
        &self,
        state: &SessionState,
        prepared: &Prepared,
        params: Vec<ScalarValue>,
    ) -> Result<Arc<dyn ExecutionPlan>, SqlError> {
        let mut plan = prepared.plan.clone();
        if !params.is_empty() || !prepared.params.is_empty() {
            let params = params::typed(&prepared.params, params)?;
            plan = plan
                .with_param_values(params)
                .map_err(|e| SqlError::Param(e.strip_backtrace()))?;
            if prepared.optimized {
                // Constant folding over the bound values (`embed($1)`, casts).
                plan = plan_cache::simplify(state, plan).map_err(|e| self.classify(e))?;
            }
        }
        if !prepared.optimized {
            plan = state.optimize(&plan).map_err(|e| self.classify(e))?;
        }
        state
            .query_planner()
            .create_physical_plan(&plan, state)
            .await
            .map_err(|e| self.classify(e))
    }

    /// What one query may use while it runs: its own memory pool, no spilling to disk.
    fn task(&self, state: &SessionState) -> Result<Arc<TaskContext>, SqlError> {
        // No spilling to disk: a query that needs more than its memory limit fails with
        // `SqlError::MemoryLimit` rather than filling the node's temporary directory.
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(self.config.memory_limit_bytes, 1.0)
            .with_disk_manager_builder(
                DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
            )
            .build_arc()
            .map_err(|e| SqlError::Internal(e.to_string()))?;
        Ok(Arc::new(TaskContext::new(
            None,
            state.session_id().to_owned(),
            state.config().clone(),
            state.scalar_functions().clone(),
            state.higher_order_functions().clone(),
            state.aggregate_functions().clone(),
            state.window_functions().clone(),
            runtime,
        )))
    }

    /// Runs a read-only statement for `scope` with parameters bound to `$1…`. The answer
    /// streams; the time limit covers planning and every batch.
    pub async fn query(
        &self,
        scope: Scope,
        access: Access,
        sql: &str,
        params: Vec<ScalarValue>,
    ) -> Result<Answer, SqlError> {
        self.timed(async {
            let state = self.session(scope, access).await?;
            self.start(&state, sql, params).await
        })
        .await
    }

    /// Runs a read-only statement for `scope` over `shards`: each table scan reads every
    /// shard that can hold its rows (on this node through a view of its store, on others
    /// through [`RemoteShard::read`]); the rest of the plan runs here. Each shard is read
    /// at its own consistent point.
    pub async fn query_shards(
        &self,
        shards: Vec<Shard>,
        scope: Scope,
        access: Access,
        sql: &str,
        params: Vec<ScalarValue>,
    ) -> Result<Answer, SqlError> {
        self.timed(async {
            let opened = shards.into_iter().map(|s| {
                let (scope, access) = (scope.clone(), access);
                async move {
                    let reader = match s.source {
                        ShardSource::Local { store, search } => shards::Reader::Local(
                            Self::context(&store, search, scope, access).await?,
                        ),
                        ShardSource::Remote(r) => shards::Reader::Remote(r),
                    };
                    Ok::<_, SqlError>(shards::OpenShard {
                        id_tag: s.id_tag,
                        user_data: s.user_data,
                        reader,
                    })
                }
            });
            let shards = futures::future::try_join_all(opened).await?;
            let state = self.state_with(Arc::new(shards::Sharded {
                scope,
                access,
                shards,
            }));
            self.start(&state, sql, params).await
        })
        .await
    }

    /// Answers a [`ShardRequest`] of another node's query with this engine's store, for the
    /// caller `scope` (verified here, as for any query) with its `access`.
    pub async fn serve_shard(
        &self,
        scope: Scope,
        access: Access,
        request: &ShardRequest,
    ) -> Result<Answer, SqlError> {
        self.timed(async {
            let ctx = Self::context(self.store()?, self.search.clone(), scope, access).await?;
            let state = self.state_with(ctx.clone());
            match request.inner() {
                shards::Request::Scan { plan, projection } => {
                    if !plan.kind.allowed(&access) {
                        return Err(SqlError::Forbidden {
                            table: plan.kind.name(),
                            permission: plan.kind.permission(),
                        });
                    }
                    let mut plan = plan.clone();
                    plan.partitions = plan
                        .partitions
                        .clamp(1, self.config.target_partitions.max(1));
                    let scan = scan::ScanExec::new(ctx, plan, projection.clone())
                        .map_err(|e| self.classify(e))?;
                    execute_stream(Arc::new(scan), self.task(&state)?).map_err(|e| self.classify(e))
                }
                shards::Request::Search(call) => {
                    let batch = call.run(&ctx).await?;
                    let schema = batch.schema();
                    let rows = futures::stream::iter([Ok(batch)]);
                    Ok(Box::pin(
                        datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(
                            schema, rows,
                        ),
                    )
                        as datafusion::execution::SendableRecordBatchStream)
                }
            }
        })
        .await
    }

    /// Plans and starts `sql` in `state`.
    async fn start(
        &self,
        state: &SessionState,
        sql: &str,
        params: Vec<ScalarValue>,
    ) -> Result<datafusion::execution::SendableRecordBatchStream, SqlError> {
        let prepared = self.prepare(state, sql).await?;
        let plan = self.physical(state, &prepared, params).await?;
        execute_stream(plan, self.task(state)?).map_err(|e| self.classify(e))
    }

    /// Runs `start` and then its stream under the engine's time limit.
    async fn timed(
        &self,
        start: impl std::future::Future<
            Output = Result<datafusion::execution::SendableRecordBatchStream, SqlError>,
        >,
    ) -> Result<Answer, SqlError> {
        let ms = u64::try_from(self.config.timeout.as_millis()).unwrap_or(u64::MAX);
        let deadline = tokio::time::Instant::now() + self.config.timeout;
        let stream = match tokio::time::timeout_at(deadline, start).await {
            Ok(stream) => stream?,
            Err(_) => return Err(SqlError::Timeout { ms }),
        };
        let schema = stream.schema();
        let limit = self.config.memory_limit_bytes;
        let batches = futures::stream::unfold(Some(stream), move |stream| async move {
            let mut stream = stream?;
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(Some(Ok(batch))) => Some((Ok(batch), Some(stream))),
                Ok(Some(Err(e))) => Some((Err(SqlError::from_datafusion(e, limit)), None)),
                Ok(None) => None,
                Err(_) => Some((Err(SqlError::Timeout { ms }), None)),
            }
        })
        // Safe to poll after its end (a caller that peeks at the first batch may).
        .fuse()
        .boxed();
        Ok(Answer { schema, batches })
    }

    /// The parameter and column types of a statement, without running it.
    pub async fn describe(
        &self,
        scope: Scope,
        access: Access,
        sql: &str,
    ) -> Result<Described, SqlError> {
        let state = self.session(scope, access).await?;
        let prepared = self.prepare(&state, sql).await?;
        let types = &prepared.params;
        let mut params = Vec::with_capacity(types.len());
        for i in 1..=types.len() {
            params.push(types.get(&format!("${i}")).cloned().flatten());
        }
        let schema = Arc::new(prepared.plan.schema().as_arrow().clone());
        Ok(Described { params, schema })
    }
}

/// The session every query starts from: DataFusion's functions and rules, mnemo's tables
/// and functions, and the engine's settings.
fn base_state(config: &SqlConfig, search: Option<Arc<SearchService>>) -> SessionState {
    let session = SessionConfig::new()
        .with_information_schema(true)
        .with_default_catalog_and_schema("mnemo", "public")
        .with_target_partitions(config.target_partitions.max(1));
    let mut state = SessionStateBuilder::new()
        .with_config(session)
        .with_default_features()
        .with_physical_optimizer_rule(Arc::new(vector::NearestItems))
        .build();
    let schema = state
        .catalog_list()
        .catalog("mnemo")
        .and_then(|c| c.schema("public"));
    if let Some(schema) = schema {
        for kind in TableKind::ALL {
            // The names are distinct, so registering cannot collide.
            let _ = schema.register_table(kind.name().to_owned(), Arc::new(Table::new(kind)));
        }
    }
    let _ = state.register_udf(Arc::new(
        ScalarUDF::from(functions::CosineSimilarity::new()),
    ));
    let _ = state.register_udf(Arc::new(ScalarUDF::from(functions::Embed::new(search))));
    state.register_udtf("search", Arc::new(functions::SearchFunction));
    if let Err(e) = datafusion_functions_json::register_all(&mut state) {
        tracing::error!(error = %e, "the JSON functions could not be registered");
    }
    state
}
