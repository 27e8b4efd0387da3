"""Absolute paths of the smoke tasks' data files, for their YAML files.

lm-eval hands a task's ``dataset_kwargs`` to ``datasets.load_dataset`` unchanged, and ``datasets``
resolves a relative ``data_files`` path against the working directory, not against the YAML. A YAML
tag ``!function utils.NAME`` is resolved by lm-eval against the ``utils.py`` next to the YAML (this
file, loaded by its path), and gives back the attribute ``NAME`` of it, whatever that is: here a
string. So a YAML writes ``test: !function utils.MC_JSONL`` and gets this folder's file from any
working directory. Only the standard library is imported: lm-eval loads this file by path.
"""

from pathlib import Path

HERE = Path(__file__).resolve().parent

MC_JSONL = str(HERE / "parscale_mc.jsonl")
PPL_JSONL = str(HERE / "parscale_ppl.jsonl")
GEN_JSONL = str(HERE / "parscale_gen.jsonl")
