"""The model: a Qwen2-style decoder on megatron-core tensor-parallel layers with ParScale streams,
its KV cache and generation, and parameter/FLOP counting."""

from .lm import LMOutput, ParScaleLM, padded_vocab_size

__all__ = ["LMOutput", "ParScaleLM", "padded_vocab_size"]
