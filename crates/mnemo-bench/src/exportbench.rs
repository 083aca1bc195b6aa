//! `mnemo-bench export`: `mnemo export` of every item (consented, scrubbed, pseudonymised,
//! Parquet) beside PostgreSQL 15's `COPY (SELECT …) TO STDOUT` of the same rows, written to a
//! local file as `psql \copy` would; rows/s, MB/s and the export's peak memory.

use crate::http::Client;
use crate::peers;
use crate::sqlbench::{load_mnemo, load_pg, pg, plan, ITEMS_PER_CONVERSATION};
use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Options of `mnemo-bench export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Small data set (a smoke test of the harness).
    #[arg(long)]
    quick: bool,
    /// Items in all (default 1,000,000; quick 20,000), besides 10,000 items with vectors.
    #[arg(long)]
    items: Option<usize>,
    /// The mnemo binary (default: beside this one).
    #[arg(long)]
    mnemo_bin: Option<PathBuf>,
    /// Write the result section into this markdown file (between `bench-export` markers).
    #[arg(long)]
    write_docs: Option<PathBuf>,
}

const PG_COPY: &str = "COPY (SELECT 'default' AS tenant, user_id, conversation_id, item_id, seq, \
    role, type, text, created_at FROM items) TO STDOUT (FORMAT csv)";

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

pub async fn run(args: ExportArgs) -> anyhow::Result<()> {
    let items = args
        .items
        .unwrap_or(if args.quick { 20_000 } else { 1_000_000 });
    let mnemo_bin = match args.mnemo_bin.clone() {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("mnemo"),
    };
    let started = Instant::now();
    let logs = peers::LogDir::create()?;
    let m = peers::start_mnemo(&mnemo_bin, &logs)?;
    let p = peers::start_postgres(&logs)?;
    let authority = format!("127.0.0.1:{}", m.port);
    let conn = format!("host=127.0.0.1 port={} user=bench dbname=postgres", p.port);
    let convs = Arc::new(plan(items));
    let total_items = (convs.len() * ITEMS_PER_CONVERSATION) as u64;
    let style =
        ProgressStyle::with_template("{msg:>18} [{bar:40}] {pos}/{len} conversations {elapsed}")?;
    let pb = ProgressBar::new(convs.len() as u64)
        .with_style(style.clone())
        .with_message("loading mnemo");
    load_mnemo(&authority, &convs, &pb).await?;
    pb.finish();
    let pb = ProgressBar::new(convs.len() as u64)
        .with_style(style)
        .with_message("loading postgres");
    load_pg(&conn, &convs, &pb).await?;
    pb.finish();
    // Every user consents (the default policy is opt-in).
    let users: BTreeSet<&str> = convs.iter().map(|c| c.user.as_str()).collect();
    let mut client = Client::connect(&authority).await?;
    for u in &users {
        client
            .send(
                "PUT",
                &format!("/v1/admin/users/{u}/consent"),
                Bytes::from(json!({"research": true}).to_string()),
            )
            .await?;
    }
    let _ = std::process::Command::new("sync").status();
    tokio::time::sleep(Duration::from_secs(if args.quick { 1 } else { 20 })).await;

    // mnemo: the command beside the running server, under /usr/bin/time for its peak RSS.
    let out_dir = logs.path.join("dataset");
    let data_dir = m.dir().join("data");
    let t = Instant::now();
    let run = std::process::Command::new("/usr/bin/time")
        .args(["-f", "maxrss_kib=%M"])
        .arg(&mnemo_bin)
        .args(["export", "--tenant", "default", "--data-dir"])
        .arg(&data_dir)
        .arg("--to")
        .arg(&out_dir)
        .output()
        .context("running /usr/bin/time mnemo export (Debian package `time`)")?;
    let mnemo_secs = t.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&run.stderr);
    anyhow::ensure!(run.status.success(), "mnemo export failed: {stderr}");
    let outcome: serde_json::Value = serde_json::from_slice(&run.stdout)?;
    let exported = outcome["items"].as_u64().unwrap_or(0);
    anyhow::ensure!(
        exported == total_items,
        "mnemo exported {exported} items of {total_items}"
    );
    let rss_kib: f64 = stderr
        .lines()
        .find_map(|l| l.strip_prefix("maxrss_kib="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    let mnemo_bytes = dir_bytes(&out_dir);

    // PostgreSQL: COPY of the same rows to a local file.
    let pg_file = logs.path.join("copy.csv");
    let pgc = pg(&conn).await?;
    let t = Instant::now();
    let stream = pgc.copy_out(PG_COPY).await?;
    futures::pin_mut!(stream);
    let mut file = std::io::BufWriter::new(std::fs::File::create(&pg_file)?);
    let mut pg_bytes = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        pg_bytes += chunk.len() as u64;
        file.write_all(&chunk)?;
    }
    file.flush()?;
    file.get_ref().sync_all()?;
    let pg_secs = t.elapsed().as_secs_f64();
    let pg_rows = pgc
        .query_one("SELECT count(*) FROM items", &[])
        .await?
        .get::<_, i64>(0);

    let mb = |b: u64| b as f64 / 1e6;
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let out = format!(
        "## Research export side by side with PostgreSQL's COPY\n\n\
         Command: `{command}` (wall time {:.0} s)\n\n\
         Machine: {}. {}; mnemo {}.\n\n\
         Data: {total_items} items in {} conversations (the SQL benchmark's data set), every \
         user consenting. mnemo: `mnemo export --data-dir … --to DIR --tenant default` beside \
         the running server: a checkpoint reader of the store, consent per conversation, \
         HMAC pseudonyms for user, conversation, item and parent ids, scrubbing of every \
         text, Parquet with zstd, files committed by a manifest. PostgreSQL: `{PG_COPY}` \
         through tokio-postgres into a local file ({pg_rows} rows), the `psql \\copy` path: no \
         scrubbing, no pseudonyms, CSV.\n\n\
         | measure | mnemo export | PostgreSQL COPY | mnemo/PostgreSQL |\n|---|---:|---:|---:|\n\
         | rows/s | {:.0} | {:.0} | {:.2}× |\n\
         | output MB/s | {:.1} | {:.1} | {:.2}× |\n\
         | seconds | {:.1} | {:.1} | |\n\
         | output size, MB | {:.1} (Parquet, zstd) | {:.1} (CSV) | |\n\
         | peak RSS of the export process, MiB | {:.0} | | |\n",
        started.elapsed().as_secs_f64(),
        crate::machine(),
        peers::postgres_version(),
        env!("CARGO_PKG_VERSION"),
        convs.len(),
        exported as f64 / mnemo_secs,
        pg_rows as f64 / pg_secs,
        (exported as f64 / mnemo_secs) / (pg_rows as f64 / pg_secs),
        mb(mnemo_bytes) / mnemo_secs,
        mb(pg_bytes) / pg_secs,
        (mb(mnemo_bytes) / mnemo_secs) / (mb(pg_bytes) / pg_secs),
        mnemo_secs,
        pg_secs,
        mb(mnemo_bytes),
        mb(pg_bytes),
        rss_kib / 1024.0,
    );
    println!("{out}");
    if let Some(path) = &args.write_docs {
        crate::report::write_block(path, "bench-export", &out)?;
        eprintln!("wrote {}", path.display());
    }
    drop(m);
    drop(p);
    logs.remove();
    Ok(())
}
