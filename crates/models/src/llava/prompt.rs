//! LLaVA's conversation templates and its tokenizer with image-slot expansion (`<image>` becomes
//! one token per image feature, as transformers' `LlavaProcessor` expands it).
use std::path::Path;

use tokenizers::Tokenizer;

use crate::error::{Error, Result};

/// The original LLaVA-1.5 system sentence (`conv_vicuna_v1` in the LLaVA repository).
pub const LLAVA_V1_SYSTEM: &str = "A chat between a curious human and an artificial intelligence assistant. \
The assistant gives helpful, detailed, and polite answers to the human's questions.";

/// How a user prompt becomes the model's input text. Every template places exactly one image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Template {
    /// The original LLaVA-1.5 conversation: system sentence, then ` USER: <image>\n{prompt} ASSISTANT:`.
    LlavaV1,
    /// The llava-hf model card's prompt: `USER: <image>\n{prompt} ASSISTANT:`.
    LlavaHf,
    /// The prompt as given; it must contain `<image>`.
    Raw,
}

pub const IMAGE_PLACEHOLDER: &str = "<image>";

impl Template {
    pub fn name(self) -> &'static str {
        match self {
            Self::LlavaV1 => "llava-v1",
            Self::LlavaHf => "llava-hf",
            Self::Raw => "raw",
        }
    }

    pub const NAMES: [&'static str; 3] = ["llava-v1", "llava-hf", "raw"];

    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "llava-v1" => Ok(Self::LlavaV1),
            "llava-hf" => Ok(Self::LlavaHf),
            "raw" => Ok(Self::Raw),
            _ => Err(Error::invalid(format!("unknown template `{name}` (one of: {})", Self::NAMES.join(", ")))),
        }
    }

    /// The full input text for `prompt`.
    pub fn render(self, prompt: &str) -> Result<String> {
        match self {
            Self::LlavaV1 => Ok(format!("{LLAVA_V1_SYSTEM} USER: {IMAGE_PLACEHOLDER}\n{prompt} ASSISTANT:")),
            Self::LlavaHf => Ok(format!("USER: {IMAGE_PLACEHOLDER}\n{prompt} ASSISTANT:")),
            Self::Raw => {
                if prompt.matches(IMAGE_PLACEHOLDER).count() != 1 {
                    return Err(Error::invalid(format!(
                        "a raw prompt must contain `{IMAGE_PLACEHOLDER}` exactly once"
                    )));
                }
                Ok(prompt.to_string())
            }
        }
    }
}

/// The family seam renders prompts through this.
impl crate::vlm::PromptTemplate for Template {
    fn parse(name: &str) -> Result<Self> {
        Template::parse(name)
    }
    fn name(&self) -> &'static str {
        Template::name(*self)
    }
    fn render(&self, prompt: &str) -> Result<String> {
        Template::render(*self, prompt)
    }
    /// `LlavaProcessor(images, text)` with its defaults: the tokenizer adds BOS.
    fn add_special_tokens(&self) -> bool {
        true
    }
}

/// A model's tokenizer plus the id of its image placeholder.
pub struct PromptTokenizer {
    pub tokenizer: Tokenizer,
    pub image_token_id: u32,
}

impl PromptTokenizer {
    /// Loads `dir/tokenizer.json` and checks that `<image>` is the configured image token.
    pub fn from_dir(dir: &Path, image_token_id: u32) -> Result<Self> {
        let tokenizer = crate::tokenizer::load_with_image_token(dir, IMAGE_PLACEHOLDER, image_token_id)?;
        Ok(Self { tokenizer, image_token_id })
    }

    /// Token ids of `text` (special tokens such as BOS added as the tokenizer's post-processor
    /// says), with the single image token expanded into `slots` copies — what transformers'
    /// `LlavaProcessor` feeds the model.
    pub fn encode_with_image(&self, text: &str, slots: usize) -> Result<Vec<u32>> {
        self.encode_image_prompt(text, true, slots)
    }

    /// [`Self::encode_with_image`] with the tokenizer's special tokens added or not
    /// (`add_special_tokens` of the processor call).
    pub fn encode_image_prompt(&self, text: &str, add_special_tokens: bool, slots: usize) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, add_special_tokens)
            .map_err(|e| Error::invalid(format!("tokenization failed: {e}")))?;
        let ids = enc.get_ids();
        let n_images = ids.iter().filter(|&&i| i == self.image_token_id).count();
        if n_images != 1 {
            return Err(Error::invalid(format!(
                "the prompt has {n_images} image placeholders; exactly one is supported"
            )));
        }
        let mut out = Vec::with_capacity(ids.len() + slots);
        for &id in ids {
            if id == self.image_token_id {
                out.extend(std::iter::repeat_n(id, slots));
            } else {
                out.push(id);
            }
        }
        Ok(out)
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer.decode(ids, true).map_err(|e| Error::invalid(format!("detokenization failed: {e}")))
    }
}
