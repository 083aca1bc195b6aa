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
//!   concatenated weight; biases, GELU, residuals and LayerNorm are applied in place by the
//!   kernels in `kernels.rs`.

use std::collections::HashMap;

use candle_core::{Device, Storage, Tensor};

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

struct Layer {
    /// `[3 * hidden, hidden]`: query, key, value weights stacked.
    qkv: Tensor,
    qkv_bias: Vec<f32>,
    attn_out: Tensor,
    attn_out_bias: Vec<f32>,
    attn_norm: (Vec<f32>, Vec<f32>),
    ffn_in: Tensor,
    ffn_in_bias: Vec<f32>,
    ffn_out: Tensor,
    ffn_out_bias: Vec<f32>,
    ffn_norm: (Vec<f32>, Vec<f32>),
}

/// BERT encoder weights.
pub(crate) struct Encoder {
    hidden: usize,
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

/// Reads named tensors, with or without a `bert.` prefix, checking their shapes.
struct Weights {
    tensors: HashMap<String, Tensor>,
    prefix: &'static str,
}

impl Weights {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor, EmbedError> {
        let full = format!("{}{name}", self.prefix);
        let t = self
            .tensors
            .get(&full)
            .ok_or_else(|| EmbedError::Weights(format!("missing tensor {full}")))?;
        if t.dims() != shape {
            return Err(EmbedError::Weights(format!(
                "tensor {full} has shape {:?}, expected {shape:?}",
                t.dims()
            )));
        }
        Ok(t.to_dtype(candle_core::DType::F32)?.contiguous()?)
    }

    fn vec(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, EmbedError> {
        Ok(self.tensor(name, shape)?.flatten_all()?.to_vec1::<f32>()?)
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
        tensors: HashMap<String, Tensor>,
        max_positions: usize,
    ) -> Result<Encoder, EmbedError> {
        let prefix = if tensors.contains_key("bert.embeddings.word_embeddings.weight") {
            "bert."
        } else {
            ""
        };
        let w = Weights { tensors, prefix };
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
            let qkv = Tensor::cat(
                &[
                    w.tensor(&part("query.weight"), &[h, h])?,
                    w.tensor(&part("key.weight"), &[h, h])?,
                    w.tensor(&part("value.weight"), &[h, h])?,
                ],
                0,
            )?;
            let mut qkv_bias = w.vec(&part("query.bias"), &[h])?;
            qkv_bias.extend(w.vec(&part("key.bias"), &[h])?);
            qkv_bias.extend(w.vec(&part("value.bias"), &[h])?);
            layers.push(Layer {
                qkv: qkv.t()?.contiguous()?,
                qkv_bias,
                attn_out: w
                    .tensor(&format!("{p}.attention.output.dense.weight"), &[h, h])?
                    .t()?
                    .contiguous()?,
                attn_out_bias: w.vec(&format!("{p}.attention.output.dense.bias"), &[h])?,
                attn_norm: w.norm(&format!("{p}.attention.output.LayerNorm"), h)?,
                ffn_in: w
                    .tensor(&format!("{p}.intermediate.dense.weight"), &[inter, h])?
                    .t()?
                    .contiguous()?,
                ffn_in_bias: w.vec(&format!("{p}.intermediate.dense.bias"), &[inter])?,
                ffn_out: w
                    .tensor(&format!("{p}.output.dense.weight"), &[h, inter])?
                    .t()?
                    .contiguous()?,
                ffn_out_bias: w.vec(&format!("{p}.output.dense.bias"), &[h])?,
                ffn_norm: w.norm(&format!("{p}.output.LayerNorm"), h)?,
            });
        }
        Ok(Encoder {
            hidden: h,
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
        let zeros = vec![0.0f32; total * h];
        let (g, b) = &self.embed_norm;
        kernels::add_bias_layer_norm(&mut x, &zeros, &zeros[..h], g, b, self.eps);
        let mut x = Tensor::from_vec(x, (total, h), &Device::Cpu)?;

        for layer in &self.layers {
            let qkv = x.matmul(&layer.qkv)?;
            let ctx = with_slice(&qkv, |qkv| {
                kernels::attention(qkv, &layer.qkv_bias, lens, self.heads)
            })?;
            drop(qkv);
            let ctx = Tensor::from_vec(ctx, (total, h), &Device::Cpu)?;
            let mut attn = ctx
                .matmul(&layer.attn_out)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            with_slice(&x, |residual| {
                let (g, b) = &layer.attn_norm;
                kernels::add_bias_layer_norm(
                    &mut attn,
                    residual,
                    &layer.attn_out_bias,
                    g,
                    b,
                    self.eps,
                )
            })?;
            let attn = Tensor::from_vec(attn, (total, h), &Device::Cpu)?;

            let mut inter = into_vec(attn.matmul(&layer.ffn_in)?)?;
            kernels::bias_gelu(&mut inter, &layer.ffn_in_bias);
            let inter = Tensor::from_vec(inter, (total, layer.ffn_in_bias.len()), &Device::Cpu)?;
            let mut out = into_vec(inter.matmul(&layer.ffn_out)?)?;
            with_slice(&attn, |residual| {
                let (g, b) = &layer.ffn_norm;
                kernels::add_bias_layer_norm(
                    &mut out,
                    residual,
                    &layer.ffn_out_bias,
                    g,
                    b,
                    self.eps,
                )
            })?;
            x = Tensor::from_vec(out, (total, h), &Device::Cpu)?;
        }

        with_slice(&x, |x| {
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
            pooled
        })
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

/// Calls `f` with the contiguous `f32` data of a CPU tensor.
fn with_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R, EmbedError> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Err(EmbedError::Weights("tensor not on the CPU".into()));
    };
    let data = cpu.as_slice::<f32>()?;
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| EmbedError::Weights("tensor not contiguous".into()))?;
    Ok(f(&data[start..end]))
}

/// The data of a contiguous CPU tensor as a `Vec` (a copy).
fn into_vec(t: Tensor) -> Result<Vec<f32>, EmbedError> {
    with_slice(&t, <[f32]>::to_vec)
}
