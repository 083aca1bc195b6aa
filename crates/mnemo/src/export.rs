//! `mnemo export`: a research export from the command line, beside a running server or not.
//! It reads the store through a read-only reader of its own (never fencing the server), at
//! everything durable when it starts or at a checkpoint a server export pinned, and runs the
//! same code as `POST /v1/admin/exports`.

use anyhow::Context;
use clap::Args;
use mnemo_export::{
    ConsentPolicy, Filters, KeyRing, Mode, Part, Progress, Request, Source, Target,
};
use mnemo_storage::{RemotePolicy, StoreLocation, TenantId};
use serde_json::{Map, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// `mnemo export` arguments.
#[derive(Args)]
pub struct ExportArgs {
    /// The server's data directory (its store is DIR/store).
    #[arg(long, env = "MNEMO_DATA_DIR", conflicts_with = "store")]
    data_dir: Option<PathBuf>,
    /// The store's URL (`s3://bucket/prefix`, `az://container/prefix`, `file:///dir`).
    #[arg(long, env = "MNEMO_STORE")]
    store: Option<String>,
    /// Where the dataset goes: `file:///dir` (or a path), `s3://bucket/prefix`,
    /// `az://container/prefix`.
    #[arg(long)]
    to: String,
    /// Add only what changed since the dataset's last version.
    #[arg(long, conflicts_with = "refresh")]
    incremental: bool,
    /// Bring the dataset in line with erasures, consent withdrawals and deletions.
    #[arg(long)]
    refresh: bool,
    /// Seconds superseded files stay for readers of older versions.
    #[arg(long, default_value_t = mnemo_export::run::DEFAULT_GRACE.as_secs())]
    grace_seconds: u64,
    /// Export only these tenants (repeatable; default: every tenant of the store).
    #[arg(long = "tenant")]
    tenants: Vec<String>,
    /// Read this checkpoint (the `checkpoint` of a dataset's manifest) instead of the
    /// store's present.
    #[arg(long)]
    checkpoint: Option<String>,
    /// Only items (and conversations) created at or after this time, seconds since the epoch.
    #[arg(long)]
    since: Option<i64>,
    /// Only items (and conversations) created before this time.
    #[arg(long)]
    until: Option<i64>,
    /// Only conversations whose metadata has KEY=VALUE (repeatable).
    #[arg(long = "metadata", value_name = "KEY=VALUE")]
    metadata: Vec<String>,
    /// Rows per Parquet file (in row groups of up to 131,072 rows).
    #[arg(long, default_value_t = mnemo_export::run::ROWS_PER_FILE)]
    rows_per_file: usize,
    /// Users who never answered: `opt-in` (not exported) or `opt-out` (exported).
    #[arg(long, default_value = "opt-in", value_parser = ["opt-in", "opt-out"], env = "MNEMO_RESEARCH_CONSENT")]
    research_consent: String,
}

/// Runs the export and prints what it did as JSON.
pub async fn run(args: ExportArgs) -> anyhow::Result<()> {
    let location = match (&args.store, &args.data_dir) {
        (Some(url), _) => StoreLocation::from_url(url, RemotePolicy::default())?,
        (None, Some(dir)) => StoreLocation::local(&dir.join("store"))?,
        (None, None) => anyhow::bail!("give --data-dir DIR or --store URL"),
    };
    let mut metadata = Map::new();
    for pair in &args.metadata {
        let (k, v) = pair
            .split_once('=')
            .with_context(|| format!("--metadata {pair}: expected KEY=VALUE"))?;
        metadata.insert(k.to_owned(), Value::String(v.to_owned()));
    }
    let target = Target::open(&args.to)?;
    let pinned = mnemo_storage::pin_store(
        &location,
        args.checkpoint.as_deref(),
        Duration::from_secs(60),
    )
    .await
    .with_context(|| format!("opening store {}", location.description))?;
    let tenants = if args.tenants.is_empty() {
        pinned.view().tenants().await?
    } else {
        args.tenants
            .iter()
            .map(TenantId::new)
            .collect::<Result<_, _>>()?
    };
    let keys = KeyRing::new(&location);
    let source = Source {
        parts: vec![Part {
            name: None,
            view: pinned.view(),
        }],
        checkpoint: args.checkpoint.clone(),
        description: location.description.clone(),
        tenants,
        keys: &keys,
    };
    let request = Request {
        mode: if args.refresh {
            Mode::Refresh
        } else if args.incremental {
            Mode::Incremental
        } else {
            Mode::Full
        },
        filters: Filters {
            since: args.since,
            until: args.until,
            metadata,
        },
        policy: ConsentPolicy::parse(&args.research_consent).unwrap_or_default(),
        grace: Duration::from_secs(args.grace_seconds),
        rows_per_file: args.rows_per_file,
    };
    let progress = Arc::new(Progress::default());
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    let ticker = {
        let (bar, progress) = (bar.clone(), progress.clone());
        tokio::spawn(async move {
            loop {
                let p = progress.report();
                bar.set_message(format!(
                    "{}: {} conversations, {} items, {} files, {:.1} MiB",
                    p.phase,
                    p.conversations,
                    p.items,
                    p.files,
                    p.bytes as f64 / 1048576.0
                ));
                bar.tick();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let result = mnemo_export::run(&source, &target, &request, &progress).await;
    ticker.abort();
    bar.finish_and_clear();
    pinned.close().await?;
    let outcome = result.with_context(|| format!("exporting to {}", target.description))?;
    println!("{}", serde_json::to_string_pretty(&outcome)?);
    Ok(())
}
