//! SQL over mnemo's store: `conversations`, `items`, `memory`, `changes` and `audit`, with
//! search and vector functions, planned and run by DataFusion.
//!
//! Every query gets its own session: one consistent [`mnemo_storage::ReadView`] of the store
//! (it sees every write acknowledged before the query started, nothing later) and table
//! providers built from the verified caller's [`Scope`]. The scope is not a filter a query
//! could avoid: the providers can only read through it, with `mnemo-storage`'s access rule.
//! Statements are read-only, and each query runs under a time limit and a memory limit.
//!
//! This crate has no HTTP or wire protocol in it; `mnemo-api` serves [`SqlEngine::query`] as
//! `POST /v1/sql` and `mnemo-pgwire` over the PostgreSQL protocol.

mod error;
mod functions;
mod params;
mod scan;
mod statement;
mod tables;
mod vector;

pub use datafusion;
pub use datafusion::arrow;
pub use error::SqlError;
pub use params::json_param;
pub use tables::TableKind;

use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::ScalarValue;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::{LogicalPlan, ScalarUDF};
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::stream::BoxStream;
use futures::StreamExt;
use mnemo_index::SearchService;
use mnemo_storage::{Scope, Store};
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
    store: Arc<Store>,
    search: Option<Arc<SearchService>>,
    config: SqlConfig,
}

impl SqlEngine {
    /// An engine over `store`; with a search service, `search()`, `embed()` and vector
    /// ordering use its index.
    pub fn new(store: Arc<Store>, search: Option<Arc<SearchService>>, config: SqlConfig) -> Self {
        SqlEngine {
            store,
            search,
            config,
        }
    }

    /// The engine's limits.
    pub fn config(&self) -> &SqlConfig {
        &self.config
    }

    /// A session for one query of `scope`, over a fresh view of the store.
    async fn session(&self, scope: Scope, access: Access) -> Result<SessionContext, SqlError> {
        let view = self.store.read_view().await?;
        let ctx = Arc::new(QueryContext {
            view,
            scope,
            access,
            search: self.search.clone(),
        });
        // No spilling to disk: a query that needs more than its memory limit fails with
        // `SqlError::MemoryLimit` rather than filling the node's temporary directory.
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(self.config.memory_limit_bytes, 1.0)
            .with_disk_manager_builder(
                DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
            )
            .build_arc()
            .map_err(|e| SqlError::Internal(e.to_string()))?;
        let config = SessionConfig::new()
            .with_information_schema(true)
            .with_default_catalog_and_schema("mnemo", "public")
            .with_target_partitions(self.config.target_partitions.max(1));
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime)
            .with_default_features()
            .with_physical_optimizer_rule(Arc::new(vector::NearestItems))
            .build();
        let mut session = SessionContext::new_with_state(state);
        for kind in TableKind::ALL {
            session
                .register_table(kind.name(), Arc::new(Table::new(kind, ctx.clone())))
                .map_err(|e| SqlError::Internal(e.to_string()))?;
        }
        session.register_udf(ScalarUDF::from(functions::CosineSimilarity::new()));
        session.register_udf(ScalarUDF::from(functions::Embed::new(self.search.clone())));
        session.register_udtf("search", Arc::new(functions::SearchFunction::new(ctx)));
        datafusion_functions_json::register_all(&mut session)
            .map_err(|e| SqlError::Internal(e.to_string()))?;
        Ok(session)
    }

    async fn plan(&self, session: &SessionContext, sql: &str) -> Result<LogicalPlan, SqlError> {
        let statement = statement::parse(sql)?;
        session
            .state()
            .statement_to_plan(statement)
            .await
            .map_err(|e| self.classify(e))
    }

    fn classify(&self, e: datafusion::error::DataFusionError) -> SqlError {
        SqlError::from_datafusion(e, self.config.memory_limit_bytes)
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
        let ms = u64::try_from(self.config.timeout.as_millis()).unwrap_or(u64::MAX);
        let deadline = tokio::time::Instant::now() + self.config.timeout;
        let started = tokio::time::timeout_at(deadline, async {
            let session = self.session(scope, access).await?;
            let mut plan = self.plan(&session, sql).await?;
            if !params.is_empty() {
                let params = params::typed(&plan, params)?;
                plan = plan
                    .with_param_values(params)
                    .map_err(|e| SqlError::Param(e.strip_backtrace()))?;
            }
            let frame = session
                .execute_logical_plan(plan)
                .await
                .map_err(|e| self.classify(e))?;
            frame.execute_stream().await.map_err(|e| self.classify(e))
        })
        .await;
        let stream = match started {
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
        let session = self.session(scope, access).await?;
        let plan = self.plan(&session, sql).await?;
        let types = plan
            .get_parameter_types()
            .map_err(|e| SqlError::Param(e.strip_backtrace()))?;
        let mut params = Vec::with_capacity(types.len());
        for i in 1..=types.len() {
            params.push(types.get(&format!("${i}")).cloned().flatten());
        }
        let schema = Arc::new(plan.schema().as_arrow().clone());
        Ok(Described { params, schema })
    }
}
