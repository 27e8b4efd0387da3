"""``parscale config``: validate a job config and print it fully resolved (or the schema)."""

from __future__ import annotations

import argparse
import json

from ..config.cli_args import add_config_args, load_from_args


def _run(args: argparse.Namespace) -> int:
    from ..config import JobConfig, dump_resolved, write_resolved

    if args.schema:
        print(json.dumps(JobConfig.model_json_schema(), indent=2))
        return 0
    if args.config is None:
        raise SystemExit("parscale config: give a CONFIG file or --schema")
    loaded = load_from_args(args)
    if args.get:
        return _print_values(loaded, args.get)
    if args.out:
        print(f"wrote {write_resolved(loaded, args.out)}")
    else:
        print(dump_resolved(loaded), end="")
    return 0


def _print_values(loaded, keys: list[str]) -> int:
    """One resolved value per line: strings as they are, null for None, the rest as JSON."""
    from ..config.loader import value_at
    from ..errors import UserError

    data = loaded.config.model_dump(mode="json")
    for key in keys:
        try:
            value = value_at(data, key)
        except (KeyError, ValueError):
            raise UserError(f"--get {key}: no such key in the resolved config") from None
        print(value if isinstance(value, str) else json.dumps(value))
    return 0


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "config",
        help="validate a job config and print it resolved",
        description="Validate a job config (bases merged, overrides applied, defaults filled) and print "
        "the resolved YAML, or write it with --out. Exit 2 with every problem listed if invalid.",
    )
    add_config_args(parser, required=False)
    parser.add_argument("--out", metavar="DIR", help="write config.resolved.yaml into DIR instead of printing")
    parser.add_argument(
        "--get",
        action="append",
        default=[],
        metavar="KEY",
        help="print only this resolved value (dotted key, repeatable; one line each); "
        "the launch scripts read the process count this way",
    )
    parser.add_argument("--schema", action="store_true", help="print the config JSON schema and exit")
    parser.set_defaults(func=_run)
