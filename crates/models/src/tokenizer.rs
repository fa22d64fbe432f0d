//! A vision-language model's `tokenizer.json`, checked to know the image placeholder at the id
//! `config.json` gives it; errors name the file.
use std::path::Path;

use tokenizers::Tokenizer;

use crate::error::{Error, Result};

/// Loads `dir/tokenizer.json` and checks that `image_token` is token `image_token_id`.
pub fn load_with_image_token(dir: &Path, image_token: &str, image_token_id: u32) -> Result<Tokenizer> {
    let path = dir.join("tokenizer.json");
    if !path.exists() {
        return Err(Error::input(&path, "tokenizer.json is missing from the model directory"));
    }
    let tokenizer =
        Tokenizer::from_file(&path).map_err(|e| Error::input(&path, format!("cannot load tokenizer: {e}")))?;
    match tokenizer.token_to_id(image_token) {
        Some(id) if id == image_token_id => Ok(tokenizer),
        Some(id) => Err(Error::input(
            &path,
            format!("`{image_token}` is token {id}, but config.json says image_token_index {image_token_id}"),
        )),
        None => Err(Error::input(&path, format!("the tokenizer has no `{image_token}` token"))),
    }
}
