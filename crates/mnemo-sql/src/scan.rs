//! The scan operator: streams one table's rows out of the query's [`ReadView`] as Arrow
//! batches, reading only the key ranges its [`ScanPlan`] allows.
//!
//! A scan runs as a task that fills a small channel, so storage reads overlap with the
//! operators above; when the consumer stops (a LIMIT is met, the query is cancelled or times
//! out) the channel closes and the task stops reading.

use crate::tables::{vector_type, QueryContext, TableKind};
use crate::SqlError;
use datafusion::arrow::array::{
    ArrayRef, BinaryBuilder, Float32Builder, Int64Builder, ListBuilder, RecordBatch, StringBuilder,
    TimestampMillisecondBuilder,
};
use datafusion::arrow::datatypes::{Field, SchemaRef};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::Result as DfResult;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr, PhysicalSortExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{
    Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SortOrderPushdownResult,
};
use mnemo_storage::{ConversationRecord, Rows, Scope, StoreError, StoredItem};
use serde_json::Value;
use std::collections::BTreeSet;
use std::fmt;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Rows per batch.
const BATCH_ROWS: usize = 1024;

/// What a scan reads: the narrowings taken from the query's filters. A query over several
/// shards sends it to each remote shard (see `crate::shards`).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct ScanPlan {
    pub kind: TableKind,
    /// Only these conversations (ids).
    pub ids: Option<BTreeSet<String>>,
    /// Only this user's rows.
    pub user: Option<String>,
    /// Only memory keys with this prefix.
    pub key_prefix: Option<String>,
    /// Bounds on the time column, ms.
    pub from: Bound<i64>,
    pub until: Bound<i64>,
    /// Lower bound on `seq`.
    pub seq_from: Option<i64>,
    /// Contradictory filters: nothing matches.
    pub empty: bool,
    /// Items newest first (a single conversation's items ordered by seq or created_at
    /// descending).
    pub newest_first: bool,
    /// Stop after this many rows (all filters are applied exactly).
    pub fetch: Option<usize>,
    /// Top-k items by vector similarity, from the search index (see `crate::vector`).
    pub nearest: Option<(Vec<f32>, usize)>,
    /// Parts the scan is split into, each read by its own task: conversations are dealt
    /// out among them in turn. One for scans that must keep an order or stop early.
    pub partitions: usize,
    /// The filters that narrowed the scan, for EXPLAIN.
    pub pushed: Vec<String>,
}

impl ScanPlan {
    pub fn new(kind: TableKind) -> Self {
        ScanPlan {
            kind,
            ids: None,
            user: None,
            key_prefix: None,
            from: Bound::Unbounded,
            until: Bound::Unbounded,
            seq_from: None,
            empty: false,
            newest_first: false,
            fetch: None,
            nearest: None,
            partitions: 1,
            pushed: Vec::new(),
        }
    }

    fn in_time(&self, ms: i64) -> bool {
        (self.from, self.until).contains(&ms)
    }

    /// One conversation's items only: their key order is their seq order.
    fn single_conversation(&self) -> bool {
        self.kind == TableKind::Items && self.ids.as_ref().is_some_and(|ids| ids.len() == 1)
    }
}

/// The scan operator of one table.
#[derive(Debug)]
pub(crate) struct ScanExec {
    ctx: Arc<QueryContext>,
    plan: ScanPlan,
    projection: Option<Vec<usize>>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl ScanExec {
    pub fn new(
        ctx: Arc<QueryContext>,
        plan: ScanPlan,
        projection: Option<Vec<usize>>,
    ) -> DfResult<Self> {
        let full = plan.kind.schema();
        let schema = match &projection {
            Some(p) => Arc::new(full.project(p)?),
            None => full,
        };
        let properties = properties(&schema, &plan);
        Ok(ScanExec {
            ctx,
            plan,
            projection,
            schema,
            properties,
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }

    fn with_plan(&self, plan: ScanPlan) -> Arc<ScanExec> {
        Arc::new(ScanExec {
            ctx: self.ctx.clone(),
            properties: properties(&self.schema, &plan),
            plan,
            projection: self.projection.clone(),
            schema: self.schema.clone(),
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }

    /// The table this scan reads.
    pub fn kind(&self) -> TableKind {
        self.plan.kind
    }

    /// The user all rows of this scan belong to, if the scan is confined to one.
    pub fn single_user(&self) -> Option<&str> {
        self.ctx.scope.user.as_deref().or(self.plan.user.as_deref())
    }

    /// Whether the scan reads more than the scope and a user narrowing (then a vector top-k
    /// from the index would not be the same rows).
    pub fn narrowed_beyond_user(&self) -> bool {
        let p = &self.plan;
        p.ids.is_some() || p.from != Bound::Unbounded || p.until != Bound::Unbounded
    }

    /// Whether the search index can answer a vector top-k of `dims` dimensions for this
    /// scan's tenant (the service is on and the tenant's vectors have that dimension).
    pub fn index_has_vectors(&self, dims: usize) -> bool {
        self.ctx
            .search
            .as_ref()
            .is_some_and(|s| s.index().dimension(self.ctx.scope.tenant.as_str()) == Some(dims))
    }

    /// A copy that reads the `k` items nearest to `vector` through the search index.
    pub fn nearest(&self, vector: Vec<f32>, k: usize) -> Arc<ScanExec> {
        let mut plan = self.plan.clone();
        plan.nearest = Some((vector, k));
        plan.partitions = 1;
        self.with_plan(plan)
    }

    /// The projected column names.
    pub fn column_name(&self, index: usize) -> Option<&str> {
        self.schema.fields().get(index).map(|f| f.name().as_str())
    }
}

fn properties(schema: &SchemaRef, plan: &ScanPlan) -> Arc<PlanProperties> {
    // One conversation's items, read in one part, come in seq order (reversed for newest
    // first), and created_at never decreases along it: say so, so that a sort pushed into the
    // scan stays satisfied above it.
    let ordered = plan.single_conversation() && plan.partitions <= 1 && plan.nearest.is_none();
    let orderings: Vec<Vec<PhysicalSortExpr>> = if ordered {
        ["seq", "created_at"]
            .iter()
            .filter_map(|name| {
                let index = schema.index_of(name).ok()?;
                let options = datafusion::arrow::compute::SortOptions {
                    descending: plan.newest_first,
                    nulls_first: plan.newest_first,
                };
                let column = datafusion::physical_expr::expressions::Column::new(name, index);
                Some(vec![PhysicalSortExpr::new(Arc::new(column), options)])
            })
            .collect()
    } else {
        Vec::new()
    };
    Arc::new(PlanProperties::new(
        EquivalenceProperties::new_with_orderings(schema.clone(), orderings),
        Partitioning::UnknownPartitioning(plan.partitions.max(1)),
        EmissionType::Incremental,
        Boundedness::Bounded,
    ))
}

impl DisplayAs for ScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let p = &self.plan;
        write!(f, "MnemoScan: table={}", p.kind.name())?;
        match (&self.ctx.scope.user, &p.user) {
            (Some(u), _) => write!(f, ", scope=user {u}")?,
            (None, Some(u)) => write!(f, ", scope=tenant, user={u} (owner index)")?,
            (None, None) => write!(f, ", scope=tenant")?,
        }
        if let Some(ids) = &p.ids {
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            write!(f, ", key_ranges=[{}]", ids.join(", "))?;
        }
        if let Some(prefix) = &p.key_prefix {
            write!(f, ", key_prefix={prefix:?}")?;
        }
        if p.from != Bound::Unbounded || p.until != Bound::Unbounded {
            write!(f, ", time={:?}..{:?}", p.from, p.until)?;
        }
        if let Some(s) = p.seq_from {
            write!(f, ", seq>={s}")?;
        }
        if p.empty {
            write!(f, ", empty")?;
        }
        if p.newest_first {
            write!(f, ", newest_first")?;
        }
        if let Some(n) = p.fetch {
            write!(f, ", fetch={n}")?;
        }
        if p.partitions > 1 {
            write!(f, ", partitions={}", p.partitions)?;
        }
        if let Some((v, k)) = &p.nearest {
            write!(
                f,
                ", nearest=exact vector search (top {k} of {} dims)",
                v.len()
            )?;
        }
        if !p.pushed.is_empty() {
            write!(f, ", pushed=[{}]", p.pushed.join(", "))?;
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

impl ExecutionPlan for ScanExec {
    fn name(&self) -> &str {
        "MnemoScan"
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

    fn supports_limit_pushdown(&self) -> bool {
        true
    }

    fn with_fetch(&self, limit: Option<usize>) -> Option<Arc<dyn ExecutionPlan>> {
        let mut plan = self.plan.clone();
        plan.fetch = match (plan.fetch, limit) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // A scan that stops early reads in one part, in order, and stops at the fetch.
        plan.partitions = 1;
        Some(self.with_plan(plan))
    }

    fn fetch(&self) -> Option<usize> {
        self.plan.fetch
    }

    fn try_pushdown_sort(
        &self,
        order: &[PhysicalSortExpr],
    ) -> DfResult<SortOrderPushdownResult<Arc<dyn ExecutionPlan>>> {
        // One conversation's items are stored in seq order, and created_at never decreases
        // along it: a reverse scan gives them newest first.
        let Some(first) = order.first() else {
            return Ok(SortOrderPushdownResult::Unsupported);
        };
        let column = first
            .expr
            .downcast_ref::<datafusion::physical_expr::expressions::Column>()
            .map(|c| c.name());
        let by_time = matches!(column, Some("seq" | "created_at"));
        if !self.plan.single_conversation() || !by_time || self.plan.nearest.is_some() {
            return Ok(SortOrderPushdownResult::Unsupported);
        }
        let mut plan = self.plan.clone();
        plan.newest_first = first.options.descending;
        plan.partitions = 1;
        let inner: Arc<dyn ExecutionPlan> = self.with_plan(plan);
        Ok(if order.len() == 1 {
            SortOrderPushdownResult::Exact { inner }
        } else {
            SortOrderPushdownResult::Inexact { inner }
        })
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        if partition >= self.plan.partitions.max(1) {
            return Err(SqlError::Internal(format!("no part {partition} of a scan")).into());
        }
        let rows_read = MetricBuilder::new(&self.metrics).counter("rows_read", partition);
        let (tx, rx) = mpsc::channel::<DfResult<RecordBatch>>(2);
        let producer = Producer {
            ctx: self.ctx.clone(),
            plan: self.plan.clone(),
            projection: self.projection.clone(),
            partition,
            tx,
            rows_read,
            emitted: 0,
        };
        tokio::spawn(producer.run());
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|batch| (batch, rx))
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            stream,
        )))
    }
}

/// The task behind one scan.
struct Producer {
    ctx: Arc<QueryContext>,
    plan: ScanPlan,
    projection: Option<Vec<usize>>,
    /// Which part of the scan this task reads.
    partition: usize,
    tx: mpsc::Sender<DfResult<RecordBatch>>,
    rows_read: Count,
    emitted: usize,
}

/// Whether the consumer still wants rows.
enum Flow {
    More,
    Stop,
}

/// A batch being built: its rows so far and its columns.
trait Columns: Default {
    fn len(&self) -> usize;
    fn columns(self) -> Vec<ArrayRef>;
}

macro_rules! columns {
    ($($t:ty),*) => {$(
        impl Columns for $t {
            fn len(&self) -> usize {
                self.rows
            }
            fn columns(self) -> Vec<ArrayRef> {
                self.finish()
            }
        }
    )*};
}
columns!(
    ConversationColumns,
    ItemColumns,
    MemoryColumns,
    ChangeColumns,
    AuditColumns
);

impl Producer {
    /// Sends the batch being built if it is full or completes the fetch.
    async fn flush_if_full<C: Columns>(&mut self, b: &mut C) -> Flow {
        if b.len() >= BATCH_ROWS || !self.wanted(b.len()) {
            self.flush(b).await
        } else {
            Flow::More
        }
    }

    /// Sends the batch being built and starts a new one.
    async fn flush<C: Columns>(&mut self, b: &mut C) -> Flow {
        let full = std::mem::take(b);
        let rows = full.len();
        self.send(full.columns(), rows).await
    }

    async fn run(mut self) {
        let kind = self.plan.kind;
        let result = match kind {
            TableKind::Conversations => self.conversations().await,
            TableKind::Items => self.items().await,
            TableKind::Memory => self.memory().await,
            TableKind::Changes => self.changes().await,
            TableKind::Audit => self.audit().await,
        };
        if let Err(e) = result {
            let _ = self.tx.send(Err(SqlError::Store(e).into())).await;
        }
        metrics::counter!("mnemo_sql_rows_read_total", "table" => kind.name())
            .increment(self.rows_read.value() as u64);
    }

    /// The scope the scan reads with: the caller's, narrowed to one user when a filter asks
    /// for one. `None`: no row can match.
    fn scan_scope(&self) -> Option<Scope> {
        let scope = &self.ctx.scope;
        match (&scope.user, &self.plan.user) {
            (_, None) => Some(scope.clone()),
            (Some(own), Some(u)) => (own == u).then(|| scope.clone()),
            (None, Some(u)) => Scope::user(scope.tenant.clone(), u.clone()).ok(),
        }
    }

    /// Sends a finished batch; `Stop` once the consumer is gone or the fetch is met.
    async fn send(&mut self, columns: Vec<ArrayRef>, rows: usize) -> Flow {
        let schema = self.plan.kind.schema();
        let batch = match RecordBatch::try_new(schema, columns) {
            Ok(b) => b,
            Err(e) => {
                let _ = self.tx.send(Err(e.into())).await;
                return Flow::Stop;
            }
        };
        let batch = match &self.projection {
            Some(p) => match batch.project(p) {
                Ok(b) => b,
                Err(e) => {
                    let _ = self.tx.send(Err(e.into())).await;
                    return Flow::Stop;
                }
            },
            None => batch,
        };
        self.emitted += rows;
        if rows > 0 && self.tx.send(Ok(batch)).await.is_err() {
            return Flow::Stop;
        }
        if self.plan.fetch.is_some_and(|n| self.emitted >= n) {
            Flow::Stop
        } else {
            Flow::More
        }
    }

    /// Rows still wanted before the fetch is met.
    fn wanted(&self, in_batch: usize) -> bool {
        self.plan.fetch.is_none_or(|n| self.emitted + in_batch < n)
    }

    fn projected(&self, column: &str) -> bool {
        let schema = self.plan.kind.schema();
        match &self.projection {
            None => true,
            Some(p) => p.iter().any(|i| schema.field(*i).name() == column),
        }
    }

    /// Which parts of an item the projection needs.
    fn item_decode(&self) -> ItemDecode {
        let (text, content) = (self.projected("text"), self.projected("content"));
        ItemDecode {
            json: text || self.projected("type") || self.projected("role"),
            text,
            content,
            embedding: self.projected("embedding"),
        }
    }

    async fn conversations(&mut self) -> Result<(), StoreError> {
        let Some(scope) = self.scan_scope().filter(|_| !self.plan.empty) else {
            return Ok(());
        };
        let count_items = self.projected("item_count");
        let mut b = ConversationColumns::default();
        let mut source =
            ConversationSource::open(&self.ctx, &scope, &self.plan, self.partition).await?;
        while let Some(rec) = source.next(&self.ctx, &scope).await? {
            self.rows_read.add(1);
            if !self.plan.in_time(rec.created_at.saturating_mul(1000)) {
                continue;
            }
            let count = if count_items {
                let mut n = 0i64;
                let mut items = self.ctx.view.items_of(&scope, &rec.id, false).await?;
                while items.next_skipping_corrupt().await?.is_some() {
                    n += 1;
                }
                n
            } else {
                0
            };
            b.push(&rec, count);
            if let Flow::Stop = self.flush_if_full(&mut b).await {
                return Ok(());
            }
        }
        self.flush(&mut b).await;
        Ok(())
    }

    async fn items(&mut self) -> Result<(), StoreError> {
        let Some(scope) = self.scan_scope().filter(|_| !self.plan.empty) else {
            return Ok(());
        };
        if let Some((vector, k)) = self.plan.nearest.clone() {
            return self.nearest_items(&scope, vector, k).await;
        }
        let decode = self.item_decode();
        let mut b = ItemColumns::default();
        let mut source =
            ConversationSource::open(&self.ctx, &scope, &self.plan, self.partition).await?;
        while let Some(rec) = source.next(&self.ctx, &scope).await? {
            let mut items = self
                .ctx
                .view
                .items_of(&scope, &rec.id, self.plan.newest_first)
                .await?;
            while let Some(item) = items.next().await? {
                self.rows_read.add(1);
                if !self.plan.in_time(item.created_at_ms) {
                    continue;
                }
                b.push(&rec, &item, decode);
                if let Flow::Stop = self.flush_if_full(&mut b).await {
                    return Ok(());
                }
            }
        }
        self.flush(&mut b).await;
        Ok(())
    }

    /// The `k` items of the scope's user nearest to `vector`, by the index's exact per-user
    /// search, read back from the view (an item the view does not hold is left out).
    async fn nearest_items(
        &mut self,
        scope: &Scope,
        vector: Vec<f32>,
        k: usize,
    ) -> Result<(), StoreError> {
        let hits = match crate::vector::nearest(&self.ctx, scope, vector, k).await {
            Ok(hits) => hits,
            Err(e) => {
                let _ = self.tx.send(Err(e.into())).await;
                return Ok(());
            }
        };
        let decode = self.item_decode();
        let mut b = ItemColumns::default();
        for (conversation_id, item_id) in hits {
            let rec = match self.ctx.view.conversation(scope, &conversation_id).await {
                Ok(rec) => rec,
                Err(StoreError::NotFound(_)) => continue,
                Err(e) => return Err(e),
            };
            match self
                .ctx
                .view
                .item(scope, &conversation_id, &item_id)
                .await?
            {
                Some(item) => {
                    self.rows_read.add(1);
                    b.push(&rec, &item, decode);
                }
                None => continue,
            }
        }
        self.flush(&mut b).await;
        Ok(())
    }

    async fn memory(&mut self) -> Result<(), StoreError> {
        if self.plan.empty {
            return Ok(());
        }
        let prefix = self.plan.key_prefix.clone().unwrap_or_default();
        let mut rows = self.ctx.view.memory(&self.ctx.scope, &prefix).await?;
        let mut b = MemoryColumns::default();
        while let Some(e) = rows.next().await? {
            self.rows_read.add(1);
            if !self.plan.in_time(e.record.updated_at_ms) {
                continue;
            }
            b.push(&e);
            if let Flow::Stop = self.flush_if_full(&mut b).await {
                return Ok(());
            }
        }
        self.flush(&mut b).await;
        Ok(())
    }

    async fn changes(&mut self) -> Result<(), StoreError> {
        if self.plan.empty {
            return Ok(());
        }
        let after = self
            .plan
            .seq_from
            .map_or(0, |s| u64::try_from(s.saturating_sub(1)).unwrap_or(0));
        let mut rows = self.ctx.view.changes(&self.ctx.scope, after).await?;
        let mut b = ChangeColumns::default();
        while let Some(e) = rows.next().await? {
            self.rows_read.add(1);
            if !self.plan.in_time(e.at_ms) {
                continue;
            }
            b.push(&e);
            if let Flow::Stop = self.flush_if_full(&mut b).await {
                return Ok(());
            }
        }
        self.flush(&mut b).await;
        Ok(())
    }

    async fn audit(&mut self) -> Result<(), StoreError> {
        if self.plan.empty {
            return Ok(());
        }
        let mut rows = self.ctx.view.audit(&self.ctx.scope).await?;
        let mut b = AuditColumns::default();
        while let Some(e) = rows.next().await? {
            self.rows_read.add(1);
            let seq_ok = self
                .plan
                .seq_from
                .is_none_or(|s| i64::try_from(e.seq).unwrap_or(i64::MAX) >= s);
            if !seq_ok || !self.plan.in_time(e.at_ms) {
                continue;
            }
            b.push(&e);
            if let Flow::Stop = self.flush_if_full(&mut b).await {
                return Ok(());
            }
        }
        self.flush(&mut b).await;
        Ok(())
    }
}

/// Where a scan's conversations come from: named ids, or every one the scope may see.
enum Conversations {
    Ids(std::vec::IntoIter<String>),
    All(Box<Rows<ConversationRecord>>),
}

/// The conversations one part of a scan walks: of those its plan names, every
/// `plan.partitions`-th, starting at the part's own number.
struct ConversationSource {
    from: Conversations,
    part: usize,
    parts: usize,
    seen: usize,
}

impl ConversationSource {
    async fn open(
        ctx: &QueryContext,
        scope: &Scope,
        plan: &ScanPlan,
        part: usize,
    ) -> Result<ConversationSource, StoreError> {
        let from = match &plan.ids {
            Some(ids) => {
                let mut ids: Vec<String> = ids.iter().cloned().collect();
                if plan.newest_first {
                    ids.reverse();
                }
                Conversations::Ids(ids.into_iter())
            }
            None => Conversations::All(Box::new(ctx.view.conversations(scope).await?)),
        };
        Ok(ConversationSource {
            from,
            part,
            parts: plan.partitions.max(1),
            seen: 0,
        })
    }

    async fn next(
        &mut self,
        ctx: &QueryContext,
        scope: &Scope,
    ) -> Result<Option<ConversationRecord>, StoreError> {
        while let Some(rec) = self.next_of_all(ctx, scope).await? {
            self.seen += 1;
            if (self.seen - 1) % self.parts == self.part {
                return Ok(Some(rec));
            }
        }
        Ok(None)
    }

    async fn next_of_all(
        &mut self,
        ctx: &QueryContext,
        scope: &Scope,
    ) -> Result<Option<ConversationRecord>, StoreError> {
        match &mut self.from {
            Conversations::All(rows) => rows.next().await,
            Conversations::Ids(ids) => {
                for id in ids.by_ref() {
                    match ctx.view.conversation(scope, &id).await {
                        Ok(rec) => return Ok(Some(rec)),
                        Err(StoreError::NotFound(_)) => continue,
                        Err(e) => return Err(e),
                    }
                }
                Ok(None)
            }
        }
    }
}

fn ts_builder() -> TimestampMillisecondBuilder {
    TimestampMillisecondBuilder::new().with_timezone("UTC")
}

/// Column builders of `conversations`.
struct ConversationColumns {
    rows: usize,
    id: StringBuilder,
    user_id: StringBuilder,
    created_at: TimestampMillisecondBuilder,
    updated_at: TimestampMillisecondBuilder,
    metadata: StringBuilder,
    item_count: Int64Builder,
}

impl Default for ConversationColumns {
    fn default() -> Self {
        ConversationColumns {
            rows: 0,
            id: StringBuilder::new(),
            user_id: StringBuilder::new(),
            created_at: ts_builder(),
            updated_at: ts_builder(),
            metadata: StringBuilder::new(),
            item_count: Int64Builder::new(),
        }
    }
}

impl ConversationColumns {
    fn push(&mut self, rec: &ConversationRecord, item_count: i64) {
        self.rows += 1;
        self.id.append_value(&rec.id);
        self.user_id.append_option(rec.owner.as_deref());
        self.created_at
            .append_value(rec.created_at.saturating_mul(1000));
        self.updated_at.append_value(rec.updated_at_ms());
        self.metadata
            .append_value(Value::Object(rec.metadata.clone()).to_string());
        self.item_count.append_value(item_count);
    }

    fn finish(mut self) -> Vec<ArrayRef> {
        vec![
            Arc::new(self.id.finish()),
            Arc::new(self.user_id.finish()),
            Arc::new(self.created_at.finish()),
            Arc::new(self.updated_at.finish()),
            Arc::new(self.metadata.finish()),
            Arc::new(self.item_count.finish()),
        ]
    }
}

/// Which expensive parts of an item a scan needs.
#[derive(Clone, Copy)]
struct ItemDecode {
    /// Read the item's JSON for type, role and text.
    json: bool,
    /// Build the text column.
    text: bool,
    /// Build the content column.
    content: bool,
    /// Build the embedding column.
    embedding: bool,
}

/// Column builders of `items`.
struct ItemColumns {
    rows: usize,
    conversation_id: StringBuilder,
    item_id: StringBuilder,
    seq: Int64Builder,
    parent_id: StringBuilder,
    kind: StringBuilder,
    role: StringBuilder,
    text: StringBuilder,
    content: StringBuilder,
    created_at: TimestampMillisecondBuilder,
    user_id: StringBuilder,
    embedding: ListBuilder<Float32Builder>,
}

impl Default for ItemColumns {
    fn default() -> Self {
        let element = match vector_type() {
            datafusion::arrow::datatypes::DataType::List(f) => f,
            _ => Arc::new(Field::new_list_field(
                datafusion::arrow::datatypes::DataType::Float32,
                true,
            )),
        };
        ItemColumns {
            rows: 0,
            conversation_id: StringBuilder::new(),
            item_id: StringBuilder::new(),
            seq: Int64Builder::new(),
            parent_id: StringBuilder::new(),
            kind: StringBuilder::new(),
            role: StringBuilder::new(),
            text: StringBuilder::new(),
            content: StringBuilder::new(),
            created_at: ts_builder(),
            user_id: StringBuilder::new(),
            embedding: ListBuilder::new(Float32Builder::new()).with_field(element),
        }
    }
}

impl ItemColumns {
    fn push(&mut self, rec: &ConversationRecord, item: &StoredItem, decode: ItemDecode) {
        self.rows += 1;
        self.conversation_id.append_value(&rec.id);
        self.item_id.append_value(&item.id);
        self.seq
            .append_value(i64::try_from(item.seq).unwrap_or(i64::MAX));
        self.parent_id.append_option(item.parent.as_deref());
        let fields = if decode.json {
            mnemo_index::read_fields(&item.json, decode.text)
        } else {
            None
        };
        match fields {
            Some(f) => {
                self.kind.append_option(f.kind);
                self.role.append_option(f.role);
                self.text.append_option(f.text);
            }
            None => {
                self.kind.append_null();
                self.role.append_null();
                self.text.append_null();
            }
        }
        // `content` is JSON text: the item's own, parsed only when the column is selected.
        let content = decode
            .content
            .then(|| serde_json::from_slice::<Value>(&item.json).ok())
            .flatten()
            .and_then(|mut v| v.get_mut("content").map(Value::take));
        self.content.append_option(content.map(|c| c.to_string()));
        self.created_at.append_value(item.created_at_ms);
        self.user_id.append_option(rec.owner.as_deref());
        match (&item.vector, decode.embedding) {
            (Some(v), true) => {
                self.embedding.values().append_slice(v);
                self.embedding.append(true);
            }
            _ => self.embedding.append(false),
        }
    }

    fn finish(mut self) -> Vec<ArrayRef> {
        vec![
            Arc::new(self.conversation_id.finish()),
            Arc::new(self.item_id.finish()),
            Arc::new(self.seq.finish()),
            Arc::new(self.parent_id.finish()),
            Arc::new(self.kind.finish()),
            Arc::new(self.role.finish()),
            Arc::new(self.text.finish()),
            Arc::new(self.content.finish()),
            Arc::new(self.created_at.finish()),
            Arc::new(self.user_id.finish()),
            Arc::new(self.embedding.finish()),
        ]
    }
}

/// Column builders of `memory`.
struct MemoryColumns {
    rows: usize,
    key: StringBuilder,
    user_id: StringBuilder,
    value: BinaryBuilder,
    value_text: StringBuilder,
    value_json: StringBuilder,
    content_type: StringBuilder,
    etag: StringBuilder,
    size: Int64Builder,
    updated_at: TimestampMillisecondBuilder,
    expires_at: TimestampMillisecondBuilder,
}

impl Default for MemoryColumns {
    fn default() -> Self {
        MemoryColumns {
            rows: 0,
            key: StringBuilder::new(),
            user_id: StringBuilder::new(),
            value: BinaryBuilder::new(),
            value_text: StringBuilder::new(),
            value_json: StringBuilder::new(),
            content_type: StringBuilder::new(),
            etag: StringBuilder::new(),
            size: Int64Builder::new(),
            updated_at: ts_builder(),
            expires_at: ts_builder(),
        }
    }
}

impl MemoryColumns {
    fn push(&mut self, e: &mnemo_storage::KvEntry) {
        self.rows += 1;
        let r = &e.record;
        self.key.append_value(&e.key);
        self.user_id
            .append_option(mnemo_storage::access::kv_owner(&e.key).filter(|o| !o.is_empty()));
        self.value.append_value(&r.value);
        let text = std::str::from_utf8(&r.value).ok();
        self.value_text.append_option(text);
        let is_json =
            text.is_some() && serde_json::from_slice::<serde::de::IgnoredAny>(&r.value).is_ok();
        self.value_json.append_option(text.filter(|_| is_json));
        self.content_type.append_value(&r.content_type);
        self.etag.append_value(r.etag());
        self.size
            .append_value(i64::try_from(r.value.len()).unwrap_or(i64::MAX));
        self.updated_at.append_value(r.updated_at_ms);
        self.expires_at.append_option(e.expires_at_ms);
    }

    fn finish(mut self) -> Vec<ArrayRef> {
        vec![
            Arc::new(self.key.finish()),
            Arc::new(self.user_id.finish()),
            Arc::new(self.value.finish()),
            Arc::new(self.value_text.finish()),
            Arc::new(self.value_json.finish()),
            Arc::new(self.content_type.finish()),
            Arc::new(self.etag.finish()),
            Arc::new(self.size.finish()),
            Arc::new(self.updated_at.finish()),
            Arc::new(self.expires_at.finish()),
        ]
    }
}

/// Column builders of `changes`.
struct ChangeColumns {
    rows: usize,
    seq: Int64Builder,
    at: TimestampMillisecondBuilder,
    op: StringBuilder,
    conversation_id: StringBuilder,
    item_ids: ListBuilder<StringBuilder>,
    key: StringBuilder,
    user_id: StringBuilder,
}

impl Default for ChangeColumns {
    fn default() -> Self {
        ChangeColumns {
            rows: 0,
            seq: Int64Builder::new(),
            at: ts_builder(),
            op: StringBuilder::new(),
            conversation_id: StringBuilder::new(),
            item_ids: ListBuilder::new(StringBuilder::new()),
            key: StringBuilder::new(),
            user_id: StringBuilder::new(),
        }
    }
}

impl ChangeColumns {
    fn push(&mut self, e: &mnemo_storage::ChangeEntry) {
        self.rows += 1;
        self.seq
            .append_value(i64::try_from(e.seq).unwrap_or(i64::MAX));
        self.at.append_value(e.at_ms);
        // The op's fields as they are served by /v1/changes.
        let op = serde_json::to_value(&e.op).unwrap_or(Value::Null);
        let field = |name: &str| op.get(name).and_then(Value::as_str).map(str::to_owned);
        self.op.append_value(e.op.event_type());
        self.conversation_id.append_option(field("conversation_id"));
        match op.get("item_ids").and_then(Value::as_array) {
            Some(ids) => {
                for id in ids {
                    self.item_ids.values().append_option(id.as_str());
                }
                self.item_ids.append(true);
            }
            None => self.item_ids.append(false),
        }
        self.key.append_option(field("key"));
        self.user_id.append_option(e.owner.as_deref());
    }

    fn finish(mut self) -> Vec<ArrayRef> {
        vec![
            Arc::new(self.seq.finish()),
            Arc::new(self.at.finish()),
            Arc::new(self.op.finish()),
            Arc::new(self.conversation_id.finish()),
            Arc::new(self.item_ids.finish()),
            Arc::new(self.key.finish()),
            Arc::new(self.user_id.finish()),
        ]
    }
}

/// Column builders of `audit`.
struct AuditColumns {
    rows: usize,
    seq: Int64Builder,
    at: TimestampMillisecondBuilder,
    actor: StringBuilder,
    actor_kind: StringBuilder,
    action: StringBuilder,
    target: StringBuilder,
    details: StringBuilder,
}

impl Default for AuditColumns {
    fn default() -> Self {
        AuditColumns {
            rows: 0,
            seq: Int64Builder::new(),
            at: ts_builder(),
            actor: StringBuilder::new(),
            actor_kind: StringBuilder::new(),
            action: StringBuilder::new(),
            target: StringBuilder::new(),
            details: StringBuilder::new(),
        }
    }
}

impl AuditColumns {
    fn push(&mut self, e: &mnemo_storage::AuditEntry) {
        self.rows += 1;
        self.seq
            .append_value(i64::try_from(e.seq).unwrap_or(i64::MAX));
        self.at.append_value(e.at_ms);
        self.actor.append_value(&e.actor);
        self.actor_kind.append_value(&e.actor_kind);
        self.action.append_value(&e.action);
        self.target.append_option(e.target.as_deref());
        self.details
            .append_option((!e.details.is_null()).then(|| e.details.to_string()));
    }

    fn finish(mut self) -> Vec<ArrayRef> {
        vec![
            Arc::new(self.seq.finish()),
            Arc::new(self.at.finish()),
            Arc::new(self.actor.finish()),
            Arc::new(self.actor_kind.finish()),
            Arc::new(self.action.finish()),
            Arc::new(self.target.finish()),
            Arc::new(self.details.finish()),
        ]
    }
}
