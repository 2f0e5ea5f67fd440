"""The CSR product kernels of ``sparse_gemm`` against the dense GEMM, one thread, per weight shape.

    python benchmarks/sparse_kernels.py --out benchmarks/sparse_kernels.md
    python benchmarks/sparse_kernels.py --shapes 384x1536 --rows 128 --sparsities 90   # one row

Shapes are minilm_l6's and bert_base's MatMul weights (K x N); each is pruned by magnitude (a
random normal weight, its smallest fraction set to zero), and ``X`` (rows x K) is random. For each
case the dense GEMM (``providers/cpu/gemm.matmul``, the product onyxrt runs without sparsity) and
``CsrProduct.product`` (one row: ``_csr_dots``; more: ``sparse_tiles.csr_columns``, with the
transpose of ``X``) run in one process on a one-thread pool, alternating, ``--rounds`` rounds of
``--repeat`` calls; the table gives the fastest call of each (warm caches: what repeated products
of a layer meet; session creation times one row with the weight read from memory instead).
GMAC/s counts the multiply-adds each does (dense: K x N x rows; CSR: nonzeros x rows).
Writing ``--out`` keeps the file's ``## Reading these numbers`` section.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.report import cpu_model, write_keeping_notes  # noqa: E402
from onyxrt.framework.thread_pool import ThreadPool  # noqa: E402
from onyxrt.providers.cpu.gemm import matmul  # noqa: E402
from onyxrt.providers.cpu.math.sparse_gemm import CsrProduct  # noqa: E402
from onyxrt.sparsity.formats import CsrWeight  # noqa: E402

SHAPES = ("384x384", "384x1536", "1536x384", "768x768", "768x3072", "3072x768")
NOTES = "## Reading these numbers"


def pruned(k: int, n: int, sparsity: float, rng: np.random.Generator) -> np.ndarray:
    w = rng.standard_normal((k, n)).astype(np.float32)
    w[np.abs(w) <= np.quantile(np.abs(w), sparsity)] = 0
    return w


def fastest(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES))
    parser.add_argument("--rows", nargs="+", type=int, default=[1, 64, 128])
    parser.add_argument("--sparsities", nargs="+", type=float, default=[80, 90, 95])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--out")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    lines = ["# Sparse CSR kernels vs the dense GEMM (one thread)", "",
             f"`python {' '.join(sys.argv)}` on {cpu_model()}.", "",
             "| weight K x N | rows | zeros | dense ms | CSR ms | CSR / dense | dense GMAC/s | CSR GMAC/s "
             "| max rel diff |",
             "|---|---|---|---|---|---|---|---|---|"]
    pool = ThreadPool(1)
    try:
        with pool.activate():
            for shape in args.shapes:
                k, n = (int(v) for v in shape.split("x"))
                for percent in args.sparsities:
                    w = pruned(k, n, percent / 100, rng)
                    product = CsrProduct(CsrWeight.from_dense(w))
                    for rows in args.rows:
                        x = rng.standard_normal((rows, k)).astype(np.float32)
                        dense_out, sparse_out = np.empty((rows, n), np.float32), np.empty((rows, n), np.float32)
                        runs = {"dense": (lambda: matmul(x, w, out=dense_out)),
                                "csr": (lambda: product.product(x, sparse_out))}
                        for run in runs.values():
                            run()  # warm: compiles, touches the weight
                        best = {name: float("inf") for name in runs}
                        for _ in range(args.rounds):
                            for name, run in runs.items():
                                best[name] = min(best[name], fastest(run, args.repeat))
                        diff = float(np.abs(sparse_out - dense_out).max() / max(np.abs(dense_out).max(), 1e-30))
                        macs = {"dense": k * n * rows, "csr": product.weight.nnz * rows}
                        lines.append(f"| {k} x {n} | {rows} | {percent:g}% | {best['dense'] * 1e3:.3f} | "
                                     f"{best['csr'] * 1e3:.3f} | {best['csr'] / best['dense']:.2f} | "
                                     f"{macs['dense'] / best['dense'] / 1e9:.1f} | "
                                     f"{macs['csr'] / best['csr'] / 1e9:.1f} | "
                                     f"{diff:.1e} |")
                        print(lines[-1], flush=True)
    finally:
        pool.shutdown()
    write_keeping_notes(lines, args.out, NOTES)


if __name__ == "__main__":
    main()
