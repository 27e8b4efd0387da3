"""Run the trainer with a fault: the loss is NaN at the steps listed (1-based), to exercise the
non-finite step handling.

    python tests/helpers/workers/nan_trainer.py CONFIG STEP[,STEP...]
"""

import sys

from pipeline.config import load_config
from pipeline.distributed import distributed_world
from pipeline.errors import UserError
from pipeline.training.trainer import Trainer


class FaultyTrainer(Trainer):
    nan_steps: set[int] = set()

    def _forward(self, batch, **extra):
        out = super()._forward(batch, **extra)
        if self.step + 1 in self.nan_steps:
            out.loss = out.loss * float("nan")
        return out


def main() -> int:
    FaultyTrainer.nan_steps = {int(s) for s in sys.argv[2].split(",")}
    loaded = load_config(sys.argv[1])
    try:
        with distributed_world(loaded.config, loaded.error) as ctx:
            FaultyTrainer.from_loaded(loaded, ctx).run()
    except UserError as exc:
        print(f"UserError: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
