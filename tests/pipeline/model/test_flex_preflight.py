"""FlexAttention's start-up check and its compiled functions, on CPU with the CUDA path faked
(``flex.compiles`` patched True: what runs compiled on a GPU runs compiled here, with
``torch.compile`` patched to raise as a missing Triton toolchain does, or to dynamo's eager
backend). Under ``auto`` a failed preflight falls back to sdpa with one warning naming the reason
and ``model.attention_backend``; a forced ``flex`` is refused; off CUDA nothing is compiled. Our two
compiled functions get their own recompile limit, and hitting it raises instead of running
unfused eager code."""

from __future__ import annotations

import functools

import pytest
import torch
from torch.nn.attention.flex_attention import flex_attention

from pipeline.config.model import ModelConfig, ParScaleConfig
from pipeline.distributed import single_process
from pipeline.errors import UserError
from pipeline.model import ParScaleLM, flex

CPU = torch.device("cpu")
REAL_COMPILE = torch.compile


@pytest.fixture
def fake_cuda(monkeypatch):
    """The CUDA code path on the CPU, with fresh compiled functions (dropped again after)."""
    monkeypatch.setattr(flex, "compiles", lambda device: True)
    monkeypatch.setattr(flex, "_compiled", {})


@pytest.fixture
def no_triton(monkeypatch):
    """``torch.compile`` as it fails where Triton cannot build its launcher."""
    calls = []

    def broken(fn, **options):
        calls.append(options)

        def run(*args, **kwargs):
            raise RuntimeError("Failed to find C compiler. Please specify via CC environment variable.")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    return calls


@pytest.fixture
def eager_compile(monkeypatch):
    """``torch.compile`` with dynamo's eager backend (no inductor, no C compiler); records options."""
    calls = []

    def compile_eager(fn, *, recompile_limit=None, isolate_recompiles=False, **options):
        options.update(recompile_limit=recompile_limit, isolate_recompiles=isolate_recompiles)
        calls.append((fn, options))
        return REAL_COMPILE(fn, **{**options, "backend": "eager"})

    monkeypatch.setattr(torch, "compile", compile_eager)
    return calls


def _qkv(rows: int, seq: int = 128, prefix: int = 4):
    g = torch.Generator().manual_seed(rows)
    return (torch.randn(rows, h, n, 16, generator=g) for h, n in ((2, seq), (1, seq + prefix), (1, seq + prefix)))


def test_without_triton_auto_falls_back_to_sdpa_with_one_warning(fake_cuda, no_triton):
    backend, warning = flex.choose_backend("auto", CPU, torch.bfloat16, training=True)
    assert backend == "sdpa"
    assert "model.attention_backend: auto uses sdpa" in warning and "Failed to find C compiler" in warning
    assert "model.attention_backend: sdpa" in warning  # how to skip the check
    assert no_triton  # the preflight did go through torch.compile


def test_without_triton_a_forced_flex_is_refused(fake_cuda, no_triton):
    with pytest.raises(ValueError, match=r"flex cannot run on cpu \(RuntimeError: Failed to find C compiler"):
        flex.choose_backend("flex", CPU, torch.bfloat16, training=True)


def test_sdpa_and_non_cuda_devices_compile_nothing(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda *a, **k: pytest.fail("compiled"))
    assert flex.choose_backend("auto", CPU, torch.float32, training=True) == ("sdpa", None)
    assert flex.choose_backend("sdpa", CPU, torch.float32, training=False) == ("sdpa", None)
    assert flex.choose_backend("flex", CPU, torch.float32, training=False) == ("flex", None)  # eager, forward only
    with pytest.raises(ValueError, match="flex trains only on CUDA"):
        flex.choose_backend("flex", CPU, torch.float32, training=True)


def test_a_working_compile_keeps_flex(fake_cuda, eager_compile):
    # forward only: FlexAttention has no CPU backward, so this is the evaluation commands' check
    assert flex.choose_backend("auto", CPU, torch.float32, training=False) == ("flex", None)
    # training also runs the backward, which the CPU refuses: a real reason, reported
    backend, warning = flex.choose_backend("auto", CPU, torch.float32, training=True)
    assert backend == "sdpa" and "does not support backward on CPU" in warning


def test_evaluation_models_get_the_choice_and_a_forced_flex_names_the_option(fake_cuda, no_triton, capsys):
    with single_process():
        model = ParScaleLM(
            ModelConfig(num_layers=1, hidden_size=32, ffn_hidden_size=64, num_attention_heads=2, num_kv_heads=1),
            ParScaleConfig(),
            64,
        )
    assert flex.set_attention_backend(model, "auto", "cpu", "--attention-backend") == "sdpa"
    assert model.attention_backend == "sdpa"
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "--attention-backend auto uses sdpa" in err
    with pytest.raises(UserError, match=r"--attention-backend flex: flex cannot run on cpu"):
        flex.set_attention_backend(model, "flex", "cpu", "--attention-backend")


def test_our_two_compiled_functions_get_their_own_recompile_limit(fake_cuda, eager_compile):
    segments = torch.tensor([[0] * 100 + [1] * 28])
    mask = flex.document_block_mask(segments, 1, 128, 4, 2, CPU)
    q, k, v = _qkv(2)
    out = flex.attend(q, k, v, mask)
    compiled = {fn.__name__: options for fn, options in eager_compile}
    assert set(compiled) == {"flex_attention", "create_block_mask"}
    for options in compiled.values():
        assert options["recompile_limit"] == flex.RECOMPILE_LIMIT > 8 and options["isolate_recompiles"]
    assert compiled["flex_attention"]["dynamic"] is False
    expected = flex_attention(q, k, v, block_mask=mask, enable_gqa=True)  # uncompiled
    torch.testing.assert_close(out, expected)


def test_hitting_the_recompile_limit_is_an_error_not_an_eager_fallback(fake_cuda, eager_compile, monkeypatch):
    monkeypatch.setattr(flex, "RECOMPILE_LIMIT", 2)
    for rows in (2, 4):  # two row counts (P x micro-batch) compile
        q, k, v = _qkv(rows)
        flex.attend(q, k, v, flex.document_block_mask(None, rows // 2, 128, 4, 2, CPU))
    q, k, v = _qkv(6)
    mask = flex.document_block_mask(None, 3, 128, 4, 2, CPU)  # the mask builder went dynamic at its 2nd shape
    with pytest.raises(flex.RecompileLimitError, match="FlexAttention was compiled for 2 different input shapes"):
        flex.attend(q, k, v, mask)  # the attention is compiled static: a third row count is one too many
    assert torch._dynamo.config.fail_on_recompile_limit_hit is False  # set only around our calls


def test_limited_compile_counts_its_own_shapes():
    square = flex.limited_compile(lambda x: x * x, "square", 2, backend="eager", dynamic=False)
    assert square(torch.ones(1)).item() == 1 and square(torch.ones(2)).sum().item() == 2
    with pytest.raises(flex.RecompileLimitError, match="square was compiled for 2"):
        square(torch.ones(3))
    # the same shapes still run compiled
    assert square(torch.full((2,), 3.0)).tolist() == [9.0, 9.0]


def test_preflight_runs_the_functions_training_uses(fake_cuda, monkeypatch):
    seen = []
    attend, block_mask = flex.attend, flex.document_block_mask
    monkeypatch.setattr(flex, "attend", functools.partial(lambda f, *a: seen.append("attend") or f(*a), attend))
    monkeypatch.setattr(flex, "document_block_mask", lambda *a: seen.append(("mask", a[1:])) or block_mask(*a))
    monkeypatch.setattr(flex, "compiles", lambda device: False)  # eager: the CPU has no flex backward
    flex.preflight(CPU, torch.float32, backward=False)
    assert seen == [("mask", (1, 128, 4, 2, CPU)), "attend"]


def test_on_a_torch_without_per_compile_limits_the_limit_is_raised_process_wide(monkeypatch):
    """torch before 2.13 (the GPU image has 2.11) has no ``recompile_limit``/``isolate_recompiles``
    arguments: limited_compile must not pass them, and must still raise at the limit."""
    real = torch.compile

    def old_compile(model=None, *, fullgraph=False, dynamic=None, backend="inductor", mode=None, options=None):
        return real(model, fullgraph=fullgraph, dynamic=dynamic, backend=backend, mode=mode, options=options)

    monkeypatch.setattr(torch, "compile", old_compile)
    config = torch._dynamo.config
    # config.patch, not monkeypatch: pytest 9's undo deletes a module attribute missing from the
    # module's __dict__, and deleting a dynamo config hides it for the rest of the process
    before = config.recompile_limit
    with config.patch(recompile_limit=2):
        cube = flex.limited_compile(lambda x: x * x * x, "cube", 3, backend="eager", dynamic=False)
        assert config.recompile_limit == 3  # raised for this process (never lowered)
        for n in (1, 2, 3):
            assert cube(torch.ones(n)).sum().item() == n
        with pytest.raises(flex.RecompileLimitError, match="cube was compiled for 3"):
            cube(torch.ones(4))
    assert config.recompile_limit == before and not config._config["recompile_limit"].hide
