//! `mnemo-bench`: mnemo measured side by side with PostgreSQL and Redis, in one run, on one
//! machine, with the same data and the same client code path.
//!
//! ```text
//! mnemo-bench compare --quick                          # smoke run, under 2 minutes
//! mnemo-bench compare --write-docs docs/benchmarks.md  # full run, records the tables
//! mnemo-bench load --url http://127.0.0.1:8080 --workload append --clients 1,64
//! ```
//!
//! `compare` starts PostgreSQL 15 (`synchronous_commit=on`, `fsync=on`), Redis 7 twice
//! (`appendonly yes` with `appendfsync always`, and with `everysec`) and `mnemo serve` on its
//! default local store, each on 127.0.0.1 with a temporary data directory (installing the
//! Debian packages if missing), loads the same generated data set into each (see `data.rs`),
//! then runs workloads W0–W4 at each concurrency level and prints tables with mnemo/peer ratios.

mod data;
mod exportbench;
mod http;
mod load;
mod peers;
mod quiet;
mod report;
mod run;
mod sqlbench;
mod systems;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use systems::System;

/// CPU use (fraction of all cores) below which the machine counts as quiet after the load.
const QUIET_CPU: f64 = 0.10;

/// Benchmarks for mnemo.
#[derive(Parser)]
#[command(name = "mnemo-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compare mnemo with PostgreSQL and Redis (starts and loads every system).
    Compare(CompareArgs),
    /// Drive one running mnemo server with a write workload.
    Load(load::LoadArgs),
    /// SQL over the same data in mnemo and PostgreSQL (S1–S4).
    Sql(sqlbench::SqlArgs),
    /// A research export of the items beside PostgreSQL's COPY of the same rows.
    Export(exportbench::ExportArgs),
}

#[derive(Args, Debug)]
struct CompareArgs {
    /// Small data set and 1-second runs: a smoke test of the harness (under 2 minutes).
    #[arg(long)]
    quick: bool,
    /// Seconds per (workload, system, concurrency) run (default 8, quick 1).
    #[arg(long)]
    seconds: Option<u64>,
    /// Seconds to rest after loading, before the first workload (default 30, quick 3); the
    /// rest then goes on until the machine's CPU is at most 10 % busy over 2 s.
    #[arg(long)]
    settle: Option<u64>,
    /// Longest rest after loading, in seconds, if the machine does not go quiet (default 900,
    /// quick 30).
    #[arg(long)]
    settle_max: Option<u64>,
    /// Concurrency levels.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    clients: Vec<usize>,
    /// Conversations in the data set (default 10,000, quick 300).
    #[arg(long)]
    conversations: Option<usize>,
    /// Words of the messages: `zipf` (a 50,000-word vocabulary drawn by Zipf's law, like
    /// natural language) or `random` (random letters, nearly every longer word new).
    #[arg(long, value_enum, default_value = "zipf")]
    text: data::TextModel,
    /// Only these workloads (ids such as W1,W3-1KiB).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Only these systems (mnemo, postgres, redis-always, redis-everysec); peers not listed
    /// are not started. Default: all.
    #[arg(long, value_delimiter = ',')]
    systems: Vec<String>,
    /// The mnemo binary (default: `mnemo` next to this binary).
    #[arg(long)]
    mnemo_bin: Option<PathBuf>,
    /// Write the results between the bench markers of this markdown file.
    #[arg(long)]
    write_docs: Option<PathBuf>,
}

pub(crate) fn machine() -> String {
    let sh = |c: &str| {
        std::process::Command::new("sh")
            .args(["-c", c])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    format!(
        "{} cores ({}), {} GiB RAM, kernel {}, data on {}",
        sh("nproc"),
        sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs"),
        sh("free -g | awk '/Mem:/{print $2}'"),
        sh("uname -r"),
        sh("df -hT /tmp | awk 'NR==2{print $2\" \"$1}'"),
    )
}

async fn compare(args: CompareArgs) -> anyhow::Result<()> {
    let spec = data::DataSpec {
        conversations: args
            .conversations
            .unwrap_or(if args.quick { 300 } else { 10_000 }),
        kv_keys_1k: if args.quick { 2_000 } else { 10_000 },
        kv_keys_64k: if args.quick { 200 } else { 1_000 },
        seed: 42,
        text: args.text,
    };
    let seconds = args.seconds.unwrap_or(if args.quick { 1 } else { 8 });
    let settle = args.settle.unwrap_or(if args.quick { 3 } else { 30 });
    let settle_max = args
        .settle_max
        .unwrap_or(if args.quick { 30 } else { 900 })
        .max(settle);
    let mnemo_bin = match args.mnemo_bin.clone() {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("mnemo"),
    };
    let started = Instant::now();
    eprintln!("starting systems…");
    let wanted = |name: &str| args.systems.is_empty() || args.systems.iter().any(|s| s == name);
    let logs = peers::LogDir::create()?;
    let mut servers = Vec::new();
    let mut systems: Vec<Arc<dyn System>> = Vec::new();
    if wanted("mnemo") {
        let m = peers::start_mnemo(&mnemo_bin, &logs)?;
        systems.push(Arc::new(systems::Mnemo::new(format!(
            "127.0.0.1:{}",
            m.port
        ))));
        servers.push(m);
    }
    if wanted("postgres") {
        let pg = peers::start_postgres(&logs)?;
        systems.push(Arc::new(systems::Postgres {
            conn: format!("host=127.0.0.1 port={} user=bench dbname=postgres", pg.port),
        }));
        servers.push(pg);
    }
    for fsync in ["always", "everysec"] {
        if wanted(&format!("redis-{fsync}")) {
            let r = peers::start_redis(fsync, &logs)?;
            systems.push(Arc::new(systems::Redis {
                label: r.name.clone(),
                url: format!("redis://127.0.0.1:{}/", r.port),
            }));
            servers.push(r);
        }
    }
    let measured = measure(&args, &spec, &systems, seconds, settle, settle_max).await;
    let (samples, rested) = match measured {
        Ok(m) => m,
        Err(e) => {
            let states: Vec<String> = servers.iter_mut().map(|s| s.diagnose()).collect();
            return Err(e.context(format!(
                "server states:\n  {}\nlogs kept in {}",
                states.join("\n  "),
                logs.path.display()
            )));
        }
    };
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let mut section = format!(
        "## Side by side with PostgreSQL and Redis\n\n\
         Command: `{command}` (wall time {:.0} s)\n\n\
         Machine: {}. Versions: {}; {}; mnemo {}.\n\n\
         Data set: {} conversations of 20–200 items (user messages log-normal, median {} B; \
         assistant messages median {} B; σ = 0.6; {}), {} KV keys of 1 KiB and {} of 64 KiB, \
         loaded into every system, then `sync` and {:.0} s of rest ({}). {} s per run, one \
         connection per client.\n",
        started.elapsed().as_secs_f64(),
        machine(),
        peers::postgres_version(),
        peers::redis_version(),
        env!("CARGO_PKG_VERSION"),
        spec.conversations,
        data::USER_MEDIAN,
        data::ASSISTANT_MEDIAN,
        spec.text.describe(),
        spec.kv_keys_1k,
        spec.kv_keys_64k,
        rested.waited.as_secs_f64(),
        if rested.quiet {
            format!(
                "at least {settle} s, then until the machine's CPU was at most {:.0} % busy over 2 s",
                QUIET_CPU * 100.0
            )
        } else {
            format!(
                "the machine was still more than {:.0} % busy when the {settle_max} s limit ended it",
                QUIET_CPU * 100.0
            )
        },
        seconds,
    );
    section.push_str(&report::goals(&samples));
    section.push_str(&report::tables(&samples, &args.clients));
    println!("{section}");
    if let Some(path) = args.write_docs {
        report::write_docs(&path, &section)?;
        eprintln!("wrote {}", path.display());
    }
    drop(servers);
    logs.remove();
    Ok(())
}

/// Loads every system, rests until the machine is idle, then runs the workloads.
async fn measure(
    args: &CompareArgs,
    spec: &data::DataSpec,
    systems: &[Arc<dyn System>],
    seconds: u64,
    settle: u64,
    settle_max: u64,
) -> anyhow::Result<(Vec<run::Sample>, quiet::Rested)> {
    let style =
        ProgressStyle::with_template("{prefix:>16} [{bar:40}] {pos}/{len} {msg} ({elapsed})")?
            .progress_chars("=> ");
    for s in systems {
        let pb = ProgressBar::new(spec.conversations as u64)
            .with_style(style.clone())
            .with_prefix(format!("load {}", s.name()));
        s.load(spec, &pb)
            .await
            .with_context(|| format!("loading {}", s.name()))?;
        pb.finish_with_message("loaded");
    }
    // Let every system finish the background work of the load (checkpoints, AOF writes,
    // memtable flushes, compaction) and the kernel write back dirty pages, so the first
    // workload does not pay for it: on ext4 a small fsync waits for other files' dirty data.
    eprintln!("settling for {settle}–{settle_max} s after the load, until the CPU is idle…");
    let _ = std::process::Command::new("sync").status();
    let rested = quiet::rest(
        Duration::from_secs(settle),
        Duration::from_secs(settle_max),
        QUIET_CPU,
    )
    .await;
    let _ = std::process::Command::new("sync").status();
    eprintln!(
        "rested {:.0} s ({})",
        rested.waited.as_secs_f64(),
        if rested.quiet { "quiet" } else { "still busy" }
    );
    let workloads: Vec<&run::Workload> = run::WORKLOADS
        .iter()
        .filter(|w| args.only.is_empty() || args.only.iter().any(|o| o == w.id))
        .collect();
    let total: usize = workloads
        .iter()
        .map(|w| (1 + w.peers.len()) * args.clients.len())
        .sum();
    let pb = ProgressBar::new(total as u64)
        .with_style(style)
        .with_prefix("workloads");
    let mut samples = Vec::new();
    for w in &workloads {
        for name in std::iter::once("mnemo").chain(w.peers.iter().copied()) {
            let Some(sys) = systems.iter().find(|s| s.name() == name) else {
                continue;
            };
            for &c in &args.clients {
                pb.set_message(format!("{} {} ×{}", w.id, name, c));
                let s = run::run(sys.as_ref(), w, spec, c, Duration::from_secs(seconds)).await?;
                samples.push(s);
                pb.inc(1);
            }
        }
    }
    pb.finish_with_message("done");
    Ok((samples, rested))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Compare(a) => compare(a).await,
        Command::Load(a) => load::run(a).await,
        Command::Sql(a) => sqlbench::run(a).await,
        Command::Export(a) => exportbench::run(a).await,
    }
}
