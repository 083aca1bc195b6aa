//! `mnemo sync SRC DST` and `mnemo check SRC DST`: copy and verify trees of objects between a
//! local directory, S3 and Azure Blob (crate `mnemo-sync`; `docs/sync.md`).
//!
//! Exit status: `sync` 0 when the destination holds everything at the end, 1 when objects
//! failed or the run stopped early, 2 when it could not start (a bad URL or option);
//! `check` 0 when the trees are identical, 1 when they differ, 2 when something could not be
//! compared (or the check could not start).

use clap::Args;
use indicatif::{BinaryBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use mnemo_sync::{
    CheckOptions, CopyParams, Event, Progress, RemotePolicy, SyncError, SyncOptions, Tree,
};
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Timeouts and retries of remote stores.
#[derive(Args)]
pub struct RemoteArgs {
    /// A request to S3 or Azure fails after this many milliseconds without an answer,
    /// retries included (a request that failed fast is retried only within this time).
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    timeout_ms: u64,
    /// Most retries of a failed request to S3 or Azure (within the timeout).
    #[arg(long, default_value_t = 3)]
    retries: usize,
}

impl RemoteArgs {
    fn policy(&self) -> RemotePolicy {
        let timeout = Duration::from_millis(self.timeout_ms.max(1));
        RemotePolicy {
            max_retries: self.retries,
            retry_timeout: timeout,
            request_timeout: timeout,
        }
    }
}

/// `mnemo sync` arguments.
#[derive(Args)]
pub struct SyncArgs {
    /// The source tree: a directory (`file:///dir` or a path), `s3://bucket[/prefix]` or
    /// `az://container[/prefix]`.
    src: String,
    /// The destination tree (same forms); a missing local directory is created.
    dst: String,
    /// Delete destination objects the source lacks, only after a pass with no error.
    #[arg(long)]
    delete: bool,
    /// Report what would be copied and deleted; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Compare content hashes (MD5) instead of size and modification time.
    #[arg(long)]
    checksum: bool,
    /// Objects copied at the same time.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    transfers: u16,
    /// Objects larger than this are uploaded in parts (several at a time).
    #[arg(long, default_value_t = 64, value_name = "MIB")]
    multipart_threshold_mib: u64,
    /// Size of one part of a multipart upload (S3 needs at least 5).
    #[arg(long, default_value_t = 8, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..=5120))]
    part_size_mib: u64,
    /// Stop starting transfers after this many errors (0: try every object).
    #[arg(long, default_value_t = 0, value_name = "N")]
    max_errors: u64,
    /// Do not fsync files written to a local destination (faster; a power cut can lose a
    /// finished sync's last files).
    #[arg(long)]
    no_fsync: bool,
    #[command(flatten)]
    remote: RemoteArgs,
    /// Print one JSON summary object on stdout.
    #[arg(long)]
    json: bool,
}

/// `mnemo check` arguments.
#[derive(Args)]
pub struct CheckArgs {
    /// The source tree: a directory (`file:///dir` or a path), `s3://bucket[/prefix]` or
    /// `az://container[/prefix]`.
    src: String,
    /// The tree to compare with it (same forms).
    dst: String,
    /// Objects compared at the same time.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    checkers: u16,
    #[command(flatten)]
    remote: RemoteArgs,
    /// Print one JSON report object on stdout.
    #[arg(long)]
    json: bool,
}

/// Runs `mnemo sync`.
pub async fn run_sync(args: SyncArgs) -> anyhow::Result<ExitCode> {
    let options = SyncOptions {
        delete: args.delete,
        dry_run: args.dry_run,
        checksum: args.checksum,
        transfers: usize::from(args.transfers),
        copy: CopyParams {
            multipart_threshold: args.multipart_threshold_mib << 20,
            part_size: usize::try_from(args.part_size_mib << 20)?,
            ..CopyParams::default()
        },
        policy: args.remote.policy(),
        fsync: !args.no_fsync,
        max_errors: args.max_errors,
    };
    let bar = Bar::new();
    let result = async {
        let (src, dst) = (Tree::parse(&args.src)?, Tree::parse(&args.dst)?);
        mnemo_sync::sync(&src, &dst, &options, &bar).await
    }
    .await;
    bar.bar.finish_and_clear();
    let summary = match result {
        Ok(summary) => summary,
        Err(e) => return Ok(cannot_start("sync", &e)),
    };
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        let would = if summary.dry_run { " (dry run)" } else { "" };
        println!(
            "copied {} objects ({}, {} on the server), skipped {} ({}), deleted {} ({}), \
             left {} extra, {} errors in {:.1} s{would}",
            summary.copied.objects,
            BinaryBytes(summary.copied.bytes),
            summary.server_side_copies,
            summary.skipped.objects,
            BinaryBytes(summary.skipped.bytes),
            summary.deleted.objects,
            BinaryBytes(summary.deleted.bytes),
            summary.extra.objects,
            summary.errors.objects,
            summary.elapsed_seconds,
        );
    }
    if summary.succeeded() {
        return Ok(ExitCode::SUCCESS);
    }
    let mut why = format!("{} errors", summary.errors.objects);
    if !summary.complete {
        why.push_str(", the run stopped before considering every object");
    }
    if summary.delete_skipped {
        why.push_str(&format!(
            ", nothing deleted ({} extra objects left)",
            summary.extra.objects
        ));
    }
    eprintln!("mnemo sync: failed: {why}");
    Ok(ExitCode::from(1))
}

/// Runs `mnemo check`.
pub async fn run_check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let options = CheckOptions {
        checkers: usize::from(args.checkers),
        policy: args.remote.policy(),
    };
    let bar = Bar::new();
    let result = async {
        let (src, dst) = (Tree::parse(&args.src)?, Tree::parse(&args.dst)?);
        mnemo_sync::check(&src, &dst, &options, &bar).await
    }
    .await;
    bar.bar.finish_and_clear();
    let report = match result {
        Ok(report) => report,
        Err(e) => return Ok(cannot_start("check", &e)),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        for d in &report.differences {
            let kind = serde_json::to_value(d.kind)?;
            println!("{}: {}", kind.as_str().unwrap_or_default(), d.path);
        }
        if report.differences_truncated {
            println!(
                "… and more (only the first {} are listed)",
                report.differences.len()
            );
        }
        println!(
            "{} matched ({}), {} missing on the destination, {} missing on the source, \
             {} of different size, {} of different content, {} errors in {:.1} s",
            report.matched.objects,
            BinaryBytes(report.matched.bytes),
            report.missing_on_destination.objects,
            report.missing_on_source.objects,
            report.size_differs.objects,
            report.content_differs.objects,
            report.errors.objects,
            report.elapsed_seconds,
        );
    }
    if report.errors.objects > 0 || !report.complete {
        eprintln!(
            "mnemo check: failed: {} errors{}",
            report.errors.objects,
            if report.complete {
                ""
            } else {
                ", the check stopped before comparing every object"
            }
        );
        return Ok(ExitCode::from(2));
    }
    if !report.identical() {
        eprintln!(
            "mnemo check: the trees differ: {} differences",
            report.difference_count()
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn cannot_start(command: &str, e: &SyncError) -> ExitCode {
    eprintln!("mnemo {command}: error: {e}");
    ExitCode::from(2)
}

/// The progress bar on stderr (hidden when stderr is not a terminal); errors are printed
/// above it as they happen.
struct Bar {
    bar: ProgressBar,
    done: AtomicU64,
    failed: AtomicU64,
}

impl Bar {
    fn new() -> Self {
        let target = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(None, target);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {elapsed_precise} {binary_bytes} read, {binary_bytes_per_sec} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        Bar {
            bar,
            done: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }
}

impl Progress for Bar {
    fn transferred(&self, bytes: u64) {
        self.bar.inc(bytes);
    }

    fn finished(&self, key: &str, event: Event<'_>) {
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        let mut failed = self.failed.load(Ordering::Relaxed);
        if let Event::Failed(reason) = event {
            failed = self.failed.fetch_add(1, Ordering::Relaxed) + 1;
            let what = if key.is_empty() {
                "listing".to_string()
            } else {
                key.escape_debug().to_string()
            };
            self.bar.suspend(|| eprintln!("error: {what}: {reason}"));
        }
        self.bar
            .set_message(format!("{done} objects done, {failed} errors"));
    }
}
