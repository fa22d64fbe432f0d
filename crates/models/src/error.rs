//! One error type for the whole crate: every variant names the input it is about.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {message}")]
    Input { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    pub fn input(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        Error::Input { path: path.into(), message: message.to_string() }
    }
    pub fn invalid(message: impl std::fmt::Display) -> Self {
        Error::Invalid(message.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
