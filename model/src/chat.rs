//! The ChatML chat template SmolLM2 uses, recognised from the Jinja template shipped with the model.
//!
//! Rather than embed a Jinja engine, we recognise the ChatML pattern and read the default system
//! prompt out of it; any other template is reported as unsupported.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into() }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// The conversation for one prompt: the system message when there is one, then the user's.
pub fn single_turn(system: Option<&str>, prompt: &str) -> Vec<Message> {
    let mut m = Vec::with_capacity(2);
    if let Some(s) = system {
        m.push(Message::system(s));
    }
    m.push(Message::user(prompt));
    m
}

use crate::tokenizer::{Tokenizer, TokenizerError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatTemplate {
    /// Inserted as the first turn when a conversation starts without a system message.
    pub default_system: Option<String>,
}

const IM_START: &str = "<|im_start|>";
const IM_END: &str = "<|im_end|>";

impl ChatTemplate {
    /// Recognises a ChatML Jinja template (as in SmolLM2's GGUF and tokenizer_config.json).
    pub fn from_jinja(template: &str) -> Result<Self, String> {
        if !template.contains(IM_START) || !template.contains(IM_END) {
            return Err(
                "only ChatML chat templates (<|im_start|>role ... <|im_end|>) are supported".into(),
            );
        }
        // The newline after the role is a real newline in some files and a Jinja `\n` escape in others.
        let default_system = ["\n", "\\n"].iter().find_map(|nl| {
            let marker = format!("{IM_START}system{nl}");
            let rest = &template[template.find(&marker)? + marker.len()..];
            rest.find(IM_END).map(|end| rest[..end].to_string())
        });
        Ok(Self { default_system })
    }

    /// Renders messages; with `add_generation_prompt` it ends with the assistant header.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> String {
        let mut out: String = self.segments(messages).into_iter().map(|s| s.text).collect();
        if add_generation_prompt {
            out.push_str(IM_START);
            out.push_str("assistant\n");
        }
        out
    }

    /// The rendered conversation in pieces, each marked whether it is assistant output (the
    /// content and its `<|im_end|>`): what a fine-tune computes its loss on, and whether it is
    /// message content (to be encoded as text). Concatenated, the pieces are exactly
    /// [`render`](Self::render)`(messages, false)`.
    pub fn segments(&self, messages: &[Message]) -> Vec<Segment> {
        let mut out = Vec::with_capacity(messages.len() * 4 + 1);
        let starts_with_system = messages.first().is_some_and(|m| m.role == "system");
        if let (false, Some(sys)) = (starts_with_system, &self.default_system) {
            out.push(Segment {
                text: format!("{IM_START}system\n{sys}{IM_END}\n"),
                trained: false,
                content: false,
            });
        }
        for m in messages {
            let trained = m.role == "assistant";
            out.push(Segment {
                text: format!("{IM_START}{}\n", m.role),
                trained: false,
                content: false,
            });
            out.push(Segment { text: m.content.clone(), trained, content: true });
            out.push(Segment { text: IM_END.into(), trained, content: false });
            out.push(Segment { text: "\n".into(), trained: false, content: false });
        }
        out
    }

    /// Token ids of the conversation, as the whole rendered string tokenizes, except that
    /// message content is encoded as text: only the template inserts control tokens. (The
    /// template's control tokens split the text anyway, so cutting there changes nothing else.)
    pub fn encode(
        &self,
        tok: &Tokenizer,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>, TokenizerError> {
        let control = |t: &str| tok.encode(t);
        let mut ids = Vec::new();
        let starts_with_system = messages.first().is_some_and(|m| m.role == "system");
        if let (false, Some(sys)) = (starts_with_system, &self.default_system) {
            ids.extend(control(&format!("{IM_START}system\n{sys}{IM_END}\n"))?);
        }
        for m in messages {
            ids.extend(control(IM_START)?);
            ids.extend(tok.encode_text(&format!("{}\n{}", m.role, m.content))?);
            ids.extend(control(&format!("{IM_END}\n"))?);
        }
        if add_generation_prompt {
            ids.extend(control(&format!("{IM_START}assistant\n"))?);
        }
        Ok(ids)
    }
}

/// A piece of a rendered conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub text: String,
    /// Whether a fine-tune learns to produce this piece.
    pub trained: bool,
    /// Message content: encoded as text ([`Tokenizer::encode_text`]), never as control tokens.
    pub content: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOLLM: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    #[test]
    fn renders_chatml_with_default_system() {
        let t = ChatTemplate::from_jinja(SMOLLM).unwrap();
        assert_eq!(
            t.default_system.as_deref(),
            Some("You are a helpful AI assistant named SmolLM, trained by Hugging Face")
        );
        let s = t.render(&[Message::user("Hi")], true);
        assert_eq!(
            s,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
             <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let s = t.render(&[Message::system("Be terse."), Message::user("Hi")], false);
        assert_eq!(s, "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n");
    }

    #[test]
    fn reads_the_default_system_prompt_with_a_real_newline() {
        let t = ChatTemplate::from_jinja(&SMOLLM.replace("\\n", "\n")).unwrap();
        assert_eq!(
            t.default_system.as_deref(),
            Some("You are a helpful AI assistant named SmolLM, trained by Hugging Face")
        );
    }

    #[test]
    fn rejects_other_templates() {
        assert!(ChatTemplate::from_jinja("{{ bos_token }}[INST] {{ m }} [/INST]").is_err());
    }
}
