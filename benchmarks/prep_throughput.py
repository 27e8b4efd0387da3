"""Benchmark the data_prep pipeline on the embedded corpus (this interpreter's standard library),
all measured in one run on this machine:

1. tokens/s of the Ray tokenization stage (2 actors by default, one thread each, started and
   warm) against (a) a single-process loop over the same files with the same sentencepiece model
   and the same per-document work (one thread), and (b) ``datasets.Dataset.map(num_proc=N)``;
   goals: >= 1.7x (a), >= 1.0x (b). For the record it also times one process letting
   sentencepiece batch-encode on all its threads;
2. peak memory (RSS of the whole process tree: driver, Ray's processes, workers) of a full
   ``parscale prep`` job on the corpus at 1x and at 4x its size; goal: ratio <= 1.3.

    python benchmarks/prep_throughput.py [--workers 2] [--skip-memory]
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data_prep import tokenizer as tok  # noqa: E402
from data_prep.filters import clean  # noqa: E402
from data_prep.ray_runtime import ray_session  # noqa: E402
from data_prep.tokenize_units import process_unit  # noqa: E402
from data_prep.units import plan, stdlib_root  # noqa: E402
from pipeline.config import load_config  # noqa: E402

CONFIG = REPO / "configs" / "prep_stdlib.yaml"


def _train_tokenizer(work: Path):
    from data_prep.job import _sample_documents

    loaded = load_config(CONFIG, [f"data.output_dir={work / 'tok'}"])
    plans = plan(loaded.config.data)
    model = tok.train(loaded.config.tokenizer, _sample_documents(plans, loaded.config), 1234, work / "bench.model")
    return loaded.config, plans, model


def bench_single(cfg, plans, model, threads: int) -> tuple[int, float]:
    sp = tok.load(model)
    dtype = tok.token_dtype(sp.get_piece_size(), "auto")
    start = time.perf_counter()
    tokens = sum(process_unit(u, sp, cfg.data, dtype, sp.eos_id(), threads).tokens.size for p in plans for u in p.units)
    return tokens, time.perf_counter() - start


def bench_ray(cfg, plans, model, workers: int, work: Path) -> tuple[int, float, float]:
    import ray
    from ray.util import ActorPool

    from data_prep.tokenize_units import UnitTokenizer

    t0 = time.perf_counter()
    with ray_session(None, workers):
        started = time.perf_counter()
        sp = tok.load(model)
        actor = ray.remote(num_cpus=1)(UnitTokenizer)
        actors = [actor.remote(str(model), cfg.data.model_dump_json(), "uint16", sp.eos_id()) for _ in range(workers)]
        ray.get([a.ready.remote() for a in actors])
        warm = time.perf_counter()
        pool = ActorPool(actors)
        units = [u for p in plans for u in p.units]
        (work / "units").mkdir(exist_ok=True)
        jobs = ((u.to_dict(), str(work / "units" / f"{u.key}.npz")) for u in units)
        tokens = sum(s["tokens"] for s in pool.map_unordered(lambda a, j: a.run.remote(*j), jobs))
        done = time.perf_counter()
    print(f"Ray start-up {started - t0:.1f}s, actor start-up {warm - started:.1f}s (fixed costs, not in tok/s)")
    return tokens, done - warm, done - t0


@functools.cache
def _processor(model: str):
    return tok.load(model)


def bench_datasets(cfg, plans, model, workers: int) -> tuple[int, float, float]:
    import datasets

    datasets.disable_progress_bars()
    files = [f for p in plans for u in p.units for f in u.files]
    start = time.perf_counter()
    texts = []
    for f in files:
        try:
            text, reason, _ = clean(Path(f).read_bytes().decode("utf-8"), cfg.data)
        except (OSError, UnicodeDecodeError):
            continue
        if reason is None:
            texts.append(text)
    ds = datasets.Dataset.from_dict({"text": texts})
    loaded = time.perf_counter()
    eos = tok.load(model).eos_id()

    def encode(batch):
        sp = _processor(str(model))  # one per datasets worker process
        return {"ids": [ids + [eos] for ids in sp.encode(batch["text"], num_threads=1)]}

    out = ds.map(encode, batched=True, batch_size=64, num_proc=workers, remove_columns=["text"])
    done = time.perf_counter()
    tokens = int(sum(len(x) for x in out["ids"]))
    return tokens, done - loaded, done - start


def _tree_rss(pid: int) -> int:
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc] + proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def peak_memory_of_prep(sources_root: Path, out: Path, copies: int) -> tuple[int, float]:
    """Peak RSS of `parscale prep` over ``copies`` copies of the corpus (one code source)."""
    corpus = sources_root / f"x{copies}"
    if not corpus.exists():
        for i in range(copies):
            shutil.copytree(
                stdlib_root(),
                corpus / f"copy{i}",
                ignore=shutil.ignore_patterns("site-packages", "dist-packages", "__pycache__"),
            )
    overrides = [
        f"data.sources=[{{type: code, path: '{corpus}', glob: '**/*.py'}}]",
        f"data.output_dir={out}",
        "data.dedup=false",
    ]
    cmd = [str(Path(sys.executable).parent / "parscale"), "prep", str(CONFIG)]
    for o in overrides:
        cmd += ["--set", o]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _tree_rss(proc.pid))
        time.sleep(0.1)
    if proc.returncode:
        raise SystemExit(f"prep at {copies}x failed with exit {proc.returncode}: {' '.join(cmd)}")
    return peak, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="Ray actors and datasets num_proc (default 2)")
    parser.add_argument("--skip-memory", action="store_true", help="only the throughput comparison")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    work = Path(tempfile.mkdtemp(prefix="prep-bench-"))
    try:
        cfg, plans, model = _train_tokenizer(work)
        n_files = sum(len(u.files) for p in plans for u in p.units)
        size = sum(u.size for p in plans for u in p.units)
        print(
            f"corpus: {n_files} files, {size / 1e6:.1f} MB ({stdlib_root()}); tokenizer vocab "
            f"{tok.load(model).get_piece_size()}; {os.cpu_count()} CPUs; workers {args.workers}"
        )
        single_tok, single_s = bench_single(cfg, plans, model, threads=1)
        threaded_tok, threaded_s = bench_single(cfg, plans, model, threads=os.cpu_count() or 1)
        ray_tok, ray_s, ray_total = bench_ray(cfg, plans, model, args.workers, work)
        ds_tok, ds_s, ds_total = bench_datasets(cfg, plans, model, args.workers)
        assert ray_tok == single_tok, (ray_tok, single_tok)
        rows = [
            ("single process loop", single_tok, single_s),
            (f"1 process, spm {os.cpu_count()} threads", threaded_tok, threaded_s),
            ("Ray actors", ray_tok, ray_s),
            (f"datasets.map(num_proc={args.workers})", ds_tok, ds_s),
        ]
        print(f"\n{'tokenization':<28}{'tokens':>12}{'seconds':>10}{'M tok/s':>10}")
        for name, n, s in rows:
            print(f"{name:<28}{n:>12,}{s:>10.2f}{n / s / 1e6:>10.2f}")
        ray_tps, single_tps, ds_tps = ray_tok / ray_s, single_tok / single_s, ds_tok / ds_s
        print(f"\nratio Ray / single process:   {ray_tps / single_tps:.2f}x  (goal >= 1.7)")
        print(f"ratio Ray / datasets.map:     {ray_tps / ds_tps:.2f}x  (goal >= 1.0)")
        print(f"ratio Ray / 1 process with sentencepiece threads: {ray_tps / (threaded_tok / threaded_s):.2f}x")
        print(
            f"  with Ray start-up included: {ray_tok / ray_total / 1e6:.2f}M tok/s; datasets with its load from "
            f"files: {ds_tok / ds_total / 1e6:.2f}M tok/s"
        )
        if not args.skip_memory:
            peak1, s1 = peak_memory_of_prep(work, work / "out1", 1)
            peak4, s4 = peak_memory_of_prep(work, work / "out4", 4)
            print(
                f"\npeak RSS of a full prep job: 1x corpus {peak1 / 2**30:.2f} GiB ({s1:.0f}s), "
                f"4x corpus {peak4 / 2**30:.2f} GiB ({s4:.0f}s)"
            )
            print(f"ratio peak memory 4x / 1x:    {peak4 / peak1:.2f}  (goal <= 1.3)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
