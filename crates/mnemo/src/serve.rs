//! `mnemo serve`: open the store, serve the API, shut down gracefully.

use anyhow::Context;
use clap::Args;
use mnemo_storage::{EngineConfig, FlushPolicy, RemotePolicy, Store, StoreLocation};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Options of `mnemo serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Local data directory (the default store lives in DIR/store, the read cache in DIR/cache).
    #[arg(long, default_value = "./mnemo-data", env = "MNEMO_DATA_DIR")]
    data_dir: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080", env = "MNEMO_LISTEN")]
    listen: SocketAddr,
    /// Durable store URL: file:///dir, s3://bucket/prefix or az://container/prefix.
    /// Default: the local directory DATA_DIR/store.
    #[arg(long, env = "MNEMO_STORE")]
    store: Option<String>,
    /// Local SSD cache for object-store reads. Default: DATA_DIR/cache for remote stores,
    /// none for a local store.
    #[arg(long, env = "MNEMO_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Size limit of the read cache, in MiB.
    #[arg(long, default_value_t = 4096, env = "MNEMO_CACHE_SIZE_MB")]
    cache_size_mb: usize,
    /// In-memory block cache for SST data blocks, in MiB.
    #[arg(long, default_value_t = 512, env = "MNEMO_BLOCK_CACHE_MB")]
    block_cache_mb: u64,
    /// In-memory cache of conversation tails (record and newest items of recently written or
    /// read conversations), in MiB; 0 turns it off.
    #[arg(long, default_value_t = 1024, env = "MNEMO_TAIL_CACHE_MB")]
    tail_cache_mb: usize,
    /// In-memory cache of key-value memory (recently written or read values), in MiB; 0 turns
    /// it off.
    #[arg(long, default_value_t = 256, env = "MNEMO_KV_CACHE_MB")]
    kv_cache_mb: usize,
    /// WAL upload interval in ms. 0 uploads on demand (group commit: lowest latency);
    /// N > 0 uploads every N ms (fewer object-store PUTs, each write waits up to N ms).
    #[arg(long, default_value_t = 0, env = "MNEMO_FLUSH_INTERVAL_MS")]
    flush_interval_ms: u64,
    /// Keep the write-ahead log in preallocated segment files in this local directory (a local
    /// SSD) instead of the object store: a write is acknowledged once it is fdatasynced there,
    /// and reaches the object store when its memtable is flushed to an SST (at 64 MiB of log,
    /// and at clean shutdown). Losing this directory loses the writes not yet in an SST.
    /// Restart with the same directory after a crash. A local store (no --store, or file://)
    /// always keeps its log beside the database.
    #[arg(long, env = "MNEMO_WAL_DIR")]
    wal_dir: Option<PathBuf>,
    /// How often, in ms, the compactor looks for L0 SSTs to compact and jobs to claim or
    /// commit. Each look reads the store; a long interval lets a heavy write load fill L0 and
    /// stall writes until the next look. Default: 100 on a local store, 1000 on S3 or Azure.
    #[arg(long, env = "MNEMO_COMPACTION_POLL_MS")]
    compaction_poll_ms: Option<u64>,
    /// A write not durable (or a read not complete) within this many ms fails with 503.
    #[arg(long, default_value_t = 10_000, env = "MNEMO_WRITE_TIMEOUT_MS")]
    write_timeout_ms: u64,
    /// Seconds between search index snapshots written to the store (one is written only if
    /// the index changed, and one at clean shutdown). A restart restores the newest snapshot
    /// and replays the change log from it instead of re-indexing everything. 0 turns
    /// snapshots off (none is loaded either: the index is rebuilt from the store).
    #[arg(
        long,
        default_value_t = 300,
        env = "MNEMO_SEARCH_SNAPSHOT_INTERVAL_SECS"
    )]
    search_snapshot_interval_secs: u64,
    /// How long the change feed keeps changes, in hours (fractions allowed). A reader whose
    /// cursor is older gets 410 `cursor_expired`.
    #[arg(long, default_value_t = 168.0, env = "MNEMO_CHANGES_RETENTION_HOURS")]
    changes_retention_hours: f64,
    /// Serve SQL over the PostgreSQL wire protocol on this address (conventionally
    /// 127.0.0.1:5433). The password is a bearer token or API key; the user name is the user
    /// the connection acts for (`mnemo`: none, tenant-wide). Default: off.
    #[arg(long, env = "MNEMO_PG_LISTEN")]
    pg_listen: Option<SocketAddr>,
    /// A SQL query (planning and its whole answer) is stopped after this many ms.
    #[arg(long, default_value_t = 30_000, env = "MNEMO_SQL_TIMEOUT_MS")]
    sql_timeout_ms: u64,
    /// Memory one SQL query's sorts, joins and aggregations may hold, in MiB.
    #[arg(long, default_value_t = 512, env = "MNEMO_SQL_MEMORY_LIMIT_MB")]
    sql_memory_limit_mb: usize,
    /// Most rows of a JSON answer of /v1/sql (`truncated: true` past it; Arrow answers and
    /// the Postgres protocol are not capped).
    #[arg(long, default_value_t = mnemo_api::DEFAULT_SQL_MAX_ROWS, env = "MNEMO_SQL_MAX_ROWS")]
    sql_max_rows: usize,
    /// Research exports of users who never answered: `opt-in` (not exported) or `opt-out`
    /// (exported unless they say no).
    #[arg(long, default_value = "opt-in", value_parser = ["opt-in", "opt-out"], env = "MNEMO_RESEARCH_CONSENT")]
    research_consent: String,
    /// URL prefixes research exports may be written under (`file:///srv/exports/`,
    /// `s3://bucket/datasets/`, …), comma-separated; unset: any URL the server can reach.
    #[arg(long, env = "MNEMO_EXPORT_TO", value_delimiter = ',')]
    export_to: Vec<String>,
    /// Serve the store read-only (a replica kept by `mnemo replicate`, or a store another
    /// server writes): reads, search and SQL, following the store as it advances; every write
    /// answers 403 `read_only`.
    #[arg(long, env = "MNEMO_READ_ONLY")]
    read_only: bool,
    /// With --read-only: how often, in ms, the server looks for new state of the store.
    #[arg(long, default_value_t = 500, env = "MNEMO_FOLLOW_INTERVAL_MS")]
    follow_interval_ms: u64,
    /// TOML config file; its `[auth]` section holds the authentication settings and the
    /// claim-to-permission map, its `[search]` section the embedder settings. Flags and
    /// environment variables override it.
    #[arg(long, env = "MNEMO_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    auth: crate::auth_config::AuthArgs,
    #[command(flatten)]
    search: crate::search_config::SearchArgs,
    #[command(flatten)]
    cluster: crate::cluster::ClusterArgs,
}

/// Runs the server until SIGTERM or Ctrl-C, then flushes and closes the store.
pub async fn run(mut args: ServeArgs) -> anyhow::Result<()> {
    // Install the metrics recorder before anything registers its series.
    mnemo_api::metrics::install();
    mnemo_auth::describe_metrics();
    let file = crate::auth_config::read_config(args.config.as_deref())?;
    let auth_args = std::mem::take(&mut args.auth);
    let auth = crate::auth_config::build(auth_args, file.auth, &args.data_dir, args.listen).await?;
    let search_options =
        crate::search_config::build(std::mem::take(&mut args.search), file.search).await?;
    let location = match &args.store {
        None => StoreLocation::local(&args.data_dir.join("store"))?,
        Some(url) => StoreLocation::from_url(url, RemotePolicy::default())?,
    };
    let mut config = EngineConfig::new(location);
    config.cache_dir = args
        .cache_dir
        .clone()
        .or_else(|| config.location.remote.then(|| args.data_dir.join("cache")));
    config.cache_size_bytes = args.cache_size_mb << 20;
    config.block_cache_bytes = args.block_cache_mb << 20;
    config.tail_cache_bytes = args.tail_cache_mb << 20;
    config.kv_cache_bytes = args.kv_cache_mb << 20;
    config.flush = match args.flush_interval_ms {
        0 => FlushPolicy::OnDemand,
        ms => FlushPolicy::Interval(Duration::from_millis(ms)),
    };
    config.write_timeout = Duration::from_millis(args.write_timeout_ms);
    if let Some(dir) = &args.wal_dir {
        if !config.location.remote {
            anyhow::bail!(
                "--wal-dir is for a remote store: a local store keeps its log beside the database"
            );
        }
        config.wal_dir = Some(dir.clone());
    }
    if !(args.changes_retention_hours > 0.0 && args.changes_retention_hours <= 24.0 * 3650.0) {
        anyhow::bail!("--changes-retention-hours must be more than 0 and at most 87600");
    }
    config.change_retention = Duration::from_secs_f64(args.changes_retention_hours * 3600.0);
    if let Some(ms) = args.compaction_poll_ms {
        config.compaction_poll = Duration::from_millis(ms.max(1));
    }
    if args.sql_timeout_ms == 0 || args.sql_memory_limit_mb == 0 || args.sql_max_rows == 0 {
        anyhow::bail!(
            "--sql-timeout-ms, --sql-memory-limit-mb and --sql-max-rows must be at least 1"
        );
    }
    let sql_config = mnemo_sql::SqlConfig {
        timeout: Duration::from_millis(args.sql_timeout_ms),
        memory_limit_bytes: args.sql_memory_limit_mb << 20,
        ..mnemo_sql::SqlConfig::default()
    };
    let policy = mnemo_export::ConsentPolicy::parse(&args.research_consent).unwrap_or_default();
    if args.cluster.enabled() {
        return serve_cluster(args, config, auth, search_options, sql_config, policy).await;
    }
    let description = config.location.description.clone();
    let replica = mnemo_sync::replica::read_marker(&config.location)
        .await
        .with_context(|| format!("reading store {description}"))?;
    let store = if args.read_only {
        if args.wal_dir.is_some() {
            anyhow::bail!("--wal-dir is for a writer; a read-only server writes no log");
        }
        Arc::new(open_read_only(config, &args.data_dir, args.follow_interval_ms).await?)
    } else {
        if replica.is_some() {
            anyhow::bail!(
                "{description} is a replica kept by `mnemo replicate`: serve it with --read-only, \
                 or make it writable with `mnemo promote --store …` first"
            );
        }
        Arc::new(
            Store::open(config)
                .await
                .with_context(|| format!("opening store {description}"))?,
        )
    };
    // Values written with a TTL are expired by the store, with a change-log entry each (not
    // on a read-only server: the writer expires them, and reads hide them meanwhile).
    let _expiry = (!args.read_only).then(|| store.spawn_expiry());
    let _follow = args
        .read_only
        .then(|| store.spawn_follow(Duration::from_millis(args.follow_interval_ms.max(10))));
    if let Some(keys) = auth.key_store {
        crate::auth_config::spawn_refresh(keys);
    }
    let mut search_options = search_options;
    search_options.snapshots = mnemo_index::SnapshotOptions {
        // A read-only server writes no snapshot (and loads none: a snapshot could be newer
        // than the replica).
        interval: Duration::from_secs(if args.read_only {
            0
        } else {
            args.search_snapshot_interval_secs
        }),
    };
    let search = mnemo_index::SearchService::start_with(store.clone(), search_options)
        .await
        .context("starting search")?;
    let sql = Arc::new(mnemo_sql::SqlEngine::new(
        store.clone(),
        Some(search.clone()),
        sql_config,
    ));
    let _pg = match args.pg_listen {
        Some(addr) => Some(crate::pg::start(addr, sql.clone(), &auth.config).await?),
        None => None,
    };
    let mut state = mnemo_api::AppState::new(store.clone());
    if !args.read_only {
        let exporter = mnemo_export::jobs::Exporter::start(store.clone(), policy, args.export_to);
        match exporter.resume().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(jobs = n, "export jobs left by a stopped server run again"),
            Err(e) => tracing::error!(error = %e, "reading export jobs failed"),
        }
        state = state.with_exports(exporter);
    }
    let app = mnemo_api::router(
        state
            .with_auth(auth.config)
            .with_search(search.clone())
            .with_sql(sql, args.sql_max_rows)
            .with_research_consent(policy),
    );
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(listen = %listener.local_addr()?, store = %description, "mnemo ready");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    tracing::info!("shutting down: search snapshot, then flushing the store");
    search.shutdown().await;
    store.close().await.context("closing the store")?;
    Ok(())
}

/// Runs a node of a cluster (`--cluster-etcd`): every shard it takes is opened with the
/// engine settings of `config`, its caches a sixteenth of the flags' sizes each.
async fn serve_cluster(
    args: ServeArgs,
    mut config: EngineConfig,
    auth: crate::auth_config::Auth,
    search: mnemo_index::SearchOptions,
    sql: mnemo_sql::SqlConfig,
    consent: mnemo_export::ConsentPolicy,
) -> anyhow::Result<()> {
    let Some(store) = args.store.clone() else {
        anyhow::bail!("a cluster node needs --store: the store every node shares");
    };
    for (set, flag) in [
        (args.read_only, "--read-only"),
        (args.wal_dir.is_some(), "--wal-dir"),
        (args.pg_listen.is_some(), "--pg-listen"),
    ] {
        if set {
            anyhow::bail!("{flag} is not available on a cluster node yet");
        }
    }
    const SHARE: usize = 16;
    config.cache_dir = None;
    config.block_cache_bytes /= SHARE as u64;
    config.tail_cache_bytes /= SHARE;
    config.kv_cache_bytes /= SHARE;
    if let Some(keys) = auth.key_store {
        crate::auth_config::spawn_refresh(keys);
    }
    let root = StoreLocation::from_url(&store, RemotePolicy::default())
        .with_context(|| format!("store {store}"))?;
    let template = crate::cluster::ShardTemplate {
        store,
        engine: config,
        snapshot_interval: Duration::from_secs(args.search_snapshot_interval_secs),
        sql,
        sql_max_rows: args.sql_max_rows,
        auth: auth.config,
        consent,
        follow: Duration::from_millis(args.follow_interval_ms.max(10)),
        embedder: search.embedder,
        export_to: args.export_to,
        root,
    };
    crate::cluster::serve(&args.cluster, args.listen, template, shutdown_signal()).await
}

/// Opens a store read-only and keeps following it: its SlateDB state (new manifests, WAL
/// objects) through the reader, its change log for search and change streams, and, for a
/// remote replica of a store with a local log, the shipped log segments, fetched into
/// DATA_DIR/replica-wal.
async fn open_read_only(
    config: EngineConfig,
    data_dir: &std::path::Path,
    follow_ms: u64,
) -> anyhow::Result<Store> {
    let poll = Duration::from_millis(follow_ms.max(10));
    let description = config.location.description.clone();
    let wal_dir = match config.location.local_wal_dir() {
        Some(dir) => dir.exists().then_some(dir),
        None => {
            let dir = data_dir.join("replica-wal");
            mnemo_sync::replica::fetch_segments(&config.location, &dir)
                .await
                .context("fetching the replica's log segments")?;
            let has_segments = std::fs::read_dir(&dir)?
                .filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().ends_with(".wal"));
            if !has_segments {
                None
            } else {
                let location = config.location.clone();
                let d = dir.clone();
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(poll).await;
                        if let Err(e) = mnemo_sync::replica::fetch_segments(&location, &d).await {
                            tracing::warn!(error = %e, "fetching the replica's log failed");
                        }
                    }
                });
                Some(dir)
            }
        }
    };
    let store = Store::open_read_only(config, wal_dir, poll)
        .await
        .with_context(|| format!("opening store {description} read-only"))?;
    tracing::info!(store = %description, "serving read-only");
    Ok(store)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
