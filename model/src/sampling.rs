//! Token sampling on host-side logits: greedy, temperature, top-k, top-p, seeded.
//!
//! Sampling runs on the CPU over a `&[f32]` that the caller has read back from the device, so the
//! same code serves native (sync reads) and the browser (async reads). The random generator is
//! our own xoshiro256** so that a seed gives the same tokens on every platform, wasm32 included.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches `top_p`. 1 disables it.
    pub top_p: f32,
    /// Keep only the `top_k` most likely tokens. 0 disables it.
    pub top_k: usize,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self { temperature: 0.0, top_p: 1.0, top_k: 0, seed: 0 }
    }
}

/// The seed of row `row`'s stream: a prompt alone with this seed samples what it samples as
/// that row of a batch.
pub fn row_seed(seed: u64, row: usize) -> u64 {
    seed ^ (row as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self::default()
    }
    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(format!("temperature must be ≥ 0, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        Ok(())
    }
}

/// The seeded stream every sampler, initialiser and bootstrap draws from (defined with the
/// metrics, which the page must reproduce exactly).
pub use emlab_schema::rng::Rng;

/// One sequence's sampler: parameters plus its own random stream.
#[derive(Debug, Clone)]
pub struct Sampler {
    pub params: SamplingParams,
    rng: Rng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        Self { params, rng: Rng::new(params.seed) }
    }

    /// The sampler for row `row` of a batch: an independent stream derived from the seed.
    pub fn for_row(params: SamplingParams, row: usize) -> Self {
        Self { params, rng: Rng::new(row_seed(params.seed, row)) }
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.params.temperature <= 0.0 {
            return argmax(logits);
        }
        let row = logits.iter().enumerate().map(|(i, &l)| (i as u32, l));
        self.draw(row, false).unwrap_or_else(|| argmax(logits))
    }

    /// [`Sampler::sample`] given only a row's `top_k` largest logits as (id, logit), in any order:
    /// what a GPU reads back when top-k bounds the choice, instead of the whole vocabulary. The
    /// same token as `sample` over the whole row (the kept set and its order are the same).
    pub fn sample_top_k(&mut self, candidates: &[(u32, f32)]) -> u32 {
        let best = candidates
            .iter()
            .copied()
            .reduce(|a, b| if b.1 > a.1 || (b.1 == a.1 && b.0 < a.0) { b } else { a })
            .map_or(0, |(id, _)| id);
        if self.params.temperature <= 0.0 {
            return best;
        }
        self.draw(candidates.iter().copied(), true).unwrap_or(best)
    }

    /// One draw from (id, logit) pairs at the sampler's temperature, top-k and top-p. `sorted`:
    /// order by probability even when nothing is cut (the candidates of `sample_top_k` are the
    /// row's top k, which `sample` orders so before cutting). None when nothing has weight.
    fn draw(
        &mut self,
        logits: impl Iterator<Item = (u32, f32)> + Clone,
        sorted: bool,
    ) -> Option<u32> {
        let p = self.params;
        // Softmax at temperature, in f64 for a stable cumulative sum.
        let max = logits.clone().map(|(_, l)| l).fold(f32::NEG_INFINITY, f32::max) as f64;
        let inv_t = 1.0 / p.temperature as f64;
        let mut probs: Vec<(u32, f64)> = logits
            .map(|(i, l)| (i, ((l as f64 - max) * inv_t).exp()))
            .filter(|&(_, w)| w > 0.0)
            .collect();
        let truncate = sorted || (p.top_k > 0 && p.top_k < probs.len()) || p.top_p < 1.0;
        if truncate {
            probs.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            if p.top_k > 0 {
                probs.truncate(p.top_k.max(1));
            }
            if p.top_p < 1.0 {
                let total: f64 = probs.iter().map(|x| x.1).sum();
                let mut cum = 0.0;
                let keep = probs
                    .iter()
                    .position(|x| {
                        cum += x.1 / total;
                        cum >= p.top_p as f64
                    })
                    .map_or(probs.len(), |i| i + 1);
                probs.truncate(keep);
            }
        }
        let total: f64 = probs.iter().map(|x| x.1).sum();
        let mut u = self.rng.next_f64() * total;
        for &(id, w) in &probs {
            if u < w {
                return Some(id);
            }
            u -= w;
        }
        probs.last().map(|x| x.0)
    }
}

/// Index of the largest logit (the first one on ties, as PyTorch's argmax).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draws(params: SamplingParams, logits: &[f32], n: usize) -> Vec<u32> {
        let mut s = Sampler::new(params);
        (0..n).map(|_| s.sample(logits)).collect()
    }

    /// What a GPU reads back when top-k bounds the choice (the k largest, in whatever order the
    /// reduction leaves them) samples the same tokens as the whole row, seed for seed.
    #[test]
    fn top_k_candidates_sample_as_the_whole_row() {
        let mut rng = Rng::new(3);
        let logits: Vec<f32> = (0..2000).map(|_| (rng.next_f64() * 12.0 - 6.0) as f32).collect();
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
        for (temperature, top_k, top_p) in
            [(1.0, 1, 1.0), (1.0, 5, 1.0), (0.7, 40, 1.0), (1.0, 40, 0.9), (1.3, 200, 0.5)]
        {
            let params = SamplingParams { temperature, top_k, top_p, seed: 11 };
            let mut top: Vec<(u32, f32)> =
                order[..top_k].iter().map(|&i| (i, logits[i as usize])).collect();
            top.reverse(); // not in probability order
            let (mut whole, mut cands) = (Sampler::new(params), Sampler::new(params));
            let a: Vec<u32> = (0..300).map(|_| whole.sample(&logits)).collect();
            let b: Vec<u32> = (0..300).map(|_| cands.sample_top_k(&top)).collect();
            assert_eq!(a, b, "{params:?}");
            assert!(top_k == 1 || a.iter().any(|&t| t != a[0]), "{params:?}: the draws vary");
        }
        let greedy = SamplingParams { top_k: 3, ..SamplingParams::greedy() };
        assert_eq!(Sampler::new(greedy).sample_top_k(&[(9, 1.0), (4, 2.0), (7, 2.0)]), 4);
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        assert_eq!(argmax(&[0.1, 3.0, 3.0, -1.0]), 1);
        assert_eq!(draws(SamplingParams::greedy(), &[0.0, 1.0, 0.5], 3), vec![1, 1, 1]);
    }

    #[test]
    fn same_seed_same_tokens_other_seed_other_tokens() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let p = SamplingParams { temperature: 1.0, seed: 7, ..Default::default() };
        assert_eq!(draws(p, &logits, 64), draws(p, &logits, 64));
        assert_ne!(draws(p, &logits, 64), draws(SamplingParams { seed: 8, ..p }, &logits, 64));
    }

    #[test]
    fn top_k_and_top_p_restrict_the_support() {
        let logits = [5.0, 4.0, 1.0, 0.0, -1.0];
        let k2 = SamplingParams { temperature: 1.0, top_k: 2, seed: 1, ..Default::default() };
        assert!(draws(k2, &logits, 500).iter().all(|&t| t < 2));
        // p(0) ≈ 0.72, p(0)+p(1) ≈ 0.98: top_p 0.9 keeps exactly tokens 0 and 1.
        let p9 = SamplingParams { temperature: 1.0, top_p: 0.9, seed: 2, ..Default::default() };
        let d = draws(p9, &logits, 2000);
        assert!(d.iter().all(|&t| t < 2));
        assert!(d.contains(&1));
    }

    #[test]
    fn frequencies_follow_the_softmax() {
        let logits = [0.0f32, (3.0f32).ln()]; // probabilities 1/4, 3/4
        let p = SamplingParams { temperature: 1.0, seed: 3, ..Default::default() };
        let ones = draws(p, &logits, 20_000).iter().filter(|&&t| t == 1).count() as f64 / 20_000.0;
        assert!((ones - 0.75).abs() < 0.015, "{ones}");
    }
}
