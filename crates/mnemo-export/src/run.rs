//! One run over a dataset: a full export, an incremental one, or a refresh.
//!
//! Every run reads one pinned point of the store (a [`ReadView`] of a checkpoint) and ends by
//! committing a new version (its manifest written last, see [`Target::commit`]):
//!
//! * **full**: every exportable row of the tenants, in key order (tenant, conversation id,
//!   item sequence), cut into files of [`ROWS_PER_FILE`] rows. The same point gives the same
//!   bytes.
//! * **refresh**: follows the change log from the dataset's point to this one for erasures,
//!   consent changes and deletions, and rewrites every file holding a row they touch, without
//!   those rows. Nothing is added.
//! * **incremental**: a refresh that also re-exports changed conversations' rows and adds
//!   the items appended since, as new files.
//!
//! When the change log no longer reaches back to the dataset's point (older than its
//! retention), a refresh or incremental run falls back to a full export, which is always
//! correct. Files a version supersedes are deleted once the version's grace period has passed
//! (readers of the old version finish meanwhile); files of an interrupted run, which no
//! manifest names, are deleted by the next run.

use crate::dataset::{
    sha256_hex, FileEntry, FileWriter, Manifest, CONVERSATIONS, CONVERSATIONS_SCHEMA, ITEMS,
    ITEMS_SCHEMA, MANIFEST, ROW_GROUP_ROWS,
};
use crate::keys::KeyRing;
use crate::pseudonym::{IdKind, Pseudonymizer};
use crate::scrub::Scrubber;
use crate::target::Target;
use crate::{ConsentPolicy, ExportError};
use arrow_array::{
    Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use arrow_schema::SchemaRef;
use bytes::Bytes;
use mnemo_storage::{ChangeOp, ConversationRecord, ReadView, Scope, StoreError, TenantId};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Rows per data file: two row groups.
pub const ROWS_PER_FILE: usize = 2 * ROW_GROUP_ROWS;

/// How long superseded files stay by default after a version that drops them is committed.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(300);

/// Rows handed from the reader to a file writer at once.
const CHUNK_ROWS: usize = 4096;

/// Chunks in flight between the reader and a file writer.
const CHUNKS_IN_FLIGHT: usize = 4;

/// Consent answers remembered per tenant before the memory is cleared.
const CONSENT_CACHE: usize = 100_000;

/// What rows an export takes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filters {
    /// Items created at or after this time (seconds since the Unix epoch); conversations
    /// created at or after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<i64>,
    /// Items (and conversations) created before this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<i64>,
    /// Conversations whose metadata has every one of these key–value pairs.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub metadata: Map<String, Value>,
}

impl Filters {
    fn in_window(&self, at_ms: i64) -> bool {
        self.since.is_none_or(|s| at_ms >= s.saturating_mul(1000))
            && self.until.is_none_or(|u| at_ms < u.saturating_mul(1000))
    }

    fn conversation(&self, rec: &ConversationRecord) -> bool {
        self.metadata
            .iter()
            .all(|(k, v)| rec.metadata.get(k) == Some(v))
    }
}

/// The kind of run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Everything, as a new version.
    Full,
    /// What changed since the dataset's version: removals, then changed and new rows.
    Incremental,
    /// Only removals: erasures, consent withdrawals and deletions.
    Refresh,
}

/// What a run is asked to do.
#[derive(Clone, Debug)]
pub struct Request {
    /// The kind of run.
    pub mode: Mode,
    /// The rows a full export takes (incremental runs and refreshes keep the dataset's).
    pub filters: Filters,
    /// Whether users without a consent record are in (a full export's; the others keep the
    /// dataset's).
    pub policy: ConsentPolicy,
    /// How long superseded files stay for readers of older versions.
    pub grace: Duration,
    /// Rows per data file ([`ROWS_PER_FILE`] by default; part of what makes the bytes).
    pub rows_per_file: usize,
}

/// The pinned point a run reads and what it covers.
pub struct Source<'a> {
    /// What is read: one part for a single store; one per shard for a cluster, each at its
    /// own pinned point. Rows are written part after part, in this order.
    pub parts: Vec<Part<'a>>,
    /// The checkpoint's id, when the point is a named checkpoint (a single store's).
    pub checkpoint: Option<String>,
    /// The store's URL, without credentials.
    pub description: String,
    /// The tenants exported.
    pub tenants: Vec<TenantId>,
    /// Their pseudonym keys.
    pub keys: &'a KeyRing,
}

/// One store a run reads, at its pinned point.
pub struct Part<'a> {
    /// `None` for a single store; a shard's name (its number) otherwise. The dataset keeps
    /// each part's change-log position under `<tenant>@<name>`, a single store's under
    /// `<tenant>`.
    pub name: Option<String>,
    /// The point.
    pub view: &'a ReadView,
}

impl Part<'_> {
    /// The key of this part's position for `tenant` in a manifest's `checkpoint.log`.
    fn log_key(&self, tenant: &TenantId) -> String {
        match &self.name {
            None => tenant.as_str().to_owned(),
            Some(n) => format!("{}@{n}", tenant.as_str()),
        }
    }
}

/// True when `key` of a manifest's `checkpoint.log` is a position of `tenant`'s (tenant ids
/// have no `@`).
fn log_key_of(key: &str, tenant: &TenantId) -> bool {
    let t = tenant.as_str();
    key == t
        || key
            .strip_prefix(t)
            .is_some_and(|rest| rest.starts_with('@'))
}

/// What a run is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Reading the dataset's state and cleaning up after interrupted runs.
    Preparing,
    /// Reading the store and writing files.
    Writing,
    /// Writing the manifest.
    Committing,
    /// Waiting out the grace period before deleting superseded files.
    Grace,
    /// Deleting superseded files.
    Deleting,
    /// Finished.
    Done,
}

const PHASES: [Phase; 6] = [
    Phase::Preparing,
    Phase::Writing,
    Phase::Committing,
    Phase::Grace,
    Phase::Deleting,
    Phase::Done,
];

/// Live counters of a run, readable while it runs.
#[derive(Debug, Default)]
pub struct Progress {
    phase: AtomicU8,
    conversations: AtomicU64,
    items: AtomicU64,
    files: AtomicU64,
    bytes: AtomicU64,
}

/// A copy of a run's counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgressReport {
    /// `preparing`, `writing`, `committing`, `grace`, `deleting` or `done`.
    pub phase: String,
    /// Conversation rows written so far.
    pub conversations: u64,
    /// Item rows written so far.
    pub items: u64,
    /// Files written so far.
    pub files: u64,
    /// Bytes written so far.
    pub bytes: u64,
}

impl Progress {
    fn set_phase(&self, phase: Phase) {
        let i = PHASES.iter().position(|p| *p == phase).unwrap_or(0);
        self.phase.store(i as u8, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn report(&self) -> ProgressReport {
        let phase = PHASES
            .get(self.phase.load(Ordering::Relaxed) as usize)
            .copied()
            .unwrap_or(Phase::Preparing);
        ProgressReport {
            phase: serde_json::to_value(phase)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            conversations: self.conversations.load(Ordering::Relaxed),
            items: self.items.load(Ordering::Relaxed),
            files: self.files.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }
}

/// What a run did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The version committed.
    pub version: u64,
    /// The kind of run that was carried out (`full` when a refresh or incremental run had to
    /// fall back to one).
    pub mode: Mode,
    /// Why it fell back to a full export, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    /// Conversation rows in the version.
    pub conversations: u64,
    /// Item rows in the version.
    pub items: u64,
    /// Files written by this run.
    pub files_written: u64,
    /// Files of the previous version carried over unchanged.
    pub files_kept: u64,
    /// Rows of the previous version left out (erased, withdrawn, deleted or changed).
    pub rows_dropped: u64,
    /// Superseded or abandoned files deleted.
    pub files_deleted: u64,
    /// The checkpoint read, when it is a named one.
    pub checkpoint: Option<String>,
}

/// Pseudonyms of what a refresh or incremental run removes, by table.
#[derive(Default)]
struct Drops {
    users: HashSet<String>,
    conversations: HashSet<String>,
    /// Conversations whose row (not items) is replaced.
    conversation_rows: HashSet<String>,
    items: HashSet<String>,
}

impl Drops {
    fn none_for(&self, table: &str) -> bool {
        self.users.is_empty()
            && self.conversations.is_empty()
            && if table == CONVERSATIONS {
                self.conversation_rows.is_empty()
            } else {
                self.items.is_empty()
            }
    }

    /// Which rows of `batch` (of `table`) stay.
    fn keep(&self, table: &str, batch: &RecordBatch) -> Result<BooleanArray, ExportError> {
        let col = |name: &str| -> Result<&StringArray, ExportError> {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                .ok_or_else(|| ExportError::Corrupt(format!("{table} file without `{name}`")))
        };
        let (users, convs) = (col("user")?, col("conversation")?);
        let items = if table == ITEMS {
            Some(col("item")?)
        } else {
            None
        };
        Ok((0..batch.num_rows())
            .map(|i| {
                let conv = convs.value(i);
                let gone = self.users.contains(users.value(i))
                    || self.conversations.contains(conv)
                    || (table == CONVERSATIONS && self.conversation_rows.contains(conv))
                    || items.is_some_and(|it| self.items.contains(it.value(i)));
                Some(!gone)
            })
            .collect())
    }
}

/// What an incremental run adds for a tenant.
#[derive(Default)]
struct Additions {
    /// Conversations exported whole (row and items).
    whole: BTreeSet<String>,
    /// Conversations whose row alone is exported again.
    rows: BTreeSet<String>,
    /// Items appended since, in log order: (conversation, item).
    items: Vec<(String, String)>,
}

/// Runs `request` against the dataset at `target`, reading `source`.
pub async fn run(
    source: &Source<'_>,
    target: &Target,
    request: &Request,
    progress: &Arc<Progress>,
) -> Result<Outcome, ExportError> {
    progress.set_phase(Phase::Preparing);
    let old = target.manifest().await?;
    let mut deleted = collect_garbage(target, old.as_ref()).await?;
    let (filters, policy) = match (&old, request.mode) {
        (None, Mode::Incremental | Mode::Refresh) => {
            return Err(ExportError::Invalid(format!(
                "no dataset at {}: run a full export first",
                target.description
            )))
        }
        (Some(m), Mode::Incremental | Mode::Refresh) => (
            serde_json::from_value::<Filters>(m.filters.clone())
                .map_err(|e| ExportError::Corrupt(format!("{MANIFEST} filters: {e}")))?,
            ConsentPolicy::parse(&m.consent_policy).ok_or_else(|| {
                ExportError::Corrupt(format!("{MANIFEST} consent_policy {:?}", m.consent_policy))
            })?,
        ),
        _ => (request.filters.clone(), request.policy),
    };
    let mut keys = BTreeMap::new();
    let mut heads = BTreeMap::new();
    for t in &source.tenants {
        keys.insert(t.clone(), Arc::new(source.keys.pseudonymizer(t).await?));
        for part in &source.parts {
            heads.insert(part.log_key(t), part.view.log_head(t).await?);
        }
    }
    let old_heads: BTreeMap<String, u64> = old
        .as_ref()
        .and_then(|m| m.checkpoint.get("log").cloned())
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();

    let mut mode = request.mode;
    let mut fallback = None;
    let mut drops = Drops::default();
    // What an incremental run adds, by part's log key.
    let mut additions: BTreeMap<String, Additions> = BTreeMap::new();
    if let Some(m) = old.as_ref().filter(|_| mode != Mode::Full) {
        'tenants: for t in &source.tenants {
            let before: BTreeSet<&String> = old_heads.keys().filter(|k| log_key_of(k, t)).collect();
            let now: BTreeSet<&String> = heads.keys().filter(|k| log_key_of(k, t)).collect();
            if before.is_empty() {
                // A tenant new to the dataset: it had no rows to remove, and an incremental
                // run takes all of it.
                if mode == Mode::Incremental {
                    for part in &source.parts {
                        additions.entry(part.log_key(t)).or_default().whole =
                            all_conversations(part.view, t).await?;
                    }
                }
                continue;
            }
            if before != now {
                // Positions of a single store and of shards do not compare.
                fallback = Some(format!(
                    "tenant {t} was exported from a different layout of the store (a single \
                     store or a cluster's shards) at version {}",
                    m.version
                ));
                mode = Mode::Full;
                break;
            }
            for part in &source.parts {
                let key = part.log_key(t);
                let after = old_heads.get(&key).copied().unwrap_or(0);
                let ctx = Ctx::of(part, t, &keys, policy, &filters);
                match plan_tenant(&ctx, after, mode, &mut drops).await? {
                    Some(add) => {
                        additions.insert(key, add);
                    }
                    None => {
                        fallback = Some(format!(
                            "the change log of tenant {t} no longer reaches back to version {}",
                            m.version
                        ));
                        mode = Mode::Full;
                        break 'tenants;
                    }
                }
            }
        }
    }

    progress.set_phase(Phase::Writing);
    let version = old.as_ref().map_or(1, |m| m.version + 1);
    let per_file = request.rows_per_file.max(1);
    let convs = Sink::spawn(
        target,
        CONVERSATIONS,
        CONVERSATIONS_SCHEMA.clone(),
        version,
        per_file,
        progress,
    );
    let items = Sink::spawn(
        target,
        ITEMS,
        ITEMS_SCHEMA.clone(),
        version,
        per_file,
        progress,
    );
    let mut out = Writers {
        convs,
        items,
        rows_dropped: 0,
    };
    let written = async {
        let mut kept = Vec::new();
        if let (Some(m), false) = (&old, mode == Mode::Full) {
            for f in &m.files {
                if out.carry_over(target, f, &drops).await? {
                    kept.push(f.clone());
                }
            }
        }
        let mut walker = Walker {
            out: &mut out,
            filters: &filters,
            policy,
            consent: HashMap::new(),
            pending_items: Vec::new(),
            pending_convs: Vec::new(),
        };
        for t in &source.tenants {
            walker.consent.clear();
            for part in &source.parts {
                let ctx = Ctx::of(part, t, &keys, policy, &filters);
                match mode {
                    Mode::Full => walker.tenant(&ctx).await?,
                    Mode::Incremental => {
                        if let Some(add) = additions.get(&part.log_key(t)) {
                            walker.additions(&ctx, add).await?;
                        }
                    }
                    Mode::Refresh => {}
                }
                walker.flush(&ctx).await?;
            }
        }
        Ok::<_, ExportError>(kept)
    }
    .await;
    let (conv_files, item_files) = (out.convs.finish().await, out.items.finish().await);
    let kept = written?;
    let (conv_files, item_files) = (conv_files?, item_files?);
    let files_written = (conv_files.len() + item_files.len()) as u64;
    let files_kept = kept.len() as u64;
    let mut files = kept;
    files.extend(conv_files);
    files.extend(item_files);

    progress.set_phase(Phase::Committing);
    let mut log: BTreeMap<String, u64> = if mode == Mode::Full {
        BTreeMap::new()
    } else {
        old_heads
    };
    log.extend(heads);
    let key_ids: Vec<&str> = keys.values().map(|k| k.key_id()).collect();
    let manifest = Manifest {
        version,
        checkpoint: serde_json::json!({ "id": source.checkpoint, "log": log }),
        source: source.description.clone(),
        mnemo_version: env!("CARGO_PKG_VERSION").to_owned(),
        filters: serde_json::to_value(&filters).unwrap_or(Value::Null),
        consent_policy: policy.name().to_owned(),
        key_id: key_ids.join(","),
        files,
        committed_at_ms: now_ms(),
        grace_seconds: request.grace.as_secs(),
    };
    target.commit(&manifest).await?;

    let superseded = old
        .as_ref()
        .is_some_and(|m| m.files.iter().any(|f| !manifest.files.contains(f)));
    if mode == Mode::Refresh {
        // A refresh is an erasure: it ends when every file no longer named is gone, its own
        // superseded files and those an interrupted refresh left.
        progress.set_phase(Phase::Grace);
        tokio::time::sleep(request.grace).await;
        progress.set_phase(Phase::Deleting);
        deleted += collect_garbage(target, Some(&manifest)).await?;
    } else if superseded {
        // Others leave them for the first run after the grace period.
        deleted += collect_garbage(target, Some(&manifest)).await?;
    }
    progress.set_phase(Phase::Done);
    let rows = |table: &str| {
        manifest
            .files
            .iter()
            .filter(|f| f.table == table)
            .map(|f| f.rows)
            .sum()
    };
    Ok(Outcome {
        version,
        mode,
        fallback,
        conversations: rows(CONVERSATIONS),
        items: rows(ITEMS),
        files_written,
        files_kept,
        rows_dropped: out.rows_dropped,
        files_deleted: deleted,
        checkpoint: source.checkpoint.clone(),
    })
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Deletes data files that no reader can need: those no manifest names (left by an
/// interrupted run), and, once the current version's grace period has passed, those the
/// current version does not name. Returns how many it deleted.
pub async fn collect_garbage(
    target: &Target,
    current: Option<&Manifest>,
) -> Result<u64, ExportError> {
    let mut keep: HashSet<String> = HashSet::new();
    if let Some(m) = current {
        keep.extend(m.files.iter().map(|f| f.path.clone()));
        let grace_over = now_ms() >= m.committed_at_ms + (m.grace_seconds as i64) * 1000;
        if !grace_over {
            for rel in target.list().await? {
                if rel.starts_with("_manifests/") {
                    if let Some(bytes) = target.get(&rel).await? {
                        if let Ok(older) = serde_json::from_slice::<Manifest>(&bytes) {
                            keep.extend(older.files.into_iter().map(|f| f.path));
                        }
                    }
                }
            }
        }
    }
    let mut deleted = 0;
    for rel in target.list().await? {
        let data = rel.starts_with("conversations/") || rel.starts_with("items/");
        if data && !keep.contains(&rel) {
            target.delete(&rel).await?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

async fn all_conversations(view: &ReadView, t: &TenantId) -> Result<BTreeSet<String>, ExportError> {
    let mut rows = view.conversations(&Scope::tenant(t.clone())).await?;
    let mut out = BTreeSet::new();
    while let Some(rec) = rows.next().await? {
        out.insert(rec.id);
    }
    Ok(out)
}

/// One tenant of a run.
struct Ctx<'a> {
    view: &'a ReadView,
    tenant: &'a TenantId,
    keys: &'a Arc<Pseudonymizer>,
    policy: ConsentPolicy,
    filters: &'a Filters,
}

impl<'a> Ctx<'a> {
    fn of(
        part: &Part<'a>,
        tenant: &'a TenantId,
        keys: &'a BTreeMap<TenantId, Arc<Pseudonymizer>>,
        policy: ConsentPolicy,
        filters: &'a Filters,
    ) -> Self {
        Ctx {
            view: part.view,
            tenant,
            keys: &keys[tenant],
            policy,
            filters,
        }
    }

    async fn allows(&self, user: &str) -> Result<bool, ExportError> {
        let record = self.view.consent(self.tenant, user).await?;
        Ok(self.policy.allows(record.as_ref()))
    }
}

/// Reads a tenant's change log after `after`: adds to `drops` what must leave the dataset
/// and returns what an incremental run adds; `None` when the log no longer holds the entry
/// after `after` (trimmed by retention).
async fn plan_tenant(
    ctx: &Ctx<'_>,
    after: u64,
    mode: Mode,
    drops: &mut Drops,
) -> Result<Option<Additions>, ExportError> {
    let scope = Scope::tenant(ctx.tenant.clone());
    let mut first = ctx.view.changes(&scope, 0).await?;
    if let Some(e) = first.next().await? {
        // Entries an erasure removed leave holes too; a hole at the start is taken for
        // trimming, and a full export is always right.
        if e.seq > after.saturating_add(1) {
            return Ok(None);
        }
    }
    let pseudo = |kind, id: &str| ctx.keys.pseudonym(kind, id);
    let mut add = Additions::default();
    let mut rows = ctx.view.changes(&scope, after).await?;
    let incremental = mode == Mode::Incremental;
    while let Some(e) = rows.next().await? {
        match &e.op {
            ChangeOp::UserErased {} => {
                if let Some(u) = &e.owner {
                    drops.users.insert(pseudo(IdKind::User, u));
                }
            }
            ChangeOp::ConsentSet { .. } => {
                let Some(u) = &e.owner else { continue };
                // Whatever was said in between, what counts is the consent at this point.
                drops.users.insert(pseudo(IdKind::User, u));
                if incremental && ctx.allows(u).await? {
                    let user = Scope::user(ctx.tenant.clone(), u)?;
                    let mut convs = ctx.view.conversations(&user).await?;
                    while let Some(rec) = convs.next().await? {
                        add.whole.insert(rec.id);
                    }
                }
            }
            ChangeOp::ConversationDeleted { conversation_id } => {
                drops
                    .conversations
                    .insert(pseudo(IdKind::Conversation, conversation_id));
            }
            ChangeOp::ItemsDeleted {
                conversation_id,
                item_ids,
            } => {
                for id in item_ids {
                    drops.items.insert(pseudo(IdKind::Item, id));
                }
                if incremental {
                    add.rows.insert(conversation_id.clone());
                }
            }
            ChangeOp::ConversationCreated { conversation_id } if incremental => {
                add.rows.insert(conversation_id.clone());
            }
            ChangeOp::ConversationUpdated { conversation_id } if incremental => {
                if ctx.filters.metadata.is_empty() {
                    add.rows.insert(conversation_id.clone());
                } else {
                    // Its metadata may have moved it into or out of the filter: all of it again.
                    drops
                        .conversations
                        .insert(pseudo(IdKind::Conversation, conversation_id));
                    add.whole.insert(conversation_id.clone());
                }
            }
            ChangeOp::ItemsAdded {
                conversation_id,
                item_ids,
            } if incremental => {
                add.rows.insert(conversation_id.clone());
                for id in item_ids {
                    add.items.push((conversation_id.clone(), id.clone()));
                }
            }
            _ => {}
        }
    }
    for c in &add.rows {
        drops
            .conversation_rows
            .insert(pseudo(IdKind::Conversation, c));
    }
    Ok(Some(add))
}

/// Raw rows turned into a record batch on a file writer's thread (scrubbing and pseudonyms
/// are the CPU work of an export).
type Build = Box<dyn FnOnce(&Scrubber) -> Result<RecordBatch, ExportError> + Send>;

enum Input {
    Build(Build),
    Rows(RecordBatch),
}

/// The writer of one table's files: a thread that builds batches, cuts files of a fixed
/// number of rows and uploads each as it is finished.
struct Sink {
    tx: Option<mpsc::Sender<Input>>,
    worker: Option<tokio::task::JoinHandle<Result<Vec<FileEntry>, ExportError>>>,
    /// Set when the run is dropped before finishing (a job stopped at a hand-over): the
    /// thread then uploads nothing more, so it cannot overwrite files of the run that takes
    /// the job over.
    abandoned: Arc<AtomicBool>,
}

impl Drop for Sink {
    fn drop(&mut self) {
        if self.worker.is_some() {
            self.abandoned.store(true, Ordering::Relaxed);
        }
    }
}

impl Sink {
    fn spawn(
        target: &Target,
        table: &'static str,
        schema: SchemaRef,
        version: u64,
        per_file: usize,
        progress: &Arc<Progress>,
    ) -> Sink {
        let (tx, mut rx) = mpsc::channel::<Input>(CHUNKS_IN_FLIGHT);
        let (target, progress) = (target.clone(), progress.clone());
        let rt = tokio::runtime::Handle::current();
        let abandoned = Arc::new(AtomicBool::new(false));
        let stopped = abandoned.clone();
        let worker = tokio::task::spawn_blocking(move || {
            let stop = || -> Result<(), ExportError> {
                if stopped.load(Ordering::Relaxed) {
                    return Err(ExportError::Store("the run was stopped".into()));
                }
                Ok(())
            };
            let scrubber = Scrubber::new();
            let mut files = Vec::new();
            let mut writer: Option<FileWriter> = None;
            let mut in_file = 0;
            let finish = |writer: FileWriter, files: &mut Vec<FileEntry>| {
                let done = writer.finish()?;
                stop()?;
                let path = format!("{table}/v{version}-{:05}.parquet", files.len());
                let len = done.len;
                rt.block_on(target.put_parts(&path, done.parts))?;
                progress.files.fetch_add(1, Ordering::Relaxed);
                progress.bytes.fetch_add(len, Ordering::Relaxed);
                files.push(FileEntry {
                    path,
                    table: table.to_owned(),
                    rows: done.rows,
                    sha256: done.sha256,
                });
                Ok::<_, ExportError>(())
            };
            while let Some(input) = rx.blocking_recv() {
                stop()?;
                let batch = match input {
                    Input::Build(build) => build(&scrubber)?,
                    Input::Rows(batch) => batch,
                };
                let counter = if table == ITEMS {
                    &progress.items
                } else {
                    &progress.conversations
                };
                counter.fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
                let mut offset = 0;
                while offset < batch.num_rows() {
                    let take = (per_file - in_file).min(batch.num_rows() - offset);
                    let w = match writer.as_mut() {
                        Some(w) => w,
                        None => writer
                            .insert(FileWriter::new(schema.clone(), env!("CARGO_PKG_VERSION"))?),
                    };
                    w.write(&batch.slice(offset, take))?;
                    in_file += take;
                    offset += take;
                    if in_file == per_file {
                        if let Some(w) = writer.take() {
                            finish(w, &mut files)?;
                        }
                        in_file = 0;
                    }
                }
            }
            if let Some(w) = writer.take() {
                finish(w, &mut files)?;
            }
            Ok(files)
        });
        Sink {
            tx: Some(tx),
            worker: Some(worker),
            abandoned,
        }
    }

    /// Hands rows to the writer; an error if the writer has stopped (its own error is
    /// returned by [`Sink::finish`]).
    async fn send(&self, input: Input) -> Result<(), ExportError> {
        match &self.tx {
            Some(tx) => tx
                .send(input)
                .await
                .map_err(|_| ExportError::Store("the file writer stopped".into())),
            None => Err(ExportError::Store("the file writer is finished".into())),
        }
    }

    /// Finishes the last file and returns every file written.
    async fn finish(&mut self) -> Result<Vec<FileEntry>, ExportError> {
        self.tx = None;
        // The handle is kept until the thread ends: a run dropped meanwhile still stops it.
        let Some(worker) = self.worker.as_mut() else {
            return Ok(Vec::new());
        };
        let done = worker.await;
        self.worker = None;
        done.map_err(|e| ExportError::Store(format!("file writer: {e}")))?
    }
}

struct Writers {
    convs: Sink,
    items: Sink,
    rows_dropped: u64,
}

impl Writers {
    /// Takes an earlier version's file into this one: as it is when no row of it is dropped
    /// (true), else its remaining rows go into this version's files (false).
    async fn carry_over(
        &mut self,
        target: &Target,
        file: &FileEntry,
        drops: &Drops,
    ) -> Result<bool, ExportError> {
        if drops.none_for(&file.table) {
            return Ok(true);
        }
        let bytes = target.get(&file.path).await?.ok_or_else(|| {
            ExportError::Corrupt(format!("{} is named by {MANIFEST} but missing", file.path))
        })?;
        if sha256_hex(&bytes) != file.sha256 {
            return Err(ExportError::Corrupt(format!(
                "{} does not match its sha256 in {MANIFEST}",
                file.path
            )));
        }
        let batches = read_batches(bytes)?;
        let mut keeps = Vec::with_capacity(batches.len());
        for b in &batches {
            keeps.push(drops.keep(&file.table, b)?);
        }
        if keeps.iter().all(|k| k.true_count() == k.len()) {
            return Ok(true);
        }
        let sink = if file.table == ITEMS {
            &self.items
        } else {
            &self.convs
        };
        for (batch, keep) in batches.into_iter().zip(keeps) {
            self.rows_dropped += (keep.len() - keep.true_count()) as u64;
            let kept = arrow_select::filter::filter_record_batch(&batch, &keep)
                .map_err(|e| ExportError::Parquet(e.to_string()))?;
            if kept.num_rows() > 0 {
                sink.send(Input::Rows(kept)).await?;
            }
        }
        Ok(false)
    }
}

fn read_batches(bytes: Bytes) -> Result<Vec<RecordBatch>, ExportError> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.with_batch_size(8192).build())
        .map_err(|e| ExportError::Parquet(e.to_string()))?;
    reader
        .map(|b| b.map_err(|e| ExportError::Parquet(e.to_string())))
        .collect()
}

/// A conversation row before pseudonyms and scrubbing.
struct ConvRaw {
    user: String,
    conversation: String,
    created_ms: i64,
    updated_ms: i64,
    metadata: Map<String, Value>,
}

/// An item row before pseudonyms and scrubbing.
struct ItemRaw {
    user: String,
    conversation: String,
    item: String,
    seq: u64,
    parent: Option<String>,
    json: Bytes,
    created_ms: i64,
}

/// Reads the store and hands rows to the writers, a chunk at a time.
struct Walker<'a> {
    out: &'a mut Writers,
    filters: &'a Filters,
    policy: ConsentPolicy,
    consent: HashMap<String, bool>,
    pending_items: Vec<ItemRaw>,
    pending_convs: Vec<ConvRaw>,
}

impl Walker<'_> {
    async fn allowed(&mut self, ctx: &Ctx<'_>, user: &str) -> Result<bool, ExportError> {
        if let Some(a) = self.consent.get(user) {
            return Ok(*a);
        }
        if self.consent.len() >= CONSENT_CACHE {
            self.consent.clear();
        }
        let a = self
            .policy
            .allows(ctx.view.consent(ctx.tenant, user).await?.as_ref());
        self.consent.insert(user.to_owned(), a);
        Ok(a)
    }

    /// The owner of a conversation the run may take (a user who allows it; the filters
    /// pass). Conversations without an owner are never exported: no one could consent.
    async fn exportable(
        &mut self,
        ctx: &Ctx<'_>,
        rec: &ConversationRecord,
    ) -> Result<Option<String>, ExportError> {
        let Some(owner) = rec.owner.clone() else {
            return Ok(None);
        };
        if !self.filters.conversation(rec) || !self.allowed(ctx, &owner).await? {
            return Ok(None);
        }
        Ok(Some(owner))
    }

    async fn tenant(&mut self, ctx: &Ctx<'_>) -> Result<(), ExportError> {
        let mut convs = ctx
            .view
            .conversations(&Scope::tenant(ctx.tenant.clone()))
            .await?;
        while let Some(rec) = convs.next().await? {
            self.conversation(ctx, &rec, true).await?;
        }
        Ok(())
    }

    /// Exports a conversation's row and, with `items`, its items.
    async fn conversation(
        &mut self,
        ctx: &Ctx<'_>,
        rec: &ConversationRecord,
        items: bool,
    ) -> Result<(), ExportError> {
        let Some(owner) = self.exportable(ctx, rec).await? else {
            return Ok(());
        };
        let created_ms = rec.created_at.saturating_mul(1000);
        if self.filters.in_window(created_ms) {
            self.pending_convs.push(ConvRaw {
                user: owner.clone(),
                conversation: rec.id.clone(),
                created_ms,
                updated_ms: rec.updated_at_ms(),
                metadata: rec.metadata.clone(),
            });
            if self.pending_convs.len() >= CHUNK_ROWS {
                self.flush_convs(ctx).await?;
            }
        }
        if !items {
            return Ok(());
        }
        let scope = Scope::tenant(ctx.tenant.clone());
        let mut rows = ctx.view.items_of(&scope, &rec.id, false).await?;
        while let Some(item) = rows.next().await? {
            if !self.filters.in_window(item.created_at_ms) {
                continue;
            }
            self.push_item(ctx, owner.clone(), rec.id.clone(), item)
                .await?;
        }
        Ok(())
    }

    async fn additions(&mut self, ctx: &Ctx<'_>, add: &Additions) -> Result<(), ExportError> {
        let scope = Scope::tenant(ctx.tenant.clone());
        let record = |id: &str| {
            let (scope, id) = (scope.clone(), id.to_owned());
            async move {
                match ctx.view.conversation(&scope, &id).await {
                    Ok(rec) => Ok(Some(rec)),
                    Err(StoreError::NotFound(_)) => Ok(None),
                    Err(e) => Err(ExportError::from(e)),
                }
            }
        };
        for id in &add.whole {
            if let Some(rec) = record(id).await? {
                self.conversation(ctx, &rec, true).await?;
            }
        }
        for id in add.rows.difference(&add.whole) {
            if let Some(rec) = record(id).await? {
                self.conversation(ctx, &rec, false).await?;
            }
        }
        let mut owners: HashMap<String, Option<String>> = HashMap::new();
        for (conv, item_id) in &add.items {
            if add.whole.contains(conv) {
                continue;
            }
            let owner = match owners.get(conv) {
                Some(o) => o.clone(),
                None => {
                    let o = match record(conv).await? {
                        Some(rec) => self.exportable(ctx, &rec).await?,
                        None => None,
                    };
                    owners.insert(conv.clone(), o.clone());
                    o
                }
            };
            let Some(owner) = owner else { continue };
            let Some(item) = ctx.view.item(&scope, conv, item_id).await? else {
                continue;
            };
            if !self.filters.in_window(item.created_at_ms) {
                continue;
            }
            self.push_item(ctx, owner, conv.clone(), item).await?;
        }
        Ok(())
    }

    /// Queues one item row, handing a chunk to the writer when it is full.
    async fn push_item(
        &mut self,
        ctx: &Ctx<'_>,
        user: String,
        conversation: String,
        item: mnemo_storage::StoredItem,
    ) -> Result<(), ExportError> {
        self.pending_items.push(ItemRaw {
            user,
            conversation,
            item: item.id,
            seq: item.seq,
            parent: item.parent,
            json: item.json,
            created_ms: item.created_at_ms,
        });
        if self.pending_items.len() >= CHUNK_ROWS {
            self.flush_items(ctx).await?;
        }
        Ok(())
    }

    async fn flush(&mut self, ctx: &Ctx<'_>) -> Result<(), ExportError> {
        self.flush_convs(ctx).await?;
        self.flush_items(ctx).await
    }

    async fn flush_convs(&mut self, ctx: &Ctx<'_>) -> Result<(), ExportError> {
        if self.pending_convs.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.pending_convs);
        let (keys, tenant) = (ctx.keys.clone(), ctx.tenant.as_str().to_owned());
        let build: Build = Box::new(move |scrubber| conv_batch(&tenant, &keys, scrubber, rows));
        self.out.convs.send(Input::Build(build)).await
    }

    async fn flush_items(&mut self, ctx: &Ctx<'_>) -> Result<(), ExportError> {
        if self.pending_items.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.pending_items);
        let (keys, tenant) = (ctx.keys.clone(), ctx.tenant.as_str().to_owned());
        let build: Build = Box::new(move |scrubber| item_batch(&tenant, &keys, scrubber, rows));
        self.out.items.send(Input::Build(build)).await
    }
}

fn timestamps(values: Vec<i64>) -> ArrayRef {
    Arc::new(TimestampMillisecondArray::from(values).with_timezone("UTC"))
}

fn strings<I: IntoIterator<Item = S>, S: AsRef<str>>(values: I) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(values))
}

fn batch(schema: &SchemaRef, columns: Vec<ArrayRef>) -> Result<RecordBatch, ExportError> {
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| ExportError::Parquet(e.to_string()))
}

/// Scrubs every string in a metadata value.
fn scrub_value(scrubber: &Scrubber, v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(scrubber.scrub(s).into_owned()),
        Value::Array(a) => Value::Array(a.iter().map(|v| scrub_value(scrubber, v)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), scrub_value(scrubber, v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn conv_batch(
    tenant: &str,
    keys: &Pseudonymizer,
    scrubber: &Scrubber,
    rows: Vec<ConvRaw>,
) -> Result<RecordBatch, ExportError> {
    let n = rows.len();
    let metadata: Vec<String> = rows
        .iter()
        .map(|r| {
            let scrubbed: Map<String, Value> = r
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), scrub_value(scrubber, v)))
                .collect();
            serde_json::to_string(&scrubbed).unwrap_or_else(|_| "{}".into())
        })
        .collect();
    batch(
        &CONVERSATIONS_SCHEMA,
        vec![
            strings(std::iter::repeat_n(tenant, n)),
            strings(rows.iter().map(|r| keys.pseudonym(IdKind::User, &r.user))),
            strings(
                rows.iter()
                    .map(|r| keys.pseudonym(IdKind::Conversation, &r.conversation)),
            ),
            timestamps(rows.iter().map(|r| r.created_ms).collect()),
            timestamps(rows.iter().map(|r| r.updated_ms).collect()),
            strings(metadata),
        ],
    )
}

/// The pseudonym of the last id asked for, kept while the same id is asked again.
#[derive(Default)]
struct Repeated {
    id: String,
    pseudonym: String,
}

impl Repeated {
    fn of(&mut self, keys: &Pseudonymizer, kind: IdKind, id: &str) -> String {
        if self.pseudonym.is_empty() || self.id != id {
            self.id = id.to_owned();
            self.pseudonym = keys.pseudonym(kind, id);
        }
        self.pseudonym.clone()
    }
}

fn item_batch(
    tenant: &str,
    keys: &Pseudonymizer,
    scrubber: &Scrubber,
    rows: Vec<ItemRaw>,
) -> Result<RecordBatch, ExportError> {
    let n = rows.len();
    let mut kinds = Vec::with_capacity(n);
    let mut roles = Vec::with_capacity(n);
    let mut texts = Vec::with_capacity(n);
    for r in &rows {
        match mnemo_index::read_fields(&r.json, true) {
            Some(f) => {
                kinds.push(f.kind.map(|k| k.into_owned()));
                roles.push(f.role.map(|k| k.into_owned()));
                let text = f.text.unwrap_or_default();
                texts.push(scrubber.scrub(&text).into_owned());
            }
            None => {
                kinds.push(None);
                roles.push(None);
                texts.push(String::new());
            }
        }
    }
    // Rows of a conversation come together, and an item's parent is most often the item
    // before it: each id is keyed once per run of equal ids.
    let mut users = Repeated::default();
    let mut convs = Repeated::default();
    let items: Vec<String> = rows
        .iter()
        .map(|r| keys.pseudonym(IdKind::Item, &r.item))
        .collect();
    let parents: StringArray = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            r.parent.as_deref().map(|p| match i.checked_sub(1) {
                Some(prev) if rows[prev].item == p => items[prev].clone(),
                _ => keys.pseudonym(IdKind::Item, p),
            })
        })
        .collect();
    batch(
        &ITEMS_SCHEMA,
        vec![
            strings(std::iter::repeat_n(tenant, n)),
            strings(rows.iter().map(|r| users.of(keys, IdKind::User, &r.user))),
            strings(
                rows.iter()
                    .map(|r| convs.of(keys, IdKind::Conversation, &r.conversation)),
            ),
            strings(items),
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|r| r.seq as i64),
            )),
            Arc::new(parents),
            Arc::new(StringArray::from(kinds)),
            Arc::new(StringArray::from(roles)),
            strings(texts),
            timestamps(rows.iter().map(|r| r.created_ms).collect()),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run dropped while its writer has rows queued (a job stopped at a hand-over) uploads
    /// nothing more: files written after it could overwrite those of the run that takes the
    /// job over.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_run_uploads_nothing_more() {
        let dir = tempfile::tempdir().unwrap();
        let target = Target::open(dir.path().to_str().unwrap()).unwrap();
        let progress = Arc::new(Progress::default());
        let schema = CONVERSATIONS_SCHEMA.clone();
        // One row per file: 500 files if the writer went on.
        let sink = Sink::spawn(&target, CONVERSATIONS, schema, 1, 1, &progress);
        let rows = crate::dataset::tests::batch(500);
        sink.send(Input::Rows(rows)).await.unwrap();
        drop(sink);
        // Until the number of files stops changing.
        let mut last = usize::MAX;
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let n = target.list().await.unwrap().len();
            if n == last {
                break;
            }
            last = n;
        }
        assert!(last < 500, "{last} files written after the run was dropped");
    }
}
