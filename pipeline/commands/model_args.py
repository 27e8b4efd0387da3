"""The options of the commands that run a checkpoint's model (eval, generate): its attention
kernel and its device."""

from __future__ import annotations

import argparse


def add_attention_backend_arg(parser: argparse.ArgumentParser) -> None:
    """``--attention-backend``: the rebuilt model's attention kernel (a portable checkpoint does not
    record one), as ``model.attention_backend``."""
    parser.add_argument(
        "--attention-backend",
        choices=("auto", "flex", "sdpa"),
        default="auto",
        help="attention kernel for masked batches, as model.attention_backend: auto = flex on CUDA when its "
        "preflight compile works, else sdpa; flex = FlexAttention (an error where it cannot run); sdpa = "
        "scaled_dot_product_attention (default auto)",
    )


def add_device_arg(parser: argparse.ArgumentParser) -> None:
    """``--device``: where the model runs (a one-process world on it: NCCL on a GPU, gloo on the CPU)."""
    parser.add_argument(
        "--device",
        help="torch device: cpu, cuda or cuda:N (default: cuda where a GPU is visible, else cpu)",
    )


def chosen_device(args: argparse.Namespace) -> str:
    """``--device``, or a GPU where one is visible."""
    from ..distributed import preferred_device

    return args.device or preferred_device()
