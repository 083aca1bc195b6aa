//! # mnemo-embed
//!
//! mnemo's built-in sentence embedder: all-MiniLM-L6-v2 (BERT, 6 layers, 384 dimensions)
//! on the CPU. Hugging Face `tokenizers` splits the text and an encoder written for
//! throughput (`model.rs`: unpadded batches, fused kernels, gemm's matrix kernels with
//! AVX-512 or AVX2 picked at run time) computes the vectors.
//!
//! An [`Embedder`] is loaded once from a directory holding the model's `config.json`,
//! `model.safetensors` and `tokenizer.json` (`scripts/fetch-model.sh` puts them in
//! `models/all-minilm-l6-v2`). [`Embedder::embed`] turns a batch of texts into unit-length
//! 384-dimensional vectors, the same vectors sentence-transformers computes for this model:
//! mean of the last hidden states over the real (non-padding) tokens, then L2 normalisation.
//! The cosine similarity of two embeddings is therefore their dot product.
//!
//! Texts longer than [`MAX_TOKENS`] tokens (special tokens included) are truncated, as
//! sentence-transformers does for this model.
//!
//! **Threads.** [`Embedder::embed`] runs on the current rayon thread pool: the global one
//! (sized by `RAYON_NUM_THREADS`, default one thread per core), or the pool whose
//! `install` it is called in. Batches of a few dozen texts use the cores well; a single
//! short text does not.
//!
//! ```no_run
//! use mnemo_embed::Embedder;
//!
//! let embedder = Embedder::load(std::path::Path::new("models/all-minilm-l6-v2"))?;
//! let vectors = embedder.embed(&["The weather is lovely today.", "It's so sunny outside!"])?;
//! assert_eq!(vectors[0].len(), embedder.dimension());
//! let cosine: f32 = vectors[0].iter().zip(&vectors[1]).map(|(a, b)| a * b).sum();
//! assert!(cosine > 0.5);
//! # Ok::<(), mnemo_embed::EmbedError>(())
//! ```

use std::path::{Path, PathBuf};

mod kernels;
mod model;

use model::{Config, Encoder};

use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

/// Longest input, in tokens including `[CLS]` and `[SEP]`, that the embedder reads; the rest
/// of a longer text is ignored.
///
/// 256 is sentence-transformers' `max_seq_length` for all-MiniLM-L6-v2 (the model was trained
/// on at most 128 tokens; its position table has 512 entries). The `tokenizer.json` shipped
/// with the model says 128, which this crate overrides so that its embeddings match
/// sentence-transformers'.
pub const MAX_TOKENS: usize = 256;

/// Most tokens encoded in one pass; a bigger batch is split (by length) into passes. Bounds
/// the working memory of one call to about 4096 × 3456 floats (54 MiB).
const CHUNK_TOKENS: usize = 4096;

/// Why loading the model or embedding texts failed.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// A model file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// `config.json` is not a BERT configuration.
    #[error("invalid model config {path}: {source}")]
    Config {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: serde_json::Error,
    },
    /// The tokenizer could not be loaded or failed on an input.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The weights do not fit the configuration, or the model is not one this crate runs.
    #[error("model: {0}")]
    Weights(String),
}

/// A loaded sentence embedder. Cheap to share: `&Embedder` is `Send + Sync` and
/// [`Embedder::embed`] takes `&self`, so one instance serves every thread.
pub struct Embedder {
    encoder: Encoder,
    tokenizer: Tokenizer,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("dimension", &self.dimension())
            .finish_non_exhaustive()
    }
}

impl Embedder {
    /// Loads the model from `dir`, which must hold `config.json`, `model.safetensors` (F32,
    /// tensor names with or without a `bert.` prefix) and `tokenizer.json`.
    ///
    /// Any BERT encoder with `"hidden_act": "gelu"` and absolute positions loads (other
    /// sentence-transformers models with mean pooling give their vectors too); the weights
    /// stay in memory as F32 (about 90 MB for all-MiniLM-L6-v2). Takes a fraction of a second.
    pub fn load(dir: &Path) -> Result<Embedder, EmbedError> {
        let config_path = dir.join("config.json");
        let config_text =
            std::fs::read_to_string(&config_path).map_err(|source| EmbedError::Io {
                path: config_path.clone(),
                source,
            })?;
        let config: Config =
            serde_json::from_str(&config_text).map_err(|source| EmbedError::Config {
                path: config_path.clone(),
                source,
            })?;
        config.check().map_err(|e| {
            EmbedError::Weights(format!("{}: unsupported {e}", config_path.display()))
        })?;

        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer_bytes = std::fs::read(&tokenizer_path).map_err(|source| EmbedError::Io {
            path: tokenizer_path.clone(),
            source,
        })?;
        let mut tokenizer = Tokenizer::from_bytes(&tokenizer_bytes)
            .map_err(|e| EmbedError::Tokenizer(format!("{}: {e}", tokenizer_path.display())))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: MAX_TOKENS.min(config.max_position_embeddings),
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;

        let weights_path = dir.join("model.safetensors");
        let weights = std::fs::read(&weights_path).map_err(|source| EmbedError::Io {
            path: weights_path,
            source,
        })?;
        let encoder = Encoder::new(&config, &weights, MAX_TOKENS)?;
        Ok(Embedder { encoder, tokenizer })
    }

    /// Length of every embedding: 384 for all-MiniLM-L6-v2.
    pub fn dimension(&self) -> usize {
        self.encoder.hidden()
    }

    /// Number of tokens the model reads for `text`, `[CLS]` and `[SEP]` included, after
    /// truncation to [`MAX_TOKENS`]. The cost of embedding a text grows with it.
    pub fn count_tokens(&self, text: &str) -> Result<usize, EmbedError> {
        self.tokenizer
            .encode_fast(text, true)
            .map(|e| e.len())
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))
    }

    /// Embeds each text; the result has one unit-length vector per text, in input order.
    ///
    /// Any text is accepted, including the empty string; text past [`MAX_TOKENS`] tokens is
    /// ignored. A text's embedding does not depend on the other texts of the batch (up to
    /// float rounding, ~1e-6). Batches of a few dozen texts are much faster per text than
    /// one text at a time.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let encodings = texts
            .iter()
            .map(|t| self.tokenizer.encode_fast(*t, true))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        // Texts longest first, cut into chunks of at most CHUNK_TOKENS tokens: bounds memory
        // for big inputs and keeps a chunk's sequences of similar length, which balances the
        // per-sequence attention work across threads.
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(encodings[i].len()));
        let dim = self.dimension();
        let mut out = vec![Vec::new(); texts.len()];
        let mut rest = order.as_slice();
        while !rest.is_empty() {
            let mut tokens = 0;
            let take = rest
                .iter()
                .take_while(|&&i| {
                    tokens += encodings[i].len();
                    tokens <= CHUNK_TOKENS
                })
                .count()
                .max(1);
            let (chunk, tail) = rest.split_at(take);
            rest = tail;
            let lens: Vec<usize> = chunk.iter().map(|&i| encodings[i].len()).collect();
            let ids: Vec<u32> = chunk
                .iter()
                .flat_map(|&i| encodings[i].get_ids().iter().copied())
                .collect();
            let pooled = self.encoder.mean_pooled(&ids, &lens)?;
            for (&i, v) in chunk.iter().zip(pooled.chunks_exact(dim)) {
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                out[i] = v.iter().map(|x| x / norm).collect();
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedder_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Embedder>();
    }
}
