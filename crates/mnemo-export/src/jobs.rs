//! Export jobs in a server. A job is a record kept beside the database, in the store's own
//! object store (`<store>/export-jobs/<tenant>/<id>.json`), so its status survives a restart;
//! jobs run one at a time, each reading a checkpoint it pins for its whole run. A job found
//! queued or running when the server starts is run again from the start (a run cleans up
//! after an interrupted one, see [`crate::run`]).
//!
//! On a cluster, a tenant's jobs are kept and run by the owner of the tenant's shard
//! ([`Origin::Shards`]): they read every shard, and a node that takes the shard over runs a
//! job the previous owner left unfinished.

use crate::keys::KeyRing;
use crate::run::{Filters, Mode, Outcome, Part, Progress, ProgressReport, Request, Source};
use crate::target::Target;
use crate::{ConsentPolicy, ExportError};
use futures::TryStreamExt;
use mnemo_storage::checkpoint::Pinned;
use mnemo_storage::{RemotePolicy, Store, StoreLocation, TenantId};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// How long the checkpoint a job reads is kept (so the same point can be exported again
/// with [`JobSpec::checkpoint`]).
pub const CHECKPOINT_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// What a job is asked to do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The dataset's URL.
    pub to: String,
    /// Full, incremental or refresh.
    pub mode: Mode,
    /// The rows a full export takes.
    pub filters: Filters,
    /// How long superseded files stay.
    pub grace_seconds: u64,
    /// Read this earlier checkpoint instead of a new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
}

/// Where a job is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Waiting for the jobs before it.
    Queued,
    /// Running.
    Running,
    /// Finished; its version is committed.
    Succeeded,
    /// Stopped with an error; the dataset is as it was before, or at a version the error
    /// names (a failure while deleting superseded files).
    Failed,
}

/// Rows in the version a job committed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rows {
    /// Conversation rows.
    pub conversations: u64,
    /// Item rows.
    pub items: u64,
}

/// A job as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// `export_…`
    pub id: String,
    /// Always `export`.
    pub object: String,
    /// The tenant it exports.
    pub tenant: String,
    /// `queued`, `running`, `succeeded` or `failed`.
    pub status: Status,
    /// Why it failed.
    pub error: Option<String>,
    /// What it was asked.
    pub request: JobSpec,
    /// Seconds since the Unix epoch.
    pub created_at: i64,
    /// When it started running.
    pub started_at: Option<i64>,
    /// When it finished.
    pub finished_at: Option<i64>,
    /// Live counters while it runs; the final ones after.
    pub progress: ProgressReport,
    /// Rows in the committed version.
    pub rows: Option<Rows>,
    /// The dataset version it committed.
    pub version: Option<u64>,
    /// The checkpoint it read.
    pub checkpoint: Option<String>,
    /// What the run did.
    pub outcome: Option<Outcome>,
}

/// Where a job's rows come from.
pub enum Origin {
    /// A store this server writes: each job reads a checkpoint of it.
    Store(Arc<Store>),
    /// The shards of a cluster, stores other nodes may be writing: each job reads every shard
    /// at everything durable when it opens it (each shard at its own point).
    Shards {
        /// Each shard's name (its number, as in the store's layout) and store URL, in order.
        /// A job opens their clients while it runs, not before.
        shards: Vec<(String, String)>,
        /// How long one read of the object store may take.
        timeout: Duration,
    },
}

/// Runs export jobs for a server.
pub struct Exporter {
    origin: Origin,
    description: String,
    keys: KeyRing,
    records: Arc<dyn ObjectStore>,
    prefix: String,
    policy: ConsentPolicy,
    allowed: Vec<String>,
    live: Mutex<HashMap<String, Arc<Progress>>>,
    queue: mpsc::UnboundedSender<(TenantId, String)>,
    runner: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn store_err(e: object_store::Error) -> ExportError {
    ExportError::Store(format!("export job record: {e}"))
}

/// A dataset URL in the form targets are compared in: a plain path becomes `file://`.
fn normalized(url: &str) -> String {
    if url.contains("://") {
        url.to_owned()
    } else {
        format!("file://{url}")
    }
}

impl Exporter {
    /// Starts the job runner of `store`. Users without a consent record are decided by
    /// `policy`. `allowed` lists URL prefixes datasets may be written under (empty: any).
    pub fn start(store: Arc<Store>, policy: ConsentPolicy, allowed: Vec<String>) -> Arc<Exporter> {
        let location = store.location().clone();
        let keys = KeyRing::new(&location);
        let description = location.description.clone();
        Exporter::spawn(
            Origin::Store(store),
            description,
            &location,
            keys,
            policy,
            allowed,
        )
    }

    /// Starts a job runner that reads `origin`, keeps its job records beside the store at
    /// `records` and takes pseudonym keys from `keys`. `description` names the source in
    /// manifests. A cluster gives every shard's runner the same `keys` (the cluster's store),
    /// so a tenant has one key whichever shard runs its jobs.
    pub fn spawn(
        origin: Origin,
        description: String,
        records: &StoreLocation,
        keys: KeyRing,
        policy: ConsentPolicy,
        allowed: Vec<String>,
    ) -> Arc<Exporter> {
        let prefix = if records.path.is_empty() {
            "export-jobs".to_owned()
        } else {
            format!("{}/export-jobs", records.path.trim_end_matches('/'))
        };
        let (queue, mut rx) = mpsc::unbounded_channel();
        let exporter = Arc::new(Exporter {
            origin,
            description,
            keys,
            records: records.object_store.clone(),
            prefix,
            policy,
            allowed: allowed.iter().map(|a| normalized(a)).collect(),
            live: Mutex::new(HashMap::new()),
            queue,
            runner: Mutex::new(None),
        });
        let weak = Arc::downgrade(&exporter);
        let runner = tokio::spawn(async move {
            while let Some((tenant, id)) = rx.recv().await {
                let Some(exporter) = weak.upgrade() else {
                    return;
                };
                if let Err(e) = exporter.execute(&tenant, &id).await {
                    tracing::error!(error = %e, job = %id, "export job record could not be kept");
                }
            }
        });
        *exporter.runner.lock().unwrap_or_else(|p| p.into_inner()) = Some(runner);
        exporter
    }

    /// Stops running jobs at once (a cluster node handing the tenant's shard over): the job
    /// running stays recorded as running, and the next runner of these records (the shard's
    /// new owner, at [`Exporter::resume`]) runs it again from the start.
    pub fn stop(&self) {
        if let Some(r) = self.runner.lock().unwrap_or_else(|p| p.into_inner()).take() {
            r.abort();
        }
    }

    fn path(&self, tenant: &TenantId, id: &str) -> ObjectPath {
        ObjectPath::from(format!("{}/{}/{id}.json", self.prefix, tenant.as_str()))
    }

    async fn save(&self, tenant: &TenantId, job: &Job) -> Result<(), ExportError> {
        let bytes = serde_json::to_vec(job).map_err(|e| ExportError::Store(e.to_string()))?;
        self.records
            .put(&self.path(tenant, &job.id), PutPayload::from(bytes))
            .await
            .map_err(store_err)?;
        Ok(())
    }

    async fn load(&self, tenant: &TenantId, id: &str) -> Result<Option<Job>, ExportError> {
        if !mnemo_storage::ids::is_valid_id(id) {
            return Ok(None);
        }
        match self.records.get(&self.path(tenant, id)).await {
            Ok(r) => {
                let bytes = r.bytes().await.map_err(store_err)?;
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| ExportError::Corrupt(format!("export job {id}: {e}")))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_err(e)),
        }
    }

    /// Records a job for `tenant` and queues it. Invalid when the URL cannot be used or is
    /// not under an allowed prefix.
    pub async fn submit(&self, tenant: &TenantId, spec: JobSpec) -> Result<Job, ExportError> {
        // A relative path would resolve against the server's working directory.
        if !spec.to.contains("://") && !spec.to.starts_with('/') {
            return Err(ExportError::Invalid(format!(
                "{:?} is neither a URL nor an absolute path",
                spec.to
            )));
        }
        let to = normalized(&spec.to);
        if !self.allowed.is_empty() && !self.allowed.iter().any(|a| to.starts_with(a.as_str())) {
            return Err(ExportError::Invalid(format!(
                "exports may not be written to {}: allowed are {}",
                spec.to,
                self.allowed.join(", ")
            )));
        }
        Target::open(&spec.to)?;
        if spec.checkpoint.is_some() && matches!(self.origin, Origin::Shards { .. }) {
            return Err(ExportError::Invalid(
                "`checkpoint` is not available on a cluster: each shard is read at its own point"
                    .into(),
            ));
        }
        let job = Job {
            id: mnemo_storage::ids::generate("export_"),
            object: "export".into(),
            tenant: tenant.as_str().to_owned(),
            status: Status::Queued,
            error: None,
            request: spec,
            created_at: now_s(),
            started_at: None,
            finished_at: None,
            progress: Progress::default().report(),
            rows: None,
            version: None,
            checkpoint: None,
            outcome: None,
        };
        self.save(tenant, &job).await?;
        let _ = self.queue.send((tenant.clone(), job.id.clone()));
        Ok(job)
    }

    /// A job of `tenant`, with live counters while it runs; `None` for another tenant's.
    pub async fn get(&self, tenant: &TenantId, id: &str) -> Result<Option<Job>, ExportError> {
        let Some(mut job) = self.load(tenant, id).await? else {
            return Ok(None);
        };
        if job.status == Status::Running {
            let live = self
                .live
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(id)
                .cloned();
            if let Some(p) = live {
                job.progress = p.report();
            }
        }
        Ok(Some(job))
    }

    /// Queues again every job a stopped server left queued or running; returns how many.
    pub async fn resume(&self) -> Result<usize, ExportError> {
        let prefix = ObjectPath::from(self.prefix.as_str());
        let metas: Vec<_> = self
            .records
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(store_err)?;
        let mut pending = Vec::new();
        for meta in metas {
            let bytes = self
                .records
                .get(&meta.location)
                .await
                .map_err(store_err)?
                .bytes()
                .await
                .map_err(store_err)?;
            let Ok(job) = serde_json::from_slice::<Job>(&bytes) else {
                tracing::error!(path = %meta.location, "unreadable export job record; skipped");
                continue;
            };
            if matches!(job.status, Status::Queued | Status::Running) {
                if let Ok(t) = TenantId::new(&job.tenant) {
                    pending.push((job.created_at, job.id, t));
                }
            }
        }
        pending.sort();
        let n = pending.len();
        for (_, id, t) in pending {
            let _ = self.queue.send((t, id));
        }
        Ok(n)
    }

    async fn execute(&self, tenant: &TenantId, id: &str) -> Result<(), ExportError> {
        let Some(mut job) = self.load(tenant, id).await? else {
            return Ok(());
        };
        let progress = Arc::new(Progress::default());
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_owned(), progress.clone());
        job.status = Status::Running;
        job.started_at = Some(now_s());
        self.save(tenant, &job).await?;
        let result = self.carry_out(tenant, &job.request, &progress).await;
        job.progress = progress.report();
        job.finished_at = Some(now_s());
        match result {
            Ok(outcome) => {
                job.status = Status::Succeeded;
                job.rows = Some(Rows {
                    conversations: outcome.conversations,
                    items: outcome.items,
                });
                job.version = Some(outcome.version);
                job.checkpoint = outcome.checkpoint.clone();
                job.outcome = Some(outcome);
            }
            Err(e) => {
                tracing::warn!(error = %e, job = %id, "export job failed");
                job.status = Status::Failed;
                job.error = Some(e.to_string());
            }
        }
        let saved = self.save(tenant, &job).await;
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        saved
    }

    async fn carry_out(
        &self,
        tenant: &TenantId,
        spec: &JobSpec,
        progress: &Arc<Progress>,
    ) -> Result<Outcome, ExportError> {
        let target = Target::open(&spec.to)?;
        let pinned = self.pin(spec.checkpoint.as_deref()).await?;
        let source = Source {
            parts: pinned
                .iter()
                .map(|(name, p)| Part {
                    name: name.clone(),
                    view: p.view(),
                })
                .collect(),
            checkpoint: match &self.origin {
                Origin::Store(_) => pinned.first().and_then(|(_, p)| p.id().map(str::to_owned)),
                Origin::Shards { .. } => None,
            },
            description: self.description.clone(),
            tenants: vec![tenant.clone()],
            keys: &self.keys,
        };
        let request = Request {
            mode: spec.mode,
            filters: spec.filters.clone(),
            policy: self.policy,
            grace: Duration::from_secs(spec.grace_seconds),
            rows_per_file: crate::run::ROWS_PER_FILE,
        };
        let result = crate::run::run(&source, &target, &request, progress).await;
        drop(source);
        for (_, p) in pinned {
            if let Err(e) = p.close().await {
                tracing::warn!(error = %e, "closing an export's checkpoint reader failed");
            }
        }
        result
    }

    /// Opens the points a job reads: a checkpoint of the store (a new one, or `checkpoint`
    /// again), or every shard.
    async fn pin(
        &self,
        checkpoint: Option<&str>,
    ) -> Result<Vec<(Option<String>, Pinned)>, ExportError> {
        match &self.origin {
            Origin::Store(store) => {
                let pinned = match checkpoint {
                    Some(id) => store.pin_existing(id).await?,
                    None => {
                        store
                            .pin_checkpoint(CHECKPOINT_LIFETIME, "mnemo-export")
                            .await?
                    }
                };
                Ok(vec![(None, pinned)])
            }
            Origin::Shards { shards, timeout } => {
                let mut out = Vec::with_capacity(shards.len());
                for (name, url) in shards {
                    let pinned = async {
                        let location = StoreLocation::from_url(url, RemotePolicy::default())?;
                        mnemo_storage::checkpoint::pin_store(&location, None, *timeout).await
                    };
                    match pinned.await {
                        Ok(p) => out.push((Some(name.clone()), p)),
                        Err(e) => {
                            for (_, p) in out {
                                let _ = p.close().await;
                            }
                            return Err(ExportError::Shard {
                                shard: name.clone(),
                                source: e,
                            });
                        }
                    }
                }
                Ok(out)
            }
        }
    }
}
