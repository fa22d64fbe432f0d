//! What one sequence in flight costs in memory, for sizing a stream to the free device memory
//! (`--batch-size auto`). Each family states its cost (`EarlyExitVlm::slot_cost`) from
//! [`SlotCost::decoder`] plus its own terms.
use crate::llama::LlamaConfig;

/// The memory of one sequence in flight: its KV-cache slot (and, for Mllama, its
/// cross-attention region) and its share of a full prefill's activations; plus what the run
/// needs whatever the slots.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SlotCost {
    pub cache_bytes: usize,
    pub prefill_bytes: usize,
    /// Memory the run needs whatever the slots: the vision work of the image at hand and of the
    /// previous one, whose features sequences in flight may still read.
    pub reserve_bytes: usize,
}

impl SlotCost {
    /// A decoder of `config`'s shape: `capacity` positions per slot over every layer, and a prompt
    /// of `prompt` tokens prefilled — per token the residual stream, norms, q/k/v, attention
    /// output and MLP intermediates alive at once (~8 × hidden + 3 × intermediate), plus one row
    /// of f32 logits.
    pub fn decoder(config: &LlamaConfig, capacity: usize, prompt: usize, elem: usize) -> Self {
        let kv_width = config.kv_heads() * config.head_dim();
        Self {
            cache_bytes: capacity * config.num_hidden_layers * 2 * kv_width * elem,
            prefill_bytes: prompt * (8 * config.hidden_size + 3 * config.intermediate_size) * elem
                + config.vocab_size * 4,
            reserve_bytes: 0,
        }
    }

    /// Bytes per slot.
    pub fn per_slot(&self) -> usize {
        self.cache_bytes + self.prefill_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// LLaVA-1.5-7B in bf16 with 600-token prompts and 256 new tokens, by hand: a slot's KV
    /// cache is 856 positions × 32 layers × 2 × 4096 × 2 bytes = 428 MiB.
    #[test]
    fn decoder_cost_by_hand_for_llava_7b() {
        let config: LlamaConfig = serde_json::from_value(serde_json::json!({
            "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
            "num_attention_heads": 32, "vocab_size": 32064}))
        .unwrap();
        let cost = SlotCost::decoder(&config, 856, 600, 2);
        assert_eq!(cost.cache_bytes, 856 * 32 * 2 * 4096 * 2);
        assert_eq!(cost.prefill_bytes, 600 * (8 * 4096 + 3 * 11008) * 2 + 32064 * 4);
        assert_eq!(cost.per_slot(), cost.cache_bytes + cost.prefill_bytes);
    }
}
