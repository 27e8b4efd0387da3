"""Expand a SLURM host list ("gpu[01-03,7],cpu-a") into host names, as ``scontrol show hostnames``
does; the launch scripts fall back to it where ``scontrol`` is absent (dry runs, tests).

    python -m pipeline.distributed.hostlist 'gpu[01-04]'
"""

from __future__ import annotations

import argparse
import itertools
import re

_GROUP = re.compile(r"\[([^\[\]]*)\]")


def _split_top_level(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"host list {text!r}: ']' without '['")
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise ValueError(f"host list {text!r}: '[' without ']'")
    parts.append(text[start:])
    return [p for p in (p.strip() for p in parts) if p]


def _range(spec: str, whole: str) -> list[str]:
    out = []
    for item in spec.split(","):
        lo, sep, hi = item.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"host list {whole!r}: bad range {item!r}")
        width = len(lo)
        out += [str(n).zfill(width) for n in range(int(lo), int(hi or lo) + 1)]
    return out


def expand(nodelist: str) -> list[str]:
    hosts: list[str] = []
    for part in _split_top_level(nodelist):
        pieces = _GROUP.split(part)  # literal, range, literal, range, ..., literal
        choices = [[p] if i % 2 == 0 else _range(p, nodelist) for i, p in enumerate(pieces)]
        hosts += ["".join(combo) for combo in itertools.product(*choices)]
    return hosts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.distributed.hostlist",
        description="Print each host of a SLURM host list on its own line.",
    )
    parser.add_argument("nodelist", help="e.g. 'gpu[01-04,09],login1'")
    args = parser.parse_args(argv)
    try:
        print("\n".join(expand(args.nodelist)))
    except ValueError as exc:
        parser.exit(2, f"hostlist: {exc}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
