"""KV-cache cost of decoding: time per token at a short and a long past, and one decode step against onnxruntime.

    python benchmarks/kv_cache.py --out benchmarks/kv_cache.md
    python benchmarks/kv_cache.py --pasts 128 1024 --new-tokens 33 --rounds 3 --repeat 2 --steps 200 --threads 1

Model: ../shared/zoo's llama_tiny, the Concat export (``present = Concat(past, new, axis=2)``).

Part 1, per-token decode time at past P (``--pasts``): a greedy generation of ``--new-tokens`` after a
random P-token prompt (batch 1); the median of its decode steps (past P .. P + new tokens). Cases:
``generator`` (onyxrt's Generator: cache buffers with spare room, new rows appended in place),
``session.run`` (onyxrt, the plain loop feeding presents back as pasts: a whole-cache Concat per layer
and step) and ``onnxruntime`` (the same plain loop). Each case runs in its own process (a warm-up
generation per past, then ``--repeat`` timed generations per past, the pasts alternating inside the
process so that load drift hits them alike), cases alternating, ``--rounds`` times.

Part 2, one decode step at past 127 (one new token, random past, mask of 128): ``--steps`` timed
``run`` calls after warm-up, median; onyxrt with ordinary arrays, onyxrt with cache-buffer views (the
Generator's step, truncated back to 127 rows between calls) and onnxruntime, each in its own process,
alternating, ``--rounds`` times. All with ``--threads`` intra-op threads (default 1: the CPUs are shared).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from generation import plain_generation_loop  # the same onnxruntime-style loop as generation.py
from report import cpu_model

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT.parent / "shared" / "zoo"
DECODE_CASES = ("generator", "session.run", "onnxruntime")
STEP_CASES = ("onyxrt", "onyxrt cache buffers", "onnxruntime")
STEP_PAST = 127


def zoo_path(name: str) -> str:
    """The materialized .onnx file of a ../shared/zoo model."""
    spec = importlib.util.spec_from_file_location("zoo_materialize", ZOO / "materialize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.path(name)


def _session(runtime: str, model: str, threads: int):
    module = __import__(runtime)
    options = module.SessionOptions()
    options.intra_op_num_threads = threads
    return module.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def decode_worker(case: str, model: str, pasts: list[int], new_tokens: int, repeat: int, threads: int) -> dict:
    """Decode steps of ``repeat`` generations after a prompt of each of ``pasts`` tokens, the pasts alternating."""
    prompts = {past: np.random.default_rng(0).integers(1, 32000, (1, past), dtype=np.int64) for past in pasts}
    if case == "generator":
        import onyxrt
        from onyxrt.genai import Generator
        options = onyxrt.SessionOptions()
        options.intra_op_num_threads = threads
        generator = Generator(model, sess_options=options)

        def generate(prompt: np.ndarray, count: int) -> tuple[list[int], list[float]]:
            tokens = generator.generate(prompt, max_new_tokens=count)[0, prompt.shape[1]:].tolist()
            assert generator.last_stats.cache == "buffers" and generator.last_stats.cache_reloads == 0
            return tokens, list(generator.last_stats.step_seconds)
    else:
        session = _session("onnxruntime" if case == "onnxruntime" else "onyxrt", model, threads)

        def generate(prompt: np.ndarray, count: int) -> tuple[list[int], list[float]]:
            return plain_generation_loop(session, prompt, count)
    for prompt in prompts.values():
        generate(prompt, 3)
    result: dict = {"tokens": {}, "decode": {past: [] for past in pasts}, "steps": {past: [] for past in pasts}}
    for _ in range(repeat):
        for past, prompt in prompts.items():
            tokens, seconds = generate(prompt, new_tokens)
            result["tokens"].setdefault(past, tokens)
            result["decode"][past].append(statistics.median(seconds[1:]))
            result["steps"][past] += seconds[1:]
    return result


def step_worker(case: str, model: str, steps: int, threads: int) -> dict:
    """Median seconds of one decode step at past 127."""
    session = _session("onnxruntime" if case == "onnxruntime" else "onyxrt", model, threads)
    inputs = {arg.name: arg for arg in session.get_inputs()}
    past_names = [name for name in inputs if name.startswith("past_key_values.")]
    heads, head_size = inputs[past_names[0]].shape[1], inputs[past_names[0]].shape[3]
    rng = np.random.default_rng(1)
    pasts = {name: rng.standard_normal((1, heads, STEP_PAST, head_size)).astype(np.float32) for name in past_names}
    feeds = {"input_ids": np.array([[42]], np.int64), "attention_mask": np.ones((1, STEP_PAST + 1), np.int64),
             "position_ids": np.array([[STEP_PAST]], np.int64)}
    buffers = []
    if case == "onyxrt cache buffers":
        from onyxrt.framework.kv_cache import CacheBuffer
        for name in past_names:
            buffer = CacheBuffer((1, heads, 0, head_size), np.float32, STEP_PAST + 1)
            buffer.load(pasts[name])
            buffers.append(buffer)
    output_names = ["logits"] + [name.replace("past_key_values", "present") for name in past_names]
    seconds: list[float] = []
    for index in range(steps + 10):
        if buffers:
            for buffer in buffers:
                buffer.truncate(STEP_PAST)
            feeds.update(zip(past_names, (buffer.view() for buffer in buffers)))
        else:
            feeds.update(pasts)
        start = time.perf_counter()
        outputs = session.run(output_names, feeds)
        elapsed = time.perf_counter() - start
        if index >= 10:
            seconds.append(elapsed)
    if buffers:
        assert all(buffer.holds(present) for buffer, present in zip(buffers, outputs[1:]))
    return {"step": statistics.median(seconds), "steps": seconds, "token": int(outputs[0][0, -1].argmax())}


def _fastest_tenth(seconds: list[float]) -> float:
    """The 10th percentile: what a step costs when other jobs leave the CPU alone."""
    return float(np.percentile(seconds, 10))


def _child(arguments: list[str]) -> dict:
    result = subprocess.run([sys.executable, __file__, *arguments], capture_output=True, text=True, check=False,
                            cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"worker {arguments} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pasts", type=int, nargs="+", default=[128, 1024], help="prompt lengths (default 128 1024)")
    parser.add_argument("--new-tokens", type=int, default=33, help="tokens per timed generation (default 33)")
    parser.add_argument("--rounds", type=int, default=3, help="processes per case, alternating (default 3)")
    parser.add_argument("--repeat", type=int, default=2, help="timed generations per process (default 2)")
    parser.add_argument("--steps", type=int, default=200, help="timed single steps per process (default 200)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of every session (default 1)")
    parser.add_argument("--out", help="also write the report to this .md file")
    parser.add_argument("--decode-worker", choices=DECODE_CASES, help=argparse.SUPPRESS)
    parser.add_argument("--step-worker", choices=STEP_CASES, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.decode_worker:
        print(json.dumps(decode_worker(args.decode_worker, args.model, args.pasts, args.new_tokens, args.repeat,
                                       args.threads)))
        return 0
    if args.step_worker:
        print(json.dumps(step_worker(args.step_worker, args.model, args.steps, args.threads)))
        return 0

    model = zoo_path("llama_tiny")
    common = ["--model", model, "--threads", str(args.threads)]
    loads = [os.getloadavg()[0]]
    decode: dict[tuple[str, int], list[float]] = {(case, past): [] for case in DECODE_CASES for past in args.pasts}
    decode_steps: dict[tuple[str, int], list[float]] = {key: [] for key in decode}
    tokens: dict[tuple[str, int], list[int]] = {}
    step: dict[str, list[float]] = {case: [] for case in STEP_CASES}
    step_all: dict[str, list[float]] = {case: [] for case in STEP_CASES}
    step_tokens: dict[str, int] = {}
    for round_index in range(args.rounds):
        for case in DECODE_CASES:
            print(f"round {round_index + 1}/{args.rounds}: {case}", file=sys.stderr, flush=True)
            result = _child(["--decode-worker", case, "--pasts", *map(str, args.pasts), "--new-tokens",
                             str(args.new_tokens), "--repeat", str(args.repeat), *common])
            for past in args.pasts:
                decode[(case, past)] += result["decode"][str(past)]
                decode_steps[(case, past)] += result["steps"][str(past)]
                tokens.setdefault((case, past), result["tokens"][str(past)])
        for case in STEP_CASES:
            print(f"round {round_index + 1}/{args.rounds}: step at past {STEP_PAST}, {case}", file=sys.stderr, flush=True)
            result = _child(["--step-worker", case, "--steps", str(args.steps), *common])
            step[case].append(result["step"])
            step_all[case] += result["steps"]
            step_tokens.setdefault(case, result["token"])
        loads.append(os.getloadavg()[0])

    same_tokens = all(len({tuple(tokens[(case, past)]) for case in DECODE_CASES}) == 1 for past in args.pasts)
    same_step = len(set(step_tokens.values())) == 1
    command = "python benchmarks/kv_cache.py " + " ".join(argv if argv is not None else sys.argv[1:])
    short, long = min(args.pasts), max(args.pasts)
    lines = [
        "# KV cache: decode time per token vs past length, and one decode step against onnxruntime",
        "",
        f"llama_tiny (../shared/zoo, the Concat export), batch 1, greedy, {args.threads} intra-op thread(s) per session; "
        f"each case in its own process, cases alternating, {args.rounds} rounds.",
        "",
        f"Command: `{command.strip()}`  ",
        f"CPU: {cpu_model()}, {len(os.sched_getaffinity(0))} usable cores; "
        f"1-minute load average during the runs: {min(loads):.1f}–{max(loads):.1f}",
        "",
        f"## Time per decoded token (ms; median step of {args.new_tokens - 1} decode steps after the prompt, "
        f"median over {args.rounds}×{args.repeat} generations; in brackets the fastest tenth of all those steps)",
        "",
        "| case | " + " | ".join(f"past {past}" for past in args.pasts)
        + f" | past {long} / past {short} (fastest tenth) |",
        "|---|" + "---:|" * (len(args.pasts) + 1),
    ]
    for case in DECODE_CASES:
        medians = {past: statistics.median(decode[(case, past)]) for past in args.pasts}
        fastest = {past: _fastest_tenth(decode_steps[(case, past)]) for past in args.pasts}
        lines.append(f"| {case} | " + " | ".join(f"{medians[past] * 1000:.2f} ({fastest[past] * 1000:.2f})"
                                                 for past in args.pasts)
                     + f" | {medians[long] / medians[short]:.2f}× ({fastest[long] / fastest[short]:.2f}×) |")
    lines += [
        "",
        f"Same tokens from the three cases at each past: {'yes' if same_tokens else 'NO'}.",
        "",
        f"## One decode step at past {STEP_PAST} (ms; median of {args.steps} steps per process, median over "
        f"{args.rounds} processes; fastest tenth of all steps beside it)",
        "",
        "| case | step (ms) | / onnxruntime | fastest tenth (ms) | / onnxruntime |",
        "|---|---:|---:|---:|---:|",
    ]
    reference = statistics.median(step["onnxruntime"])
    reference_fastest = _fastest_tenth(step_all["onnxruntime"])
    for case in STEP_CASES:
        median, fastest = statistics.median(step[case]), _fastest_tenth(step_all[case])
        lines.append(f"| {case} | {median * 1000:.2f} | {median / reference:.2f}× | {fastest * 1000:.2f} | "
                     f"{fastest / reference_fastest:.2f}× |")
    lines += [
        "",
        f"Same next token from the three: {'yes' if same_step else 'NO'}.",
        "",
        "## Reading these numbers",
        "",
        "The issue's targets: the Generator's time per token at the long past at most 1.5x that at the short one "
        "(no per-step whole-cache copies), and a decode step at past 127 no slower than onnxruntime's. The "
        "Generator's step writes one new row per layer into its cache buffers (GroupQueryAttention, fused from the "
        "export's Concat, appends in place; `onyxrt.framework.kv_cache`); `session.run` with the presents fed back, "
        "and onnxruntime, concatenate the whole cache every step. What still grows with the past is attention "
        "itself (scores over every cached key) and the export's mask arithmetic over `attention_mask`.",
        "",
        "Runtimes run in separate processes, alternating, and the pasts alternate inside each process, so the "
        "ratios hold better under load than the absolute times, which follow the machine's load (the load "
        "average above: with 2 cores and a load above 2, other jobs shared them). The fastest tenth of the steps "
        "is what a step costs when the other jobs leave the CPU alone.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0 if same_tokens and same_step else 1


if __name__ == "__main__":
    sys.exit(main())
