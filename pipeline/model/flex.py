"""FlexAttention for packed documents with ParScale prefixes: one ``BlockMask`` per batch, shared
by every layer and every stream, and the fused kernel (compiled) on CUDA.

Layout under this backend: a layer's keys are its T real tokens followed by the prefix slots
(``T + prefix_len`` keys), so the causal diagonal stays aligned with the 128-token blocks and
more blocks are skipped whole or computed without a mask. A query sees the keys of its own
document up to itself, and every prefix slot. Attention does not depend on the order of keys,
so this equals the SDPA path, which keeps the prefix in front (as the KV cache does).

Which backend runs (``model.attention_backend``): ``sdpa`` always the dense-mask / ``is_causal``
path; ``flex`` FlexAttention for every masked (packed or prefixed) training batch; ``auto`` flex on
CUDA and SDPA elsewhere (FlexAttention has no CPU backward in torch 2.13). Plain causal batches
and cached decoding use SDPA under every setting.

On CUDA both the block mask and the attention are compiled (Triton builds its launcher at run
time with gcc, the Python headers and libcuda): :func:`choose_backend` compiles a tiny forward and
backward first, so a machine without that toolchain falls back to SDPA at start-up (``auto``) or
is refused (``flex``) instead of crashing the first step. Each compiled function may compile
:data:`RECOMPILE_LIMIT` input shapes; one more is an error (:class:`RecompileLimitError`), not
torch's default of logging once and running unfused eager code from then on."""

from __future__ import annotations

import functools
import inspect
import sys

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from ..errors import UserError

#: compiled shapes per compiled function (a new row count P x micro-batch, sequence length, dtype or
#: grad mode is a new shape); torch's default is 8, after which it runs unfused eager code silently
RECOMPILE_LIMIT = 64
BACKENDS = ("auto", "flex", "sdpa")
_compiled: dict[str, object] = {}  # "flex" / "block_mask": the compiled functions, built on first use


class RecompileLimitError(RuntimeError):
    """A compiled function met more input shapes than :data:`RECOMPILE_LIMIT`."""


def compiles(device: torch.device) -> bool:
    """Whether FlexAttention runs compiled on ``device`` (CUDA: fused Triton kernels); elsewhere it
    runs eagerly, forward only."""
    return device.type == "cuda"


def use_flex(backend: str, device: torch.device) -> bool:
    if backend == "flex":
        return True
    return backend == "auto" and compiles(device)


def training_backend(backend: str, device: torch.device) -> str:
    """The kernel masked training batches run on ("flex" or "sdpa"); ValueError where the
    requested one cannot train on ``device``."""
    if backend == "flex" and not compiles(device):
        raise ValueError(
            f"flex trains only on CUDA (this process runs on {device}; FlexAttention has no CPU "
            f"backward in torch {torch.__version__}): use auto or sdpa"
        )
    return "flex" if use_flex(backend, device) else "sdpa"


# ---------------------------------------------------------------------- compiled, with a hard limit


def limited_compile(fn, what: str, limit: int = RECOMPILE_LIMIT, **options):
    """``torch.compile(fn, **options)`` counting its own compiled shapes (not shared with other
    compiles of ``fn``), at most ``limit``: the next new shape raises :class:`RecompileLimitError`
    naming ``what``, where torch would log once and run ``fn`` eagerly (unfused) from then on."""
    config = torch._dynamo.config
    limit_key, fail_key, limit_hit = _dynamo_limit_names()
    if "recompile_limit" in inspect.signature(torch.compile).parameters:
        compiled = torch.compile(fn, recompile_limit=limit, isolate_recompiles=True, **options)
    else:  # torch before 2.13 (the README allows 2.6+): the limit is process-wide, raised, never lowered
        setattr(config, limit_key, max(getattr(config, limit_key), limit))
        compiled = torch.compile(fn, **options)

    @functools.wraps(fn)
    def run(*args, **kwargs):
        before = getattr(config, fail_key)
        setattr(config, fail_key, True)  # read when a new shape is met (set per call: ~8 us)
        try:
            return compiled(*args, **kwargs)
        except limit_hit as exc:
            raise RecompileLimitError(
                f"{what} was compiled for {limit} different input shapes in this process (a new row count "
                "P x micro-batch, sequence length, dtype or grad mode each compiles anew); a further one would run "
                "unfused and slow. Keep batch shapes fixed, or set model.attention_backend: sdpa"
            ) from exc
        finally:
            setattr(config, fail_key, before)

    return run


def _dynamo_limit_names() -> tuple[str, str, type[Exception]]:
    """Dynamo's names for (the recompile limit, failing when it is hit, the error then raised):
    torch 2.7 renamed ``cache_size_limit`` / ``fail_on_cache_limit_hit`` / ``FailOnCacheLimitHit``."""
    config, exc = torch._dynamo.config, torch._dynamo.exc
    new_names = hasattr(config, "recompile_limit")
    limit_hit = getattr(exc, "FailOnRecompileLimitHit", None) or getattr(exc, "FailOnCacheLimitHit", None)
    return (
        "recompile_limit" if new_names else "cache_size_limit",
        "fail_on_recompile_limit_hit" if new_names else "fail_on_cache_limit_hit",
        limit_hit or RecompileLimitError,
    )


def _compiled_fn(name: str):
    """The compiled attention ("flex") or block-mask builder ("block_mask"), built on first use."""
    if name not in _compiled:
        if name == "flex":
            _compiled[name] = limited_compile(flex_attention, "FlexAttention", RECOMPILE_LIMIT, dynamic=False)
        else:
            what = "FlexAttention's block mask (create_block_mask)"
            _compiled[name] = limited_compile(create_block_mask, what, RECOMPILE_LIMIT)
    return _compiled[name]


def document_block_mask(
    segment_ids: torch.Tensor | None, batch: int, seq: int, prefix_len: int, streams: int, device: torch.device
) -> BlockMask:
    """Block mask for ``streams * batch`` stream-major rows (row p*B + b is sequence b) over
    ``seq`` queries and ``seq + prefix_len`` keys; ``segment_ids`` [B, T] or None (one document)."""
    if segment_ids is None:
        segment_ids = torch.zeros(batch, seq, dtype=torch.long, device=device)

    def mask_mod(b, h, q, kv):
        row = b % batch  # the stream copies of a row share its documents
        token = kv.clamp(max=seq - 1)
        same_doc = segment_ids[row, token] == segment_ids[row, q]
        return (kv >= seq) | ((kv <= q) & same_doc)

    build = _compiled_fn("block_mask") if compiles(device) else create_block_mask
    mask = build(mask_mod, batch, None, seq, seq + prefix_len, device=device)
    if streams == 1:
        return mask

    # the block tables (a few ints per 128x128 block), not the mask, are repeated per stream
    def rep(t):
        return None if t is None else t.repeat(streams, *([1] * (t.dim() - 1)))

    return BlockMask.from_kv_blocks(
        rep(mask.kv_num_blocks),
        rep(mask.kv_indices),
        rep(mask.full_kv_num_blocks),
        rep(mask.full_kv_indices),
        BLOCK_SIZE=mask.BLOCK_SIZE,
        mask_mod=mask_mod,
        seq_lengths=mask.seq_lengths,
    )


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: BlockMask) -> torch.Tensor:
    """q [rows, heads, T, d]; k, v [rows, kv heads, T + prefix, d] (grouped-query)."""
    run = _compiled_fn("flex") if compiles(q.device) else flex_attention
    return run(q, k, v, block_mask=block_mask, enable_gqa=True)


# ---------------------------------------------------------------------- the start-up check


def preflight(device: torch.device, dtype: torch.dtype, backward: bool = True) -> None:
    """A tiny packed, prefixed, grouped-query batch through :func:`document_block_mask` and
    :func:`attend` (the functions training uses, compiled where they are), forward and, with
    ``backward``, backward; raises whatever fails (a Triton launcher that cannot build, say)."""
    gen = torch.Generator().manual_seed(0)
    seq, prefix, streams, dim = 128, 4, 2, 16

    def rand(heads: int, length: int) -> torch.Tensor:
        return torch.randn(streams, heads, length, dim, generator=gen).to(device, dtype).requires_grad_(backward)

    q, k, v = rand(2, seq), rand(1, seq + prefix), rand(1, seq + prefix)
    segments = (torch.arange(seq, device=device) >= seq // 2).long()[None]  # two documents
    out = attend(q, k, v, document_block_mask(segments, 1, seq, prefix, streams, device))
    if backward:
        out.float().sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reason(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}".rstrip(": ")


def flex_problem(device: torch.device, dtype: torch.dtype, backward: bool = True) -> str | None:
    """Why FlexAttention cannot run on ``device`` in ``dtype`` (None: it can); checks only where
    it runs compiled."""
    if not compiles(device):
        return None
    try:
        preflight(device, dtype, backward)
    except Exception as exc:  # any failure (Triton, gcc, inductor, CUDA) means: not usable here
        return _reason(exc)
    return None


def choose_backend(
    requested: str, device: torch.device, dtype: torch.dtype, *, training: bool, key: str = "model.attention_backend"
) -> tuple[str, str | None]:
    """(the backend masked batches run on, "flex" or "sdpa"; a warning to print or None) for
    ``requested`` (the setting ``key``: a config key or a command's option), after a preflight
    compile where flex would run compiled: ``auto`` falls back to sdpa with the warning, a forced
    ``flex`` that fails raises ValueError (as does ``flex`` training off CUDA)."""
    backend = training_backend(requested, device) if training else ("flex" if use_flex(requested, device) else "sdpa")
    if backend != "flex":
        return backend, None
    problem = flex_problem(device, dtype, backward=training)
    if problem is None:
        return "flex", None
    if requested == "flex":
        raise ValueError(
            f"flex cannot run on {device} ({problem}); Triton needs gcc, the Python headers and libcuda at "
            "run time: fix that, or use auto (falls back to sdpa) or sdpa"
        )
    return "sdpa", (
        f"warning: {_setting(key, 'auto')} uses sdpa, not flex: FlexAttention's preflight compile failed on {device} "
        f"({problem}); Triton needs gcc, the Python headers and libcuda at run time. Set {_setting(key, 'sdpa')} to "
        "skip this check"
    )


def _setting(key: str, value: str) -> str:
    """``key: value`` for a config key, ``--key value`` for a command's option."""
    return f"{key} {value}" if key.startswith("--") else f"{key}: {value}"


def set_attention_backend(model: torch.nn.Module, requested: str, device: torch.device | str, key: str) -> str:
    """Make an evaluation model (forward only) run ``requested`` (the setting ``key``) on
    ``device``: the backend chosen after the preflight, its warning printed on stderr; a forced
    flex that cannot run is a UserError naming ``key``."""
    device = torch.device(device)
    dtype = next(model.parameters()).dtype
    try:
        backend, warning = choose_backend(requested, device, dtype, training=False, key=key)
    except ValueError as exc:
        raise UserError(f"{_setting(key, requested)}: {exc}") from None
    if warning:
        print(warning, file=sys.stderr, flush=True)
    model.attention_backend = backend
    return backend
