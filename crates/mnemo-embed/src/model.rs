//! The BERT encoder of all-MiniLM-L6-v2, for inference on packed sequences.
//!
//! Same computation as Hugging Face's `BertModel` (post-LayerNorm, exact GELU, absolute
//! positions, token type 0), organised for throughput on a CPU:
//!
//! - **No padding.** The tokens of all sequences of a batch are stacked into one
//!   `[tokens, hidden]` matrix, so every projection and feed-forward product (nearly all of
//!   the work) runs once per real token, as one large matrix product. Only attention needs
//!   sequence boundaries, and it gets them as lengths: there is no attention mask to build or
//!   apply.
//! - **Fused projections and element-wise work.** Q, K and V come from one product with a
//!   concatenated weight; the output projections accumulate onto the residual stream in
//!   place; biases, GELU and LayerNorm are applied in place by the kernels in `kernels.rs`.
//!   Four buffers per batch, allocated once, no copies between the steps.
//!
//! The products run on gemm (the matrix kernels candle uses).

use crate::kernels::{self, Heads};
use crate::EmbedError;

/// The fields of `config.json` the encoder uses.
#[derive(Debug, Clone, serde::Deserialize)]
pub(crate) struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub position_embedding_type: Option<String>,
}

impl Config {
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.hidden_act != "gelu" {
            return Err(format!("hidden_act {:?} (only \"gelu\")", self.hidden_act));
        }
        if let Some(kind) = &self.position_embedding_type {
            if kind != "absolute" {
                return Err(format!(
                    "position_embedding_type {kind:?} (only \"absolute\")"
                ));
            }
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.type_vocab_size == 0 {
            return Err("type_vocab_size 0".into());
        }
        Ok(())
    }
}

/// Weight matrices are stored transposed, `[in, out]` row-major, so a layer computes
/// `x · W` with `x` `[tokens, in]`.
struct Layer {
    /// `[hidden, 3 * hidden]`: query, key and value weights side by side.
    qkv: Vec<f32>,
    qkv_bias: Vec<f32>,
    attn_out: Vec<f32>,
    attn_out_bias: Vec<f32>,
    attn_norm: (Vec<f32>, Vec<f32>),
    ffn_in: Vec<f32>,
    ffn_in_bias: Vec<f32>,
    ffn_out: Vec<f32>,
    ffn_out_bias: Vec<f32>,
    ffn_norm: (Vec<f32>, Vec<f32>),
}

/// BERT encoder weights.
pub(crate) struct Encoder {
    hidden: usize,
    intermediate: usize,
    heads: Heads,
    eps: f32,
    vocab: usize,
    max_positions: usize,
    word: Vec<f32>,
    /// Position embeddings with the token-type-0 embedding already added.
    position: Vec<f32>,
    embed_norm: (Vec<f32>, Vec<f32>),
    layers: Vec<Layer>,
}

/// Reads named F32 tensors of a safetensors file, with or without a `bert.` prefix, checking
/// their shapes.
struct Weights<'a> {
    file: safetensors::SafeTensors<'a>,
    prefix: &'static str,
}

impl Weights<'_> {
    fn vec(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, EmbedError> {
        let full = format!("{}{name}", self.prefix);
        let t = self
            .file
            .tensor(&full)
            .map_err(|e| EmbedError::Weights(format!("tensor {full}: {e}")))?;
        if t.shape() != shape {
            return Err(EmbedError::Weights(format!(
                "tensor {full} has shape {:?}, expected {shape:?}",
                t.shape()
            )));
        }
        if t.dtype() != safetensors::Dtype::F32 {
            return Err(EmbedError::Weights(format!(
                "tensor {full} is {:?}; only F32 weights are supported",
                t.dtype()
            )));
        }
        Ok(t.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    /// A linear layer's `[out, in]` weight, transposed to `[in, out]`.
    fn transposed(&self, name: &str, out: usize, inp: usize) -> Result<Vec<f32>, EmbedError> {
        let w = self.vec(name, &[out, inp])?;
        let mut t = vec![0.0f32; w.len()];
        for (o, row) in w.chunks_exact(inp).enumerate() {
            for (i, &x) in row.iter().enumerate() {
                t[i * out + o] = x;
            }
        }
        Ok(t)
    }

    fn norm(&self, name: &str, hidden: usize) -> Result<(Vec<f32>, Vec<f32>), EmbedError> {
        Ok((
            self.vec(&format!("{name}.weight"), &[hidden])?,
            self.vec(&format!("{name}.bias"), &[hidden])?,
        ))
    }
}

impl Encoder {
    /// Builds the encoder from the tensors of `model.safetensors`.
    pub(crate) fn new(
        config: &Config,
        safetensors: &[u8],
        max_positions: usize,
    ) -> Result<Encoder, EmbedError> {
        let file = safetensors::SafeTensors::deserialize(safetensors)
            .map_err(|e| EmbedError::Weights(format!("model.safetensors: {e}")))?;
        let prefix = if file
            .tensor("bert.embeddings.word_embeddings.weight")
            .is_ok()
        {
            "bert."
        } else {
            ""
        };
        let w = Weights { file, prefix };
        let h = config.hidden_size;
        let inter = config.intermediate_size;
        let word = w.vec("embeddings.word_embeddings.weight", &[config.vocab_size, h])?;
        let mut position = w.vec(
            "embeddings.position_embeddings.weight",
            &[config.max_position_embeddings, h],
        )?;
        let types = w.vec(
            "embeddings.token_type_embeddings.weight",
            &[config.type_vocab_size, h],
        )?;
        for row in position.chunks_exact_mut(h) {
            row.iter_mut().zip(&types[..h]).for_each(|(p, t)| *p += t);
        }
        let embed_norm = w.norm("embeddings.LayerNorm", h)?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            let part = |n: &str| format!("{p}.attention.self.{n}");
            // [hidden, 3 * hidden]: row i holds column i of Wq, Wk and Wv side by side.
            let (wq, wk, wv) = (
                w.transposed(&part("query.weight"), h, h)?,
                w.transposed(&part("key.weight"), h, h)?,
                w.transposed(&part("value.weight"), h, h)?,
            );
            let qkv: Vec<f32> = (0..h)
                .flat_map(|i| {
                    let row = i * h..(i + 1) * h;
                    wq[row.clone()]
                        .iter()
                        .chain(&wk[row.clone()])
                        .chain(&wv[row])
                        .copied()
                        .collect::<Vec<_>>()
                })
                .collect();
            let mut qkv_bias = w.vec(&part("query.bias"), &[h])?;
            qkv_bias.extend(w.vec(&part("key.bias"), &[h])?);
            qkv_bias.extend(w.vec(&part("value.bias"), &[h])?);
            layers.push(Layer {
                qkv,
                qkv_bias,
                attn_out: w.transposed(&format!("{p}.attention.output.dense.weight"), h, h)?,
                attn_out_bias: w.vec(&format!("{p}.attention.output.dense.bias"), &[h])?,
                attn_norm: w.norm(&format!("{p}.attention.output.LayerNorm"), h)?,
                ffn_in: w.transposed(&format!("{p}.intermediate.dense.weight"), inter, h)?,
                ffn_in_bias: w.vec(&format!("{p}.intermediate.dense.bias"), &[inter])?,
                ffn_out: w.transposed(&format!("{p}.output.dense.weight"), h, inter)?,
                ffn_out_bias: w.vec(&format!("{p}.output.dense.bias"), &[h])?,
                ffn_norm: w.norm(&format!("{p}.output.LayerNorm"), h)?,
            });
        }
        Ok(Encoder {
            hidden: h,
            intermediate: inter,
            heads: Heads {
                heads: config.num_attention_heads,
                head_dim: h / config.num_attention_heads,
            },
            eps: config.layer_norm_eps as f32,
            vocab: config.vocab_size,
            max_positions: max_positions.min(config.max_position_embeddings),
            word,
            position,
            embed_norm,
            layers,
        })
    }

    /// Width of the hidden states.
    pub(crate) fn hidden(&self) -> usize {
        self.hidden
    }

    /// Runs the encoder on packed sequences (`ids` holds the token ids of every sequence back
    /// to back, `lens` their lengths) and returns the mean of each sequence's last hidden
    /// states, `hidden` values per sequence.
    pub(crate) fn mean_pooled(&self, ids: &[u32], lens: &[usize]) -> Result<Vec<f32>, EmbedError> {
        let h = self.hidden;
        let total = ids.len();
        debug_assert_eq!(total, lens.iter().sum::<usize>());
        if let Some(&len) = lens.iter().find(|&&l| l > self.max_positions || l == 0) {
            return Err(EmbedError::Weights(format!(
                "sequence of {len} tokens (1..={} supported)",
                self.max_positions
            )));
        }

        // Embeddings: word + position (+ token type 0), then LayerNorm.
        let mut x = vec![0.0f32; total * h];
        let mut rows = x.chunks_exact_mut(h);
        for (seq, &len) in ids_by_sequence(ids, lens).zip(lens) {
            for (pos, &id) in seq.iter().enumerate().take(len) {
                let id = id as usize;
                if id >= self.vocab {
                    return Err(EmbedError::Weights(format!("token id {id} out of range")));
                }
                let row = rows.next().expect("one row per token");
                let word = &self.word[id * h..(id + 1) * h];
                let position = &self.position[pos * h..(pos + 1) * h];
                row.iter_mut()
                    .zip(word.iter().zip(position))
                    .for_each(|(r, (w, p))| *r = w + p);
            }
        }
        let (g, b) = &self.embed_norm;
        kernels::bias_layer_norm(&mut x, &vec![0.0; h], g, b, self.eps);

        let inter = self.intermediate;
        let mut qkv = vec![0.0f32; total * 3 * h];
        let mut ctx = vec![0.0f32; total * h];
        let mut act = vec![0.0f32; total * inter];
        for layer in &self.layers {
            kernels::matmul(&mut qkv, &x, &layer.qkv, (total, h, 3 * h), false);
            kernels::attention(&qkv, &layer.qkv_bias, lens, self.heads, &mut ctx);
            // x = LayerNorm(x + ctx · Wo + bo): the product accumulates onto the residual.
            kernels::matmul(&mut x, &ctx, &layer.attn_out, (total, h, h), true);
            let (g, b) = &layer.attn_norm;
            kernels::bias_layer_norm(&mut x, &layer.attn_out_bias, g, b, self.eps);
            kernels::matmul(&mut act, &x, &layer.ffn_in, (total, h, inter), false);
            kernels::bias_gelu(&mut act, &layer.ffn_in_bias);
            kernels::matmul(&mut x, &act, &layer.ffn_out, (total, inter, h), true);
            let (g, b) = &layer.ffn_norm;
            kernels::bias_layer_norm(&mut x, &layer.ffn_out_bias, g, b, self.eps);
        }

        let mut pooled = vec![0.0f32; lens.len() * h];
        let mut start = 0;
        for (out, &len) in pooled.chunks_exact_mut(h).zip(lens) {
            for row in x[start * h..(start + len) * h].chunks_exact(h) {
                out.iter_mut().zip(row).for_each(|(o, v)| *o += v);
            }
            let inv = 1.0 / len as f32;
            out.iter_mut().for_each(|o| *o *= inv);
            start += len;
        }
        Ok(pooled)
    }
}

fn ids_by_sequence<'a>(ids: &'a [u32], lens: &'a [usize]) -> impl Iterator<Item = &'a [u32]> {
    let mut rest = ids;
    lens.iter().map(move |&len| {
        let (head, tail) = rest.split_at(len);
        rest = tail;
        head
    })
}
