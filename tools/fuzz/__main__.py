"""``python -m tools.fuzz run|compare`` (see the package docstring)."""

from __future__ import annotations

import argparse
import json
import sys

from .cases import fuzz_cases
from .report import compare_markdown
from .runner import Limits, run_cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.fuzz")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run mutated models on one runtime, one JSON line per case")
    run.add_argument("--runtime", choices=("onyxrt", "onnxruntime"), required=True)
    run.add_argument("--seed", type=int, required=True)
    run.add_argument("--count", type=int, default=5200)
    run.add_argument("--start", type=int, default=0)
    run.add_argument("--seconds", type=float, default=30.0, help="wall time before a case is killed")
    run.add_argument("--out", required=True)
    compare = commands.add_parser("compare", help="tally an onyxrt and an onnxruntime result file")
    compare.add_argument("onyxrt")
    compare.add_argument("onnxruntime")
    compare.add_argument("--command", default="", help="the command that made the files, for the report")
    args = parser.parse_args(argv)
    if args.command == "run":
        descriptions = {}

        def cases():
            for case_id, name, description, model in fuzz_cases(args.seed, args.count, args.start):
                descriptions[case_id] = (name, description)
                yield case_id, model

        with open(args.out, "w") as out:
            for record in run_cases(args.runtime, cases(), Limits(seconds=args.seconds)):
                record["model"], record["mutation"] = descriptions.pop(record["case"])
                out.write(json.dumps(record) + "\n")
                out.flush()
        return 0
    print(compare_markdown(_read(args.onyxrt), _read(args.onnxruntime), args.command))
    return 0


def _read(path: str) -> dict[int, dict]:
    with open(path) as file:
        return {record["case"]: record for record in map(json.loads, file)}


if __name__ == "__main__":
    sys.exit(main())
