//! Search settings of `mnemo serve`: the built-in embedder. Command-line flags and
//! environment variables (through clap) over the `[search]` section of the config file.

use anyhow::Context;
use clap::Args;
use mnemo_index::embed::EmbedderConfig;
use mnemo_index::SearchOptions;
use serde::Deserialize;
use std::path::PathBuf;

/// Search flags of `mnemo serve` (each also settable in the config file's `[search]` section
/// and through its environment variable).
#[derive(Args, Debug, Default)]
pub struct SearchArgs {
    /// Directory of the sentence-embedding model (`config.json`, `model.safetensors`,
    /// `tokenizer.json`; `scripts/fetch-model.sh` fetches all-MiniLM-L6-v2). Enables the
    /// built-in embedder: items and memory values without an `embedding` get one in the
    /// background, and text queries also work in vector and hybrid modes. Default: none.
    #[arg(long, env = "MNEMO_EMBEDDING_MODEL")]
    embedding_model: Option<PathBuf>,
    /// Threads that embed in the background (default 1, which leaves the other cores to
    /// serving requests).
    #[arg(long, env = "MNEMO_EMBEDDING_THREADS")]
    embedding_threads: Option<usize>,
}

/// The `[search]` section of the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchFile {
    embedding_model: Option<PathBuf>,
    embedding_threads: Option<usize>,
}

/// Resolves flags over the config file and loads the embedding model, if one is configured.
pub async fn build(args: SearchArgs, file: SearchFile) -> anyhow::Result<SearchOptions> {
    let model = args
        .embedding_model
        .or(file.embedding_model)
        .filter(|p| !p.as_os_str().is_empty());
    let threads = args
        .embedding_threads
        .or(file.embedding_threads)
        .unwrap_or(1);
    let Some(dir) = model else {
        tracing::info!("no --embedding-model: vectors come from clients only");
        return Ok(SearchOptions::default());
    };
    let embedder = tokio::task::spawn_blocking(move || EmbedderConfig::load(&dir, threads))
        .await
        .context("loading the embedding model")?
        .context("setting up the built-in embedder (--embedding-model)")?;
    Ok(SearchOptions {
        embedder: Some(embedder),
        ..SearchOptions::default()
    })
}
