"""Third-party warnings that say nothing a user of this pipeline can act on, silenced by message
(anything else still shows). Installed when the ``pipeline`` package is first imported, so every
entry point (CLI, trainer ranks, tools) has them before megatron-core or DeepSpeed load."""

from __future__ import annotations

import warnings

#: (message regex, category): megatron-core's optional kernels, DeepSpeed's use of a deprecated
#: torch collective (every rank, every run), megatron's CUDA_DEVICE_MAX_CONNECTIONS notice (set by us where TP > 1)
KNOWN = (
    ("Transformer Engine and Apex are not installed", UserWarning),
    (".*Apex is not installed.*", UserWarning),
    (".*CUDA_DEVICE_MAX_CONNECTIONS.*", UserWarning),
    (r".*torch\.distributed\.all_gather_into_tensor.* is deprecated", FutureWarning),
    (r".*torch\.distributed\.reduce_scatter_tensor.* is deprecated", FutureWarning),
)


def quiet_known_warnings() -> None:
    for message, category in KNOWN:
        warnings.filterwarnings("ignore", message=message, category=category)
