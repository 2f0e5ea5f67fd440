"""``onyxrt prune MODEL OUT --sparsity 0.9 --pattern 2:4``: prune weights by magnitude, then print the report."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .pruning import SUPPORTED_OP_TYPES, Pattern, prune


def _names(text: str) -> list[str]:
    return [name for name in text.split(",") if name]


def _op_types(text: str) -> list[str]:
    names = _names(text)
    unknown = [name for name in names if name not in SUPPORTED_OP_TYPES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"'{text}': give some of {','.join(SUPPORTED_OP_TYPES)}")
    return names


def _pattern(text: str) -> str:
    try:
        return Pattern.parse(text).text
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _sparsity(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def _kernel_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(size) for size in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' must look like KHxKW, e.g. 1x1") from None
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"'{text}' must look like KHxKW, e.g. 1x1")
    return shape


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``onyxrt prune``'s options."""
    parser.add_argument("model", help="path of the .onnx model")
    parser.add_argument("output", help="path to write the pruned model to")
    parser.add_argument("--sparsity", type=_sparsity, default=0.9,
                        help="fraction of each weight's elements (or blocks) set to zero (default 0.9; N:M patterns fix it)")
    parser.add_argument("--pattern", type=_pattern, default="unstructured",
                        help="unstructured (default); N:M, e.g. 2:4 (along the reduction axis); blockRxC, e.g. block4x1 "
                             "(R output channels x C reduction elements)")
    parser.add_argument("--op-types", type=_op_types, default=list(SUPPORTED_OP_TYPES), metavar="OP[,OP...]",
                        help=f"ops whose weights are pruned (default {','.join(SUPPORTED_OP_TYPES)})")
    parser.add_argument("--exclude", type=_names, action="extend", default=[], metavar="NODE[,NODE...]",
                        help="leave these nodes' weights as they are; repeatable")
    parser.add_argument("--conv-kernel", type=_kernel_shape, action="append", metavar="KHxKW",
                        help="prune only Conv nodes of this kernel shape (1x1: pointwise convolutions); repeatable")
    parser.add_argument("--store-sparse", action="store_true",
                        help="write pruned weights as sparse initializers (COO) where that is smaller")


def run(args: argparse.Namespace) -> int:
    """Prune ``args.model`` into ``args.output`` and print what changed."""
    from ..cli import UsageError

    if not Path(args.model).is_file():
        raise UsageError(f"{args.model}: no such file")
    started = time.perf_counter()
    try:
        report = prune(args.model, args.output, sparsity=args.sparsity, pattern=args.pattern, op_types=tuple(args.op_types),
                       nodes_to_exclude=tuple(args.exclude), store_sparse=args.store_sparse,
                       conv_kernel_shapes=tuple(args.conv_kernel) if args.conv_kernel else None)
    except ValueError as exc:  # an unknown --exclude node, or a file that is no model
        raise UsageError(str(exc)) from None
    for line in report.table():
        print(line)
    print(f"{report.summary()} in {time.perf_counter() - started:.1f}s")
    return 0
