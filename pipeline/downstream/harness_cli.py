"""``parscale-lm-eval``: lm-evaluation-harness's own command line (``lm_eval``), with our model
registered as ``parscale`` and the project's offline tasks findable. lm-eval 0.4.13 discovers no
models from other packages, so the stock ``lm_eval`` does not know ``--model parscale``; this does:

    parscale-lm-eval run --model parscale --model_args path=runs/demo/stage2-p4/portable \\
        --tasks parscale_smoke --include_path pipeline/downstream/tasks
"""

from __future__ import annotations

import sys


def main() -> None:
    from lm_eval.__main__ import cli_evaluate

    from .harness_model import HarnessLM  # noqa: F401  (registers the model "parscale")

    sys.exit(cli_evaluate())


if __name__ == "__main__":
    main()
