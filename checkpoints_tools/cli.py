"""``parscale convert``: checkpoint tools. Each tool is a sub-command with its own --help."""

from __future__ import annotations

import json
import sys


def _inspect(args) -> int:
    from .inspect_ckpt import print_inspect

    print_inspect(args.checkpoint)
    return 0


def _verify(args) -> int:
    from .inspect_ckpt import verify

    problems = verify(args.checkpoint)
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"{args.checkpoint}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0


#: ParScaleConfig fields ``to-parscale`` takes as options; unset ones keep the config's defaults,
#: but for those of a stage-2 conversion (``_defaults``, as ``stage2.parscale`` has them)
_PARSCALE_OPTIONS = ("prefix_len", "eps", "prefix_init", "prefix_init_std")


def _defaults() -> dict:
    from pipeline.config.model import STAGE2_PREFIX_INIT_STD

    return {"prefix_init_std": STAGE2_PREFIX_INIT_STD}


def _parscale_options(parser) -> None:
    from typing import get_args

    from pipeline.config.model import ParScaleConfig

    stage2 = _defaults()
    for key in _PARSCALE_OPTIONS:
        field = ParScaleConfig.model_fields[key]
        choices = get_args(field.annotation) or None
        kind = None if choices else field.annotation
        default, source = (stage2[key], "as stage2.parscale") if key in stage2 else (field.default, "as parscale")
        parser.add_argument(
            f"--{key.replace('_', '-')}",
            type=kind,
            choices=choices,
            help=f"{field.description.rstrip('.')} (default: {default}, {source}.{key})",
        )


def _to_parscale(args) -> int:
    from pydantic import ValidationError

    from pipeline.config.model import ParScaleConfig

    from .to_parscale import convert

    given = _defaults() | {key: getattr(args, key) for key in _PARSCALE_OPTIONS if getattr(args, key) is not None}
    try:
        parscale = ParScaleConfig(streams=args.streams, **given)
    except ValidationError as exc:
        for problem in exc.errors():
            option = "--" + str(problem["loc"][0]).replace("_", "-")
            print(f"parscale convert to-parscale: {option}: {problem['msg']}", file=sys.stderr)
        return 2
    print(
        json.dumps(
            convert(
                args.source,
                args.target,
                parscale,
                seed=args.seed,
                allow_more_streams=args.allow_more_streams,
                verify=not args.no_verify,
            ),
            indent=2,
        )
    )
    return 0


def _consolidate(args) -> int:
    from .consolidate import consolidate

    print(json.dumps(consolidate(args.source, args.target, args.tokenizer, verify=not args.no_verify), indent=2))
    return 0


def _reshard(args) -> int:
    from .reshard import reshard

    print(json.dumps(reshard(args.source, args.target, args.tp, verify=not args.no_verify), indent=2))
    return 0


def _export_hf(args) -> int:
    from .hf import export_hf

    print(json.dumps(export_hf(args.source, args.target, args.model_type, verify=not args.no_verify), indent=2))
    return 0


def _import_hf(args) -> int:
    from .hf import import_hf

    result = import_hf(args.source, args.target, verify=not args.no_verify, tokenizer=args.tokenizer)
    print(json.dumps(result, indent=2))
    return 0


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="checkpoint tools: consolidate, reshard, to-parscale, export-hf, import-hf, inspect, verify",
        description="Checkpoint tools. Trainer checkpoints (<run>/checkpoints/stepN: DeepSpeed ZeRO files) are "
        "consolidated to portable ones (model.safetensors + config.json + tokenizer.model, the folder "
        "every run also exports at its end) or resharded to another TP; portable ones convert to "
        "ParScale and to/from Hugging Face folders (qwen2, llama, the official qwen2_parscale). Each "
        "converter checks the result's logits against the source's unless --no-verify; nothing is "
        "unpickled except DeepSpeed's plain data classes, with torch.load(weights_only=True).",
    )
    tools = parser.add_subparsers(dest="tool", metavar="TOOL", required=True)
    p = tools.add_parser("inspect", help="shapes, parameter counts, P, dtype, tokens seen, config (JSON)")
    p.add_argument("checkpoint")
    p.set_defaults(func=_inspect)
    p = tools.add_parser("verify", help="checksums and shapes against the config; exit 1 on a mismatch")
    p.add_argument("checkpoint")
    p.set_defaults(func=_verify)
    p = tools.add_parser(
        "consolidate",
        help="trainer checkpoint (any ZeRO stage, TP, DP) -> portable (fp32)",
        description="Merge a DeepSpeed ZeRO checkpoint (stages 0-3, any TP and DP, fp32 or bf16: "
        "the fp32 masters) into a portable checkpoint.",
    )
    p.add_argument("source", help="a stepN folder, a checkpoints folder (its latest) or a run folder")
    p.add_argument("target", help="the portable checkpoint folder to write")
    p.add_argument("--tokenizer", help="tokenizer.model to ship (default: the run's prepared data)")
    p.add_argument("--no-verify", action="store_true", help="skip the logits check (source at its TP vs result)")
    p.set_defaults(func=_consolidate)
    p = tools.add_parser(
        "reshard",
        help="trainer checkpoint at TP=a -> TP=b (resumable by parscale train)",
        description="Split and merge every layer along its partition dimension for a new TP "
        "size; writes TARGET/stepN and TARGET/latest. Adam moments restart.",
    )
    p.add_argument("source", help="a stepN folder, a checkpoints folder (its latest) or a run folder")
    p.add_argument("target", help="a checkpoints folder (e.g. <new run>/checkpoints)")
    p.add_argument("--tp", type=int, required=True, help="the new tensor-parallel size")
    p.add_argument("--no-verify", action="store_true", help="skip the logits check (TP=a vs TP=b)")
    p.set_defaults(func=_reshard)
    p = tools.add_parser(
        "to-parscale",
        help="dense -> ParScale: add per-layer prefixes and the aggregator",
        description="Convert a dense portable checkpoint to ParScale with P streams (the backbone is "
        "copied bit for bit and verified); a ParScale one to a larger P only with "
        "--allow-more-streams.",
    )
    p.add_argument("source")
    p.add_argument("target")
    p.add_argument("--streams", type=int, required=True, help="P")
    _parscale_options(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--allow-more-streams", action="store_true", help="accept a ParScale source (P -> larger P)")
    p.add_argument("--no-verify", action="store_true", help="skip the backbone logits check")
    p.set_defaults(func=_to_parscale)
    p = tools.add_parser(
        "export-hf",
        help="portable -> Hugging Face folder (qwen2, llama, official qwen2_parscale)",
        description="Writes model.safetensors, config.json (with bos/eos/pad ids), generation_config.json and a "
        "tokenizer that AutoTokenizer loads with the checkpoint's ids (checked before the folder is written).",
    )
    p.add_argument("source")
    p.add_argument("target")
    p.add_argument(
        "--model-type",
        choices=["auto", "qwen2", "llama", "qwen2_parscale"],
        default="auto",
        help="auto: qwen2_parscale for P > 1, else qwen2 with QKV biases, else llama",
    )
    p.add_argument("--no-verify", action="store_true", help="skip the check (transformers' logits vs ours)")
    p.set_defaults(func=_export_hf)
    p = tools.add_parser(
        "import-hf",
        help="Hugging Face qwen2 / llama / qwen2_parscale folder -> portable",
        description="Refuses config.json settings that change what the model computes and are not "
        "implemented here (rope_scaling, sliding windows, other activations ...), naming "
        "them. Verification: qwen2 and llama load in transformers and their logits are "
        "compared with ours; qwen2_parscale (its modeling code is remote, not run here) "
        "is verified by reading the written tensors back, which checks the weights, not "
        "what its config means.",
    )
    p.add_argument("source")
    p.add_argument("target")
    p.add_argument(
        "--tokenizer",
        help="the model's tokenizer when SOURCE has none (tokenizer.json, a .model, or a folder); default: "
        "SOURCE's own tokenizer files, copied into the checkpoint and recorded",
    )
    p.add_argument("--no-verify", action="store_true", help="skip the check (transformers' logits vs ours)")
    p.set_defaults(func=_import_hf)
