"""``parscale generate``: sample text from a portable checkpoint (dense or ParScale, KV-cached)."""

from __future__ import annotations

import argparse
import sys


def _run(args: argparse.Namespace) -> int:
    from data_prep.tokenizer import load as load_tokenizer

    from ..checkpoint.portable import load_portable, tokenizer_file
    from ..distributed import single_process
    from ..model.generation import Sampling, generate

    sp = load_tokenizer(tokenizer_file(args.checkpoint))
    prompts = args.prompt or [""]
    # documents start right after an end-of-document token in training data: start prompts the same way
    encoded = [[sp.eos_id()] + sp.encode(p) for p in prompts]
    sampling = Sampling(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        eos_id=sp.eos_id(),
        seed=args.seed,
    )
    with single_process(seed=args.seed) as ctx:
        model, _ = load_portable(args.checkpoint)
        model.to(ctx.device)
        outputs = generate(model, encoded, sampling, pad_id=max(sp.pad_id(), 0))
    for prompt, tokens in zip(prompts, outputs, strict=True):
        text = sp.decode([t for t in tokens if t != sp.eos_id()])
        print(f"{prompt}{text}" if not args.only_new else text)
        if len(prompts) > 1:
            print("-" * 40)
    sys.stdout.flush()
    return 0


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="generate text from a checkpoint",
        description="Incremental decoding with a KV cache (ParScale prefixes pre-seed P caches per sequence) "
        "from a portable checkpoint folder (model.safetensors, config.json, tokenizer.model).",
    )
    parser.add_argument("checkpoint", help="portable checkpoint folder")
    parser.add_argument("--prompt", action="append", default=[], help="prompt text; repeat for a batch")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = off)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only-new", action="store_true", help="print only the generated text")
    parser.set_defaults(func=_run)
