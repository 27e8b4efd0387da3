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

With ``--memory`` it also samples the peak RSS of prep's whole process tree (driver, Ray, actors)
during those runs, 16 copies against 4 (goal: ratio <= 1.3). With ``--stage`` it also times the
Ray tokenization stage alone, with its actors started and warm, against a one-process loop over
the same units and against ``datasets.Dataset.map(num_proc=W)`` (goals: >= 1.7x and >= 1.0x).

    python benchmarks/prep_throughput.py [--workers 2] [--copies 4 16] [--tokenizers sentencepiece hf]
        [--memory] [--stage] [--work DIR] [--keep]
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
    from data_prep.job import _sample_documents

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
    peak = 0
    with open(log, "wb") as handle:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT)
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


def _load() -> str:
    return Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="prep's data.num_workers and the ceiling's threads")
    parser.add_argument("--copies", type=int, nargs="+", default=[4, 16], help="corpus sizes, in stdlib copies")
    parser.add_argument("--tokenizers", nargs="+", choices=sorted(TOKENIZERS), default=["sentencepiece", "hf"])
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
        corpora = build_corpora(work, sorted(set(args.copies)))
        folders = train_tokenizers(work, corpora[min(corpora)], args.tokenizers)
        data = load_config(CONFIG, _overrides(corpora[min(corpora)], work / "unused", 1)).config.data
        print(
            f"stdlib {stdlib_root()}; {os.cpu_count()} CPUs; {args.workers} workers; vocab {VOCAB}; "
            + ", ".join(f"x{n}: {p.stat().st_size / 1e6:.0f} MB" for n, p in corpora.items()),
            flush=True,
        )
        rows, loads = [], []
        base_docs = corpus_documents(corpora[min(corpora)], data)
        for kind in args.tokenizers:
            for n, corpus in corpora.items():
                docs = base_docs * (n // min(corpora))  # the same documents as the corpus holds, in order
                assert len(docs) * min(corpora) == len(base_docs) * n
                loads.append(_load())
                ceil_tok, ceil_s = ceiling(folders[kind], docs, args.workers)
                del docs
                loads.append(_load())
                prep_tok, prep_s, peak = run_prep(
                    corpus, folders[kind], work / f"out-{kind}-x{n}", args.workers, args.memory
                )
                assert prep_tok == ceil_tok, (kind, n, prep_tok, ceil_tok)
                rows.append((kind, n, corpus.stat().st_size, ceil_tok, ceil_s, prep_s, peak))
                print(
                    f"{kind} x{n}: ceiling {ceil_tok / ceil_s / 1e6:.2f}M tok/s, prep {prep_tok / prep_s / 1e6:.2f}M "
                    f"tok/s ({prep_s:.1f}s), ratio {ceil_s / prep_s:.2f}",
                    flush=True,
                )
        goal = {min(corpora): 0.85, max(corpora): 0.9}
        print(
            f"\n{'tokenizer':<15}{'corpus':>8}{'tokens':>14}{'ceiling tok/s':>15}{'prep tok/s':>12}{'prep s':>8}{'ratio':>7}"
        )
        for kind, n, size, tokens, ceil_s, prep_s, _ in rows:
            print(
                f"{kind:<15}{size / 1e6:>5.0f} MB{tokens:>14,}{tokens / ceil_s / 1e6:>14.2f}M{tokens / prep_s / 1e6:>11.2f}M"
                f"{prep_s:>8.1f}{ceil_s / prep_s:>7.2f}  (goal >= {goal.get(n, 0.85)})"
            )
        print(f"1-minute load average during the runs: {', '.join(loads)}")
        if args.memory:
            for kind in args.tokenizers:
                peaks = {n: p for k, n, *_, p in rows if k == kind}
                small, large = peaks[min(peaks)], peaks[max(peaks)]
                print(
                    f"peak RSS of prep ({kind}): {small / 2**30:.2f} GiB at x{min(peaks)}, {large / 2**30:.2f} GiB at "
                    f"x{max(peaks)}; ratio {large / small:.2f}  (goal <= 1.3)"
                )
        if args.stage:
            kind = args.tokenizers[0]
            bench_stage(corpora[min(corpora)], folders[kind], work / "stage", args.workers)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
