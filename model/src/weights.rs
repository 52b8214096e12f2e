//! Host-side weights: named f32 tensors in Hugging Face naming, read from GGUF or safetensors.
//!
//! Everything converges on the HF layout (`model.layers.N.self_attn.q_proj.weight`, `[out, in]`
//! matrices, rotate-half RoPE), so one model implementation loads both sources.

use std::collections::BTreeMap;
use std::sync::Arc;

use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};

use crate::config::LlamaConfig;
use crate::gguf::{Gguf, GgufError};
use crate::quant::{BlockFormat, QuantMatrix};

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("{0}")]
    Gguf(#[from] GgufError),
    #[error("invalid safetensors: {0}")]
    Safetensors(String),
    #[error("tensor '{name}' has dtype {dtype}; supported are F32, F16 and BF16")]
    Dtype { name: String, dtype: String },
    #[error("tensor '{name}' has shape {got:?}, the config expects {expected:?}")]
    Shape { name: String, expected: Vec<usize>, got: Vec<usize> },
    #[error("tensor '{0}' is missing")]
    Missing(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

#[derive(Debug, Default, Clone)]
pub struct Weights {
    pub tensors: BTreeMap<String, HostTensor>,
    /// Matrices kept as the GGUF's blocks ([`Weights::from_gguf_blocks`]), in HF names and layout.
    pub quantized: BTreeMap<String, QuantMatrix>,
}

/// ggml's permutation of Q/K rows for its RoPE, undone: HF row `h*hd + j*hd/2 + i` is GGUF row `h*hd + 2i + j`.
/// `t` must have the shape the (validated) config expects: 2-D, rows a multiple of `2 * n_heads`.
fn unpermute_rows(t: &HostTensor, n_heads: usize) -> HostTensor {
    let (rows, cols) = (t.shape[0], t.shape[1]);
    let hd = rows / n_heads;
    let mut out = vec![0.0; t.data.len()];
    for dst in 0..rows {
        let src = ggml_row(dst, hd) * cols;
        out[dst * cols..(dst + 1) * cols].copy_from_slice(&t.data[src..src + cols]);
    }
    HostTensor { shape: t.shape.clone(), data: out }
}

/// The GGUF row that holds HF row `row` of a Q or K projection with heads of `hd` rows.
fn ggml_row(row: usize, hd: usize) -> usize {
    let (h, k) = (row / hd, row % hd);
    let (j, i) = (k / (hd / 2), k % (hd / 2));
    h * hd + 2 * i + j
}

impl Weights {
    /// Every matrix rounded to the blocks the GGUF of the base model has (Q8_0 embeddings, Q4_1
    /// projections; [`QuantMatrix::quantize`]), for the CPU pass of a model that comes without
    /// them. Matrices already in blocks, and any whose width is not a multiple of 32, stay.
    pub fn quantize_matrices(&mut self) -> Result<(), String> {
        let names: Vec<String> = self
            .tensors
            .iter()
            .filter(|(_, t)| t.shape.len() == 2)
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            let (rows, cols) = (self.tensors[&name].shape[0], self.tensors[&name].shape[1]);
            if !cols.is_multiple_of(crate::quant::BLOCK) {
                continue;
            }
            let format =
                if name.contains("embed_tokens") { BlockFormat::Q8_0 } else { BlockFormat::Q4_1 };
            let t = self.tensors.remove(&name).expect("listed above");
            let m = QuantMatrix::quantize(format, rows, cols, &t.data)
                .map_err(|e| format!("{name}: {e}"))?;
            self.quantized.insert(name, m);
        }
        Ok(())
    }

    /// Dequantizes every tensor of a llama GGUF into HF names and layout.
    pub fn from_gguf(g: &Gguf, cfg: &LlamaConfig) -> Result<Self, WeightsError> {
        Self::read_gguf(g, cfg, None)
    }

    /// As [`Weights::from_gguf`], but matrices in Q4_1 or Q8_0 stay in their blocks (in
    /// [`Weights::quantized`], pointing into `file`, the bytes `g` was parsed from); the rest is
    /// dequantized.
    pub fn from_gguf_blocks(
        g: &Gguf,
        file: &Arc<Vec<u8>>,
        cfg: &LlamaConfig,
    ) -> Result<Self, WeightsError> {
        Self::read_gguf(g, cfg, Some(file))
    }

    fn read_gguf(
        g: &Gguf,
        cfg: &LlamaConfig,
        blocks_in: Option<&Arc<Vec<u8>>>,
    ) -> Result<Self, WeightsError> {
        let mut tensors = BTreeMap::new();
        let mut quantized = BTreeMap::new();
        let expected: BTreeMap<String, Vec<usize>> = expected_shapes(cfg).into_iter().collect();
        for info in &g.tensors {
            let Some(hf_name) = hf_name(&info.name) else { continue };
            // Tensors this config does not use (extra layers, an untied head) are left out.
            let Some(want) = expected.get(&hf_name) else { continue };
            let shape = info.shape();
            if *want != shape {
                return Err(WeightsError::Shape {
                    name: hf_name,
                    expected: want.clone(),
                    got: shape,
                });
            }
            let heads = if info.name.ends_with("attn_q.weight") {
                Some(cfg.num_attention_heads)
            } else if info.name.ends_with("attn_k.weight") {
                Some(cfg.num_key_value_heads)
            } else {
                None
            };
            if let (Some(file), Some(format), &[rows, cols]) =
                (blocks_in, BlockFormat::from_gguf(info.ty), &shape[..])
                && cols.is_multiple_of(crate::quant::BLOCK)
            {
                let raw = g.tensor_raw(&info.name)?;
                // `g` borrows `file`: the tensor's place in it.
                let start = (raw.as_ptr() as usize).checked_sub(file.as_ptr() as usize);
                let range = start.map(|s| s..s + raw.len()).filter(|r| r.end <= file.len());
                let m = range
                    .ok_or_else(|| "the GGUF was not parsed from this buffer".to_string())
                    .and_then(|r| QuantMatrix::in_buffer(format, rows, cols, file.clone(), r))
                    .map_err(|e| {
                        WeightsError::Gguf(GgufError::Corrupt(format!("{}: {e}", info.name)))
                    })?;
                let m = match heads {
                    Some(h) => m.permute_rows(|row| ggml_row(row, rows / h)),
                    None => m,
                };
                quantized.insert(hf_name, m);
                continue;
            }
            let (shape, data) = g.tensor_f32(&info.name)?;
            let mut t = HostTensor { shape, data };
            if let Some(h) = heads {
                t = unpermute_rows(&t, h);
            }
            tensors.insert(hf_name, t);
        }
        let w = Self { tensors, quantized };
        w.check(cfg)?;
        Ok(w)
    }

    /// Reads one safetensors file (F32, F16, BF16, or our 8-bit storage: an I8 tensor `name` with
    /// its F16 scales in `name.q8_scale` (blocks of 32 along rows) or `name.q8_col_scale` (one per
    /// column)) into this map.
    pub fn add_safetensors(&mut self, bytes: &[u8]) -> Result<(), WeightsError> {
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| WeightsError::Safetensors(e.to_string()))?;
        for (name, view) in st.tensors() {
            if name.ends_with(Q8_SCALE_SUFFIX) || name.ends_with(Q8_COL_SCALE_SUFFIX) {
                continue; // read with its tensor
            }
            let raw = view.data();
            let data: Vec<f32> = match view.dtype() {
                Dtype::F32 => raw
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
                Dtype::F16 => {
                    raw.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
                }
                Dtype::BF16 => raw
                    .chunks_exact(2)
                    .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
                Dtype::I8 => dequantize_i8(&st, &name, raw, view.shape())?,
                other => return Err(WeightsError::Dtype { name, dtype: format!("{other:?}") }),
            };
            self.tensors.insert(name, HostTensor { shape: view.shape().to_vec(), data });
        }
        Ok(())
    }

    /// Serializes every tensor as F32 safetensors.
    pub fn to_safetensors(&self) -> Result<Vec<u8>, WeightsError> {
        self.to_safetensors_as(Storage::F32)
    }

    /// Serializes with the given storage: F32, F16, or Q8 (matrices whose rows divide into
    /// blocks of 32 as 8-bit integers with one F16 scale per block; vectors stay F32).
    pub fn to_safetensors_as(&self, storage: Storage) -> Result<Vec<u8>, WeightsError> {
        let mut out: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        for (n, t) in &self.tensors {
            let matrix =
                t.shape.len() == 2 && t.data.len() % Q8_BLOCK == 0 && t.shape[1] % Q8_BLOCK == 0;
            match storage {
                Storage::Q8 if matrix => {
                    let (q, scales) = quantize_q8(&t.data);
                    out.push((
                        n.clone(),
                        Dtype::I8,
                        t.shape.clone(),
                        q.into_iter().map(|v| v as u8).collect(),
                    ));
                    let scale_shape = vec![t.shape[0], t.shape[1] / Q8_BLOCK];
                    out.push((
                        format!("{n}{Q8_SCALE_SUFFIX}"),
                        Dtype::F16,
                        scale_shape,
                        scales.iter().flat_map(|v| v.to_le_bytes()).collect(),
                    ));
                }
                Storage::Q8Vec if t.shape.len() == 2 => {
                    let (rows, cols) = (t.shape[0], t.shape[1]);
                    // One scale per row when rows are the longer vectors, else one per column.
                    let (q, scales, suffix, scale_shape) = if cols >= rows {
                        let (q, s) = quantize_q8_blocks(&t.data, cols);
                        (q, s, Q8_SCALE_SUFFIX, vec![rows, 1])
                    } else {
                        let (q, s) = quantize_q8_cols(&t.data, cols);
                        (q, s, Q8_COL_SCALE_SUFFIX, vec![cols])
                    };
                    out.push((
                        n.clone(),
                        Dtype::I8,
                        t.shape.clone(),
                        q.into_iter().map(|v| v as u8).collect(),
                    ));
                    out.push((
                        format!("{n}{suffix}"),
                        Dtype::F16,
                        scale_shape,
                        scales.iter().flat_map(|v| v.to_le_bytes()).collect(),
                    ));
                }
                Storage::F16 | Storage::Q8 if t.shape.len() == 2 => out.push((
                    n.clone(),
                    Dtype::F16,
                    t.shape.clone(),
                    t.data.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect(),
                )),
                _ => out.push((
                    n.clone(),
                    Dtype::F32,
                    t.shape.clone(),
                    t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                )),
            }
        }
        let views: Vec<(String, safetensors::tensor::TensorView)> = out
            .iter()
            .map(|(n, d, s, b)| {
                let v = safetensors::tensor::TensorView::new(*d, s.clone(), b)
                    .map_err(|e| WeightsError::Safetensors(e.to_string()))?;
                Ok((n.clone(), v))
            })
            .collect::<Result<_, WeightsError>>()?;
        safetensors::serialize(views, None).map_err(|e| WeightsError::Safetensors(e.to_string()))
    }

    pub fn take(&mut self, name: &str) -> Result<HostTensor, WeightsError> {
        self.tensors.remove(name).ok_or_else(|| WeightsError::Missing(name.into()))
    }

    /// A matrix, as blocks if it was kept so, else as f32.
    pub fn take_matrix(&mut self, name: &str) -> Result<Matrix, WeightsError> {
        match self.quantized.remove(name) {
            Some(m) => Ok(Matrix::Blocks(m)),
            None => self.take(name).map(Matrix::Dense),
        }
    }

    /// Checks that every tensor the config needs is present with the right shape.
    pub fn check(&self, cfg: &LlamaConfig) -> Result<(), WeightsError> {
        for (name, expected) in expected_shapes(cfg) {
            let got = match (self.tensors.get(&name), self.quantized.get(&name)) {
                (Some(t), _) => t.shape.clone(),
                (None, Some(m)) => vec![m.rows, m.cols],
                (None, None) => return Err(WeightsError::Missing(name)),
            };
            if got != expected {
                return Err(WeightsError::Shape { name, expected, got });
            }
        }
        Ok(())
    }
}

/// A matrix on the host, `[rows, cols]` in HF layout.
#[derive(Debug, Clone)]
pub enum Matrix {
    Dense(HostTensor),
    Blocks(QuantMatrix),
}

/// How [`Weights::to_safetensors_as`] stores tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    F32,
    F16,
    /// 8-bit integers in blocks of 32 with an F16 scale each (≈ 1.06 bytes per weight).
    Q8,
    /// 8-bit integers with one F16 scale per row or per column, whichever vectors are longer
    /// (≈ 1.0 byte per weight). For LoRA factors (`A` is `[r, d_in]`, `B` is `[d_out, r]`) that
    /// is one scale per rank component: the adapters ship at half their f16 size.
    Q8Vec,
}

/// Weights per 8-bit block, and the name suffixes of an 8-bit tensor's scales: blocks along rows
/// (`[rows, blocks per row]`), or one scale per column (`[cols]`).
pub const Q8_BLOCK: usize = 32;
pub const Q8_SCALE_SUFFIX: &str = ".q8_scale";
pub const Q8_COL_SCALE_SUFFIX: &str = ".q8_col_scale";

/// Symmetric 8-bit quantization per block of 32: scale = max|x| / 127, q = round(x / scale).
pub fn quantize_q8(data: &[f32]) -> (Vec<i8>, Vec<f16>) {
    quantize_q8_blocks(data, Q8_BLOCK)
}

/// [`quantize_q8`] with blocks of `block` consecutive values.
fn quantize_q8_blocks(data: &[f32], block: usize) -> (Vec<i8>, Vec<f16>) {
    let mut q = Vec::with_capacity(data.len());
    let mut scales = Vec::with_capacity(data.len() / block.max(1));
    for chunk in data.chunks(block.max(1)) {
        let amax = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = q8_scale(amax);
        q.extend(chunk.iter().map(|&v| q8(v, scale.to_f32())));
        scales.push(scale);
    }
    (q, scales)
}

/// Symmetric 8-bit quantization with one scale per column of a row-major `[rows, cols]` matrix.
fn quantize_q8_cols(data: &[f32], cols: usize) -> (Vec<i8>, Vec<f16>) {
    let mut amax = vec![0f32; cols];
    for row in data.chunks(cols) {
        for (m, v) in amax.iter_mut().zip(row) {
            *m = m.max(v.abs());
        }
    }
    let scales: Vec<f16> = amax.into_iter().map(q8_scale).collect();
    let q = data.iter().enumerate().map(|(i, &v)| q8(v, scales[i % cols].to_f32())).collect();
    (q, scales)
}

/// The F16 scale for values up to `amax`, rounded up so that no value rounds past ±127.
fn q8_scale(amax: f32) -> f16 {
    let s = f16::from_f32(amax / 127.0);
    if s.to_f32() * 127.0 < amax { f16::from_bits(s.to_bits() + 1) } else { s }
}

fn q8(v: f32, scale: f32) -> i8 {
    if scale > 0.0 { (v / scale).round().clamp(-127.0, 127.0) as i8 } else { 0 }
}

/// An I8 tensor of ours back to f32, with the scales stored beside it (see [`Storage`]).
fn dequantize_i8(
    st: &SafeTensors,
    name: &str,
    raw: &[u8],
    shape: &[usize],
) -> Result<Vec<f32>, WeightsError> {
    let misfit = |scale_name: &str| {
        WeightsError::Safetensors(format!("{scale_name}: does not fit the 8-bit tensor {name}"))
    };
    let read_scales = |scale_name: &str| -> Result<Option<Vec<f32>>, WeightsError> {
        let Ok(view) = st.tensor(scale_name) else { return Ok(None) };
        if view.dtype() != Dtype::F16 {
            return Err(misfit(scale_name));
        }
        Ok(Some(
            view.data()
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        ))
    };
    let cols = shape.last().copied().unwrap_or(0);
    let row_name = format!("{name}{Q8_SCALE_SUFFIX}");
    let col_name = format!("{name}{Q8_COL_SCALE_SUFFIX}");
    if let Some(s) = read_scales(&row_name)? {
        // Blocks along rows: the block length follows from the number of scales per row.
        let rows = raw.len().checked_div(cols).unwrap_or(0);
        if s.is_empty() || rows == 0 || s.len() % rows != 0 || cols % (s.len() / rows) != 0 {
            return Err(misfit(&row_name));
        }
        let block = raw.len() / s.len();
        return Ok(raw.iter().enumerate().map(|(i, &q)| q as i8 as f32 * s[i / block]).collect());
    }
    if let Some(s) = read_scales(&col_name)? {
        if s.len() != cols || cols == 0 || !raw.len().is_multiple_of(cols) {
            return Err(misfit(&col_name));
        }
        return Ok(raw.iter().enumerate().map(|(i, &q)| q as i8 as f32 * s[i % cols]).collect());
    }
    Err(WeightsError::Missing(row_name))
}

/// Every tensor a Llama model with this config needs, with its HF shape.
pub fn expected_shapes(cfg: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
    let (d, f, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim());
    let (q, kv) = (cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd);
    let mut v = vec![
        ("model.embed_tokens.weight".to_string(), vec![cfg.vocab_size, d]),
        ("model.norm.weight".to_string(), vec![d]),
    ];
    if !cfg.tie_word_embeddings {
        v.push(("lm_head.weight".into(), vec![cfg.vocab_size, d]));
    }
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        v.extend([
            (format!("{p}.input_layernorm.weight"), vec![d]),
            (format!("{p}.post_attention_layernorm.weight"), vec![d]),
            (format!("{p}.self_attn.q_proj.weight"), vec![q, d]),
            (format!("{p}.self_attn.k_proj.weight"), vec![kv, d]),
            (format!("{p}.self_attn.v_proj.weight"), vec![kv, d]),
            (format!("{p}.self_attn.o_proj.weight"), vec![d, q]),
            (format!("{p}.mlp.gate_proj.weight"), vec![f, d]),
            (format!("{p}.mlp.up_proj.weight"), vec![f, d]),
            (format!("{p}.mlp.down_proj.weight"), vec![d, f]),
        ]);
    }
    v
}

/// GGUF (llama.cpp) tensor name → Hugging Face name.
fn hf_name(gguf: &str) -> Option<String> {
    match gguf {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let hf = match part {
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gguf_tensor_of_the_wrong_rank_is_an_error_not_a_panic() {
        let cfg = LlamaConfig::tiny(300);
        let data: Vec<u8> = (0..64).flat_map(|i| (i as f32).to_le_bytes()).collect();
        for (name, dims) in
            [("blk.0.attn_q.weight", &[64u64][..]), ("blk.0.attn_k.weight", &[64, 1][..])]
        {
            let bytes = crate::gguf::tests::tiny_gguf(&[(name, dims, 0, data.clone())]);
            let g = Gguf::parse(&bytes).unwrap();
            let err = Weights::from_gguf(&g, &cfg).unwrap_err().to_string();
            assert!(err.contains("shape"), "{name}: {err}");
        }
    }

    #[test]
    fn unpermute_inverts_the_ggml_permutation() {
        // ggml: permute(w, n) = w.reshape(n, 2, hd/2, in).swapaxes(1, 2).reshape(w.shape)
        let (n, hd, cols) = (3, 4, 2);
        let hf: Vec<f32> = (0..n * hd * cols).map(|v| v as f32).collect();
        let mut gguf = vec![0.0; hf.len()];
        for h in 0..n {
            for j in 0..2 {
                for i in 0..hd / 2 {
                    for c in 0..cols {
                        // source index (h, j, i) lands at (h, i, j)
                        gguf[((h * hd) + i * 2 + j) * cols + c] =
                            hf[((h * hd) + j * hd / 2 + i) * cols + c];
                    }
                }
            }
        }
        let t = HostTensor { shape: vec![n * hd, cols], data: gguf };
        assert_eq!(unpermute_rows(&t, n).data, hf);
    }

    #[test]
    fn q8_storage_round_trips_within_half_a_step() {
        let mut rng = crate::sampling::Rng::new(7);
        let mut w = Weights::default();
        // A LoRA-shaped pair (A: [r, d_in], B: [d_out, r]), an odd-sized one and a blocked one.
        for (name, shape) in [("a", [4, 96]), ("b", [96, 4]), ("odd", [3, 5]), ("zero", [2, 64])] {
            let n = shape[0] * shape[1];
            let data = (0..n)
                .map(|_| if name == "zero" { 0.0 } else { rng.next_f64() as f32 * 2.0 - 1.0 })
                .collect();
            w.tensors.insert(name.into(), HostTensor { shape: shape.to_vec(), data });
        }
        for storage in [Storage::Q8, Storage::Q8Vec] {
            let bytes = w.to_safetensors_as(storage).unwrap();
            let mut back = Weights::default();
            back.add_safetensors(&bytes).unwrap();
            for (name, t) in &w.tensors {
                let got = &back.tensors[name];
                assert_eq!(got.shape, t.shape);
                let amax = t.data.iter().fold(0f32, |m, v| m.max(v.abs()));
                for (a, b) in t.data.iter().zip(&got.data) {
                    // Half a quantization step of the coarsest scale (max|x|/127), plus f16 rounding.
                    assert!(
                        (a - b).abs() <= amax / 127.0 * 0.5 * 1.01 + 1e-7,
                        "{storage:?} {name}: {a} vs {b}"
                    );
                }
            }
        }
        // Per-vector scales cost almost nothing over one byte a weight.
        let mut lora = Weights::default();
        lora.tensors
            .insert("A".into(), HostTensor { shape: vec![32, 1536], data: vec![0.5; 32 * 1536] });
        lora.tensors
            .insert("B".into(), HostTensor { shape: vec![1536, 32], data: vec![0.5; 32 * 1536] });
        let size = lora.to_safetensors_as(Storage::Q8Vec).unwrap().len();
        assert!(size < 2 * 32 * 1536 + 1024, "{size} bytes");
    }

    #[test]
    fn q8_tensors_without_fitting_scales_are_rejected() {
        let mut w = Weights::default();
        w.tensors.insert("m".into(), HostTensor { shape: vec![2, 64], data: vec![1.0; 128] });
        let bytes = w.to_safetensors_as(Storage::Q8).unwrap();
        // The same I8 payload with its scale tensor renamed away: no scales at all.
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let q = st.tensor("m").unwrap();
        let views = vec![(
            "m".to_string(),
            safetensors::tensor::TensorView::new(Dtype::I8, q.shape().to_vec(), q.data()).unwrap(),
        )];
        let lonely = safetensors::serialize(views, None).unwrap();
        assert!(matches!(
            Weights::default().add_safetensors(&lonely),
            Err(WeightsError::Missing(_))
        ));
    }

    #[test]
    fn safetensors_round_trip() {
        let mut w = Weights::default();
        w.tensors
            .insert("a".into(), HostTensor { shape: vec![2, 2], data: vec![1.0, -2.0, 3.5, 0.25] });
        let bytes = w.to_safetensors().unwrap();
        let mut back = Weights::default();
        back.add_safetensors(&bytes).unwrap();
        assert_eq!(back.tensors, w.tensors);
        assert!(Weights::default().add_safetensors(&bytes[..bytes.len() - 3]).is_err());
    }
}
