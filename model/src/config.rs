//! The model's hyper-parameters, read from a Hugging Face `config.json` or from GGUF metadata.

use serde::{Deserialize, Serialize};

use crate::gguf::{Gguf, GgufError};

/// A Llama-architecture configuration, with Hugging Face `config.json` field names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    #[serde(default = "default_ctx")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<u32>,
    #[serde(default = "default_model_type")]
    pub model_type: String,
}

fn default_eps() -> f64 {
    1e-5
}
fn default_theta() -> f64 {
    10_000.0
}
fn default_ctx() -> usize {
    2048
}
fn default_model_type() -> String {
    "llama".into()
}

impl LlamaConfig {
    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size.checked_div(self.num_attention_heads).unwrap_or(0))
    }

    /// Checks the relations the model relies on, so a bad config fails here and not mid-forward.
    pub fn validate(&self) -> Result<(), String> {
        let nonzero = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        if let Some((name, _)) = nonzero.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be > 0"));
        }
        // Upper bounds well above any Llama-family model, so that a corrupt or hostile file fails
        // here and not as a terabyte allocation (the RoPE tables, the embedding).
        let limits = [
            ("vocab_size", self.vocab_size, 1 << 20),
            ("hidden_size", self.hidden_size, 1 << 16),
            ("intermediate_size", self.intermediate_size, 1 << 18),
            ("num_hidden_layers", self.num_hidden_layers, 1 << 10),
            ("num_attention_heads", self.num_attention_heads, 1 << 10),
            ("num_key_value_heads", self.num_key_value_heads, 1 << 10),
            ("head_dim", self.head_dim(), 1 << 10),
            ("max_position_embeddings", self.max_position_embeddings, 1 << 20),
        ];
        if let Some((name, v, max)) = limits.iter().find(|(_, v, max)| v > max) {
            return Err(format!(
                "{name} = {v} is beyond what this implementation supports ({max})"
            ));
        }
        if self.head_dim() == 0 {
            return Err("head_dim must be > 0".into());
        }
        // Largest tensors: embedding and projections (in elements, under 2^34; the weights file
        // must then hold them), and the RoPE tables, built from the config alone (under 2^25).
        let products = [
            ("vocab_size × hidden_size", self.vocab_size.checked_mul(self.hidden_size), 1u64 << 34),
            (
                "hidden_size × intermediate_size",
                self.hidden_size.checked_mul(self.intermediate_size),
                1 << 34,
            ),
            (
                "num_attention_heads × head_dim",
                self.num_attention_heads.checked_mul(self.head_dim()),
                1 << 20,
            ),
            (
                "max_position_embeddings × head_dim",
                self.max_position_embeddings.checked_mul(self.head_dim()),
                1 << 25,
            ),
        ];
        if let Some((name, _, _)) =
            products.iter().find(|(_, p, max)| p.is_none_or(|p| p as u64 >= *max))
        {
            return Err(format!("{name} is too large"));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0 && self.rms_norm_eps < 1.0) {
            return Err(format!("rms_norm_eps must be in (0, 1), got {}", self.rms_norm_eps));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
            return Err(format!("rope_theta must be a finite number > 1, got {}", self.rope_theta));
        }
        if self.model_type != "llama" {
            return Err(format!(
                "model_type '{}' is not supported (only 'llama')",
                self.model_type
            ));
        }
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            return Err("num_attention_heads must be a multiple of num_key_value_heads".into());
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err("head_dim must be even for rotary embeddings".into());
        }
        Ok(())
    }

    /// Reads the `llama.*` keys of a GGUF file.
    pub fn from_gguf(g: &Gguf) -> Result<Self, GgufError> {
        let arch = g.get_str("general.architecture")?;
        if arch != "llama" {
            return Err(GgufError::Corrupt(format!(
                "architecture '{arch}' is not supported (only 'llama')"
            )));
        }
        let u = |k: &str| g.get_u64(&format!("llama.{k}")).map(|v| v as usize);
        let hidden_size = u("embedding_length")?;
        let num_attention_heads = u("attention.head_count")?;
        let vocab_size = match u("vocab_size") {
            Ok(v) => v,
            Err(_) => g.get_array("tokenizer.ggml.tokens")?.len(),
        };
        let has_output = g.tensors.iter().any(|t| t.name == "output.weight");
        Ok(Self {
            vocab_size,
            hidden_size,
            intermediate_size: u("feed_forward_length")?,
            num_hidden_layers: u("block_count")?,
            num_attention_heads,
            num_key_value_heads: u("attention.head_count_kv").unwrap_or(num_attention_heads),
            head_dim: u("rope.dimension_count")
                .ok()
                .filter(|&d| Some(d) != hidden_size.checked_div(num_attention_heads)),
            rms_norm_eps: g.get_f64("llama.attention.layer_norm_rms_epsilon")?,
            rope_theta: g.get_f64("llama.rope.freq_base").unwrap_or(default_theta()),
            max_position_embeddings: u("context_length")?,
            tie_word_embeddings: !has_output,
            bos_token_id: g.get_u64("tokenizer.ggml.bos_token_id").ok().map(|v| v as u32),
            eos_token_id: g.get_u64("tokenizer.ggml.eos_token_id").ok().map(|v| v as u32),
            model_type: "llama".into(),
        })
    }

    /// A small random-weight configuration for tests (same shape family as SmolLM2).
    pub fn tiny(vocab_size: usize) -> Self {
        Self {
            vocab_size,
            hidden_size: 64,
            intermediate_size: 96,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: None,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            max_position_embeddings: 128,
            tie_word_embeddings: true,
            bos_token_id: Some(1),
            eos_token_id: Some(2),
            model_type: "llama".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_rejects_what_would_crash_or_exhaust_memory() {
        let ok = LlamaConfig::tiny(300);
        assert_eq!(ok.validate(), Ok(()));
        let bad = |f: fn(&mut LlamaConfig), needle: &str| {
            let mut c = ok.clone();
            f(&mut c);
            let err = c.validate().unwrap_err();
            assert!(err.contains(needle), "{err}");
        };
        bad(|c| c.num_attention_heads = 0, "num_attention_heads must be > 0");
        bad(|c| c.max_position_embeddings = 1_000_000_000_000, "max_position_embeddings");
        bad(|c| c.max_position_embeddings = 1 << 62, "max_position_embeddings");
        bad(|c| c.vocab_size = usize::MAX, "vocab_size");
        bad(|c| c.head_dim = Some(0), "head_dim");
        bad(|c| c.rms_norm_eps = f64::NAN, "rms_norm_eps");
        bad(|c| c.rope_theta = f64::INFINITY, "rope_theta");
        // Each within its bound, the product too large.
        bad(
            |c| (c.vocab_size, c.hidden_size, c.num_attention_heads) = (1 << 20, 1 << 16, 64),
            "vocab_size × hidden_size",
        );
        // head_dim() itself never divides by zero.
        let mut c = ok.clone();
        c.num_attention_heads = 0;
        assert_eq!(c.head_dim(), 0);
    }
}
