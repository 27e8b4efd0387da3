"""How fast ``parscale prep`` is against its limit, all measured in one run on this machine.

The corpus is this interpreter's standard library (its .py files) written as JSON lines, 4 copies
(~131 MB) and 16 copies (~524 MB); every copy is kept (``data.dedup: false``). Two tokenizers, both
with 4,096 ids, trained on the same sample of the corpus: sentencepiece BPE, trained as prep trains
it (configs/prep_stdlib.yaml), and a Hugging Face byte-level BPE (``tokenizers``, Qwen2 style).

For each tokenizer and corpus size it times

- the ceiling: the tokenizer's own batch encoding of the same documents on the same cores, in this
  process, the documents already read, parsed and cleaned (sentencepiece ``encode(list,
  num_threads=W)``; ``tokenizers`` ``encode_batch_fast`` on W threads), counting each document's
  tokens plus its end-of-document token;
- ``parscale prep`` end to end: the real command in a subprocess with ``data.num_workers=W``, from
  its start to its exit (Ray start-up, planning, tokenization, packing, shards, manifest), the
  tokens being those its manifest counts (they must equal the ceiling's);

and prints prep's tokens/s as a ratio to the ceiling's (goals: >= 0.85 at 4 copies, >= 0.9 at 16).
Before each timing it waits (``--settle``, up to 300 s) until other processes leave the CPUs idle;
with ``--repeat N`` it times each pair N times and keeps the fastest of each.

With ``--memory`` it also samples the peak RSS of prep's whole process tree (driver, Ray, actors)
during those runs, 16 copies against 4 (goal: ratio <= 1.3). With ``--stage`` it also times the
Ray tokenization stage alone, with its actors started and warm, against a one-process loop over
the same units and against ``datasets.Dataset.map(num_proc=W)`` (goals: >= 1.7x and >= 1.0x).

    python benchmarks/prep_throughput.py [--workers 2] [--copies 4 16] [--tokenizers sentencepiece hf]
        [--repeat 1] [--settle 300] [--memory] [--stage] [--work DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "tests"))  # helpers.hf_models: the byte-level BPE the tests use too

from data_prep import sentencepiece_tokenizer  # noqa: E402
from data_prep import tokenizer as tok  # noqa: E402
from data_prep.filters import clean  # noqa: E402
from data_prep.readers import read_unit  # noqa: E402
from data_prep.units import plan, stdlib_root  # noqa: E402
from pipeline.config import load_config  # noqa: E402

CONFIG = REPO / "configs" / "prep_stdlib.yaml"
VOCAB = 4096
CEILING_BATCH = 1024  # documents per batch-encode call of the ceiling
TOKENIZERS = {"sentencepiece": "tokenizer.model", "hf": "tokenizer.json"}


# --- corpus and tokenizers ----------------------------------------------------------------------


def stdlib_documents() -> list[str]:
    """The standard library's .py files as prep's stdlib source reads them (UTF-8 ones)."""
    (source,) = plan(load_config(CONFIG, []).config.data)
    return [r.text for u in source.units for r in read_unit(u) if r.text is not None]


def build_corpora(work: Path, copies: list[int]) -> dict[int, Path]:
    """``corpus-xN.jsonl``: N copies of the standard library, one {"text": ...} line per file."""
    docs = stdlib_documents()
    block = "".join(json.dumps({"text": d}) + "\n" for d in docs).encode("utf-8")
    paths = {}
    for n in copies:
        path = work / f"corpus-x{n}.jsonl"
        if not path.exists() or path.stat().st_size != n * len(block):
            with open(path, "wb") as handle:
                for _ in range(n):
                    handle.write(block)
        paths[n] = path
    return paths


def _overrides(corpus: Path, out: Path, workers: int, model_path: Path | None = None) -> list[str]:
    sets = [
        f"data.sources=[{{type: jsonl, path: '{corpus}'}}]",
        f"data.output_dir={out}",
        "data.dedup=false",
        f"data.num_workers={workers}",
        f"tokenizer.vocab_size={VOCAB}",
    ]
    return sets + ([f"tokenizer.model_path={model_path}"] if model_path else [])


def train_tokenizers(work: Path, corpus: Path, kinds: list[str]) -> dict[str, Path]:
    """Both tokenizers trained on the same sample of ``corpus``: the documents prep would train on."""
    from data_prep.prepare import _sample_documents

    cfg = load_config(CONFIG, _overrides(corpus, work / "unused", 1)).config
    sample = _sample_documents(plan(cfg.data), cfg)
    folders = {}
    for kind in kinds:
        folder = work / f"tok-{kind}"
        if not (folder / TOKENIZERS[kind]).exists():
            start = time.perf_counter()
            if kind == "sentencepiece":
                sentencepiece_tokenizer.train(cfg.tokenizer, list(sample), cfg.run.seed, folder / TOKENIZERS[kind])
            else:
                from helpers.hf_models import byte_level_bpe

                byte_level_bpe(sample, folder, VOCAB)
            print(f"trained {kind} on {len(sample)} documents in {time.perf_counter() - start:.0f}s", flush=True)
        folders[kind] = folder
    return folders


# --- the ceiling and prep end to end ------------------------------------------------------------


def corpus_documents(corpus: Path, data) -> list[str]:
    """Every document of the corpus as prep tokenizes it: parsed and cleaned (untimed)."""
    docs = []
    with open(corpus, "rb") as handle:
        for line in handle:
            text, reason, _ = clean(json.loads(line)["text"], data)
            if reason is None:
                docs.append(text)
    return docs


def ceiling(folder: Path, docs: list[str], workers: int) -> tuple[int, float]:
    """(tokens, seconds) of the tokenizer batch-encoding ``docs`` on ``workers`` threads."""
    t = tok.open_tokenizer(folder, threads=workers)
    t.encode_batch(docs[:64])  # warm: thread pools, caches
    start = time.perf_counter()
    tokens = 0
    for i in range(0, len(docs), CEILING_BATCH):
        tokens += sum(len(ids) + 1 for ids in t.encode_batch(docs[i : i + CEILING_BATCH]))
    return tokens, time.perf_counter() - start


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


def run_prep(corpus: Path, folder: Path, out: Path, workers: int, memory: bool) -> tuple[int, float, int]:
    """(tokens in the manifest, seconds from start to exit, peak RSS of its process tree or 0)."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [str(Path(sys.executable).parent / "parscale"), "prep", str(CONFIG)]
    for o in _overrides(corpus, out, workers, folder):
        cmd += ["--set", o]
    log = out.parent / f"{out.name}.log"
    env = {k: v for k, v in os.environ.items() if k not in ("RAYON_NUM_THREADS", "TOKENIZERS_PARALLELISM")}
    peak = 0
    with open(log, "wb") as handle:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, env=env)
        if memory:
            while proc.poll() is None:
                peak = max(peak, _tree_rss(proc.pid))
                time.sleep(0.1)
        proc.wait()
        seconds = time.perf_counter() - start
    if proc.returncode:
        tail = log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"prep failed with exit {proc.returncode}: {' '.join(cmd)}\n{tail}")
    totals = json.loads((out / "manifest.json").read_text())["totals"]
    return totals["train"]["tokens"] + totals["val"]["tokens"], seconds, peak


def _busy(seconds: float = 2.0) -> float:
    """Share of all CPUs busy over ``seconds`` (Linux), while this benchmark runs nothing."""

    def sample() -> tuple[int, int]:
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return sum(ticks) - ticks[3] - ticks[4], sum(ticks)

    b0, t0 = sample()
    time.sleep(seconds)
    b1, t1 = sample()
    return (b1 - b0) / max(1, t1 - t0)


def settle(max_wait: float) -> tuple[float, float]:
    """Wait (up to ``max_wait`` s) until other processes leave the CPUs nearly idle, so each timed run
    starts on a quiet machine; returns the 1-minute load average and the busy share found. (The load
    average alone would also count this benchmark's own previous run.)"""
    if not Path("/proc/stat").exists():
        return float("nan"), float("nan")
    deadline = time.monotonic() + max_wait
    busy = _busy()
    while busy > 0.15 and time.monotonic() < deadline:
        time.sleep(10)
        busy = _busy()
    return float(Path("/proc/loadavg").read_text().split()[0]), busy


# --- the Ray stage alone (--stage) --------------------------------------------------------------


def bench_stage(corpus: Path, folder: Path, work: Path, workers: int) -> None:
    """Tokenization only, on the units of ``corpus``: warm Ray actors against one process (one
    thread) and against datasets.map(num_proc=workers)."""
    import ray
    from ray.util import ActorPool

    from data_prep.ray_runtime import ray_session
    from data_prep.tokenize_units import UnitTokenizer, process_unit

    cfg = load_config(CONFIG, _overrides(corpus, work / "unused", workers, folder)).config
    units = [u for p in plan(cfg.data) for u in p.units]
    t = tok.open_tokenizer(folder, threads=1)
    dtype = tok.token_dtype(t.vocab_size, "auto")
    start = time.perf_counter()
    single_tok = sum(process_unit(u, t, cfg.data, dtype).tokens.size for u in units)
    single_s = time.perf_counter() - start

    t0 = time.perf_counter()
    with ray_session(None, workers):
        started = time.perf_counter()
        actor = ray.remote(num_cpus=1)(UnitTokenizer)
        actors = [actor.remote(str(folder), None, cfg.data.model_dump_json(), dtype.name) for _ in range(workers)]
        ray.get([a.ready.remote() for a in actors])
        warm = time.perf_counter()
        (work / "units").mkdir(parents=True, exist_ok=True)
        jobs = ((u.to_dict(), str(work / "units" / f"{u.key}.npz")) for u in units)
        ray_tok = sum(s["tokens"] for s in ActorPool(actors).map_unordered(lambda a, j: a.run.remote(*j), jobs))
        ray_s = time.perf_counter() - warm
    shutil.rmtree(work / "units", ignore_errors=True)

    import datasets

    datasets.disable_progress_bars()
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per datasets worker, as per actor
    ds = datasets.Dataset.from_dict({"text": corpus_documents(corpus, cfg.data)})
    eos = t.eos_id

    def encode(batch):
        local = tok.open_tokenizer(folder, threads=1)  # once per batch of 256: cheap against the batch
        return {"n": [len(ids) + 1 for ids in local.encode_batch(batch["text"])]}

    start = time.perf_counter()
    out = ds.map(encode, batched=True, batch_size=256, num_proc=workers, remove_columns=["text"])
    ds_s = time.perf_counter() - start
    ds_tok = int(sum(out["n"]))
    assert ray_tok == single_tok == ds_tok, (ray_tok, single_tok, ds_tok, eos)
    print(f"\nRay start-up {started - t0:.1f}s, actor start-up {warm - started:.1f}s (not in the stage's tok/s)")
    print(f"{'tokenization stage':<30}{'tokens':>14}{'seconds':>10}{'M tok/s':>10}")
    for name, n, s in (
        ("one process, one thread", single_tok, single_s),
        (f"Ray, {workers} warm actors", ray_tok, ray_s),
        (f"datasets.map(num_proc={workers})", ds_tok, ds_s),
    ):
        print(f"{name:<30}{n:>14,}{s:>10.2f}{n / s / 1e6:>10.2f}")
    print(f"ratio Ray / one process:  {single_s / ray_s:.2f}x  (goal >= 1.7)")
    print(f"ratio Ray / datasets.map: {ds_s / ray_s:.2f}x  (goal >= 1.0)")


# --- main ---------------------------------------------------------------------------------------


def _quiet(load: tuple[float, float]) -> str:
    return f"load {load[0]:.2f}, others {load[1]:.0%} busy"


def measure(kind: str, folder: Path, n: int, corpus: Path, docs: list[str], args, work: Path) -> dict:
    """The ceiling and prep on one corpus, each ``args.repeat`` times (alternating), the fastest kept."""
    best: dict = {"ceiling_s": float("inf"), "prep_s": float("inf"), "peak": 0, "loads": []}
    for _ in range(args.repeat):
        best["loads"].append(settle(args.settle))
        tokens, seconds = ceiling(folder, docs, args.workers)
        best["ceiling_s"] = min(best["ceiling_s"], seconds)
        best["loads"].append(settle(args.settle))
        prep_tok, prep_s, peak = run_prep(corpus, folder, work / f"out-{kind}-x{n}", args.workers, args.memory)
        assert prep_tok == tokens, f"{kind} x{n}: prep made {prep_tok:,} tokens, the tokenizer alone {tokens:,}"
        best["prep_s"], best["peak"] = min(best["prep_s"], prep_s), max(best["peak"], peak)
        print(
            f"{kind} x{n}: ceiling {tokens / seconds / 1e6:.2f}M tok/s ({seconds:.1f}s), prep "
            f"{tokens / prep_s / 1e6:.2f}M tok/s ({prep_s:.1f}s): ratio {seconds / prep_s:.2f} "
            f"[before them: {_quiet(best['loads'][-2])}; {_quiet(best['loads'][-1])}]",
            flush=True,
        )
    return {"kind": kind, "copies": n, "bytes": corpus.stat().st_size, "tokens": tokens, **best}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="prep's data.num_workers and the ceiling's threads")
    parser.add_argument("--copies", type=int, nargs="+", default=[4, 16], help="corpus sizes, in stdlib copies")
    parser.add_argument("--tokenizers", nargs="+", choices=sorted(TOKENIZERS), default=["sentencepiece", "hf"])
    parser.add_argument("--repeat", type=int, default=1, help="measure each pair N times, keep the fastest of each")
    parser.add_argument(
        "--settle", type=float, default=300, help="seconds to wait at most for other load to go before each timing"
    )
    parser.add_argument("--memory", action="store_true", help="also the peak RSS of prep, largest size / smallest")
    parser.add_argument("--stage", action="store_true", help="also the Ray stage alone against 1 process, datasets")
    parser.add_argument("--work", type=Path, help="folder for corpora, tokenizers, outputs (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep --work afterwards (corpora are reused)")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ["RAYON_NUM_THREADS"] = str(args.workers)  # the tokenizers thread pool of the ceiling
    work = args.work or Path(tempfile.mkdtemp(prefix="prep-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        copies = sorted(set(args.copies))
        corpora = build_corpora(work, copies)
        folders = train_tokenizers(work, corpora[copies[0]], args.tokenizers)
        data = load_config(CONFIG, _overrides(corpora[copies[0]], work / "unused", 1)).config.data
        print(
            f"stdlib {stdlib_root()}; {os.cpu_count()} CPUs; {args.workers} workers; vocab {VOCAB}; "
            + ", ".join(f"x{n}: {p.stat().st_size / 1e6:.0f} MB" for n, p in corpora.items()),
            flush=True,
        )
        base = corpus_documents(corpora[copies[0]], data)
        rows = []
        for kind in args.tokenizers:
            for n, corpus in corpora.items():
                docs = base * (n // copies[0])  # the corpus's documents, in order (it repeats the first)
                rows.append(measure(kind, folders[kind], n, corpus, docs, args, work))
                del docs
        goals = {4: 0.85, 16: 0.9}
        print(f"\n{'tokenizer':<15}{'corpus':>8}{'tokens':>14}{'ceiling':>12}{'prep':>12}{'prep s':>8}{'ratio':>7}")
        for r in rows:
            goal = f"  (goal >= {goals[r['copies']]})" if r["copies"] in goals else ""
            print(
                f"{r['kind']:<15}{r['bytes'] / 1e6:>5.0f} MB{r['tokens']:>14,}"
                f"{r['tokens'] / r['ceiling_s'] / 1e6:>7.2f}M/s{r['tokens'] / r['prep_s'] / 1e6:>7.2f}M/s"
                f"{r['prep_s']:>8.1f}{r['ceiling_s'] / r['prep_s']:>7.2f}{goal}"
            )
        loads = [x for r in rows for x in r["loads"]]
        print(
            f"before the timed runs: 1-minute load average {min(x[0] for x in loads):.2f} to "
            f"{max(x[0] for x in loads):.2f} (this benchmark's previous run included), other processes "
            f"{max(x[1] for x in loads):.0%} busy at most"
        )
        if args.memory:
            for kind in args.tokenizers:
                peaks = {r["copies"]: r["peak"] for r in rows if r["kind"] == kind}
                small, large = peaks[copies[0]], peaks[copies[-1]]
                print(
                    f"peak RSS of prep ({kind}): {small / 2**30:.2f} GiB at x{copies[0]}, {large / 2**30:.2f} GiB "
                    f"at x{copies[-1]}; ratio {large / small:.2f}  (goal <= 1.3)"
                )
        if args.stage:
            kind = args.tokenizers[0]
            bench_stage(corpora[copies[0]], folders[kind], work / "stage", args.workers)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
