//! `mnemo replicate` (a consistent replica of a live store) and `mnemo promote` (a replica
//! becomes a writable store). The work is `mnemo_sync::replica`'s.

use anyhow::Context;
use clap::Args;
use mnemo_storage::{RemotePolicy, StoreLocation};
use mnemo_sync::replica::{self, ReplicaOptions, Replicator};
use std::path::PathBuf;
use std::time::Duration;

/// `mnemo replicate` arguments.
#[derive(Args)]
pub struct ReplicateArgs {
    /// The live store: `file:///dir` (or a path: a server's DATA_DIR/store), `s3://bucket/prefix`
    /// or `az://container/prefix`.
    #[arg(long)]
    from: String,
    /// The replica's location (empty, or a replica of the same store).
    #[arg(long)]
    to: String,
    /// The source server's `--wal-dir` (a remote store whose log is on this machine's disk):
    /// acknowledged writes not yet in an SST are shipped from it. A local store's log is found
    /// beside it.
    #[arg(long)]
    from_wal_dir: Option<PathBuf>,
    /// Keep the replica current: a round every `--interval-ms`, until interrupted.
    #[arg(long)]
    watch: bool,
    /// Pause between two rounds with `--watch`, in ms.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Seconds the replica keeps files its newest manifest no longer needs (for readers of
    /// older manifests).
    #[arg(long, default_value_t = 300)]
    grace_seconds: u64,
    /// Objects copied at once.
    #[arg(long, default_value_t = 8)]
    transfers: usize,
    /// Print each round as one JSON object per line (otherwise a line of text).
    #[arg(long)]
    json: bool,
}

/// `mnemo promote` arguments.
#[derive(Args)]
pub struct PromoteArgs {
    /// The replica to turn into a writable store.
    #[arg(long)]
    store: String,
    /// Scratch directory (a remote replica's shipped log is replayed from it).
    #[arg(long, default_value = "./mnemo-data")]
    data_dir: PathBuf,
}

/// A store URL or a local path.
pub fn location(url: &str) -> anyhow::Result<StoreLocation> {
    let loc = if url.contains("://") {
        StoreLocation::from_url(url, RemotePolicy::default())
    } else {
        StoreLocation::local(std::path::Path::new(url))
    };
    loc.with_context(|| format!("store {url}"))
}

/// Runs `mnemo replicate`.
pub async fn run(args: ReplicateArgs) -> anyhow::Result<()> {
    let src = location(&args.from)?;
    let dst = location(&args.to)?;
    if src.description == dst.description && src.path == dst.path {
        anyhow::bail!("--from and --to are the same store");
    }
    let src_wal = args.from_wal_dir.clone().or_else(|| src.local_wal_dir());
    let options = ReplicaOptions {
        grace: Duration::from_secs(args.grace_seconds),
        transfers: args.transfers.max(1),
        ..ReplicaOptions::default()
    };
    let mut replicator = Replicator::new(src, src_wal, dst, options);
    let interval = Duration::from_millis(args.interval_ms);
    let mut last_gc = std::time::Instant::now();
    // Listened for from the start: an interrupt that arrives during a round ends the loop once
    // that round is reported (a listener created between rounds would miss it).
    let interrupted = std::sync::Arc::new(tokio::sync::Notify::new());
    if args.watch {
        let n = interrupted.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                n.notify_one();
            }
        });
    }
    loop {
        let report = replicator.round().await.context("replication round")?;
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            println!(
                "replica at manifest {} wal {}: {} objects ({} bytes) copied, lag {} ms",
                report.manifest_id,
                report.wal_id,
                report.copied_objects,
                report.copied_bytes,
                report.lag_ms
            );
        }
        if !args.watch {
            return Ok(());
        }
        if last_gc.elapsed() >= Duration::from_secs(60) {
            match replicator.collect_garbage().await {
                Ok(n) if n > 0 => tracing::info!(removed = n, "replica files no longer needed"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "replica garbage collection failed"),
            }
            last_gc = std::time::Instant::now();
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = interrupted.notified() => return Ok(()),
        }
    }
}

/// Runs `mnemo promote`.
pub async fn promote(args: PromoteArgs) -> anyhow::Result<()> {
    let location = location(&args.store)?;
    std::fs::create_dir_all(&args.data_dir)?;
    let promoted = replica::promote(&location, &args.data_dir)
        .await
        .context("promoting the replica")?;
    println!("{}", serde_json::to_string(&promoted)?);
    Ok(())
}
