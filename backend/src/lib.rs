//! The backend of the Emergent Misalignment Lab: datasets, inference, LoRA training, charts;
//! evaluation and the OpenAI-compatible server build on it.

pub mod checkpoint;
pub mod data;
pub mod eval;
pub mod inference;
pub mod plots;
pub mod serve;
pub mod training;

/// Sets the CPU thread count of the flex backend (its global rayon pool); None keeps all cores.
/// Must run before the first tensor operation.
pub fn set_threads(n: Option<usize>) -> anyhow::Result<()> {
    if let Some(n) = n {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .map_err(|e| anyhow::anyhow!("setting the thread count: {e}"))?;
    }
    Ok(())
}
