//! One error type for the whole crate: every variant names the input it is about.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {message}")]
    Input { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
    /// The logits of request `request` (its index in the scheduler's request order) held NaN or
    /// infinity when choosing new token `token` (1-based): a generated answer would be garbage.
    /// Callers that know which input the request was name it.
    #[error("the model's logits are not finite (NaN or infinity) at new token {token} of request {request}")]
    NonFiniteLogits { request: usize, token: usize },
    /// Work stopped because the process was asked to stop ([`crate::generation::interrupt`]).
    #[error("interrupted")]
    Interrupted,
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
