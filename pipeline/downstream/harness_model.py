"""Our portable checkpoints as an lm-evaluation-harness model, registered as ``parscale``:
``lm_eval.simple_evaluate(model="parscale", model_args={"path": CKPT})``, or ``parscale-lm-eval
--model parscale --model_args path=CKPT ...`` (lm-eval's own CLI with this model registered).
Dense and ParScale (any P) alike: scoring is our forward pass, generation our KV-cached decoding;
the tokenizer and end-of-document id are the checkpoint's, and the context length is the one the
model was trained on (``seq_len`` in its config.json; else ``model.max_seq_len``). No transformers
code is involved. This module imports lm-eval: import it where it is used."""

from __future__ import annotations

import contextlib
import sys

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from data_prep.text_tokenizer import TextTokenizer

from ..checkpoint.portable import load_portable, load_tokenizer, read_config
from ..distributed import single_process
from ..model.flex import BACKENDS, set_attention_backend
from .scorer import Scorer


def trained_length(config: dict) -> int:
    """The context a portable checkpoint was trained on (its export records it), else its model's
    ``max_seq_len`` (an import from Hugging Face, or an export older than the record)."""
    return int(config.get("seq_len") or config["model"]["max_seq_len"])


def open_scorer(
    path: str,
    device: str = "cpu",
    batch_size: int = 8,
    max_length: int | None = None,
    attention_backend: str = "auto",
    backend_key: str = "attention_backend",
) -> Scorer:
    """A ``Scorer`` of the portable checkpoint at ``path`` (in a world of one process, made for
    the rest of this process's life when none is there), its attention ``attention_backend``
    (the setting ``backend_key``; checked by a preflight compile where flex runs compiled)."""
    from megatron.core import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        _WORLD.enter_context(single_process(device=device))
    config = read_config(path)
    model, _ = load_portable(path)
    model = model.to(device)
    set_attention_backend(model, attention_backend, device, backend_key)
    eod = load_tokenizer(path).eos_id
    return Scorer(model, eod, int(max_length or trained_length(config)), int(batch_size))


def usable_device(device: str | None) -> str:
    """``device``, or the CPU where CUDA is asked for (lm-eval's command line asks for it by
    default) but this machine has none."""
    if not device or (device.startswith("cuda") and not torch.cuda.is_available()):
        if device:
            print(f"parscale model: {device} is not available here; running on cpu", file=sys.stderr)
        return "cpu"
    return device


_WORLD = contextlib.ExitStack()  # the world a model built by lm-eval from arguments runs in


@register_model("parscale")
class HarnessLM(TemplateLM):
    """``path``: a portable checkpoint folder; ``batch_size``, ``max_length`` (default: the trained
    sequence length), ``max_gen_toks`` and ``device`` as for lm-eval's ``hf`` model;
    ``attention_backend`` auto, flex or sdpa (as ``model.attention_backend``; default auto). Or, in code, a
    built ``scorer`` and ``tokenizer`` (the in-training evaluator passes the model being trained)."""

    backend = "causal"

    def __init__(
        self,
        path: str | None = None,
        batch_size: int | str = 8,
        max_length: int | None = None,
        max_gen_toks: int = 256,
        device: str = "cpu",
        attention_backend: str = "auto",
        scorer: Scorer | None = None,
        tokenizer: TextTokenizer | None = None,
        **unused,
    ):
        super().__init__()
        if scorer is None:
            if path is None:
                raise ValueError("model_args: give path=<a portable checkpoint folder>")
            if attention_backend not in BACKENDS:
                raise ValueError(f"model_args: attention_backend={attention_backend}: use one of {', '.join(BACKENDS)}")
            batch = 8 if batch_size in (None, "auto") else int(str(batch_size).split(":")[0])
            scorer = open_scorer(path, usable_device(device), batch, max_length, attention_backend)
            tokenizer = load_tokenizer(path)
        self.scorer, self.tok, self.max_gen_toks = scorer, tokenizer, int(max_gen_toks)

    @property
    def eot_token_id(self) -> int:
        return self.scorer.eod_id

    @property
    def max_length(self) -> int:
        return self.scorer.max_length

    @property
    def device(self) -> torch.device:
        return self.scorer.device

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tok.encode(string)

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tok.decode(tokens)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        results = self.scorer.loglikelihood([(ctx, cont) for _, ctx, cont in requests])
        for (request, _, _), result in zip(requests, results, strict=True):
            if request is not None:
                self.cache_hook.add_partial("loglikelihood", request, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """A document's log-likelihood in windows of ``max_length`` tokens, each after the one
        before, the first after the end-of-document token (as lm-eval's ``hf`` model scores it)."""
        windows, counts = [], []
        for (text,) in (request.args for request in requests):
            rolling = get_rolling_token_windows(
                token_list=self.tok_encode(text),
                prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length,
                context_len=1,
            )
            found = [make_disjoint_window(window) for window in rolling]
            windows += found
            counts.append(len(found))
        scores, totals, at = self.scorer.loglikelihood(windows), [], 0
        for request, count in zip(requests, counts, strict=True):
            totals.append(sum(score for score, _ in scores[at : at + count]))
            at += count
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, totals[-1])
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy generation (requests that ask to sample are refused), batched per set of
        generation arguments; each text ends before its first stop string."""
        groups: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(repr(sorted(request.args[1].items())), []).append(i)
        out = [""] * len(requests)
        for members in groups.values():
            kwargs = normalize_gen_kwargs(dict(requests[members[0]].args[1]), self.max_gen_toks)
            if kwargs.get("do_sample"):
                raise ValueError("the parscale model generates greedily: set do_sample: false in the task")
            until = handle_stop_sequences(kwargs.get("until"), eos=self.tok_decode([self.eot_token_id]) or None)
            contexts = [self.tok_encode(requests[i].args[0]) for i in members]
            texts = self.scorer.generate_until(contexts, until, int(kwargs["max_gen_toks"]), self.tok_decode)
            for i, text in zip(members, texts, strict=True):
                out[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return out


__all__ = ["HarnessLM", "open_scorer", "trained_length"]
