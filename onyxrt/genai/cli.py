"""``onyxrt generate MODEL --input-ids 1,2,3 --max-new-tokens N [--stream]``: tokens and prefill/decode speed."""

from __future__ import annotations

import argparse
import sys

import numpy as np

from ..cli import UsageError, _count, _resolve_model
from .generator import Generator


def _token_ids(text: str) -> list[int]:
    """An argparse type: comma-separated non-negative token ids."""
    parts = [part.strip() for part in text.split(",")]
    try:
        ids = [int(part) for part in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' must be comma-separated integers, like 1,2,3") from None
    if any(token < 0 for token in ids):
        raise argparse.ArgumentTypeError(f"'{text}': token ids cannot be negative")
    return ids


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``onyxrt generate``'s options."""
    parser.add_argument("model", help="path of a decoder .onnx model (input_ids, attention_mask, past_key_values.N.key/value in; "
                                      "logits, present.N.key/value out)")
    parser.add_argument("--input-ids", type=_token_ids, required=True, metavar="1,2,3", help="the prompt's token ids")
    parser.add_argument("--max-new-tokens", type=_count(0), default=20, help="tokens to generate at most (default 20)")
    parser.add_argument("--stream", action="store_true", help="print each token as soon as it is chosen")
    parser.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=_number, default=1.0, help="sampling temperature (default 1.0)")
    parser.add_argument("--top-k", type=int, default=0, help="sample among the k most probable tokens (default 0: all)")
    parser.add_argument("--top-p", type=_number, default=1.0, help="nucleus sampling mass (default 1.0: all)")
    parser.add_argument("--repetition-penalty", type=_number, default=1.0, help="penalty of tokens already seen (default 1.0: none)")
    parser.add_argument("--eos-token-id", type=int, action="append", default=None, help="stop at this token; repeatable")
    parser.add_argument("--seed", type=int, default=None, help="seed of the sampling")
    parser.add_argument("--warmup", type=_count(0), default=1,
                        help="untimed 2-token generations first, so one-time costs (first-run compilation) are not timed (default 1)")
    parser.add_argument("--optimization-level", type=int, default=99, choices=(0, 1, 2, 3, 99), help="graph optimization level")


def run(args: argparse.Namespace) -> int:
    """Generate from the prompt; print the new tokens and the prefill and decode tokens per second."""
    from ..cli import _session

    model_path = _resolve_model(args.model)
    session = _session(str(model_path), args.optimization_level)
    try:
        generator = Generator(session)
        prompt = np.asarray([args.input_ids], np.int64)
        options = dict(do_sample=args.do_sample, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                       repetition_penalty=args.repetition_penalty, eos_token_id=args.eos_token_id, seed=args.seed)
        tokens = generator.stream(prompt, max_new_tokens=args.max_new_tokens, **options)  # checks every argument
        for _ in range(args.warmup):
            generator.generate(prompt, max_new_tokens=min(2, args.max_new_tokens), **options)
    except (ValueError, TypeError) as exc:
        raise UsageError(_option_names(str(exc))) from None
    print(f"prompt ({len(args.input_ids)} tokens): {' '.join(map(str, args.input_ids))}")
    print("new tokens:", end="", flush=True)
    new = []
    for step in tokens:
        new.append(int(step[0]))
        if args.stream:
            print(f" {new[-1]}", end="", flush=True)
    if not args.stream:
        print("".join(f" {token}" for token in new), end="")
    print()
    stats = generator.last_stats
    print(f"prefill: {stats.prompt_tokens} tokens in {stats.prefill_seconds * 1000:.1f} ms "
          f"({stats.prefill_tokens_per_second:.1f} tokens/s; time to first token)")
    decoded = max(stats.new_tokens - 1, 0)
    print(f"decode: {decoded} tokens in {stats.decode_seconds * 1000:.1f} ms ({stats.decode_tokens_per_second:.1f} tokens/s)")
    sys.stdout.flush()
    return 0


def _option_names(message: str) -> str:
    """A Generator argument error in the command line's terms (max_new_tokens -> --max-new-tokens)."""
    for name in ("max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty", "eos_token_id", "seed", "input_ids"):
        if message.startswith(name):
            return "--" + name.replace("_", "-") + message[len(name):]
    return message
