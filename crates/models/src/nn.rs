//! Parameterised building blocks shared by every model: each holds its weights on the backend
//! and loads them by transformers' names (`{name}.weight`, `{name}.bias`).
use crate::backend::Backend;
use crate::error::Result;
use crate::weights::Weights;

/// `nn.Linear`: weight `[out, in]`, optional bias `[out]`.
pub struct Linear<B: Backend> {
    pub weight: B::Tensor,
    pub bias: Option<B::Tensor>,
}

impl<B: Backend> Linear<B> {
    pub fn load(w: &Weights<B>, name: &str, out: usize, inp: usize, bias: bool) -> Result<Self> {
        let w = w.sub(name);
        let bias = if bias { Some(w.get("bias", &[out])?) } else { None };
        Self::new(w.backend, w.get("weight", &[out, inp])?, bias)
    }
    /// From a weight already on the backend (`[out, in]`), stored for `linear`
    /// ([`Backend::linear_weight`]).
    pub fn new(b: &B, weight: B::Tensor, bias: Option<B::Tensor>) -> Result<Self> {
        Ok(Self { weight: b.linear_weight(weight)?, bias })
    }
    pub fn forward(&self, b: &B, x: &B::Tensor) -> Result<B::Tensor> {
        b.linear(x, &self.weight, self.bias.as_ref())
    }
}

/// `nn.LayerNorm` over the last axis.
pub struct LayerNorm<B: Backend> {
    pub weight: B::Tensor,
    pub bias: B::Tensor,
    pub eps: f32,
}

impl<B: Backend> LayerNorm<B> {
    pub fn load(w: &Weights<B>, name: &str, width: usize, eps: f32) -> Result<Self> {
        let w = w.sub(name);
        Ok(Self { weight: w.get("weight", &[width])?, bias: w.get("bias", &[width])?, eps })
    }
    pub fn forward(&self, b: &B, x: &B::Tensor) -> Result<B::Tensor> {
        b.layer_norm(x, &self.weight, &self.bias, self.eps)
    }
    /// The residual step of a pre-norm block: `x += delta`, then this norm of `x`.
    pub fn add_forward(&self, b: &B, x: &mut B::Tensor, delta: &B::Tensor) -> Result<B::Tensor> {
        b.add_layer_norm(x, delta, &self.weight, &self.bias, self.eps)
    }
}

/// `LlamaRMSNorm`.
pub struct RmsNorm<B: Backend> {
    pub weight: B::Tensor,
    pub eps: f32,
}

impl<B: Backend> RmsNorm<B> {
    pub fn load(w: &Weights<B>, name: &str, width: usize, eps: f32) -> Result<Self> {
        Ok(Self { weight: w.sub(name).get("weight", &[width])?, eps })
    }
    pub fn forward(&self, b: &B, x: &B::Tensor) -> Result<B::Tensor> {
        b.rms_norm(x, &self.weight, self.eps)
    }
    /// The residual step of a pre-norm block: `x += delta`, then this norm of `x`.
    pub fn add_forward(&self, b: &B, x: &mut B::Tensor, delta: &B::Tensor) -> Result<B::Tensor> {
        b.add_rms_norm(x, delta, &self.weight, self.eps)
    }
}
