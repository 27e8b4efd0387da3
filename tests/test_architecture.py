"""The code's shape: the layer order of pyproject.toml's import-linter contract holds, no module
imports itself back through another, and each rule issue 17 found copied lives in one place."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import grimp
import pytest
from helpers.paths import REPO

PACKAGES = ("pipeline", "data_prep", "checkpoints_tools")


def test_layer_contract_is_kept():
    """``lint-imports`` (import-linter) with the contract in pyproject.toml: CLI > commands > scaling >
    job > checkpoints_tools > training > checkpoint > data > model > data_prep > distributed >
    config > utils > errors; a lower layer never imports a higher one (function-local imports count)."""
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0 and "Contracts: 1 kept, 0 broken." in proc.stdout, proc.stdout + proc.stderr


def _import_cycles(graph) -> list[tuple[str, ...]]:
    cycles = []
    for module in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            chain = graph.find_shortest_chain(importer=imported, imported=module)
            if chain:
                cycles.append((module, *chain))
    return cycles


def test_no_module_imports_itself_back():
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    assert len(graph.modules) > 100  # the whole tree was read
    assert _import_cycles(graph) == []


def test_the_cycle_check_finds_a_cycle(tmp_path, monkeypatch):
    for name, body in {"__init__": "", "a": "def f():\n    from . import b\n", "b": "from . import a\n"}.items():
        (tmp_path / "loop_pkg").mkdir(exist_ok=True)
        (tmp_path / "loop_pkg" / f"{name}.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert _import_cycles(grimp.build_graph("loop_pkg", cache_dir=None)) == [
        ("loop_pkg.a", "loop_pkg.b", "loop_pkg.a"),
        ("loop_pkg.b", "loop_pkg.a", "loop_pkg.b"),
    ]


#: (what the rule is, a pattern of its definition, the one file allowed to hold it)
ONE_PLACE = [
    ("which parameters are ParScale's", r'"\.prefix\."|"aggregate_layer"', "pipeline/model/param_groups.py"),
    (
        "the vocabulary-row parameters",
        r'"model\.embed_tokens\.weight",\s*"lm_head\.weight"',
        "pipeline/model/param_groups.py",
    ),
    (
        "the checkpoint folder's file names",
        r'"trainer_state\.json"|"resharded\.json"|"COMPLETE"|= "latest"',
        "pipeline/checkpoint/step_folders.py",
    ),
    (
        "a run folder's file names",
        r'/ "portable"|/ "checkpoints"|"config\.resolved\.yaml"|"job\.yaml"',
        "pipeline/config/run_paths.py",
    ),
    ("the padding id of a tokenizer without one", r"max\([\w.]*pad_id, 0\)", "data_prep/text_tokenizer.py"),
    ("steps from a token budget", r"math\.ceil\([^)]*\.tokens\s*/", "pipeline/config/training.py"),
    ("the config arguments of a command", r"def add_config_args", "pipeline/config/cli_args.py"),
    (
        "the validation loss loop",
        r"out\.loss\.double\(\) \* tokens|out\.loss\.item\(\) \*",
        "pipeline/training/evaluation.py",
    ),
    ("a file or folder written under a temporary name", r'\.staging"|\.tmp"|mkstemp\(', "pipeline/utils/fs.py"),
    (
        "TP divisibility of the model",
        r"(?<!world_size )% (tp|tp_size|tensor_parallel_size)\b",
        "pipeline/config/model.py",
    ),
]


@pytest.mark.parametrize("rule, pattern, home", ONE_PLACE, ids=[r[0] for r in ONE_PLACE])
def test_each_rule_lives_in_one_place(rule, pattern, home):
    found = sorted(
        {
            str(p.relative_to(REPO))
            for package in (*PACKAGES, "benchmarks")
            for p in (REPO / package).rglob("*.py")
            if re.search(pattern, p.read_text(), re.M)
        }
    )
    assert found == [home], f"{rule}: {found}"


def test_portable_configs_are_read_only_through_read_config():
    """``config.json`` of a portable checkpoint is read by ``pipeline.checkpoint.portable.read_config``
    (which checks its format and names a folder that is not one), never with a raw ``json.loads``."""
    found = [
        f"{p.relative_to(REPO)}:{n}"
        for package in (*PACKAGES, "benchmarks")
        for p in (REPO / package).rglob("*.py")
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if re.search(r"json\.loads\(.*portable", line)
    ]
    assert found == []


#: distribution name -> the module it is imported as, where they differ
IMPORT_NAME = {"megatron-core": "megatron", "pyyaml": "yaml", "lm-eval": "lm_eval"}


def test_every_declared_dependency_is_imported_by_the_code():
    """pyproject.toml declares what the code imports, and nothing it does not."""
    import tomllib

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[\[<>=!~ ]", spec, maxsplit=1)[0].lower() for spec in declared}
    imported = set()
    for package in PACKAGES:
        for p in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(p.read_text())):
                if isinstance(node, ast.Import):
                    imported |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    imported.add(node.module.split(".")[0])
    assert sorted(n for n in names if IMPORT_NAME.get(n, n) not in imported) == []


#: third-party libraries imported inside the function that uses them: costly to import (a command
#: pays only for what it runs; Ray actors and the CLI start fast) or, DeepSpeed, needing the
#: accelerator chosen before its import
IMPORTED_WHERE_USED = {
    "deepspeed",
    "megatron",
    "ray",
    "matplotlib",
    "transformers",
    "datasets",
    "pyarrow",
    "wandb",
    "zstandard",
    "lm_eval",
}
#: project modules that import one of those at their top, so are imported where used too
LAZY_PROJECT_MODULES = ("harness_model",)
#: the command-line entry points, whose subcommands import what they run when they run
CLI_MODULES = ("pipeline/cli.py", "pipeline/commands/", "data_prep/cli.py", "checkpoints_tools/cli.py")


def _local_imports(source: str) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for sub in ast.walk(node):
                if isinstance(sub, ast.ImportFrom):
                    found.append((sub.lineno, "." * sub.level + (sub.module or "")))
                elif isinstance(sub, ast.Import):
                    found += [(sub.lineno, alias.name) for alias in sub.names]
    return [
        (line, name)
        for line, name in found
        if name.split(".")[0] not in IMPORTED_WHERE_USED and not name.lstrip(".").endswith(LAZY_PROJECT_MODULES)
    ]


def test_function_local_imports_only_where_import_cost_matters():
    found = [
        f"{p.relative_to(REPO)}:{line} imports {name}"
        for package in PACKAGES
        for p in (REPO / package).rglob("*.py")
        if not str(p.relative_to(REPO)).startswith(CLI_MODULES)
        for line, name in _local_imports(p.read_text())
    ]
    assert found == []
    assert _local_imports("def f():\n    import json\n    from .x import y\n    import ray\n") == [
        (2, "json"),
        (3, ".x"),
    ]


def test_the_cli_starts_without_importing_torch_or_the_heavy_libraries():
    heavy = sorted({"torch", *IMPORTED_WHERE_USED})
    code = f"import sys, pipeline.cli; print(sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r})))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_the_launcher_agent_and_hostlist_start_without_megatron_or_deepspeed():
    """``torchrun_main`` runs before every set of ranks and ``hostlist`` in the SLURM scripts: the
    distributed package's names load their module on first use, so neither pays for megatron-core."""
    code = (
        "import sys, pipeline.distributed.torchrun_main, pipeline.distributed.hostlist; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'megatron', 'deepspeed'}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr
    from pipeline.distributed import MegatronMPU, single_process

    assert MegatronMPU.__module__ == "pipeline.distributed.mpu" and callable(single_process)
