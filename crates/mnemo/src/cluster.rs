//! `mnemo serve --cluster-etcd …` (a node of a cluster) and `mnemo cluster status`.
//!
//! A node takes shards through [`mnemo_cluster::Cluster`] and opens each as its own store
//! under the cluster's store, `<store>/shards/<n as 5 digits>`, with its own change log,
//! search index and SQL engine; [`mnemo_api::cluster`] routes every request to its shard.

use anyhow::Context;
use clap::{Args, Subcommand};
use futures::future::BoxFuture;
use futures::FutureExt;
use mnemo_api::cluster::{ClusterFront, LocalShard};
use mnemo_cluster::{Cluster, ClusterConfig, ShardOpener};
use mnemo_storage::{EngineConfig, RemotePolicy, Store, StoreLocation};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Cluster flags of `mnemo serve`.
#[derive(Args, Debug, Default)]
pub struct ClusterArgs {
    /// etcd client URLs (comma-separated): run as a node of the cluster they coordinate.
    /// Needs --store (shared by every node), --node-id and --advertise.
    #[arg(long, env = "MNEMO_CLUSTER_ETCD", value_delimiter = ',')]
    pub cluster_etcd: Vec<String>,
    /// The cluster's name: its keys in etcd live under /NAME/.
    #[arg(long, default_value = "mnemo", env = "MNEMO_CLUSTER_NAME")]
    pub cluster_name: String,
    /// This node's id, unique in the cluster.
    #[arg(long, env = "MNEMO_NODE_ID")]
    pub node_id: Option<String>,
    /// The URL other nodes reach this node at (e.g. http://10.0.0.5:8080).
    #[arg(long, env = "MNEMO_ADVERTISE")]
    pub advertise: Option<String>,
    /// Number of shards, used when the cluster is created (then recorded in etcd and fixed).
    #[arg(long, default_value_t = 64, env = "MNEMO_SHARDS")]
    pub shards: u32,
    /// Seconds a node's lease in etcd lives without renewal: a node that cannot renew stops
    /// answering for its shards before this passes, and another node takes them after it.
    #[arg(long, default_value_t = 10, env = "MNEMO_LEASE_TTL_SECS")]
    pub lease_ttl_secs: u64,
    /// `writer`: owns shards. `reader`: owns none; follows every shard read-only and answers
    /// reads (history, memory, search, SQL, changes) from them with a bounded, reported lag
    /// (`X-Mnemo-Replica-Lag-Ms`); writes, and reads with `X-Mnemo-Consistency: strong`, go
    /// to the owners.
    #[arg(long, default_value = "writer", value_parser = ["writer", "reader"], env = "MNEMO_ROLE")]
    pub role: String,
}

impl ClusterArgs {
    /// True when the server runs as a cluster node.
    pub fn enabled(&self) -> bool {
        !self.cluster_etcd.is_empty()
    }
}

/// What every shard of this node is opened with.
pub struct ShardTemplate {
    /// The cluster's store; shard `n` lives at `<store>/shards/<n:05>`.
    pub store: String,
    /// Engine settings (location and id tag are set per shard).
    pub engine: EngineConfig,
    /// Search snapshots.
    pub snapshot_interval: Duration,
    /// SQL limits.
    pub sql: mnemo_sql::SqlConfig,
    /// Most rows of a JSON SQL answer.
    pub sql_max_rows: usize,
    /// Authentication (the same on every shard and in the front).
    pub auth: mnemo_api::auth::AuthConfig,
    /// Research consent of users without a record.
    pub consent: mnemo_export::ConsentPolicy,
    /// On a reader node: how often each replica looks for new state.
    pub follow: Duration,
    /// The built-in embedder (`--embedding-model`): one model and one set of threads for
    /// all of the node's shards, each with its own pipeline.
    pub embedder: Option<mnemo_index::embed::EmbedderConfig>,
    /// URL prefixes research exports may be written under (`--export-to`; empty: any).
    pub export_to: Vec<String>,
    /// The cluster's store itself: pseudonym keys live beside it, one per tenant for all
    /// shards.
    pub root: StoreLocation,
}

/// Research exports of a writer's shard: the jobs of the tenants whose shard it is
/// (hash(tenant)), kept beside the shard's store and reading every shard of the cluster.
struct ShardExports {
    /// The cluster's shard count.
    shards: u32,
    /// Every shard's timeout for reads of the object store.
    timeout: Duration,
}

/// The API over one shard's store: search with the node's embedder, SQL, and on a writer the
/// research exports of the tenants whose shard it is.
async fn shard_api(
    t: &ShardTemplate,
    shard: u32,
    store: Arc<Store>,
    snapshots: Duration,
    exports: Option<ShardExports>,
) -> Result<LocalShard, String> {
    let options = mnemo_index::SearchOptions {
        embedder: t.embedder.clone(),
        snapshots: mnemo_index::SnapshotOptions {
            interval: snapshots,
        },
    };
    let search = mnemo_index::SearchService::start_with(store.clone(), options)
        .await
        .map_err(|e| e.to_string())?;
    let sql = Arc::new(mnemo_sql::SqlEngine::new(
        store.clone(),
        Some(search.clone()),
        t.sql.clone(),
    ));
    let mut state = mnemo_api::AppState::new(store.clone())
        .with_auth(t.auth.clone())
        .with_search(search.clone())
        .with_sql(sql, t.sql_max_rows)
        .with_research_consent(t.consent);
    let mut exporter = None;
    if let Some(e) = exports {
        let jobs = shard_exporter(t, &store, e);
        match jobs.resume().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(shard, jobs = n, "export jobs left unfinished run again"),
            Err(e) => tracing::error!(shard, error = %e, "reading export jobs failed"),
        }
        state = state.with_exports(jobs.clone());
        exporter = Some(jobs);
    }
    Ok(LocalShard {
        shard,
        router: mnemo_api::cluster::shard_router(state),
        store,
        search: Some(search),
        exporter,
    })
}

/// The export job runner of a shard: job records beside the shard's store, pseudonym keys
/// beside the cluster's (one key per tenant whichever shard runs its jobs), every shard read.
fn shard_exporter(
    t: &ShardTemplate,
    store: &Store,
    e: ShardExports,
) -> Arc<mnemo_export::jobs::Exporter> {
    let shards = (0..e.shards)
        .map(|n| (format!("{n:05}"), shard_url(&t.store, n)))
        .collect();
    mnemo_export::jobs::Exporter::spawn(
        mnemo_export::jobs::Origin::Shards {
            shards,
            timeout: e.timeout,
        },
        t.root.description.clone(),
        store.location(),
        mnemo_export::KeyRing::new(&t.root),
        t.consent,
        t.export_to.clone(),
    )
}

/// The engine settings of shard `n`.
fn shard_config(t: &ShardTemplate, shard: u32) -> Result<EngineConfig, String> {
    let url = shard_url(&t.store, shard);
    let mut config = t.engine.clone();
    config.location =
        StoreLocation::from_url(&url, RemotePolicy::default()).map_err(|e| e.to_string())?;
    // The log stays in the object store: another node must be able to take the shard.
    config.wal_dir = None;
    config.id_tag = Some(mnemo_cluster::placement::id_tag(shard));
    Ok(config)
}

/// On a reader node: opens shard `n` read-only once it exists (retrying every 2 s until a
/// writer has created it), follows it, and adds it to `replicas`.
async fn follow_shard(t: Arc<ShardTemplate>, n: u32, replicas: Arc<mnemo_api::cluster::Replicas>) {
    loop {
        let opened = async {
            let config = shard_config(&t, n)?;
            let store = Arc::new(
                Store::open_read_only(config, None, t.follow)
                    .await
                    .map_err(|e| e.to_string())?,
            );
            // Stops when the store is dropped.
            let _follow = store.spawn_follow(t.follow);
            // No snapshots (it writes nothing), no exports (the owner runs them).
            shard_api(&t, n, store, Duration::ZERO, None).await
        }
        .await;
        match opened {
            Ok(shard) => {
                tracing::info!(shard = n, "following shard read-only");
                replicas.insert(Arc::new(shard));
                return;
            }
            Err(e) => {
                tracing::debug!(shard = n, error = %e, "shard not readable yet; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

/// Opens and closes this node's shards.
struct Opener {
    template: Arc<ShardTemplate>,
    /// The cluster's shard count, once joined.
    shards: Arc<std::sync::OnceLock<u32>>,
    /// Background tasks of open shards (TTL expiry), stopped when a shard closes.
    tasks: Arc<Mutex<HashMap<u32, tokio::task::JoinHandle<()>>>>,
}

/// Where shard `n` of a cluster over `store` lives.
pub fn shard_url(store: &str, n: u32) -> String {
    format!("{}/shards/{n:05}", store.trim_end_matches('/'))
}

impl ShardOpener for Opener {
    type Shard = LocalShard;

    fn configured(&self, shards: u32) {
        let _ = self.shards.set(shards);
    }

    fn open(&self, shard: u32) -> BoxFuture<'static, Result<Arc<LocalShard>, String>> {
        let t = self.template.clone();
        let tasks = self.tasks.clone();
        let shards = self.shards.get().copied();
        async move {
            let config = shard_config(&t, shard)?;
            let exports = ShardExports {
                shards: shards.ok_or("the cluster's shard count is not known yet")?,
                timeout: config.write_timeout,
            };
            let store = Arc::new(Store::open(config).await.map_err(|e| e.to_string())?);
            let api =
                shard_api(&t, shard, store.clone(), t.snapshot_interval, Some(exports)).await?;
            let expiry = store.spawn_expiry();
            if let Some(old) = tasks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(shard, expiry)
            {
                old.abort();
            }
            Ok(Arc::new(api))
        }
        .boxed()
    }

    fn close(&self, shard: u32, s: Arc<LocalShard>) -> BoxFuture<'static, ()> {
        let tasks = self.tasks.clone();
        async move {
            if let Some(t) = tasks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&shard)
            {
                t.abort();
            }
            // Drain: requests in flight hold the shard; wait for them (at most 10 s).
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while Arc::strong_count(&s) > 1 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if let Some(exporter) = &s.exporter {
                exporter.stop();
            }
            if let Some(search) = &s.search {
                search.shutdown().await;
                search.stop();
            }
            if let Err(e) = s.store.close().await {
                tracing::warn!(shard, error = %e, "closing a shard's store failed");
            }
        }
        .boxed()
    }
}

/// Runs a cluster node until SIGTERM or Ctrl-C, then hands its shards back.
pub async fn serve(
    args: &ClusterArgs,
    listen: std::net::SocketAddr,
    template: ShardTemplate,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let reader = args.role == "reader";
    let node_id = args
        .node_id
        .clone()
        .context("a cluster node needs --node-id")?;
    let advertise = args
        .advertise
        .clone()
        .context("a cluster node needs --advertise (the URL other nodes reach it at)")?;
    if args.lease_ttl_secs < 2 {
        anyhow::bail!("--lease-ttl-secs must be at least 2");
    }
    let ttl = Duration::from_secs(args.lease_ttl_secs);
    let auth = template.auth.clone();
    let config = ClusterConfig {
        endpoints: args.cluster_etcd.clone(),
        name: args.cluster_name.clone(),
        node_id: node_id.clone(),
        advertise,
        shards: args.shards,
        store: template.store.clone(),
        lease_ttl: ttl,
        poll: Duration::from_secs(1),
        reader,
    };
    let template = Arc::new(template);
    let opener = Opener {
        template: template.clone(),
        shards: Arc::new(std::sync::OnceLock::new()),
        tasks: Arc::new(Mutex::new(HashMap::new())),
    };
    let cluster = Cluster::join(config, opener)
        .await
        .context("joining the cluster")?;
    // A request for a shard without an owner waits for the failover: the lease to expire,
    // and the new owner to open the shard.
    let mut front = ClusterFront::new(cluster.clone(), auth, ttl * 2 + Duration::from_secs(10))
        .with_sql(
            Arc::new(mnemo_sql::SqlEngine::for_shards(template.sql.clone())),
            template.sql_max_rows,
        );
    if reader {
        let replicas = mnemo_api::cluster::Replicas::new(template.follow);
        for n in 0..cluster.shards() {
            tokio::spawn(follow_shard(template.clone(), n, replicas.clone()));
        }
        let (c, r) = (cluster.clone(), replicas.clone());
        tokio::spawn(async move {
            loop {
                c.report_lag(r.max_lag_ms(c.shards(), mnemo_api::cluster::now_ms()));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        front = front.with_replicas(replicas);
    }
    let app = mnemo_api::cluster::router(front);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    tracing::info!(listen = %listener.local_addr()?, node = %node_id, shards = cluster.shards(), "mnemo cluster node ready");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    tracing::info!("shutting down: handing shards back");
    cluster.leave().await;
    Ok(())
}

/// `mnemo cluster …`.
#[derive(Args, Debug)]
pub struct ClusterCommand {
    #[command(subcommand)]
    command: ClusterSub,
}

#[derive(Subcommand, Debug)]
enum ClusterSub {
    /// Nodes, shards, owners and leases, as etcd records them.
    Status(StatusArgs),
}

#[derive(Args, Debug)]
struct StatusArgs {
    /// etcd client URLs (comma-separated).
    #[arg(
        long,
        env = "MNEMO_CLUSTER_ETCD",
        value_delimiter = ',',
        required = true
    )]
    cluster_etcd: Vec<String>,
    /// The cluster's name.
    #[arg(long, default_value = "mnemo", env = "MNEMO_CLUSTER_NAME")]
    cluster_name: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `mnemo cluster …`.
pub async fn run(cmd: ClusterCommand) -> anyhow::Result<()> {
    let ClusterSub::Status(a) = cmd.command;
    let status = mnemo_cluster::read_status(&a.cluster_etcd, &a.cluster_name)
        .await
        .context("reading the cluster's state from etcd")?;
    let v = serde_json::to_value(&status)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "cluster {}: {} shards, store {}, lease TTL {} s",
        v["name"].as_str().unwrap_or("?"),
        v["shards"],
        v["store"].as_str().unwrap_or("?"),
        v["lease_ttl_secs"]
    );
    let owners = v["owners"].as_array().cloned().unwrap_or_default();
    let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
    println!("nodes: {}", nodes.len());
    for n in &nodes {
        let id = n["id"].as_str().unwrap_or("?");
        let held = owners
            .iter()
            .filter(|o| o["node"].as_str() == Some(id))
            .count();
        let ttl = n
            .get("ttl_remaining_secs")
            .filter(|t| !t.is_null())
            .map(|t| format!(", lease {t} s left"))
            .unwrap_or_default();
        println!(
            "  {id}  {}  {held} shards{ttl}",
            n["url"].as_str().unwrap_or("?")
        );
    }
    let readers = v["readers"].as_array().cloned().unwrap_or_default();
    if !readers.is_empty() {
        println!("readers: {}", readers.len());
    }
    for n in &readers {
        let lag = match n.get("lag_ms").and_then(|l| l.as_u64()) {
            Some(ms) => format!("lag at most {ms} ms"),
            None => "not following every shard yet".to_owned(),
        };
        println!(
            "  {}  {}  {lag}",
            n["id"].as_str().unwrap_or("?"),
            n["url"].as_str().unwrap_or("?")
        );
    }
    let orphans: Vec<String> = owners
        .iter()
        .filter(|o| o["node"].is_null())
        .map(|o| o["shard"].to_string())
        .collect();
    if orphans.is_empty() {
        println!("every shard has an owner");
    } else {
        println!("shards without an owner: {}", orphans.join(", "));
    }
    Ok(())
}
