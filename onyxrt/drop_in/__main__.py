"""``python -m onyxrt.drop_in SCRIPT [ARGS...]`` or ``-m MODULE [ARGS...]``: run a program on onyxrt.

The program runs as ``__main__`` (as ``python SCRIPT`` or ``python -m MODULE`` would run it), with
``import onnxruntime`` giving onyxrt (see :func:`onyxrt.install_as_onnxruntime`).
"""

from __future__ import annotations

import os
import runpy
import sys

from . import install_as_onnxruntime

USAGE = (
    "usage: python -m onyxrt.drop_in SCRIPT [ARGS...]\n"
    "       python -m onyxrt.drop_in -m MODULE [ARGS...]\n"
    "Runs SCRIPT (or MODULE) as __main__ with `import onnxruntime` giving onyxrt."
)


def main(argv: list[str] | None = None) -> int:
    """Run the program named by ``argv`` (default: ``sys.argv[1:]``) with onnxruntime aliased to onyxrt."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    if args[0] == "-m":
        if len(args) < 2:
            print(USAGE, file=sys.stderr)
            return 2
        install_as_onnxruntime()
        # run_module(alter_sys=True) puts the module's file in argv[0], as `python -m` does
        sys.argv = [args[1], *args[2:]]
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
        return 0
    script = args[0]
    if not os.path.exists(script):
        print(f"python -m onyxrt.drop_in: can't open file {script!r}: no such file or directory", file=sys.stderr)
        return 2
    install_as_onnxruntime()
    sys.argv = args
    # `python SCRIPT` puts the script's folder first on sys.path (here it is the current folder)
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    runpy.run_path(script, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
