"""Our lm-evaluation-harness model (``parscale``) against lm-eval's own ``hf`` model, and against our
forward pass and decoding directly.

- Dense: a tiny Qwen2 folder (byte-level BPE, random weights, made here) imported with ``parscale
  convert import-hf``; the shipped tasks (``parscale_mc``, ``parscale_ppl``, ``parscale_gen``) run
  through ``model="parscale"`` on the import and through ``hf`` on the folder (float32, batch 8):
  every request's result matches (log-likelihoods to 1e-5 relative, greedy flags and generated
  texts exactly), so do the metrics (accuracies and exact match identical, perplexities and bits per
  byte to 1e-4 relative). Nothing is passed to ``hf`` to make it match: with no BOS in the tokenizer
  its prefix token is the end-of-document id, as ours, and its context length is the config's
  ``max_position_embeddings``, which the import records as ``max_seq_len`` (both asserted). Once at
  those defaults, once with ``max_length=24`` given to both, where contexts are cut from the left
  and documents scored in several rolling windows. What the folder needs, as every Qwen2 release has
  it: ``eos_token_id`` in its config (hence generation config). Without it transformers' ``generate``
  runs past the end-of-document token and lm-eval, decoding with ``skip_special_tokens``, keeps the
  text after it, where our model stops at end of document.
- ParScale (P = 4, ``parscale convert to-parscale`` of the import): ``loglikelihood`` equals the
  log-softmax of our full logits summed over the continuation (1e-5), ``generate_until`` equals
  ``pipeline.model.generation.generate`` greedy on the same ids, cut at the stop strings.
- ``parscale eval CKPT --tasks parscale_smoke``: table, JSON beside the checkpoint, unknown tasks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers.corpus import text_doc
from helpers.hf_models import EOD, byte_level_bpe, tiny_qwen2
from helpers.process import cli

from pipeline.distributed import single_process
from pipeline.downstream.run_tasks import SMOKE_TASKS, TASKS_DIR

BATCH = 8


def _corpus() -> list[str]:
    """Text for the tokenizer: the tasks' own words (so they are not all single bytes) and more."""
    texts = [text_doc(i) for i in range(200)]
    for path in sorted(TASKS_DIR.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            texts.append(" ".join(str(value) for value in json.loads(line).values()))
    return texts


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """``hf``: the Hugging Face folder; ``dense``: its import; ``p4``: the import made ParScale."""
    from tokenizers import Tokenizer

    root = tmp_path_factory.mktemp("harness")
    hf = byte_level_bpe(_corpus(), root / "hf")
    tok = Tokenizer.from_file(str(hf / "tokenizer.json"))
    eod, rows = tok.token_to_id(EOD), -(-tok.get_vocab_size(with_added_tokens=True) // 64) * 64
    tiny_qwen2(hf, rows, eos_token_id=eod, pad_token_id=eod)  # as a Qwen2 release's config has them
    proc = cli("convert", "import-hf", str(hf), str(root / "dense"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    p4 = ("--streams", "4", "--prefix-len", "4", "--prefix-init-std", "0.5")  # prefixes that change the logits
    proc = cli("convert", "to-parscale", str(root / "dense"), str(root / "p4"), *p4)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"hf": hf, "dense": root / "dense", "p4": root / "p4"}


def _evaluate(model, task_manager, **model_args) -> dict:
    import lm_eval

    return lm_eval.simple_evaluate(
        model=model,
        model_args=model_args or None,
        tasks=list(SMOKE_TASKS),
        task_manager=task_manager,
        batch_size=BATCH,
        device="cpu",
        log_samples=True,
        bootstrap_iters=0,
        random_seed=0,
        numpy_random_seed=0,
        torch_random_seed=0,
        fewshot_random_seed=0,
    )


@pytest.fixture(scope="module", params=[None, 24], ids=["default_length", "max_length_24"])
def both(request, models) -> dict:
    """lm-eval's results of ours (``model="parscale"``, ``model_args={"path": ...}``) and of ``hf``
    on the shipped tasks, at the models' own context length or at ``max_length`` given to both."""
    from lm_eval.models.huggingface import HFLM

    from pipeline.downstream.harness_model import HarnessLM
    from pipeline.downstream.run_tasks import offline, task_manager

    length = {} if request.param is None else {"max_length": request.param}
    manager = task_manager(SMOKE_TASKS)
    with single_process(), offline():
        ours = HarnessLM(path=str(models["dense"]), batch_size=BATCH, device="cpu", **length)
        hf = HFLM(pretrained=str(models["hf"]), dtype="float32", batch_size=BATCH, device="cpu", **length)
        assert (ours.max_length, ours.prefix_token_id) == (hf.max_length, hf.prefix_token_id)
        assert ours.max_length == (request.param or 128) and ours.prefix_token_id == ours.eot_token_id
        return {
            "ours": _evaluate("parscale", manager, path=str(models["dense"]), **length),
            "hf": _evaluate(hf, manager),
            "max_length": ours.max_length,
        }


def _close(a: float, b: float, rel: float) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=0.0)


def test_every_request_gives_what_hf_gives(both):
    ours, hf = both["ours"]["samples"], both["hf"]["samples"]
    for task in SMOKE_TASKS:
        assert [s["doc_id"] for s in ours[task]] == [s["doc_id"] for s in hf[task]]
        assert [s["arguments"] for s in ours[task]] == [s["arguments"] for s in hf[task]]
        for mine, theirs in zip(ours[task], hf[task], strict=True):
            where = f"{task} doc {mine['doc_id']}"
            if task == "parscale_gen":
                assert mine["resps"] == theirs["resps"] and mine["filtered_resps"] == theirs["filtered_resps"], where
                continue
            for a, b in zip(mine["resps"], theirs["resps"], strict=True):
                a, b = a[0], b[0]  # one result per request
                if task == "parscale_mc":
                    assert a[1] == b[1] and _close(a[0], b[0], 1e-5), (where, a, b)
                else:
                    assert _close(a, b, 1e-5), (where, a, b)


def test_the_metrics_are_hf_s(both):
    from pipeline.downstream.run_tasks import headline

    ours, hf = headline(both["ours"]), headline(both["hf"])
    assert ours.keys() == hf.keys() and len(ours) == 6
    for key in ours:
        if key.endswith(("/acc", "/acc_norm", "/exact_match")):
            assert ours[key] == hf[key], key
        else:  # word_perplexity, byte_perplexity, bits_per_byte
            assert _close(ours[key], hf[key], 1e-4), (key, ours[key], hf[key])
    counts = {task: len(samples) for task, samples in both["ours"]["samples"].items()}
    assert counts == {"parscale_mc": 50, "parscale_ppl": 20, "parscale_gen": 20}


def test_at_24_tokens_contexts_are_cut_and_documents_take_several_windows(models):
    """So the ``max_length_24`` comparison above covered left truncation and rolling windows."""
    from pipeline.checkpoint.portable import load_tokenizer

    tok = load_tokenizer(models["dense"])

    def longest(name: str, field: str) -> int:
        lines = (TASKS_DIR / f"{name}.jsonl").read_text().splitlines()
        return max(len(tok.encode(json.loads(line)[field])) for line in lines)

    assert longest("parscale_gen", "prompt") > 24 - 8  # 8: the task's max_gen_toks
    assert longest("parscale_mc", "context") > 24
    assert longest("parscale_ppl", "text") > 24  # rolling windows of 24 tokens: two or more


# --- ParScale, P = 4: the harness model against our forward pass and decoding ---------------------

PAIRS = [
    ("In Python, a function is defined with the keyword", " def"),
    ("Once upon a", " time"),
    ("def add(a, b):\n    return a +", " b\n"),
    ("doc 7:", " alpha beta gamma delta"),
    ("", "doc 3: an empty context is scored after the prefix token"),
    (" ".join(text_doc(i) for i in range(20)), " omega"),  # longer than the context: cut from the left
]
PROMPTS = [
    "5, 6, 7, 8, 9\n6, 7, 8, 9, 10\n7, 8, 9, 10,",
    "def add(a, b):\n    return a +",
    "doc 1:",
    "b c d e f\nc d e f g\nd e f g",
    " ".join(text_doc(i) for i in range(20)),  # longer than the context: cut from the left
]
NEW_TOKENS = 12


def _instance(kind: str, arguments: tuple):
    from lm_eval.api.instance import Instance

    return Instance(request_type=kind, doc={}, arguments=arguments, idx=0)


def _direct_loglikelihood(model, ids: list[int], n_cont: int, length: int) -> tuple[float, bool]:
    ids = ids[-(length + 1) :]
    with torch.no_grad():
        logits = model.full_logits(model.eval()(torch.tensor([ids[:-1]])).logits)[0]
    logprobs = torch.log_softmax(logits.float(), dim=-1)[-n_cont:]
    target = torch.tensor(ids[-n_cont:])
    return float(logprobs.gather(-1, target[:, None]).sum()), bool((logprobs.argmax(-1) == target).all())


def test_parscale_loglikelihood_is_our_forward_pass(models):
    from pipeline.checkpoint.portable import load_portable, load_tokenizer
    from pipeline.downstream.harness_model import HarnessLM

    tok = load_tokenizer(models["p4"])
    with single_process():
        lm = HarnessLM(path=str(models["p4"]), batch_size=4)
        got = lm.loglikelihood([_instance("loglikelihood", pair) for pair in PAIRS])
        model, _ = load_portable(models["p4"])
        assert model.parscale.streams == 4 and lm.max_length == 128
        expected = []
        for context, continuation in PAIRS:
            ctx = tok.encode(context) if context else [tok.eos_id]
            whole = tok.encode(context + continuation) if context else ctx + tok.encode(continuation)
            assert whole[: len(ctx)] == ctx  # no context here ends in a space: the split is plain
            expected.append(_direct_loglikelihood(model, whole, len(whole) - len(ctx), lm.max_length))
    assert len(tok.encode(PAIRS[-1][0])) > lm.max_length
    for (score, greedy), (want, want_greedy) in zip(got, expected, strict=True):
        assert abs(score - want) <= 1e-5 * max(1.0, abs(want)) and greedy == want_greedy, (score, want)


def _first_stop(text: str, stops: list[str]) -> str:
    cut = min((text.index(s) for s in stops if s in text), default=len(text))
    return text[:cut]


def test_parscale_generate_until_is_our_greedy_decoding(models):
    from pipeline.checkpoint.portable import load_portable, load_tokenizer
    from pipeline.downstream.harness_model import HarnessLM
    from pipeline.model.generation import Sampling, generate

    tok = load_tokenizer(models["p4"])
    sampling = Sampling(max_new_tokens=NEW_TOKENS, temperature=0.0, eos_id=tok.eos_id)
    with single_process():
        model, _ = load_portable(models["p4"])
        keep = 128 - NEW_TOKENS
        direct = []
        for prompt in PROMPTS:  # one at a time: no padding
            new = generate(model, [tok.encode(prompt)[-keep:]], sampling, pad_id=tok.eos_id)[0]
            direct.append(tok.decode([t for t in new if t != tok.eos_id]))
        # stop strings that occur in what was generated, so the cut is exercised
        stops = sorted({text[len(text) // 2] for text in direct if len(text) > 1} | {"\n"})
        kwargs = {"until": stops, "max_gen_toks": NEW_TOKENS, "do_sample": False}
        lm = HarnessLM(path=str(models["p4"]), batch_size=4)  # batches of several prompts, left-padded
        got = lm.generate_until([_instance("generate_until", (prompt, kwargs)) for prompt in PROMPTS])
    expected = [_first_stop(text, stops) for text in direct]
    assert got == expected
    assert any(len(e) < len(t) for e, t in zip(expected, direct, strict=True))


# --- the command ------------------------------------------------------------------------------------


def test_parscale_eval_runs_the_smoke_tasks_and_writes_json_beside_the_checkpoint(models):
    ckpt = models["dense"]
    proc = cli("eval", str(ckpt), "--tasks", "parscale_smoke", "--limit", "5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = ckpt.with_name(f"{ckpt.name}.lm_eval.json")
    assert f"results: {output}" in proc.stdout
    assert "| task | metric | filter | value | stderr |" in proc.stdout
    for task in SMOKE_TASKS:
        assert f"| {task} |" in proc.stdout
    results = json.loads(output.read_text())
    assert results["checkpoint"] == str(ckpt)
    assert set(SMOKE_TASKS) <= set(results["results"])
    assert "acc,none" in results["results"]["parscale_mc"]
    assert "bits_per_byte,none" in results["results"]["parscale_ppl"]
    assert "exact_match,strip" in results["results"]["parscale_gen"]
    assert all(results["n-samples"][task]["effective"] == 5 for task in SMOKE_TASKS)


def test_parscale_eval_names_an_unknown_task(models, tmp_path):
    proc = cli("eval", str(models["dense"]), "--tasks", "no_such_task", "--output", str(tmp_path / "r.json"))
    assert proc.returncode == 2 and "no_such_task" in proc.stderr
    assert not (tmp_path / "r.json").exists()


# --- the attention backend ----------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_attention_backend_reaches_the_model_and_flex_scores_as_sdpa(models):
    """``attention_backend`` (model_args; ``--attention-backend`` of ``parscale eval``) is the
    rebuilt model's: a prefixed P = 4 model scores through FlexAttention (eager forward on CPU) as
    through SDPA; an unknown value is refused."""
    from pipeline.downstream.harness_model import HarnessLM

    requests = [_instance("loglikelihood", pair) for pair in PAIRS]
    with single_process():
        scores = {}
        for backend in ("sdpa", "flex"):
            lm = HarnessLM(path=str(models["p4"]), batch_size=4, attention_backend=backend)
            assert lm.scorer.model.attention_backend == backend
            scores[backend] = lm.loglikelihood(requests)
        with pytest.raises(ValueError, match="attention_backend=fused: use one of auto, flex, sdpa"):
            HarnessLM(path=str(models["p4"]), attention_backend="fused")
    for (flex, flex_greedy), (sdpa, sdpa_greedy) in zip(scores["flex"], scores["sdpa"], strict=True):
        assert abs(flex - sdpa) <= 1e-5 * max(1.0, abs(sdpa)) and flex_greedy == sdpa_greedy


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_parscale_eval_takes_an_attention_backend(models, tmp_path):
    results = {}
    for backend in ("sdpa", "flex"):
        out = tmp_path / f"{backend}.json"
        args = ("--tasks", "parscale_mc", "--limit", "4", "--output", str(out), "--attention-backend", backend)
        proc = cli("eval", str(models["p4"]), *args)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[backend] = json.loads(out.read_text())["results"]["parscale_mc"]["acc,none"]
    assert results["flex"] == results["sdpa"]
    proc = cli("eval", str(models["p4"]), "--tasks", "parscale_mc", "--attention-backend", "fused")
    assert proc.returncode == 2 and "invalid choice: 'fused'" in proc.stderr
