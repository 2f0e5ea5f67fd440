"""Tree ensembles: TreeEnsembleRegressor, TreeEnsembleClassifier (ai.onnx.ml 1, 3, 5) and TreeEnsemble (5).

Every ensemble is compiled once, at session creation (the kernels' prepack), into packed per-node
records, together with everything else derived from the attributes (leaf value tables, base values,
labels). Evaluation walks all (tree, row) pairs of a block of trees at once, one depth level per
numpy step: gather each pair's node record and feature value, compare, move to the true or false
child. A pair on its leaf stays there, so the first steps (all of them for a small batch) need no
bookkeeping; deeper down, the pairs that reached a leaf are dropped from the batch while enough
steps remain for that to pay. Large batches run their blocks of trees on the session's thread pool
(numpy releases the GIL). Leaf values are then aggregated per row and post-processed with onnxruntime's
rules (base values, binary classifiers with one score column, post transforms).
"""

from __future__ import annotations

import threading

import numpy as np

from ....framework.thread_pool import current_pool
from ..kernel_table import op
from ._common import (
    Compiled,
    binary_scores,
    check_post_transform,
    labels_array,
    probit,
    transform_rows,
)
from ....errors import NodeInputError, NodeInputTypeError

_F32 = np.float32
_F64 = np.float64

# node modes (the TreeEnsemble-5 encoding); LEAF is only used by the older ops' string modes
LEQ, LT, GTE, GT, EQ, NEQ, MEMBER = range(7)
_MODE_NAMES = {"BRANCH_LEQ": LEQ, "BRANCH_LT": LT, "BRANCH_GTE": GTE, "BRANCH_GT": GT,
               "BRANCH_EQ": EQ, "BRANCH_NEQ": NEQ}

# cond = _TRUTH[mode * 8 + code], code = 1 (x < t) | 2 (x == t) | 4 (x > t), 0 when x or t is NaN
_TRUTH = np.zeros(8 * 8, dtype=bool)  # mode 7: a leaf, never true
for _mode, _codes in ((LEQ, (1, 2)), (LT, (1,)), (GTE, (2, 4)), (GT, (4,)), (EQ, (2,)), (NEQ, (0, 1, 4))):
    for _code in _codes:
        _TRUTH[_mode * 8 + _code] = True

_AGGREGATES = ("AVERAGE", "SUM", "MIN", "MAX")
_V5_AGGREGATES = {0: "AVERAGE", 1: "SUM", 2: "MIN", 3: "MAX"}
_V5_TRANSFORMS = {0: "NONE", 1: "SOFTMAX", 2: "LOGISTIC", 3: "SOFTMAX_ZERO", 4: "PROBIT"}

_BLOCK_PAIRS = 1 << 17  # (tree, row) pairs walked together
_PARALLEL_PAIRS = 1 << 15  # from twice this many (tree, row) pairs: at least two blocks (threads)
_SMALL_PAIRS = 1 << 12  # up to this many (tree, row) pairs: every step on every pair, no compaction
# the walk of a large block: no check for finished pairs while fewer than _FREE_SHARE of them may be
# done (were every branch taken half of the time), then a check every _CHECK_EVERY steps while at
# least _MIN_REMAINING steps are left (dropping the finished pairs pays only with steps to save)
_FREE_SHARE = 0.1
_CHECK_EVERY = 2
_MIN_REMAINING = 4
_UFUNCS = {LEQ: np.less_equal, LT: np.less, GTE: np.greater_equal, GT: np.greater, EQ: np.equal,
           NEQ: np.not_equal}


class _Forest:
    """A compiled ensemble.

    Node rows as given: [0, n_internal) are decision nodes, rows from n_internal on are leaves.
    For the traversal the trees are re-laid out breadth first so that the two children of every
    decision node sit next to each other (true child first), and each position packs what a step
    needs into one 16-byte record: feature, false-child position and threshold (modes and the
    missing-value flags, when needed, come from a second table). A step is then
    ``s = false_child[s] - cond`` with two gathers (the record and the feature value). A leaf
    position reads a sentinel feature (an extra input column, column 0, so the records do not depend
    on the input width) whose comparison is always false and is its own false child, so finished
    (tree, row) pairs can stay in the batch until it is compacted.

    Everything a run reads is built here; the only later writes are memoized tables for a second
    threshold dtype or aggregate (under a lock, idempotent), so runs can share one forest.
    """

    def __init__(self, *, feat, thr, modes, tnext, fnext, mtt, roots, n_internal, leaf_entry, leaf_targets,
                 leaf_weights, leaf_first, n_targets, members=None):
        n_leaves = len(leaf_first)
        self.n_internal, self.n_leaves, self.n_targets = n_internal, n_leaves, n_targets
        self.n_trees = len(roots)
        feat = np.asarray(feat, dtype=np.int64)
        self.max_feature = int(feat.max()) if n_internal else -1
        if n_internal and feat.min() < 0:
            raise NodeInputError("tree ensemble: negative feature id")
        thr = np.asarray(thr)
        if thr.dtype not in (np.dtype(_F32), np.dtype(_F64)):
            thr = thr.astype(_F64 if thr.dtype.itemsize > 4 else _F32)
        self.thr = thr  # per decision node
        modes = np.asarray(modes, dtype=np.int64)
        used = np.unique(modes)
        self.uniform_mode = int(used[0]) if len(used) == 1 and used[0] != MEMBER else (
            LEQ if len(used) == 0 else None)
        self.has_member = bool((modes == MEMBER).any())
        mtt = np.asarray(mtt if mtt is not None else [], dtype=bool)
        self.has_mtt = bool(mtt.any())
        self._layout(feat, modes, mtt, np.asarray(tnext, dtype=np.int64), np.asarray(fnext, dtype=np.int64),
                     np.asarray(roots, dtype=np.int64))
        self.members = None
        if self.has_member:  # keys over positions: pos * (len(values) + 1) + rank of the value
            values, node_keys = members
            node_of_key = node_keys // (values.size + 1)
            rank_of_key = node_keys % (values.size + 1)
            order = np.argsort(self.orig, kind="stable")
            first = np.searchsorted(self.orig[order], node_of_key, side="left")
            last = np.searchsorted(self.orig[order], node_of_key, side="right")
            counts = last - first
            pos = order[np.concatenate([np.arange(a, b) for a, b in zip(first, last)])] if counts.sum() else \
                np.zeros(0, np.int64)
            keys = pos * (values.size + 1) + np.repeat(rank_of_key, counts)
            self.members = (values, np.unique(keys))
        self._lock = threading.Lock()
        self._records: dict[np.dtype, np.ndarray] = {}
        self._codes = self.pos_code.astype(np.intp)
        self._mtt_pos = self.pos_code >= 8
        self._ufunc = _UFUNCS.get(self.uniform_mode)
        # leaf values: every (leaf, target, weight) entry, in onnxruntime's order
        self.leaf_entry = np.asarray(leaf_entry, dtype=np.int64)
        self.leaf_targets = np.asarray(leaf_targets, dtype=np.int64)
        self.leaf_weights = np.asarray(leaf_weights, dtype=_F64)
        self.leaf_first = np.asarray(leaf_first, dtype=_F64)  # the first weight of each leaf
        if self.leaf_targets.size and (self.leaf_targets.min() < 0 or self.leaf_targets.max() >= n_targets):
            raise NodeInputError(f"tree ensemble: a target/class id is outside [0, {n_targets})")
        self._dense: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        flat = self.leaf_entry * n_targets + self.leaf_targets
        self.has = np.bincount(flat, minlength=n_leaves * n_targets).reshape(n_leaves, n_targets) > 0
        # targets that every leaf has a value for, or none does
        self.constant_has = self.has.all(axis=0) | ~self.has.any(axis=0)
        self.active = np.flatnonzero(self.has.any(axis=0))  # targets some leaf has a value for
        self.constant_targets = np.flatnonzero(self.constant_has)
        self.has_active = None if self.constant_has.all() else np.ascontiguousarray(self.has[:, self.active])
        self.records(self.thr.dtype)

    def _layout(self, feat, modes, mtt, tnext, fnext, roots) -> None:
        """Breadth-first positions with sibling children; a shared subtree is copied per parent."""
        n_int = self.n_internal
        total_rows = n_int + self.n_leaves
        frontier = roots
        levels = [roots]
        trees = np.arange(roots.size, dtype=np.int64)
        self.tree_depth = np.zeros(roots.size, dtype=np.int64)  # the deepest leaf of each tree
        shares = []  # per level: each tree's leaves there, weighted 2^-level (a pair's odds to end there)
        false_child = {}  # level -> positions of the false children of its decision nodes
        base = roots.size
        level = 0
        while frontier.size:
            inner = frontier < n_int
            shares.append(np.bincount(trees[~inner], minlength=roots.size) * 0.5 ** level)
            if not inner.all():
                np.maximum.at(self.tree_depth, trees[~inner], level)
            parents = frontier[inner]
            if parents.size == 0:
                break
            trees = np.repeat(trees[inner], 2)
            kids = np.empty(2 * parents.size, dtype=np.int64)
            kids[0::2] = tnext[parents]
            kids[1::2] = fnext[parents]
            false_child[level] = base + 1 + 2 * np.arange(parents.size)
            base += kids.size
            if base > 4 * total_rows + roots.size + 16 or level > total_rows + 1:
                raise NodeInputError("tree ensemble: the nodes do not form trees (cycle or heavily shared subtrees)")
            levels.append(kids)
            frontier = kids
            level += 1
        self.max_depth = len(levels) - 1  # steps after which every (tree, row) pair is on its leaf
        # the share of a tree's (tree, row) pairs on their leaf after each number of steps, were every
        # branch taken half of the time
        self.done_share = np.cumsum(np.stack(shares, axis=1), axis=1) if shares else np.ones((0, 1))
        orig = np.concatenate(levels) if levels else np.zeros(0, np.int64)
        if orig.size >= 2**31 - 1:
            raise NodeInputError("tree ensemble: too many nodes")
        n_pos = orig.size
        inner = orig < n_int
        child = np.arange(n_pos, dtype=np.int64)  # leaves are their own false child
        start = 0
        for lvl, nodes in enumerate(levels):
            sel = nodes < n_int
            if sel.any():
                child[start + np.flatnonzero(sel)] = false_child[lvl]
            start += nodes.size
        o = np.where(inner, orig, 0)
        self.orig = np.where(inner, orig, -1)  # decision node row of each position (-1 for leaves)
        self.leaf_of_pos = np.where(inner, -1, orig - n_int)
        self.pos_feat = np.where(inner, feat[o] if n_int else 0, -1)  # -1: the sentinel column
        self.pos_child = child
        self.pos_thr_row = o
        self.pos_inner = inner
        code = np.where(inner, modes[o] if n_int else 0, 7)  # 7: a leaf, never true
        if self.has_mtt:
            code = code + 8 * (inner & (mtt[o] if n_int else False))
        self.pos_code = code
        self.roots_pos = np.arange(roots.size, dtype=np.int64)

    def _once(self, cache: dict, key, build):
        """``cache[key]``, built by ``build(key)`` once even when runs race for it."""
        value = cache.get(key)
        if value is None:
            with self._lock:
                value = cache.get(key)
                if value is None:
                    value = cache[key] = build(key)
        return value

    def records(self, dtype: np.dtype) -> np.ndarray:
        """The packed per-position records for thresholds of ``dtype`` (16 bytes each)."""
        return self._once(self._records, np.dtype(dtype), self._build_records)

    def _build_records(self, dtype: np.dtype) -> np.ndarray:
        n = self.pos_feat.size
        feat = (self.pos_feat + 1).astype(np.int32)  # column 0 of the walked input is the sentinel
        thr = np.where(self.pos_inner, self.thr.astype(dtype)[self.pos_thr_row] if self.thr.size else 0, 0)
        raw = np.zeros((n, 4), dtype=np.int32)
        raw[:, 0] = feat
        if dtype == np.dtype(_F64):  # [feature:int32, child:int32, threshold:float64]
            raw[:, 1] = self.pos_child
            raw.view(_F64)[:, 1] = thr
        else:  # [feature:int32, threshold:float32, child:int64]
            raw.view(_F32)[:, 1] = thr
            raw.view(np.int64)[:, 1] = self.pos_child
        return raw.reshape(-1).view(np.complex128)

    # ------------------------------------------------------------------ leaves

    def dense(self, how: str) -> tuple[np.ndarray, np.ndarray]:
        """[n_leaves, n_targets] leaf values combined with ``how`` (sum/min/max), and the same values
        restricted to the ``active`` targets (contiguous)."""
        return self._once(self._dense, how, self._build_dense)

    def _build_dense(self, how: str) -> tuple[np.ndarray, np.ndarray]:
        n, c = self.n_leaves, self.n_targets
        flat = self.leaf_entry * c + self.leaf_targets
        has = self.has
        if how == "sum":
            values = np.bincount(flat, weights=self.leaf_weights, minlength=n * c).reshape(n, c)
        else:
            values = np.full(n * c, np.inf if how == "min" else -np.inf, dtype=_F64)
            (np.minimum if how == "min" else np.maximum).at(values, flat, self.leaf_weights)
            values = values.reshape(n, c)
            values[~has] = 0.0
        return values, np.ascontiguousarray(values[:, self.active])

    # ------------------------------------------------------------------ traversal

    def leaves(self, x: np.ndarray) -> np.ndarray:
        """Leaf index reached by each (tree, row): an [n_trees, N] array."""
        parts = self.map_leaves(x, lambda block: block)
        return np.concatenate(parts) if parts else np.empty((0, x.shape[0]), dtype=np.int64)

    def map_leaves(self, x: np.ndarray, fn) -> list:
        """``fn(leaves of a block of trees)`` ([trees, N] leaf indices) for each block, in tree order."""
        n_rows, n_feat = x.shape
        t = self.n_trees
        if self.max_feature >= n_feat:
            raise NodeInputError(f"tree ensemble uses feature {self.max_feature} but the input has {n_feat} features")
        if t == 0:
            return []
        if n_rows == 0:
            return [fn(np.empty((t, 0), dtype=np.int64))]
        rec_table = self.records(x.dtype)
        # the sentinel column read by leaves (NaN: every comparison is false), then the input
        width = n_feat + 1
        xs = np.empty((n_rows, width), dtype=x.dtype)
        xs[:, 0] = 0 if self.uniform_mode == NEQ else np.nan
        xs[:, 1:] = x
        xf = xs.reshape(-1)
        if t * n_rows <= _SMALL_PAIRS:  # few pairs: one block, every step without a check
            return [fn(self._walk(rec_table, xf, width, n_rows, 0, t, checks=False))]
        # blocks of trees: a working set that stays in cache, and one block per thread
        n_blocks = -(-t // max(1, _BLOCK_PAIRS // n_rows))
        if n_blocks == 1 and t * n_rows >= 2 * _PARALLEL_PAIRS:  # enough work for two threads
            n_blocks = 2
        per_block = -(-t // n_blocks)  # blocks of even sizes
        blocks = [(a, min(t, a + per_block)) for a in range(0, t, per_block)]
        work = lambda ab: fn(self._walk(rec_table, xf, width, n_rows, ab[0], ab[1]))  # noqa: E731
        return current_pool().map(work, blocks)

    def _walk(self, rec_table, xf, width: int, n_rows: int, first: int, last: int, checks: bool = True) -> np.ndarray:
        """The leaves of trees [first, last) for all rows, as [last - first, N].

        The first steps run on every pair, on buffers allocated once (a pair on its leaf steps in
        place): until a fair share of the pairs may have finished (all steps without ``checks``).
        The later steps drop the finished pairs from the batch once a quarter of it is done.
        """
        double = xf.dtype == np.dtype(_F64)
        t = last - first
        m = t * n_rows
        # (tree, row) pairs, tree-major so that neighbouring pairs walk the same tree
        if n_rows == 1:
            s = self.roots_pos[first:last].copy()
            row_base = None
        else:
            s = np.repeat(self.roots_pos[first:last], n_rows)
            row_base = np.tile(np.arange(0, n_rows * width, width, dtype=np.int64), t)
        depth = self.max_depth if last - first == self.n_trees else int(self.tree_depth[first:last].max())
        free = depth
        if checks:  # unchecked steps until a fair share of the pairs may be done
            free = min(depth, int(np.argmax(self.done_share[first:last].mean(axis=0) >= _FREE_SHARE)))
        rec_buf = np.empty(m, dtype=np.complex128)
        f_buf = np.empty(m, dtype=np.int64) if row_base is not None or free < depth else None
        x_buf = np.empty(m, dtype=xf.dtype)
        c_buf = np.empty(m, dtype=bool)
        ufunc, has_mtt = self._ufunc, self.has_mtt
        take_rec, take_x = rec_table.take, xf.take
        if free:
            rec = rec_buf
            r32 = rec.view(np.int32).reshape(m, 4)
            feat = r32[:, 0]
            if double:
                tv = rec.view(_F64).reshape(m, 2)[:, 1]
                child = r32[:, 1]
            else:
                tv = rec.view(_F32).reshape(m, 4)[:, 1]
                child = rec.view(np.int64).reshape(m, 2)[:, 1]
            for _ in range(free):
                take_rec(s, out=rec, mode="wrap")
                if row_base is None:
                    take_x(feat, out=x_buf, mode="wrap")
                else:
                    take_x(np.add(feat, row_base, out=f_buf), out=x_buf, mode="wrap")
                if ufunc is not None:
                    ufunc(x_buf, tv, out=c_buf)
                    if has_mtt:
                        c_buf |= self._mtt_pos.take(s) & np.isnan(x_buf)
                else:
                    self._compare_mixed(s, self._codes.take(s), x_buf, tv, c_buf)
                np.subtract(child, c_buf, out=s, dtype=np.int64)
            if free == depth:
                return self.leaf_of_pos.take(s).reshape(t, n_rows)
        if row_base is None:
            row_base = np.zeros(m, dtype=np.int64)
        entry = None  # positions of the pairs still in the batch (None: all of them, in order)
        res = None
        n_buf = np.empty(m, dtype=np.int64)
        same = np.empty(m, dtype=bool)
        steps = free
        while steps < depth:
            m = s.size
            rec = take_rec(s, out=rec_buf[:m], mode="wrap")
            r32 = rec.view(np.int32).reshape(m, 4)
            f = np.add(r32[:, 0], row_base, out=f_buf[:m])
            xv = take_x(f, out=x_buf[:m], mode="wrap")
            if double:
                tv = rec.view(_F64).reshape(m, 2)[:, 1]
                child = r32[:, 1]
            else:
                tv = rec.view(_F32).reshape(m, 4)[:, 1]
                child = rec.view(np.int64).reshape(m, 2)[:, 1]
            if ufunc is not None:
                c = ufunc(xv, tv, out=c_buf[:m])
                if has_mtt:
                    c |= self._mtt_pos.take(s) & np.isnan(xv)
            else:
                c = self._compare_mixed(s, self._codes.take(s), xv, tv, c_buf[:m])
            nxt = np.subtract(child, c, out=n_buf[:m], dtype=np.int64)
            steps += 1
            # a check (and compaction) pays only with enough steps left to save
            check = depth - steps >= _MIN_REMAINING and (steps - free) % _CHECK_EVERY == 0
            if check:
                done = np.equal(nxt, s, out=same[:m])
                n_done = int(np.count_nonzero(done))
            n_buf = s.base if s.base is not None else s
            s = nxt
            if not check:
                continue
            if n_done == m:
                break
            if n_done * 4 >= m:  # compact: drop the pairs that reached a leaf
                if res is None:
                    res = np.empty(t * n_rows, dtype=np.int64)
                gone = np.flatnonzero(done)
                keep = np.flatnonzero(~done)
                if entry is None:
                    res[gone] = s.take(gone)
                    entry = keep
                else:
                    res[entry.take(gone)] = s.take(gone)
                    entry = entry.take(keep)
                s = s.take(keep)
                row_base = row_base.take(keep)
                n_buf = np.empty(s.size, dtype=np.int64)
        if entry is None:
            return self.leaf_of_pos.take(s).reshape(t, n_rows)
        res[entry] = s
        self.leaf_of_pos.take(res, out=res)
        return res.reshape(t, n_rows)

    def _compare_mixed(self, s: np.ndarray, code: np.ndarray, xv: np.ndarray, tv: np.ndarray,
                       out: np.ndarray) -> np.ndarray:
        mode = (code & 7).astype(np.intp) * 8
        mode += (xv < tv)
        mode += (xv == tv) * 2
        mode += (xv > tv) * 4
        np.take(_TRUTH, mode, out=out, mode="wrap")
        if self.has_member:
            sel = np.flatnonzero((code & 7) == MEMBER)
            if sel.size:
                out[sel] = self._is_member(s.take(sel), xv.take(sel))
        if self.has_mtt:
            out |= (code >= 8) & np.isnan(xv)
        return out

    def _is_member(self, pos: np.ndarray, xv: np.ndarray) -> np.ndarray:
        values, keys = self.members
        if values.size == 0 or keys.size == 0:
            return np.zeros(pos.shape, dtype=bool)
        rank = np.minimum(np.searchsorted(values, xv), values.size - 1)
        exact = values[rank] == xv
        key = pos * (values.size + 1) + rank
        where = np.minimum(np.searchsorted(keys, key), keys.size - 1)
        return exact & (keys[where] == key)


# --------------------------------------------------------------------------- compiling


def _check_lengths(op_name: str, reference: str, n: int, attributes) -> None:
    """Every per-node attribute list must have one entry per node (as many as ``reference``)."""
    for name, arr in attributes:
        if len(arr) != n:
            raise NodeInputError(f"{op_name}: {name} has {len(arr)} entries, {reference} has {n}")


def _compile_v3(treeids, nodeids, featureids, modes, values, truenodeids, falsenodeids, mtt,
                t_treeids, t_nodeids, t_ids, t_weights, n_targets) -> _Forest:
    """The TreeEnsembleRegressor/Classifier encoding: nodes keyed by (tree id, node id)."""
    n = len(treeids)
    _check_lengths("tree ensemble", "nodes_treeids", n, (
        ("nodes_nodeids", nodeids), ("nodes_featureids", featureids), ("nodes_modes", modes),
        ("nodes_values", values), ("nodes_truenodeids", truenodeids), ("nodes_falsenodeids", falsenodeids)))
    if not (len(t_treeids) == len(t_nodeids) == len(t_ids) == len(t_weights)):
        raise NodeInputError("tree ensemble: the target/class ids, nodeids, treeids and weights differ in length")
    names = dict(_MODE_NAMES, LEAF=-1)
    try:
        mode_codes = np.array([names[m] for m in modes], dtype=np.int64)
    except KeyError as exc:
        raise NodeInputError(f"tree ensemble: unknown node mode {exc.args[0]!r}") from None
    tree = np.asarray(treeids, dtype=np.int64).reshape(-1)
    node = np.asarray(nodeids, dtype=np.int64).reshape(-1)
    if n and (node.min() < 0 or tree.min() < 0):
        raise NodeInputError("tree ensemble: negative tree or node ids")
    span = int(node.max()) + 1 if n else 1
    keys = tree * span + node
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    if n > 1 and (np.diff(sorted_keys) == 0).any():
        dup = sorted_keys[np.flatnonzero(np.diff(sorted_keys) == 0)[0]]
        raise NodeInputError(f"tree ensemble: node {dup % span} in tree {dup // span} is defined twice")

    def find(trees: np.ndarray, ids: np.ndarray, what: str) -> np.ndarray:
        """Node positions of (tree, id) pairs; raises for a missing one."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        k = trees * span + ids
        pos = np.minimum(np.searchsorted(sorted_keys, k), max(n - 1, 0))
        ok = (ids >= 0) & (ids < span) & (sorted_keys[pos] == k) if n else np.zeros(ids.shape, bool)
        if not ok.all():
            bad = np.flatnonzero(~ok)[0]
            raise NodeInputError(f"tree ensemble: node {ids[bad]} of tree {trees[bad]} ({what}) does not exist")
        return order[pos]

    is_leaf = mode_codes < 0
    internal = np.flatnonzero(~is_leaf)
    leaf_nodes = np.flatnonzero(is_leaf)
    n_int = internal.size
    row = np.empty(n, dtype=np.int64)
    row[internal] = np.arange(n_int)
    row[leaf_nodes] = n_int + np.arange(leaf_nodes.size)
    t_pos = find(tree[internal], np.asarray(truenodeids, dtype=np.int64)[internal], "true branch")
    f_pos = find(tree[internal], np.asarray(falsenodeids, dtype=np.int64)[internal], "false branch")
    if (t_pos == internal).any() or (f_pos == internal).any():
        raise NodeInputError("tree ensemble: a node points to itself")
    starts = np.flatnonzero(np.concatenate([[True], tree[1:] != tree[:-1]])) if n else np.zeros(0, np.int64)
    track = np.zeros(n, dtype=bool)
    if len(mtt):
        k = min(n, len(mtt))
        track[:k] = np.asarray(mtt[:k], dtype=np.int64) == 1
    # leaf weights: sorted by (tree, node) then declaration order; weights on decision nodes are ignored
    w_tree = np.asarray(t_treeids, dtype=np.int64).reshape(-1)
    w_node = np.asarray(t_nodeids, dtype=np.int64).reshape(-1)
    w_order = np.lexsort((np.arange(w_tree.size), w_node, w_tree))
    w_pos = find(w_tree[w_order], w_node[w_order], "weights")
    on_leaf = is_leaf[w_pos]
    w_order, w_pos = w_order[on_leaf], w_pos[on_leaf]
    leaf_entry = row[w_pos] - n_int
    weights = np.asarray(t_weights, dtype=_F64).reshape(-1)[w_order]
    seen, first_at = np.unique(leaf_entry, return_index=True)
    if seen.size != leaf_nodes.size:
        missing = np.setdiff1d(np.arange(leaf_nodes.size), seen)[0]
        j = leaf_nodes[missing]
        raise NodeInputError(f"tree ensemble: target is missing for leaf {tree[j]}-{node[j]}")
    first = np.zeros(leaf_nodes.size, dtype=_F64)
    first[seen] = weights[first_at]
    return _Forest(
        feat=np.asarray(featureids, dtype=np.int64)[internal], thr=np.asarray(values)[internal],
        modes=mode_codes[internal], tnext=row[t_pos], fnext=row[f_pos], mtt=track[internal],
        roots=row[starts], n_internal=n_int, leaf_entry=leaf_entry,
        leaf_targets=np.asarray(t_ids, dtype=np.int64).reshape(-1)[w_order], leaf_weights=weights,
        leaf_first=first, n_targets=n_targets,
    )


def _compile_v5(*, tree_roots, modes, featureids, splits, truenodeids, trueleafs, falsenodeids, falseleafs,
                mtt, leaf_targetids, leaf_weights, membership, n_targets) -> _Forest:
    """The TreeEnsemble-5 encoding: decision nodes and leaves indexed by position."""
    n = len(featureids)
    _check_lengths("TreeEnsemble", "nodes_featureids", n, (
        ("nodes_modes", modes), ("nodes_splits", splits), ("nodes_truenodeids", truenodeids),
        ("nodes_trueleafs", trueleafs), ("nodes_falsenodeids", falsenodeids), ("nodes_falseleafs", falseleafs)))
    n_leaves = len(leaf_weights)
    if len(leaf_targetids) != n_leaves:
        raise NodeInputError("TreeEnsemble: leaf_targetids and leaf_weights differ in length")
    modes = np.asarray(modes, dtype=np.int64)
    if modes.size and (modes.min() < 0 or modes.max() > MEMBER):
        raise NodeInputError("TreeEnsemble: nodes_modes values must be in [0, 6]")

    def nxt(ids, leafs):
        ids = np.asarray(ids, dtype=np.int64)
        leafs = np.asarray(leafs, dtype=np.int64) != 0
        bound = np.where(leafs, n_leaves, n)
        if ids.size and ((ids < 0) | (ids >= bound)).any():
            raise NodeInputError("TreeEnsemble: a node or leaf index is out of range")
        return np.where(leafs, n + ids, ids)

    roots = np.asarray(tree_roots, dtype=np.int64)
    if roots.size and ((roots < 0) | (roots >= n)).any():
        raise NodeInputError("TreeEnsemble: a tree root is out of range")
    track = np.zeros(n, dtype=bool)
    if mtt is not None and len(mtt):
        k = min(n, len(mtt))
        track[:k] = np.asarray(mtt[:k], dtype=np.int64) == 1
    members = None
    if (modes == MEMBER).any():
        # the member sets of the BRANCH_MEMBER nodes, in node order, separated by NaN
        mv = np.asarray(membership if membership is not None else [], dtype=_F64)
        cuts = np.flatnonzero(np.isnan(mv)).tolist() + [mv.size]
        sets, start = [], 0
        for cut in cuts:
            sets.append(mv[start:cut])
            start = cut + 1
        member_nodes = np.flatnonzero(modes == MEMBER)
        values = np.unique(np.concatenate(sets)) if sets else np.zeros(0)
        key_parts = [node * (values.size + 1) + np.searchsorted(values, sets[k])
                     for k, node in enumerate(member_nodes) if k < len(sets)]
        keys = np.unique(np.concatenate(key_parts)) if key_parts else np.zeros(0, np.int64)
        members = (values, keys.astype(np.int64))
    weights = np.asarray(leaf_weights, dtype=_F64)
    return _Forest(
        feat=np.asarray(featureids, dtype=np.int64), thr=np.asarray(splits), modes=modes.astype(np.uint8),
        tnext=nxt(truenodeids, trueleafs), fnext=nxt(falsenodeids, falseleafs), mtt=track, roots=roots,
        n_internal=n, leaf_entry=np.arange(n_leaves), leaf_targets=leaf_targetids, leaf_weights=weights,
        leaf_first=weights, n_targets=n_targets, members=members,
    )


def _values(plain, as_tensor, what: str, required: bool = True) -> np.ndarray | None:
    if as_tensor is not None:
        if plain:
            raise NodeInputError(f"tree ensemble: only one of {what} and {what}_as_tensor may be set")
        return np.asarray(as_tensor).reshape(-1)
    if plain is None:
        if required:
            raise NodeInputError(f"tree ensemble: attribute {what} is required")
        return None
    return np.asarray(plain, dtype=_F32)


def _compare_dtype(x: np.ndarray, thr: np.ndarray) -> np.dtype:
    if x.dtype == _F64 or thr.dtype == _F64:
        return np.dtype(_F64)
    return np.dtype(_F32)


def _prepare_input(x: np.ndarray, forest: _Forest, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind not in "fiu":
        raise NodeInputTypeError(f"{what}: unsupported input type {x.dtype}")
    if x.ndim == 0:
        raise NodeInputError(f"{what}: the input needs at least one dimension")
    x2 = x.reshape(1, -1) if x.ndim == 1 else x.reshape(x.shape[0], -1)
    return x2.astype(_compare_dtype(x2, forest.thr), copy=False)


# --------------------------------------------------------------------------- aggregation


def _aggregate(forest: _Forest, x: np.ndarray, how: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-row, per-target aggregate of the reached leaves' values ([N, C]) and has-value flags."""
    _, values = forest.dense(how)  # [n_leaves, A]: the active targets only
    active = forest.active
    has = forest.has
    n_rows, c = x.shape[0], forest.n_targets
    has_a = forest.has_active  # None when every target has a value in every leaf or in none
    fill = np.inf if how == "min" else -np.inf

    def block(leaves: np.ndarray):
        v = values.take(leaves, axis=0)  # [trees, N, A]
        flags = has_a.take(leaves, axis=0).any(axis=0) if has_a is not None else None
        if how == "sum":
            return v.sum(axis=0), flags
        if has_a is not None:  # (without per-leaf flags every active target has a value in every leaf)
            v = np.where(has_a.take(leaves, axis=0), v, fill)
        return (v.min(axis=0) if how == "min" else v.max(axis=0)), flags

    parts = forest.map_leaves(x, block)
    if len(parts) == 1 and active.size == c:  # one block of trees over all targets: its result as is
        acc, flags = parts[0]
        if how == "sum":
            acc += 0.0  # as accumulated onto zeros: a -0.0 sum becomes 0.0
        if flags is None:  # every target has a value in every leaf
            return acc, np.ones((n_rows, c), dtype=bool)
    else:
        flags = np.zeros((n_rows, c), dtype=bool)
        acc = np.zeros((n_rows, c), dtype=_F64) if how == "sum" else np.full((n_rows, c), fill, dtype=_F64)
        sub = acc[:, active] if active.size < c else acc
        for part, part_flags in parts:
            if how == "sum":
                sub += part
            elif how == "min":
                np.minimum(sub, part, out=sub)
            else:
                np.maximum(sub, part, out=sub)
            if part_flags is not None:
                flags[:, active] |= part_flags
        if active.size < c:
            acc[:, active] = sub
    if forest.constant_targets.size and forest.n_trees:
        flags[:, forest.constant_targets] = has[0, forest.constant_targets]
    if how != "sum":
        acc[~flags] = 0.0
    return acc, flags


def _first_weight_scores(forest: _Forest, x: np.ndarray, how: str) -> np.ndarray:
    """The one-target path: each reached leaf contributes its first weight."""
    first = forest.leaf_first
    if how in ("sum", "average"):
        parts = forest.map_leaves(x, lambda leaves: first.take(leaves).sum(axis=0))
        if len(parts) == 1:
            return parts[0]
        return np.sum(parts, axis=0) if parts else np.zeros(x.shape[0], dtype=_F64)
    reduce = np.min if how == "min" else np.max
    parts = forest.map_leaves(x, lambda leaves: reduce(first.take(leaves), axis=0))
    if len(parts) == 1:
        return parts[0]
    return reduce(parts, axis=0) if parts else np.zeros(x.shape[0], dtype=_F64)


def _finish(s: np.ndarray, post_transform: str, out_dtype) -> np.ndarray:
    if post_transform == "NONE":
        return s.astype(out_dtype)
    return transform_rows(s.astype(_F32), post_transform).astype(out_dtype, copy=False)


def _base_array(base_values) -> np.ndarray:
    return np.asarray(base_values if base_values is not None else [], dtype=_F64).reshape(-1)


class _Regressor:
    """A compiled TreeEnsembleRegressor or TreeEnsemble node."""

    def __init__(self, forest: _Forest, aggregate: str, base_values, post_transform: str) -> None:
        self.forest = forest
        self.how = aggregate.lower()
        self.base = _base_array(base_values)
        self.post_transform = post_transform
        if forest.n_targets > 1:
            forest.dense("sum" if self.how == "average" else self.how)  # built now, not by a run

    def __call__(self, x: np.ndarray, out_dtype=_F32) -> np.ndarray:
        forest, how, base, post_transform = self.forest, self.how, self.base, self.post_transform
        n_rows = x.shape[0]
        c = forest.n_targets
        t = forest.n_trees
        if c == 1:
            s = _first_weight_scores(forest, x, how)
            origin = base[0] if base.size == 1 else 0.0
            if how == "average":
                s = s / t if t else s
            if how in ("min", "max") and t == 0:
                s = np.zeros(n_rows)
            s = (s + origin).reshape(n_rows, 1)
            if post_transform == "PROBIT":
                return probit(s.astype(_F32)).astype(out_dtype, copy=False)
            return s.astype(out_dtype)
        s, has = _aggregate(forest, x, "sum" if how == "average" else how)
        if how == "average" and t:
            s = s / t
        if base.size == c:
            s = s + base
        # onnxruntime writes 0 (before the transform) for a target no reached leaf has a weight for
        return _finish(np.where(has, s, 0.0), post_transform, out_dtype)


def _pick(cond, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``np.where`` for per-row conditions; a plain choice when the condition is one flag for all rows."""
    if isinstance(cond, (bool, np.bool_)):
        return a if cond else b
    return np.where(cond, a, b)


class _Classifier:
    """A compiled TreeEnsembleClassifier node."""

    def __init__(self, forest: _Forest, base_values, post_transform: str, classlabels_int64s,
                 classlabels_strings, class_ids, weights) -> None:
        self.forest = forest
        self.base = _base_array(base_values)
        self.post_transform = post_transform
        self.n_classes = n_classes = forest.n_targets
        ids = np.asarray(class_ids or [], dtype=np.int64)
        self.binary_case = n_classes == 2 and len(np.unique(ids)) == 1
        self.all_positive = bool((np.asarray(weights) >= 0).all())
        self.string_labels = bool(classlabels_strings)
        self.labels = labels_array(classlabels_strings, True) if classlabels_strings else \
            np.asarray(classlabels_int64s, dtype=np.int64)
        # binary models: whether each class has a value in every reached leaf set, when that holds for
        # all rows (each class weighted in every leaf or in none), else None (per-row flags)
        self.binary_flags = None
        if n_classes == 2 and forest.constant_has[:2].all():
            self.binary_flags = (bool(forest.has[0, 0]), bool(forest.has[0, 1])) if forest.n_trees else (False, False)
        if n_classes > 1:
            forest.dense("sum")

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        label_pos, z, raw = self._classify(x)
        if self.string_labels:
            return self.labels[label_pos], z
        if raw:  # onnxruntime returns 1/0 themselves when the binary scores are not of a binary-case model
            return label_pos.astype(np.int64), z
        return self.labels[label_pos], z

    def _classify(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
        """(label positions, scores [N, C], raw) with onnxruntime's rules; ``raw``: the labels are 0/1 themselves."""
        forest, base, post_transform, n_classes = self.forest, self.base, self.post_transform, self.n_classes
        n_rows = x.shape[0]
        if n_classes == 1:
            s = _first_weight_scores(forest, x, "sum")
            if base.size == 2:
                s = s + base[1]
            elif base.size == 1:
                s = s + base[0]
            pos = s
            label = np.where(pos > 0, 1, 0)
            z = s.astype(_F32).reshape(-1, 1)
            return label, (probit(z) if post_transform == "PROBIT" else z), True
        s, has = _aggregate(forest, x, "sum")
        if n_classes > 2:
            k = min(base.size, n_classes)
            if k:
                s[:, :k] += base[:k]
                has[:, :k] = True
            masked = np.where(has, s, -np.inf)
            label = np.argmax(masked, axis=1)
            return label, transform_rows(np.where(has, s, 0.0).astype(_F32), post_transform), False
        # two classes; the flags are per row, or one for all rows (then the choices are plain branches)
        s0, s1 = s[:, 0], s[:, 1]
        if self.binary_flags is not None and n_rows:
            h0, h1 = self.binary_flags
            two = True
        else:
            h0, h1 = has[:, 0], has[:, 1]
            two = np.ones(n_rows, dtype=bool)
        wa = -1
        if base.size == 2:
            new1 = _pick(h1, base[1] + s0, s1 + base[1])
            new0 = _pick(h1, -new1, s0 + base[0])
            s0, s1 = new0, new1
        elif base.size == 1:
            s0 = s0 + base[0]
            two = h1
        elif base.size == 0:
            wa = 3
            two = h1
        zeros = np.zeros(n_rows)
        pos = _pick(two & h1, s1, _pick(h0, s0, zeros))
        raw = False
        if self.binary_case:  # (binary_scores treats modes 0 and 1 alike, and 2 and 3)
            if self.all_positive:
                winner = pos > 0.5
                wa = 1
            else:
                winner = pos > 0
                wa = 3
            label = winner.astype(np.int64)
        else:
            label = (pos > 0).astype(np.int64)
            raw = True
        # scores without a value are written as 0 (onnxruntime's ScoreValue conversion)
        s0 = _pick(h0, s0, zeros)
        s1 = _pick(h1, s1, zeros)
        if isinstance(two, (bool, np.bool_)):
            if two:
                return label, transform_rows(np.stack([s0, s1], axis=1).astype(_F32), post_transform), raw
            return label, binary_scores(s0.astype(_F32), post_transform, wa), raw
        wa = np.broadcast_to(wa, (n_rows,))
        z = np.empty((n_rows, 2), dtype=_F32)
        if two.any():
            z[two] = transform_rows(np.stack([s0[two], s1[two]], axis=1).astype(_F32), post_transform)
        one = ~two
        if one.any():
            z[one] = binary_scores(s0[one].astype(_F32), post_transform, wa[one])
        return label, z, raw


# --------------------------------------------------------------------------- compiling the ops


def _build_regressor(*, aggregate_function, base_values, base_values_as_tensor, n_targets, nodes_falsenodeids,
                     nodes_featureids, nodes_hitrates, nodes_hitrates_as_tensor, nodes_missing_value_tracks_true,
                     nodes_modes, nodes_nodeids, nodes_treeids, nodes_truenodeids, nodes_values,
                     nodes_values_as_tensor, post_transform, target_ids, target_nodeids, target_treeids,
                     target_weights, target_weights_as_tensor) -> _Regressor:
    if aggregate_function not in _AGGREGATES:
        raise NodeInputError(f"TreeEnsembleRegressor: unknown aggregate_function '{aggregate_function}'")
    check_post_transform(post_transform)
    if not n_targets or n_targets <= 0:
        raise NodeInputError("TreeEnsembleRegressor: n_targets must be positive")
    forest = _compile_v3(
        nodes_treeids or [], nodes_nodeids or [], nodes_featureids or [],
        nodes_modes or [], _values(nodes_values, nodes_values_as_tensor, "nodes_values"),
        nodes_truenodeids or [], nodes_falsenodeids or [], nodes_missing_value_tracks_true or [],
        target_treeids or [], target_nodeids or [], target_ids or [],
        _values(target_weights, target_weights_as_tensor, "target_weights", required=False)
        if (target_weights or target_weights_as_tensor is not None) else np.zeros(0, _F32),
        int(n_targets))
    base = _values(base_values, base_values_as_tensor, "base_values", required=False)
    return _Regressor(forest, aggregate_function, base, post_transform)


def _build_classifier(*, base_values, base_values_as_tensor, class_ids, class_nodeids, class_treeids, class_weights,
                      class_weights_as_tensor, classlabels_int64s, classlabels_strings, nodes_falsenodeids,
                      nodes_featureids, nodes_hitrates, nodes_hitrates_as_tensor, nodes_missing_value_tracks_true,
                      nodes_modes, nodes_nodeids, nodes_treeids, nodes_truenodeids, nodes_values,
                      nodes_values_as_tensor, post_transform) -> _Classifier:
    check_post_transform(post_transform)
    if not classlabels_strings and not classlabels_int64s:
        raise NodeInputError("TreeEnsembleClassifier: classlabels_int64s or classlabels_strings is required")
    n_classes = len(classlabels_strings) if classlabels_strings else len(classlabels_int64s)
    weights = _values(class_weights, class_weights_as_tensor, "class_weights", required=False)
    if weights is None:
        weights = np.zeros(0, _F32)
    forest = _compile_v3(
        nodes_treeids or [], nodes_nodeids or [], nodes_featureids or [],
        nodes_modes or [], _values(nodes_values, nodes_values_as_tensor, "nodes_values"),
        nodes_truenodeids or [], nodes_falsenodeids or [], nodes_missing_value_tracks_true or [],
        class_treeids or [], class_nodeids or [], class_ids or [], weights, n_classes)
    base = _values(base_values, base_values_as_tensor, "base_values", required=False)
    return _Classifier(forest, base, post_transform, classlabels_int64s, classlabels_strings, class_ids, weights)


def _build_v5(*, aggregate_function, leaf_targetids, leaf_weights, membership_values, n_targets, nodes_falseleafs,
              nodes_falsenodeids, nodes_featureids, nodes_hitrates, nodes_missing_value_tracks_true, nodes_modes,
              nodes_splits, nodes_trueleafs, nodes_truenodeids, post_transform, tree_roots) -> _Regressor:
    if aggregate_function not in _V5_AGGREGATES:
        raise NodeInputError(f"TreeEnsemble: unknown aggregate_function {aggregate_function}")
    if post_transform not in _V5_TRANSFORMS:
        raise NodeInputError(f"TreeEnsemble: unknown post_transform {post_transform}")
    if not n_targets or n_targets <= 0:
        raise NodeInputError("TreeEnsemble: n_targets must be positive")
    for name, value in (("leaf_targetids", leaf_targetids), ("leaf_weights", leaf_weights),
                        ("nodes_falseleafs", nodes_falseleafs), ("nodes_falsenodeids", nodes_falsenodeids),
                        ("nodes_featureids", nodes_featureids), ("nodes_modes", nodes_modes),
                        ("nodes_splits", nodes_splits), ("nodes_trueleafs", nodes_trueleafs),
                        ("nodes_truenodeids", nodes_truenodeids), ("tree_roots", tree_roots)):
        if value is None:
            raise NodeInputError(f"TreeEnsemble: attribute {name} is required")
    splits = np.asarray(nodes_splits).reshape(-1)
    if splits.dtype not in (np.dtype(_F32), np.dtype(_F64)):
        splits = splits.astype(_F32)
    forest = _compile_v5(
        tree_roots=list(tree_roots), modes=np.asarray(nodes_modes).reshape(-1),
        featureids=list(nodes_featureids), splits=splits, truenodeids=list(nodes_truenodeids),
        trueleafs=list(nodes_trueleafs), falsenodeids=list(nodes_falsenodeids),
        falseleafs=list(nodes_falseleafs), mtt=nodes_missing_value_tracks_true,
        leaf_targetids=list(leaf_targetids), leaf_weights=np.asarray(leaf_weights).reshape(-1),
        membership=None if membership_values is None else np.asarray(membership_values).reshape(-1),
        n_targets=int(n_targets))
    return _Regressor(forest, _V5_AGGREGATES[aggregate_function], None, _V5_TRANSFORMS[post_transform])


_REGRESSOR = Compiled(_build_regressor)
_CLASSIFIER = Compiled(_build_classifier)
_V5 = Compiled(_build_v5)


# --------------------------------------------------------------------------- ops


@op("TreeEnsembleRegressor", versions=(1, 3, 5), domain="ai.onnx.ml", prepack=_REGRESSOR)
@_REGRESSOR.kernel
def tree_ensemble_regressor(x, *, aggregate_function="SUM", base_values=None, base_values_as_tensor=None,
                            n_targets=None, nodes_falsenodeids=None, nodes_featureids=None, nodes_hitrates=None,
                            nodes_hitrates_as_tensor=None, nodes_missing_value_tracks_true=None, nodes_modes=None,
                            nodes_nodeids=None, nodes_treeids=None, nodes_truenodeids=None, nodes_values=None,
                            nodes_values_as_tensor=None, post_transform="NONE", target_ids=None,
                            target_nodeids=None, target_treeids=None, target_weights=None,
                            target_weights_as_tensor=None, _packed=None):
    model = _packed if _packed is not None else _REGRESSOR.compile(locals())
    return model(_prepare_input(x, model.forest, "TreeEnsembleRegressor"))


@op("TreeEnsembleClassifier", versions=(1, 3, 5), domain="ai.onnx.ml", multi_output=True, prepack=_CLASSIFIER)
@_CLASSIFIER.kernel
def tree_ensemble_classifier(x, *, base_values=None, base_values_as_tensor=None, class_ids=None, class_nodeids=None,
                             class_treeids=None, class_weights=None, class_weights_as_tensor=None,
                             classlabels_int64s=None, classlabels_strings=None, nodes_falsenodeids=None,
                             nodes_featureids=None, nodes_hitrates=None, nodes_hitrates_as_tensor=None,
                             nodes_missing_value_tracks_true=None, nodes_modes=None, nodes_nodeids=None,
                             nodes_treeids=None, nodes_truenodeids=None, nodes_values=None,
                             nodes_values_as_tensor=None, post_transform="NONE", _packed=None):
    model = _packed if _packed is not None else _CLASSIFIER.compile(locals())
    return model(_prepare_input(x, model.forest, "TreeEnsembleClassifier"))


@op("TreeEnsemble", versions=5, domain="ai.onnx.ml", prepack=_V5)
@_V5.kernel
def tree_ensemble(x, *, aggregate_function=1, leaf_targetids=None, leaf_weights=None, membership_values=None,
                  n_targets=None, nodes_falseleafs=None, nodes_falsenodeids=None, nodes_featureids=None,
                  nodes_hitrates=None, nodes_missing_value_tracks_true=None, nodes_modes=None, nodes_splits=None,
                  nodes_trueleafs=None, nodes_truenodeids=None, post_transform=0, tree_roots=None, _packed=None):
    model = _packed if _packed is not None else _V5.compile(locals())
    x = np.asarray(x)
    out_dtype = x.dtype if x.dtype.kind == "f" else np.dtype(_F32)
    return model(_prepare_input(x, model.forest, "TreeEnsemble"), out_dtype)
