//! What a CPU decoding step reads from burn tensors, copied to the host once per generation (per
//! cache), not per token: the norms' weights and the LoRA matrices. The KV cache keeps it for the
//! generation's later steps; `cpu_decode` makes it from the model and reads it.

#[derive(Debug)]
pub struct HostWeights {
    /// Per layer: the input and post-attention norms.
    pub(crate) norms: Vec<[Vec<f32>; 2]>,
    pub(crate) final_norm: Vec<f32>,
    /// Per layer, per projection (in `model::PROJECTIONS` order): its LoRA, if it has one.
    pub(crate) lora: Vec<Vec<Option<HostLora>>>,
}

/// One projection's LoRA: A `[d_in, r]`, B `[r, d_out]`, and its scale.
#[derive(Debug)]
pub(crate) struct HostLora {
    pub(crate) a: Vec<f32>,
    pub(crate) b: Vec<f32>,
    pub(crate) rank: usize,
    pub(crate) scale: f32,
}
