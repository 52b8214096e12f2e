//! The backend of the Emergent Misalignment Lab: datasets, inference, LoRA training, charts;
//! evaluation and the OpenAI-compatible server build on it.

pub mod checkpoint;
pub mod data;
pub mod eval;
pub mod inference;
pub mod jsonl;
pub mod plots;
pub mod serve;
pub mod sweep;
pub mod training;

/// Tells glibc's allocator to keep freed memory instead of returning it to the OS. A training step
/// allocates and frees hundreds of MB of activations; by default the large blocks are mmap'd and
/// unmapped each time, and every reuse pays a page fault and the kernel zeroing the page (a fifth
/// of a step's time on the project machine). Call first thing in `main`; a no-op off glibc.
///
/// glibc caps `M_MMAP_THRESHOLD` at 32 MB, below the largest activations (the logits of a 4 × 256
/// batch are 200 MB), so mmap is switched off instead (`M_MMAP_MAX` = 0). One arena: the worker
/// threads' own arenas would otherwise be mmap'd heaps that glibc trims on its own schedule.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

/// Sets the CPU thread count of the flex backend (its global rayon pool); None keeps all cores.
/// Must run before the first tensor operation. Asking again for the count the pool already has is
/// fine (a sweep's run trains and then evaluates in one process).
pub fn set_threads(n: Option<usize>) -> anyhow::Result<()> {
    if let Some(n) = n {
        let built = rayon::ThreadPoolBuilder::new().num_threads(n).build_global();
        if let Err(e) = built
            && rayon::current_num_threads() != n
        {
            anyhow::bail!("setting the thread count: {e}");
        }
    }
    Ok(())
}
