//! Queries over several shards (a cluster's stores): each table scan reads every shard that
//! can hold its rows, and the plan above the scans (joins, aggregations, sorts) runs once, on
//! the engine that was asked.
//!
//! A shard is either open on this node ([`ShardSource::Local`]: read through a view of its
//! store, as a single server reads its own) or served by another node
//! ([`ShardSource::Remote`]). A remote shard is sent a [`ShardRequest`] (the scan's key
//! ranges, time bounds and columns, or a `search()` call) and answers with the rows, which its
//! node reads with [`crate::SqlEngine::serve_shard`] in the same caller's scope. How the
//! request travels is the [`RemoteShard`]'s business; this crate has no network in it.
//!
//! Each shard is read at its own consistent point; a query over several shards does not see
//! one point in time across them.

use crate::scan::{ScanExec, ScanPlan};
use crate::tables::{QueryContext, TableKind};
use crate::SqlError;
use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::buffer::Buffer;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::ipc::reader::StreamDecoder;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::Result as DfResult;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use mnemo_index::SearchService;
use mnemo_storage::{Scope, Store};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// Rows coming back from a shard.
pub type BatchStream = BoxStream<'static, Result<RecordBatch, SqlError>>;

/// One shard a query reads.
pub struct Shard {
    /// Where it is read.
    pub source: ShardSource,
    /// The suffix of the ids created on this shard (`None`: ids do not say). A scan narrowed
    /// to conversation ids skips shards whose tag none of the ids ends with.
    pub id_tag: Option<String>,
    /// Whether the caller's own users' data (conversations, items, `users/<u>/` memory) can
    /// be on this shard. A user's only other shard is the tenant's: its shared memory and
    /// the changes to it.
    pub user_data: bool,
}

/// Where a shard is read.
pub enum ShardSource {
    /// A store open on this node (the shard's owner, or a replica).
    Local {
        /// The store.
        store: Arc<Store>,
        /// Its search service, for `search()`.
        search: Option<Arc<SearchService>>,
    },
    /// A shard another node serves.
    Remote(Arc<dyn RemoteShard>),
}

/// A shard served by another node: runs a [`ShardRequest`] there, for the same caller, and
/// streams the rows back.
#[async_trait]
pub trait RemoteShard: Send + Sync {
    /// Sends `request` to the shard and streams its rows. The first error ends the stream.
    async fn read(&self, request: ShardRequest) -> Result<BatchStream, SqlError>;
    /// A short name for EXPLAIN (such as the shard's number).
    fn label(&self) -> String;
}

/// What a query asks of one shard: serialized with [`ShardRequest::to_json`], answered by
/// [`crate::SqlEngine::serve_shard`] on the shard's node. Its contents are the engine's own.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShardRequest(Request);

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    /// A table scan: its narrowings and the columns wanted.
    Scan {
        plan: ScanPlan,
        projection: Option<Vec<usize>>,
    },
    /// A `search()` call: the shard's own hits (see `crate::functions`).
    Search(crate::functions::SearchCall),
}

impl ShardRequest {
    pub(crate) fn new(r: Request) -> Self {
        ShardRequest(r)
    }

    pub(crate) fn inner(&self) -> &Request {
        &self.0
    }

    /// The request as JSON.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// A request from its JSON.
    pub fn from_json(bytes: &[u8]) -> Result<Self, SqlError> {
        serde_json::from_slice(bytes)
            .map_err(|e| SqlError::Invalid(format!("not a shard request: {e}")))
    }
}

/// The record batches of an Arrow IPC stream arriving in chunks (a remote shard's answer).
/// A stream that ends early (its sender stopped on an error) is an error, never a shorter
/// answer.
pub fn arrow_stream<S, E>(chunks: S) -> BatchStream
where
    S: futures::Stream<Item = Result<bytes::Bytes, E>> + Send + 'static,
    E: fmt::Display,
{
    let state = (
        Box::pin(chunks),
        StreamDecoder::new(),
        Buffer::from(Vec::<u8>::new()),
        false,
    );
    futures::stream::try_unfold(
        state,
        |(mut chunks, mut decoder, mut buf, ended)| async move {
            if ended {
                return Ok(None);
            }
            loop {
                if !buf.is_empty() {
                    let decoded = decoder.decode(&mut buf).map_err(|e| {
                        SqlError::Shard(format!("a shard's answer is not Arrow: {e}"))
                    })?;
                    if let Some(batch) = decoded {
                        return Ok(Some((batch, (chunks, decoder, buf, false))));
                    }
                    continue;
                }
                match chunks.next().await {
                    Some(Ok(bytes)) => buf = Buffer::from(bytes),
                    Some(Err(e)) => {
                        return Err(SqlError::Shard(format!("a shard's answer stopped: {e}")))
                    }
                    None => {
                        decoder.finish().map_err(|e| {
                            SqlError::Shard(format!("a shard's answer stopped early: {e}"))
                        })?;
                        return Ok(None);
                    }
                }
            }
        },
    )
    .boxed()
}

/// What a query over several shards holds: the shards, and the caller. An extension of the
/// query's session configuration, beside the [`QueryContext`] of a single store.
pub(crate) struct Sharded {
    pub scope: Scope,
    pub access: crate::Access,
    pub shards: Vec<OpenShard>,
}

impl fmt::Debug for Sharded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sharded")
            .field("scope", &self.scope)
            .field("shards", &self.shards.len())
            .finish()
    }
}

/// A shard as one query reads it.
pub(crate) struct OpenShard {
    pub id_tag: Option<String>,
    pub user_data: bool,
    pub reader: Reader,
}

pub(crate) enum Reader {
    /// A view of a store on this node, taken when the query started.
    Local(Arc<QueryContext>),
    Remote(Arc<dyn RemoteShard>),
}

impl Sharded {
    /// The context of the query `session` runs, if it is over several shards.
    pub(crate) fn of(session: &dyn datafusion::catalog::Session) -> Option<Arc<Sharded>> {
        session.config().get_extension::<Sharded>()
    }

    /// The shards that can hold rows of a scan with `plan`.
    fn relevant<'a>(&'a self, plan: &'a ScanPlan) -> impl Iterator<Item = &'a OpenShard> + 'a {
        self.shards.iter().filter(move |s| {
            let users_only = matches!(plan.kind, TableKind::Conversations | TableKind::Items);
            if users_only && self.scope.user.is_some() && !s.user_data {
                return false;
            }
            match (&plan.ids, &s.id_tag) {
                (Some(ids), Some(tag)) if users_only => ids.iter().any(|id| id.ends_with(tag)),
                _ => true,
            }
        })
    }

    /// The scan of a table over every shard that can hold its rows. One shard on this node
    /// is scanned as a single server scans (so its orderings and the vector rule hold).
    pub(crate) fn scan(
        &self,
        plan: ScanPlan,
        projection: Option<Vec<usize>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let full = plan.kind.schema();
        let schema = match &projection {
            Some(p) => Arc::new(full.project(p)?),
            None => full,
        };
        let mut parts: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
        for shard in self.relevant(&plan) {
            parts.push(match &shard.reader {
                Reader::Local(ctx) => Arc::new(ScanExec::new(
                    ctx.clone(),
                    plan.clone(),
                    projection.clone(),
                )?),
                Reader::Remote(remote) => Arc::new(RemoteExec::new(
                    remote.clone(),
                    ShardRequest::new(Request::Scan {
                        plan: plan.clone(),
                        projection: projection.clone(),
                    }),
                    schema.clone(),
                )),
            });
        }
        if parts.is_empty() {
            return Ok(Arc::new(EmptyExec::new(schema)));
        }
        UnionExec::try_new(parts)
    }

    /// Runs `call` on every shard and gathers the rows.
    pub(crate) async fn gather(
        &self,
        call: &crate::functions::SearchCall,
    ) -> Result<Vec<RecordBatch>, SqlError> {
        let reads = self.shards.iter().map(|s| async move {
            match &s.reader {
                Reader::Local(ctx) => Ok(vec![call.run(ctx).await?]),
                Reader::Remote(r) => {
                    let rows = r
                        .read(ShardRequest::new(Request::Search(call.clone())))
                        .await?;
                    rows.try_collect::<Vec<_>>().await
                }
            }
        });
        let parts = futures::future::try_join_all(reads).await?;
        Ok(parts.into_iter().flatten().collect())
    }
}

/// The scan of a shard on another node: its rows as the node sends them.
pub(crate) struct RemoteExec {
    shard: Arc<dyn RemoteShard>,
    request: ShardRequest,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl fmt::Debug for RemoteExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteExec")
            .field("shard", &self.shard.label())
            .finish_non_exhaustive()
    }
}

impl RemoteExec {
    fn new(shard: Arc<dyn RemoteShard>, request: ShardRequest, schema: SchemaRef) -> Self {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        RemoteExec {
            shard,
            request,
            schema,
            properties,
        }
    }
}

impl DisplayAs for RemoteExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "MnemoRemoteScan: shard={}", self.shard.label())?;
        if let Request::Scan { plan, .. } = self.request.inner() {
            write!(f, ", table={}", plan.kind.name())?;
            if !plan.pushed.is_empty() {
                write!(f, ", pushed=[{}]", plan.pushed.join(", "))?;
            }
        }
        let names: Vec<&str> = self
            .schema
            .fields()
            .iter()
            .map(|c| c.name().as_str())
            .collect();
        write!(f, ", columns=[{}]", names.join(", "))
    }
}

impl ExecutionPlan for RemoteExec {
    fn name(&self) -> &str {
        "MnemoRemoteScan"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(SqlError::Internal(format!("no part {partition} of a remote scan")).into());
        }
        let shard = self.shard.clone();
        let request = self.request.clone();
        let rows = futures::stream::once(async move { shard.read(request).await })
            .map(|r| match r {
                Ok(rows) => rows,
                Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
            })
            .flatten()
            .map_err(datafusion::error::DataFusionError::from);
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            rows,
        )))
    }
}
