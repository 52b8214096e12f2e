//! A prompt prefix that many requests share (a chat template's system prompt), run through the
//! model once, and the prefill of a request after it (`emlab serve`).

use burn::prelude::*;

use crate::Error;
use crate::cache::KvCache;
use crate::generate::{ContinuousBatch, GenerationConfig, Prefilled, check_rows};
use crate::model::{Batch, Llama};

/// The cached keys and values of a prompt prefix that many requests share (a chat template's
/// system prompt: 27 of a short question's 38 tokens), computed once. A prompt prefilled after it
/// gets the bits it gets from its whole prefill, because the CPU pass computes every token alike
/// whatever else is in the pass; so it is made only for a model that runs that pass.
pub struct SharedPrefix {
    ids: Vec<u32>,
    cache: KvCache,
}

impl SharedPrefix {
    pub fn new(model: &Llama, ids: Vec<u32>) -> Option<Self> {
        if ids.is_empty() || !model.runs_cpu_pass(ids.len()) {
            return None;
        }
        let mut cache = model.new_cache();
        model.forward_last(Batch::causal(&ids, &model.device()), Some(&mut cache));
        Some(Self { ids, cache })
    }
}

/// As [`ContinuousBatch::prefill`]; a single prompt that starts with `prefix`'s tokens is run
/// from the prefix's end, on a copy of its cached keys and values.
pub fn prefill_after(
    model: &Llama,
    prefix: Option<&SharedPrefix>,
    prompts: &[Vec<u32>],
    cfgs: &[GenerationConfig],
) -> Result<Prefilled, Error> {
    check_rows(model, prompts, cfgs)?;
    if let (Some(prefix), [prompt]) = (prefix, prompts)
        && let Some(rest) = prompt.strip_prefix(prefix.ids.as_slice())
        && !rest.is_empty()
        && model.runs_cpu_pass(rest.len())
    {
        let device = model.device();
        let start = prefix.ids.len();
        let ints = |v: Vec<i32>| Tensor::from_data(TensorData::new(v, [1, rest.len()]), &device);
        let batch = Batch {
            tokens: ints(rest.iter().map(|&id| id as i32).collect()),
            positions: ints((start..prompt.len()).map(|p| p as i32).collect()),
            bias: None, // the CPU pass masks by the cache's length
        };
        let mut cache = prefix.cache.select_rows(&[0]);
        let logits = model.forward_last(batch, Some(&mut cache));
        return Ok(Prefilled { cache, logits, prompt_lens: vec![prompt.len()] });
    }
    ContinuousBatch::<()>::prefill(model, prompts, cfgs)
}

#[cfg(test)]
mod tests {
    use burn::tensor::FloatDType;

    use super::*;
    use crate::config::LlamaConfig;
    use crate::generate::tests::alone;
    use crate::generate::{Flow, block_on};
    use crate::sampling::SamplingParams;

    /// A prompt prefilled after a shared prefix gets the bits of its whole prefill, and decodes
    /// the same tokens; a model off the CPU pass gets no shared prefix.
    #[test]
    fn a_shared_prefix_changes_no_bit() {
        let model = crate::cpu_decode::tests::quantized_model();
        let prefix: Vec<u32> = (20..47).collect();
        let shared = SharedPrefix::new(&model, prefix.clone()).expect("the CPU pass runs it");
        let prompt: Vec<u32> = prefix.iter().copied().chain(60..71).collect();
        let greedy = SamplingParams { temperature: 0.0, top_p: 1.0, top_k: 0, seed: 0 };
        let cfg = GenerationConfig::new(6, greedy, vec![]);
        let run = |after: Option<&SharedPrefix>| {
            let p = prefill_after(
                &model,
                after,
                std::slice::from_ref(&prompt),
                std::slice::from_ref(&cfg),
            )
            .unwrap();
            let logits = p.logits.clone().into_data().try_into_vec_as::<f32>().unwrap();
            let mut batch = ContinuousBatch::default();
            batch.add(p, vec![(cfg.clone(), ())]);
            loop {
                let done = block_on(batch.step(&model, |_, _, _| Flow::Continue)).unwrap();
                if let Some((_, g)) = done.into_iter().next() {
                    return (logits.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), g.ids);
                }
            }
        };
        assert_eq!(run(Some(&shared)), run(None));

        let cfg = LlamaConfig::tiny(300);
        let dense = Llama::from_weights(
            &cfg,
            Llama::random_weights(&cfg, 7),
            &Device::flex(),
            FloatDType::F32,
        )
        .unwrap();
        assert!(SharedPrefix::new(&dense, prefix).is_none());
    }

    /// As `serve` runs them: on the CPU pass, each request prefilled alone after the shared
    /// prefix and joining the running batch at its own step (also an empty one), long enough that
    /// the batch's cache grows past its first capacity and sheds padding as rows leave; each
    /// gets the tokens it gets alone.
    #[test]
    fn requests_after_a_shared_prefix_decode_in_a_batch_what_they_decode_alone() {
        let model = crate::cpu_decode::tests::quantized_model();
        let prefix: Vec<u32> = (20..47).collect();
        let shared = SharedPrefix::new(&model, prefix.clone()).unwrap();
        let greedy = SamplingParams { temperature: 0.0, top_p: 1.0, top_k: 0, seed: 0 };
        let sampled = |seed| SamplingParams { temperature: 1.0, top_p: 1.0, top_k: 0, seed };
        // (prompt after the prefix, max new tokens, sampling, the step at which it joins)
        let requests: Vec<(Vec<u32>, usize, SamplingParams, usize)> = vec![
            ((60..70).collect(), 43, greedy, 0),
            ((80..83).collect(), 22, sampled(3), 2),
            ((90..110).collect(), 43, sampled(5), 9),
            ((70..75).collect(), 8, greedy, 30),
            ((75..90).collect(), 43, sampled(11), 31),
            ((61..64).collect(), 43, greedy, 60),
            ((64..68).collect(), 15, sampled(2), 130),
        ];
        let prompt = |rest: &[u32]| -> Vec<u32> { prefix.iter().chain(rest).copied().collect() };
        let alone: Vec<Vec<u32>> =
            requests.iter().map(|(rest, n, s, _)| alone(&model, prompt(rest), *n, *s)).collect();
        let mut batch = ContinuousBatch::<usize>::default();
        let mut got: Vec<Option<Vec<u32>>> = vec![None; requests.len()];
        for step in 0..200 {
            for (i, (rest, n, s, at)) in requests.iter().enumerate() {
                if *at == step {
                    let cfg = GenerationConfig::new(*n, *s, Vec::new());
                    let p = prefill_after(
                        &model,
                        Some(&shared),
                        &[prompt(rest)],
                        std::slice::from_ref(&cfg),
                    )
                    .unwrap();
                    batch.add(p, vec![(cfg, i)]);
                }
            }
            for (i, g) in block_on(batch.step(&model, |_, _, _| Flow::Continue)).unwrap() {
                got[i] = Some(g.ids);
            }
        }
        for (i, want) in alone.iter().enumerate() {
            assert_eq!(got[i].as_ref(), Some(want), "request {i}");
        }
    }
}
