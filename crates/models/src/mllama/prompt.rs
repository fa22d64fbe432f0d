//! How a user prompt becomes Llama 3.2 Vision's input ids: its templates, the processor's BOS
//! placement (`build_string_from_input`) and the tokenizer checks.
use std::path::Path;

use tokenizers::Tokenizer;

use crate::error::{Error, Result};

pub const IMAGE_TOKEN: &str = "<|image|>";
pub const BOS_TOKEN: &str = "<|begin_of_text|>";

/// How a user prompt becomes the model's input text for Llama 3.2 Vision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MllamaTemplate {
    /// The Llama 3 chat format with the image first in the user turn, as
    /// Llama-3.2-11B-Vision-Instruct's chat template renders one user message with one image
    /// (no system turn) plus the generation prompt.
    Llama3,
    /// The prompt as given; it must contain `<|image|>` exactly once.
    Raw,
}

impl MllamaTemplate {
    pub const NAMES: [&'static str; 2] = ["llama3", "raw"];

    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "llama3" => Ok(Self::Llama3),
            "raw" => Ok(Self::Raw),
            _ => Err(Error::invalid(format!("unknown Mllama template `{name}` (one of: {})", Self::NAMES.join(", ")))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Llama3 => "llama3",
            Self::Raw => "raw",
        }
    }

    pub fn render(self, prompt: &str) -> Result<String> {
        match self {
            Self::Llama3 => Ok(format!(
                "{BOS_TOKEN}<|start_header_id|>user<|end_header_id|>\n\n{IMAGE_TOKEN}{prompt}<|eot_id|>\
                 <|start_header_id|>assistant<|end_header_id|>\n\n"
            )),
            Self::Raw => {
                if prompt.matches(IMAGE_TOKEN).count() != 1 {
                    return Err(Error::invalid(format!("a raw prompt must contain `{IMAGE_TOKEN}` exactly once")));
                }
                Ok(prompt.to_string())
            }
        }
    }
}

/// The family seam renders prompts through this.
impl crate::vlm::PromptTemplate for MllamaTemplate {
    fn parse(name: &str) -> Result<Self> {
        MllamaTemplate::parse(name)
    }
    fn name(&self) -> &'static str {
        MllamaTemplate::name(*self)
    }
    fn render(&self, prompt: &str) -> Result<String> {
        MllamaTemplate::render(*self, prompt)
    }
    /// `llama3` writes the BOS itself and is tokenized as the model card does,
    /// `processor(image, text, add_special_tokens=False)`; `raw` is the processor's default call,
    /// `processor(image, prompt)`, whose tokenizer adds a BOS before the one
    /// `build_string_from_input` puts after the leading `<|image|>`.
    fn add_special_tokens(&self) -> bool {
        matches!(self, Self::Raw)
    }
}

/// The `llama3` format of one user turn without an image (text-only use of the model, e.g. a
/// Llama Guard 3 Vision judge on text): the cross-attention layers are then skipped.
pub fn llama3_text_only(prompt: &str) -> String {
    format!(
        "{BOS_TOKEN}<|start_header_id|>user<|end_header_id|>\n\n{prompt}<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n"
    )
}

/// `build_string_from_input` of transformers' processing_mllama.py: without a BOS in the text,
/// leading `<|image|>` tokens stay in front and BOS is inserted after them.
pub fn build_string_from_input(text: &str) -> String {
    if text.contains(BOS_TOKEN) {
        return text.to_string();
    }
    let mut rest = text;
    let mut images = 0;
    while let Some(r) = rest.strip_prefix(IMAGE_TOKEN) {
        rest = r;
        images += 1;
    }
    format!("{}{BOS_TOKEN}{rest}", IMAGE_TOKEN.repeat(images))
}

/// `dir/tokenizer.json`, checked to have `<|image|>` at the configured id and a `<|begin_of_text|>`.
pub fn load_tokenizer(dir: &Path, image_token_id: u32) -> Result<Tokenizer> {
    let tokenizer = crate::tokenizer::load_with_image_token(dir, IMAGE_TOKEN, image_token_id)?;
    if tokenizer.token_to_id(BOS_TOKEN).is_none() {
        return Err(Error::input(dir.join("tokenizer.json"), format!("the tokenizer has no `{BOS_TOKEN}` token")));
    }
    Ok(tokenizer)
}
