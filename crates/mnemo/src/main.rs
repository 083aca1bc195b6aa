//! The `mnemo` command: `mnemo serve` runs the database server; `mnemo keys` manages API
//! keys; `mnemo export` writes a research dataset.

mod auth_config;
mod export;
mod keys;
mod pg;
mod replicate;
mod search_config;
mod serve;

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
    /// Keep a consistent replica of a live store (once, or `--watch`).
    Replicate(replicate::ReplicateArgs),
    /// Turn a replica into a writable store (disaster recovery).
    Promote(replicate::PromoteArgs),
}

/// mimalloc: the read path allocates and frees many short-lived buffers (blocks, rows,
/// responses) across threads, where glibc's allocator spent a fifth of the CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
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
    match cli.command {
        Command::Keys(args) => keys::run(args),
        Command::Serve(args) => runtime()?.block_on(serve::run(*args)),
        Command::Export(args) => runtime()?.block_on(export::run(*args)),
        Command::Replicate(args) => runtime()?.block_on(replicate::run(args)),
        Command::Promote(args) => runtime()?.block_on(replicate::promote(args)),
    }
}
