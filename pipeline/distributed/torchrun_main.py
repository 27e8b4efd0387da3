"""torchrun with one difference: when every rank that failed exited 2 (a config or input error each
rank already explained, naming the file and key), the launch exits 2 with one line, not with
torchrun's ``ChildFailedError`` traceback and exit 1. Anything else fails exactly as torchrun does.

    python -m pipeline.distributed.torchrun_main --standalone --nproc_per_node=2 -m pipeline.cli train CONFIG
"""

from __future__ import annotations

import sys

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import get_args_parser, run

from ..errors import EXIT_USER_ERROR


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        run(args)
    except ChildFailedError as exc:
        codes = sorted({failure.exitcode for failure in exc.failures.values()})
        if codes != [EXIT_USER_ERROR]:
            raise
        print(
            f"torchrun: {len(exc.failures)} rank(s) refused the job (exit {EXIT_USER_ERROR}); the reason is above",
            file=sys.stderr,
        )
        return EXIT_USER_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
