"""``parscale generate``: sample text from a portable checkpoint (dense or ParScale, KV-cached)."""

from __future__ import annotations

import argparse
import sys

from .model_args import add_attention_backend_arg, add_device_arg, chosen_device


def prompt_ids(tok, prompt: str) -> list[int]:
    """A prompt's ids as the model saw documents in training: right after an end-of-document token."""
    return [tok.eos_id] + tok.encode(prompt)


def _run(args: argparse.Namespace) -> int:
    from data_prep.text_tokenizer import padding_id

    from ..checkpoint.portable import load_portable, load_tokenizer
    from ..distributed import single_process
    from ..model.flex import set_attention_backend
    from ..model.generation import Sampling, generate

    tok = load_tokenizer(args.checkpoint)
    prompts = args.prompt or [""]
    encoded = [prompt_ids(tok, p) for p in prompts]
    sampling = Sampling(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        eos_id=tok.eos_id,
        seed=args.seed,
    )
    with single_process(seed=args.seed, device=chosen_device(args)) as ctx:
        model, _ = load_portable(args.checkpoint)
        model.to(ctx.device)
        set_attention_backend(model, args.attention_backend, ctx.device, "--attention-backend")
        outputs = generate(model, encoded, sampling, pad_id=padding_id(tok.pad_id))
    for prompt, tokens in zip(prompts, outputs, strict=True):
        text = tok.decode([t for t in tokens if t != tok.eos_id])
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
        "from a portable checkpoint folder (model.safetensors, config.json and the tokenizer's files).",
    )
    parser.add_argument("checkpoint", help="portable checkpoint folder")
    parser.add_argument("--prompt", action="append", default=[], help="prompt text; repeat for a batch")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = off)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only-new", action="store_true", help="print only the generated text")
    add_attention_backend_arg(parser)
    add_device_arg(parser)
    parser.set_defaults(func=_run)
