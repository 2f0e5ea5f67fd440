"""Generation speed: onyxrt's Generator against the same greedy loop written on onnxruntime.

    python benchmarks/generation.py --out benchmarks/generation.md
    python benchmarks/generation.py --prompt 128 --new-tokens 128 --rounds 3 --repeat 2

Model: ../shared/zoo's llama_tiny (materialized into $ZOO_CACHE or ~/.cache/zoo). Each round starts one
worker process per runtime, alternating (onyxrt, onnxruntime, onyxrt, ...); a worker loads the model,
warms up with one short generation from the same prompt, then times ``--repeat`` generations of
``--new-tokens`` greedy tokens after a ``--prompt``-token prompt (batch 1). Reported, as medians over
all timed generations: time to first token (the prompt's forward pass and its token choice), prefill
tokens/s (prompt tokens / that time) and decode tokens/s (the tokens after the first / their steps' time).
The onnxruntime loop feeds the presents back as pasts exactly as the Generator does; both produce the
same tokens (checked: the workers report their tokens and the parent compares them).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from report import cpu_model

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT.parent / "shared" / "zoo"
RUNTIMES = ("onyxrt", "onnxruntime")


def zoo_path(name: str) -> str:
    """The materialized .onnx file of a ../shared/zoo model."""
    spec = importlib.util.spec_from_file_location("zoo_materialize", ZOO / "materialize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.path(name)


def _prompt(length: int) -> np.ndarray:
    return np.random.default_rng(0).integers(1, 32000, (1, length), dtype=np.int64)


def plain_generation_loop(session, prompt: np.ndarray, new_tokens: int) -> tuple[list[int], list[float]]:
    """The plain loop any runtime's session can run: prefill, then one token per step with the presents fed back
    as pasts (batch 1, greedy); tokens and each step's seconds. Also used by kv_cache.py."""
    inputs = {arg.name: arg for arg in session.get_inputs()}
    past_names = [name for name in inputs if name.startswith("past_key_values.")]
    heads, head_size = inputs[past_names[0]].shape[1], inputs[past_names[0]].shape[3]
    output_names = ["logits"] + [name.replace("past_key_values", "present") for name in past_names]
    mask = np.ones_like(prompt)
    feeds = {"input_ids": prompt, "attention_mask": mask, "position_ids": np.cumsum(mask, axis=1) - 1}
    feeds.update({name: np.zeros((1, heads, 0, head_size), np.float32) for name in past_names})
    tokens, seconds = [], []
    for _ in range(new_tokens):
        start = time.perf_counter()
        logits, *presents = session.run(output_names, feeds)
        token = logits[:, -1].argmax(-1)[:, None].astype(np.int64)
        seconds.append(time.perf_counter() - start)
        tokens.append(int(token[0, 0]))
        mask = np.concatenate([mask, np.ones((1, 1), np.int64)], axis=1)
        feeds = {"input_ids": token, "attention_mask": mask, "position_ids": mask.sum(axis=1, keepdims=True) - 1}
        feeds.update(zip(past_names, presents))
    return tokens, seconds


def worker(runtime: str, model: str, prompt_length: int, new_tokens: int, repeat: int) -> dict:
    """One process's measurements: a warm-up generation, then ``repeat`` timed ones."""
    prompt = _prompt(prompt_length)
    start = time.perf_counter()
    if runtime == "onyxrt":
        from onyxrt.genai import Generator
        generator = Generator(model)

        def generate(count: int) -> tuple[list[int], list[float]]:
            tokens = generator.generate(prompt, max_new_tokens=count)[0, prompt_length:].tolist()
            return tokens, list(generator.last_stats.step_seconds)
    else:
        import onnxruntime
        session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])

        def generate(count: int) -> tuple[list[int], list[float]]:
            return plain_generation_loop(session, prompt, count)
    creation = time.perf_counter() - start
    generate(2)
    runs = [generate(new_tokens) for _ in range(repeat)]
    return {"creation_s": creation, "tokens": runs[0][0], "steps": [seconds for _, seconds in runs]}


def _child(runtime: str, args: argparse.Namespace, model: str) -> dict:
    command = [sys.executable, __file__, "--worker", runtime, "--model", model, "--prompt", str(args.prompt),
               "--new-tokens", str(args.new_tokens), "--repeat", str(args.repeat)]
    result = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"{runtime} worker failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", type=int, default=128, help="prompt tokens (default 128)")
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens generated per run (default 128)")
    parser.add_argument("--rounds", type=int, default=3, help="worker processes per runtime, alternating (default 3)")
    parser.add_argument("--repeat", type=int, default=2, help="timed generations per worker (default 2)")
    parser.add_argument("--out", help="also write the table to this .md file")
    parser.add_argument("--worker", choices=RUNTIMES, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.model, args.prompt, args.new_tokens, args.repeat)))
        return 0
    model = zoo_path("llama_tiny")
    steps: dict[str, list[list[float]]] = {runtime: [] for runtime in RUNTIMES}
    tokens: dict[str, list[int]] = {}
    for round_index in range(args.rounds):
        for runtime in RUNTIMES:
            print(f"round {round_index + 1}/{args.rounds}: {runtime}", file=sys.stderr, flush=True)
            result = _child(runtime, args, model)
            steps[runtime] += result["steps"]
            tokens.setdefault(runtime, result["tokens"])
    same = tokens["onyxrt"] == tokens["onnxruntime"]
    rows = []
    for runtime in RUNTIMES:
        first = statistics.median(run[0] for run in steps[runtime])
        decode = statistics.median((len(run) - 1) / sum(run[1:]) for run in steps[runtime])
        rows.append((runtime, first * 1000, args.prompt / first, decode, len(steps[runtime])))
    command = "python benchmarks/generation.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        "# Generation: onyxrt's Generator vs a plain onnxruntime loop",
        "",
        f"llama_tiny (../shared/zoo), batch 1, greedy, prompt {args.prompt} tokens, {args.new_tokens} new tokens; "
        f"{args.rounds} worker processes per runtime (alternating), {args.repeat} timed generations each after a "
        "warm-up generation; medians over all timed generations.",
        "",
        f"Command: `{command.strip()}`  ",
        f"CPU: {cpu_model()}, {len(__import__('os').sched_getaffinity(0))} usable cores",
        "",
        "| runtime | time to first token (ms) | prefill tokens/s | decode tokens/s | generations |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [f"| {name} | {ttft:.1f} | {prefill:.0f} | {decode:.1f} | {count} |" for name, ttft, prefill, decode, count in rows]
    ratio_first = rows[0][1] / rows[1][1]
    ratio_decode = rows[1][3] / rows[0][3]
    lines += ["", f"onyxrt / onnxruntime: time to first token {ratio_first:.2f}x, decode step time {ratio_decode:.2f}x. "
              f"Same {args.new_tokens} tokens from both: {'yes' if same else 'NO'}."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
