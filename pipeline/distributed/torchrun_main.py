"""torchrun with one difference: when a rank exited 2 (a config or input error the rank already
explained, naming the file and key) and every other failed rank also exited 2 or was stopped by the
SIGTERM torchrun sends the rest once one rank fails (failure timestamps are whole seconds, so which
came first is not knowable), the launch exits 2 with one line, not with
torchrun's ``ChildFailedError`` traceback and exit 1. Anything else fails exactly as torchrun does.

    python -m pipeline.distributed.torchrun_main --standalone --nproc_per_node=2 -m pipeline.cli train CONFIG
"""

from __future__ import annotations

import signal
import sys

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import get_args_parser, run

from ..errors import EXIT_USER_ERROR


def refused_by_ranks(exc: ChildFailedError) -> bool:
    """True when some rank exited 2 and every other failed rank exited 2 or got torchrun's SIGTERM."""
    codes = {failure.exitcode for failure in exc.failures.values()}
    return EXIT_USER_ERROR in codes and codes <= {EXIT_USER_ERROR, -int(signal.SIGTERM)}


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        run(args)
    except ChildFailedError as exc:
        if not refused_by_ranks(exc):
            raise
        print(
            f"torchrun: {len(exc.failures)} rank(s) refused the job (exit {EXIT_USER_ERROR}); the reason is above",
            file=sys.stderr,
        )
        return EXIT_USER_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
