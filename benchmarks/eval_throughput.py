"""How fast our lm-evaluation-harness model (``parscale``) answers lm-eval's requests against
lm-eval's own ``hf`` model, on the same dense model, all in one run, one process, fp32, CPU.

A Qwen2 made here (random weights; a byte-level BPE trained on this interpreter's standard library;
default 4 layers x hidden 256, context 512) is saved as a Hugging Face folder (read by ``hf``) and
imported with ``import_hf`` (read by ``parscale``, as ``parscale eval --tasks`` runs it). Three tasks
are generated from the standard library's source, one per request type:

- ``bench_mc`` (multiple choice -> ``loglikelihood``): a context of 300-1,500 characters and 4
  continuations of 20-80 (the true one and 3 drawn elsewhere);
- ``bench_ppl`` (``loglikelihood_rolling``): documents of 1,500-5,000 characters, scored whole in
  windows of the context length;
- ``bench_gen`` (``generate_until``): a prompt of 200-1,000 characters, greedy up to 32 new tokens or
  a newline.

lm-eval builds the requests once; each model's request method (``loglikelihood``,
``loglikelihood_rolling``, ``generate_until``) is then timed on all of them, the same batch size
(``--batch-size``, default 8) and the same torch threads (``--threads``, default this machine's
cores), after a warm-up on a few. The requests go in chunks (``--chunk``, default 64), each timed
``--repeat`` times (default 3) per model, alternating which model goes first, the fastest of each
kept and the chunks summed: a burst of load from other processes then hits both models alike.
Printed: requests/s of each model per request type and over all requests, and the ratio ours / hf
(goal >= 1.0 at batch 8 on CPU), with how closely the answers agree.

    python benchmarks/eval_throughput.py [--hidden 256 --layers 4 --seq 512 --vocab 4096 --docs 96]
        [--batch-size 8] [--threads N] [--repeat 3] [--chunk 64] [--json FILE] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "tests"))  # helpers.hf_models: the byte-level BPE and Qwen2 the tests use too

from helpers.hf_models import EOD, byte_level_bpe, tiny_qwen2  # noqa: E402

KINDS = ("loglikelihood", "loglikelihood_rolling", "generate_until")
TASKS = {"bench_mc": "loglikelihood", "bench_ppl": "loglikelihood_rolling", "bench_gen": "generate_until"}
GEN_TOKENS = 32


# --- model and tasks ------------------------------------------------------------------------------


def stdlib_texts() -> list[str]:
    """This interpreter's standard library .py files (top level), in name order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return [p.read_text(encoding="utf-8", errors="replace") for p in sorted(root.glob("*.py"))]


def build_models(work: Path, texts: list[str], args) -> tuple[Path, Path]:
    """The Hugging Face folder (tokenizer + random Qwen2 with its end of document as eos and pad, as
    Qwen2 releases have it) and its import as our portable checkpoint."""
    from tokenizers import Tokenizer

    from checkpoints_tools.hf import import_hf

    hf, ours = work / "hf", work / "imported"
    if not (hf / "model.safetensors").exists():
        byte_level_bpe(texts[:80], hf, args.vocab)
        tok = Tokenizer.from_file(str(hf / "tokenizer.json"))
        eod, rows = tok.token_to_id(EOD), -(-tok.get_vocab_size(with_added_tokens=True) // 64) * 64
        heads = max(1, args.hidden // 64)
        shape = dict(
            hidden_size=args.hidden,
            intermediate_size=max(64, round(args.hidden * 2.75 / 64) * 64),
            num_hidden_layers=args.layers,
            num_attention_heads=heads,
            num_key_value_heads=2 if heads % 2 == 0 else 1,
            max_position_embeddings=args.seq,
        )
        tiny_qwen2(hf, rows, eos_token_id=eod, pad_token_id=eod, **shape)
    if not (ours / "model.safetensors").exists():
        import_hf(hf, ours)
    return hf, ours


def _slice(rnd: random.Random, text: str, low: int, high: int) -> tuple[int, int]:
    size = min(len(text) - 1, rnd.randrange(low, high))
    start = rnd.randrange(0, len(text) - size)
    return start, start + size


def write_tasks(folder: Path, texts: list[str], docs: int) -> Path:
    """Three lm-eval task YAMLs and their jsonl files, drawn from ``texts`` with a fixed seed."""
    rnd = random.Random(0)
    pool = [t for t in texts if len(t) > 6000]
    folder.mkdir(parents=True, exist_ok=True)
    mc, ppl, gen = [], [], []
    for i in range(docs):
        text = rnd.choice(pool)
        start, end = _slice(rnd, text, 300, 1500)
        size = rnd.randrange(20, 80)
        others = []
        for _ in range(3):
            other = rnd.choice(pool)
            at = rnd.randrange(0, len(other) - size)
            others.append(other[at : at + size])
        choices = [text[end : end + size], *others]
        rnd.shuffle(choices)
        mc.append({"context": text[start:end], "choices": choices, "label": choices.index(text[end : end + size])})
        if i % 4 == 0:
            for rows, low, high, make in ((ppl, 1500, 5000, "text"), (gen, 200, 1000, "prompt")):
                text = rnd.choice(pool)
                start, end = _slice(rnd, text, low, high)
                rows.append({make: text[start:end], "answer": ""})
    body = {
        "bench_mc": (
            mc,
            "output_type: multiple_choice\ndoc_to_text: '{{context}}'\ndoc_to_choice: '{{choices}}'\n"
            "doc_to_target: label\ntarget_delimiter: ''\nmetric_list:\n  - metric: acc\n",
        ),
        "bench_ppl": (
            ppl,
            "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
            "metric_list:\n  - metric: bits_per_byte\n",
        ),
        "bench_gen": (
            gen,
            "output_type: generate_until\ndoc_to_text: '{{prompt}}'\ndoc_to_target: '{{answer}}'\n"
            f"generation_kwargs:\n  until: ['\\n']\n  max_gen_toks: {GEN_TOKENS}\n  do_sample: false\n"
            "metric_list:\n  - metric: exact_match\n",
        ),
    }
    for name, (rows, spec) in body.items():
        data = folder / f"{name}.jsonl"
        data.write_text("".join(json.dumps(row) + "\n" for row in rows))
        (folder / f"{name}.yaml").write_text(
            f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data))}\n"
            f"test_split: test\nnum_fewshot: 0\n{spec}"
        )
    return folder


def build_requests(folder: Path) -> dict[str, list]:
    """lm-eval's request instances of the three tasks, by request type."""
    from lm_eval.tasks import TaskManager, get_task_dict

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    manager = TaskManager(include_path=[str(folder)], include_defaults=False)
    requests: dict[str, list] = {kind: [] for kind in KINDS}
    for task in get_task_dict(list(TASKS), manager).values():
        task.build_all_requests(rank=0, world_size=1)
        for instance in task.instances:
            requests[instance.request_type].append(instance)
    return requests


# --- timing ---------------------------------------------------------------------------------------


def timed(lm, kind: str, requests: list) -> tuple[float, list]:
    start = time.perf_counter()
    answers = getattr(lm, kind)(requests, disable_tqdm=True)
    return time.perf_counter() - start, answers


def agreement(kind: str, ours: list, theirs: list) -> str:
    """How closely the two models' answers agree (they run the same weights)."""
    if kind == "generate_until":
        same = sum(a == b for a, b in zip(ours, theirs, strict=True))
        return f"{same}/{len(ours)} texts identical"
    if kind == "loglikelihood":
        flags = sum(a[1] == b[1] for a, b in zip(ours, theirs, strict=True))
        ours, theirs = [a[0] for a in ours], [b[0] for b in theirs]
    worst = max(abs(a - b) / max(1.0, abs(b)) for a, b in zip(ours, theirs, strict=True))
    greedy = f", {flags}/{len(ours)} greedy flags equal" if kind == "loglikelihood" else ""
    return f"max rel. diff {worst:.1e}{greedy}"


def measure(hf_lm, our_lm, requests: dict[str, list], repeat: int, chunk: int) -> dict[str, dict]:
    """Seconds each model takes on each request type: the requests in chunks of ``chunk``, each chunk
    timed ``repeat`` times per model (alternating which goes first), the fastest kept and the chunks
    summed, so that a burst of load from other processes hits both models alike."""
    models = {"hf": hf_lm, "ours": our_lm}
    rows = {}
    for kind in KINDS:
        reqs = requests[kind]
        if not reqs:
            continue
        for lm in models.values():  # warm-up: first calls, allocator, thread pools
            getattr(lm, kind)(reqs[:4], disable_tqdm=True)
        total, answers = dict.fromkeys(models, 0.0), {name: [] for name in models}
        for start in range(0, len(reqs), chunk):
            part = reqs[start : start + chunk]
            best, got = dict.fromkeys(models, math.inf), {}
            for r in range(repeat):
                for name in ("hf", "ours") if r % 2 == 0 else ("ours", "hf"):
                    seconds, got[name] = timed(models[name], kind, part)
                    best[name] = min(best[name], seconds)
            for name in models:
                total[name] += best[name]
                answers[name] += got[name]
        rows[kind] = {
            "requests": len(reqs),
            "hf_s": total["hf"],
            "ours_s": total["ours"],
            "agreement": agreement(kind, answers["ours"], answers["hf"]),
        }
    return rows


def report(rows: dict[str, dict], header: str) -> list[str]:
    lines = [header, "", f"{'request type':<22} {'requests':>8} {'hf req/s':>10} {'ours req/s':>11} {'ours/hf':>8}"]
    for kind, row in rows.items():
        hf, ours = row["requests"] / row["hf_s"], row["requests"] / row["ours_s"]
        lines.append(f"{kind:<22} {row['requests']:>8} {hf:>10.1f} {ours:>11.1f} {ours / hf:>8.2f}  {row['agreement']}")
    n = sum(r["requests"] for r in rows.values())
    hf_s, ours_s = sum(r["hf_s"] for r in rows.values()), sum(r["ours_s"] for r in rows.values())
    lines.append(f"{'all':<22} {n:>8} {n / hf_s:>10.1f} {n / ours_s:>11.1f} {hf_s / ours_s:>8.2f}")
    lines += ["", f"ratio (ours / hf), requests/s over all requests: {hf_s / ours_s:.2f}  (goal >= 1.0)"]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512, help="context length (max_position_embeddings)")
    parser.add_argument("--vocab", type=int, default=4096, help="BPE vocabulary size")
    parser.add_argument("--docs", type=int, default=96, help="multiple-choice items (x4 requests); /4 of each other")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch.set_num_threads")
    parser.add_argument("--repeat", type=int, default=3, help="time each chunk N times per model, keep the fastest")
    parser.add_argument("--chunk", type=int, default=64, help="requests timed together (default 64)")
    parser.add_argument("--json", help="also write the rows as JSON here")
    parser.add_argument("--work", help="folder for the model and tasks (kept; default: a temporary one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from lm_eval.models.huggingface import HFLM

    from pipeline.distributed import single_process
    from pipeline.downstream.harness_model import HarnessLM

    with tempfile.TemporaryDirectory(prefix="eval-bench-") as tmp:
        work = Path(args.work or tmp)
        texts = stdlib_texts()
        hf_dir, portable = build_models(work, texts, args)
        requests = build_requests(write_tasks(work / "tasks", texts, args.docs))
        with single_process():
            torch.set_num_threads(args.threads)  # the world's set-up may set its own
            ours = HarnessLM(path=str(portable), batch_size=args.batch_size, device="cpu")
            hf = HFLM(pretrained=str(hf_dir), dtype="float32", batch_size=args.batch_size, device="cpu")
            assert ours.max_length == hf.max_length == args.seq, (ours.max_length, hf.max_length)
            params = sum(p.numel() for p in hf.model.parameters())
            rows = measure(hf, ours, requests, args.repeat, args.chunk)
    header = (
        f"model: Qwen2 {args.layers} layers x hidden {args.hidden}, {params / 1e6:.1f}M parameters, vocab "
        f"{args.vocab}, context {args.seq}, fp32, CPU; batch size {args.batch_size}, torch threads "
        f"{torch.get_num_threads()}; per chunk of {args.chunk} requests the fastest of {args.repeat}"
    )
    print("\n".join(report(rows, header)))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
