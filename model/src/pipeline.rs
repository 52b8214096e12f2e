//! A chat model ready to answer: weights on a device, tokenizer, chat template and stop tokens.

use burn::prelude::Device;
use burn::tensor::FloatDType;

use crate::Error;
use crate::chat::{ChatTemplate, Message};
use crate::config::LlamaConfig;
use crate::files::ModelFiles;
use crate::generate::{Flow, Generation, GenerationConfig, generate};
use crate::model::Llama;
use crate::sampling::SamplingParams;
use crate::tokenizer::Tokenizer;

#[derive(Clone)]
pub struct ChatModel {
    pub model: Llama,
    pub tokenizer: Tokenizer,
    pub chat: ChatTemplate,
    pub config: LlamaConfig,
}

impl ChatModel {
    /// Builds the model with its matrices stored in `dtype` (F32: exact; F16: faster decoding).
    pub fn new(files: ModelFiles, device: &Device, dtype: FloatDType) -> Result<Self, Error> {
        let ModelFiles { config, tokenizer, chat, weights } = files;
        let model = Llama::from_weights(&config, weights, device, dtype)?;
        Ok(Self { model, tokenizer, chat, config })
    }

    /// Token ids of a conversation rendered with the chat template, ending with the assistant header.
    pub fn encode_chat(&self, messages: &[Message]) -> Result<Vec<u32>, Error> {
        Ok(self.chat.encode(&self.tokenizer, messages, true)?)
    }

    /// `<|im_end|>` and the EOS id: either ends an assistant turn.
    pub fn stop_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.config.eos_token_id.into_iter().collect();
        if let Some(id) = self.tokenizer.token_to_id("<|im_end|>")
            && !ids.contains(&id)
        {
            ids.push(id);
        }
        ids
    }

    pub fn generation_config(
        &self,
        max_new_tokens: usize,
        sampling: SamplingParams,
    ) -> GenerationConfig {
        GenerationConfig::new(max_new_tokens, sampling, self.stop_ids())
    }

    /// Generates one answer for prompt ids, calling `on_token` for each new token.
    pub async fn complete(
        &self,
        prompt_ids: &[u32],
        cfg: &GenerationConfig,
        mut on_token: impl FnMut(u32) -> Flow,
    ) -> Result<Generation, Error> {
        let mut out =
            generate(&self.model, &[prompt_ids.to_vec()], cfg, |_, id| on_token(id)).await?;
        Ok(out.remove(0))
    }
}
