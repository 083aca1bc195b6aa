//! The `mnemo` command: `mnemo serve` runs the database server; `mnemo keys` manages API
//! keys; `mnemo export` writes a research dataset; `mnemo sync` and `mnemo check` copy and
//! verify trees of objects (local directories, S3, Azure Blob).

mod auth_config;
mod cluster;
mod export;
mod keys;
mod pg;
mod replicate;
mod search_config;
mod serve;
mod sync;

use clap::{Parser, Subcommand};

/// mnemo: conversation history and memory database for AI assistants.
#[derive(Parser)]
#[command(name = "mnemo", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(Box<serve::ServeArgs>),
    /// Manage API keys (for `serve --auth keys`).
    Keys(keys::KeysArgs),
    /// Write a consented, de-identified research dataset (Parquet) from a store.
    Export(Box<export::ExportArgs>),
    /// Copy a tree of objects (directory, S3, Azure Blob) to another: what is missing or
    /// different; with --delete, also remove what the source lacks.
    Sync(Box<sync::SyncArgs>),
    /// Compare two trees of objects by size and content hash; exit 0 only when identical.
    Check(Box<sync::CheckArgs>),
    /// Keep a consistent replica of a live store (once, or `--watch`).
    Replicate(replicate::ReplicateArgs),
    /// Turn a replica into a writable store (disaster recovery).
    Promote(replicate::PromoteArgs),
    /// Inspect a cluster (`mnemo cluster status`).
    Cluster(cluster::ClusterCommand),
}

/// mimalloc: the read path allocates and frees many short-lived buffers (blocks, rows,
/// responses) across threads, where glibc's allocator spent a fifth of the CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<std::process::ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,slatedb=warn".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    };
    let done = |()| std::process::ExitCode::SUCCESS;
    match cli.command {
        Command::Keys(args) => keys::run(args).map(done),
        Command::Serve(args) => runtime()?.block_on(serve::run(*args)).map(done),
        Command::Export(args) => runtime()?.block_on(export::run(*args)).map(done),
        Command::Sync(args) => runtime()?.block_on(sync::run_sync(*args)),
        Command::Check(args) => runtime()?.block_on(sync::run_check(*args)),
        Command::Replicate(args) => runtime()?.block_on(replicate::run(args)).map(done),
        Command::Promote(args) => runtime()?.block_on(replicate::promote(args)).map(done),
        Command::Cluster(args) => runtime()?.block_on(cluster::run(args)).map(done),
    }
}
