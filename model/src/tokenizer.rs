//! The byte-level BPE tokenizer: rebuilt from GGUF metadata as a Hugging Face `tokenizer.json`,
//! then used through the `tokenizers` crate (with its pure-Rust regex, so the same code runs in wasm).

use serde_json::{Map, Value as Json, json};

use crate::gguf::{Gguf, GgufError};

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("tokenizer.json is invalid: {0}")]
    Load(String),
    #[error("tokenization failed: {0}")]
    Encode(String),
    #[error("GGUF tokenizer metadata: {0}")]
    Gguf(#[from] GgufError),
}

/// Builds the `tokenizer.json` text for a GGUF `gpt2`-model (byte-level BPE) vocabulary.
///
/// The `smollm` pre-tokenizer is GPT-2's regex preceded by splitting digits one by one.
/// (transformers' GGUF conversion drops the digit step and so mis-tokenizes numbers.)
pub fn tokenizer_json_from_gguf(g: &Gguf) -> Result<String, TokenizerError> {
    let model = g.get_str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(GgufError::Corrupt(format!(
            "tokenizer model '{model}' is not supported (only gpt2 byte-level BPE)"
        ))
        .into());
    }
    let pre = g.get_str("tokenizer.ggml.pre").unwrap_or("default");
    let tokens = g.get_array("tokenizer.ggml.tokens")?;
    let types = g.get_array("tokenizer.ggml.token_type").ok();
    let merges = g.get_array("tokenizer.ggml.merges")?;

    let mut vocab = Map::with_capacity(tokens.len());
    let mut added = Vec::new();
    for (id, t) in tokens.iter().enumerate() {
        let text =
            t.as_str().ok_or_else(|| GgufError::Corrupt(format!("token {id} is not a string")))?;
        vocab.insert(text.to_string(), json!(id));
        // ggml token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte
        let ty = types.and_then(|t| t.get(id)).and_then(|v| v.as_u64()).unwrap_or(1);
        if ty == 3 || ty == 4 {
            added.push(json!({
                "id": id, "content": text, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": ty == 3,
            }));
        }
    }
    let merges: Vec<Json> = merges
        .iter()
        .map(|m| {
            m.as_str()
                .map(|s| json!(s))
                .ok_or_else(|| GgufError::Corrupt("merge is not a string".into()))
        })
        .collect::<Result<_, _>>()?;

    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let pre_tokenizer = match pre {
        "smollm" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level]}),
        "default" | "gpt2" => byte_level,
        other => {
            return Err(GgufError::Corrupt(format!(
                "pre-tokenizer '{other}' is not supported (smollm, gpt2)"
            ))
            .into());
        }
    };
    let doc = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges,
        },
    });
    Ok(serde_json::to_string(&doc).expect("a JSON value serializes"))
}

/// A loaded tokenizer plus the ids generation needs.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// The same tokenizer with special tokens read as plain text, for what people write.
    plain: tokenizers::Tokenizer,
}

impl Tokenizer {
    pub fn from_json(json: &str) -> Result<Self, TokenizerError> {
        let inner: tokenizers::Tokenizer =
            json.parse().map_err(|e| TokenizerError::Load(format!("{e}")))?;
        let mut plain = inner.clone();
        plain.set_encode_special_tokens(true);
        Ok(Self { inner, plain })
    }

    /// Encodes text; special tokens written in the text (`<|im_start|>`) become their ids. For
    /// text the program writes (chat template, raw prompts).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let enc =
            self.inner.encode(text, false).map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Encodes text as text: `<|im_start|>system` written by a user stays characters and never
    /// becomes a control token, so a message cannot forge a turn of the conversation.
    pub fn encode_text(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let enc =
            self.plain.encode(text, false).map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decodes ids to text, keeping special tokens as written (`<|im_end|>`).
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.inner.decode(ids, false).map_err(|e| TokenizerError::Encode(e.to_string()))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// Turns a stream of token ids into text pieces, holding back bytes of unfinished UTF-8 characters.
///
/// Byte-level BPE can split one character over several tokens; decoding the whole prefix and
/// emitting only the new, complete part keeps streamed text identical to the final decode.
pub struct TextStream {
    ids: Vec<u32>,
    emitted: usize,
}

impl Default for TextStream {
    fn default() -> Self {
        Self::new()
    }
}

impl TextStream {
    pub fn new() -> Self {
        Self { ids: Vec::new(), emitted: 0 }
    }

    /// Adds a token; returns newly completed text, if any.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<Option<String>, TokenizerError> {
        self.ids.push(id);
        let text = tok.decode(&self.ids)?;
        // An incomplete character decodes to U+FFFD at the end: wait for the next token.
        if text.ends_with('\u{FFFD}')
            || text.len() <= self.emitted
            || !text.is_char_boundary(self.emitted)
        {
            return Ok(None);
        }
        let piece = text[self.emitted..].to_string();
        self.emitted = text.len();
        Ok(Some(piece))
    }
}
