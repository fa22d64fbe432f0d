//! LLaVA-NeXT's conversation templates. Which one is the default depends on the language model:
//! the llava-hf model cards prompt llava-v1.6-mistral with `[INST] <image>\n… [/INST]`,
//! llava-v1.6-vicuna with the LLaVA-1.5 conversation, llama3-llava-next with a Llama 3 chat turn.
//! Tokenization is LLaVA's ([`crate::llava::PromptTokenizer`]), with as many slots per
//! `<image>` as this image's tiling gives.
use super::config::LlavaNextConfig;
use crate::error::{Error, Result};
use crate::llava::prompt::IMAGE_PLACEHOLDER;
use crate::llava::Template as LlavaTemplate;
use crate::vlm::TemplateInfo;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextTemplate {
    /// The LLaVA-1.5 conversation (llava-v1.6-vicuna).
    LlavaV1,
    /// `[INST] <image>\n{prompt} [/INST]` (llava-v1.6-mistral).
    MistralInstruct,
    /// `<|start_header_id|>user<|end_header_id|>\n\n<image>\n{prompt}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n`
    /// (llama3-llava-next; the tokenizer adds `<|begin_of_text|>`).
    Llama3,
    /// The prompt as given; it must contain `<image>` once.
    Raw,
}

/// The named templates, in `--help` order.
pub const TEMPLATES: &[TemplateInfo] = &[
    TemplateInfo { name: "llava-v1", help: "The original LLaVA-1.5 conversation (system sentence, USER/ASSISTANT)" },
    TemplateInfo {
        name: "mistral-instruct",
        help: "`[INST] <image>\\n{prompt} [/INST]` (LLaVA-NeXT with Mistral; its default)",
    },
    TemplateInfo {
        name: "llava-next-llama3",
        help: "a Llama 3 user turn with `<image>\\n` (LLaVA-NeXT with Llama 3; its default)",
    },
];

impl NextTemplate {
    /// The template the model's card uses for its language model.
    pub fn default_for(config: &LlavaNextConfig) -> Self {
        match config.text_model_type.as_str() {
            "mistral" => Self::MistralInstruct,
            _ if config.is_llama3() => Self::Llama3,
            _ => Self::LlavaV1,
        }
    }
}

impl crate::vlm::PromptTemplate for NextTemplate {
    fn parse(name: &str) -> Result<Self> {
        match name {
            "llava-v1" => Ok(Self::LlavaV1),
            "mistral-instruct" => Ok(Self::MistralInstruct),
            "llava-next-llama3" => Ok(Self::Llama3),
            "raw" => Ok(Self::Raw),
            _ => Err(Error::invalid(format!("unknown LLaVA-NeXT template `{name}`"))),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Self::LlavaV1 => "llava-v1",
            Self::MistralInstruct => "mistral-instruct",
            Self::Llama3 => "llava-next-llama3",
            Self::Raw => "raw",
        }
    }

    fn render(&self, prompt: &str) -> Result<String> {
        match self {
            Self::LlavaV1 => LlavaTemplate::LlavaV1.render(prompt),
            Self::Raw => LlavaTemplate::Raw.render(prompt),
            Self::MistralInstruct => Ok(format!("[INST] {IMAGE_PLACEHOLDER}\n{prompt} [/INST]")),
            Self::Llama3 => Ok(format!(
                "<|start_header_id|>user<|end_header_id|>\n\n{IMAGE_PLACEHOLDER}\n{prompt}<|eot_id|>\
                 <|start_header_id|>assistant<|end_header_id|>\n\n"
            )),
        }
    }

    /// `LlavaNextProcessor(images, text)` with its defaults: the tokenizer adds its BOS (the
    /// Llama 3 turn is written without one for that reason).
    fn add_special_tokens(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vlm::PromptTemplate;

    #[test]
    fn templates_render_as_the_model_cards_prompt() {
        let p = "What is shown in this image?";
        assert_eq!(
            NextTemplate::MistralInstruct.render(p).unwrap(),
            "[INST] <image>\nWhat is shown in this image? [/INST]"
        );
        assert_eq!(
            NextTemplate::Llama3.render(p).unwrap(),
            "<|start_header_id|>user<|end_header_id|>\n\n<image>\nWhat is shown in this image?<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        assert!(NextTemplate::LlavaV1
            .render(p)
            .unwrap()
            .ends_with("USER: <image>\nWhat is shown in this image? ASSISTANT:"));
        assert!(NextTemplate::Raw.render("no image").is_err());
        for t in TEMPLATES {
            assert_eq!(NextTemplate::parse(t.name).unwrap().name(), t.name);
        }
        let config = |text: &str| {
            super::LlavaNextConfig::from_json_str(&format!(r#"{{"model_type": "llava_next", "text_config": {text}}}"#))
                .unwrap()
        };
        assert_eq!(NextTemplate::default_for(&config(r#"{"model_type": "mistral"}"#)), NextTemplate::MistralInstruct);
        assert_eq!(
            NextTemplate::default_for(&config(r#"{"model_type": "llama", "vocab_size": 128320}"#)),
            NextTemplate::Llama3
        );
        assert_eq!(NextTemplate::default_for(&config(r#"{"vocab_size": 32064}"#)), NextTemplate::LlavaV1);
    }
}
