"""Checkpoint formats: the portable one (safetensors + JSON config + tokenizer, no pickle)."""
