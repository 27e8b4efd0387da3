"""The tiny scaling experiments' shared config: the json package as corpus, 16-wide models of
``layers`` layers, one process."""

from __future__ import annotations

from pathlib import Path


def tiny_scaling_base(tmp_path: Path, name: str, layers: int) -> dict:
    """Run, data, tokenizer, packing and model sections of a tiny ``parscale scaling`` config."""
    return {
        "run": {"name": name, "output_dir": str(tmp_path / "exp"), "seed": 3},
        "data": {
            "sources": [{"type": "stdlib", "glob": "json/*.py"}],
            "output_dir": str(tmp_path / "data"),
            "val_fraction": 0.2,
        },
        "tokenizer": {"vocab_size": 400, "sample_docs": 40},
        "packing": {"seq_len": 32},
        "model": {
            "num_layers": layers,
            "hidden_size": 16,
            "ffn_hidden_size": 32,
            "num_attention_heads": 2,
            "num_kv_heads": 1,
            "max_seq_len": 64,
            "pad_vocab_to_multiple_of": 8,
        },
    }
