"""Tree ensembles: TreeEnsembleRegressor, TreeEnsembleClassifier (ai.onnx.ml 1, 3, 5) and TreeEnsemble (5).

Every ensemble is compiled once (per attribute set) into packed per-node records. Evaluation
walks all (tree, row) pairs of a block of trees at once, one depth level per numpy step: gather
each pair's node record and feature value, compare, move to the true or false child, and drop the
pairs that reached a leaf. Blocks run on a small thread pool (numpy releases the GIL). Leaf values
are then aggregated per row and post-processed with onnxruntime's rules (base values, binary
classifiers with one score column, post transforms).
"""

from __future__ import annotations

import concurrent.futures
import os
import threading

import numpy as np

from ..registry import op
from ._common import (
    AttributeCache,
    binary_scores,
    check_post_transform,
    labels_array,
    probit,
    transform_rows,
)

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

_CACHE = AttributeCache()
_BLOCK_PAIRS = 1 << 17  # (tree, row) pairs walked together
_POOL = None
_POOL_LOCK = threading.Lock()


def _thread_pool():
    """A small shared pool: numpy releases the GIL in the gathers and comparisons of a tree walk."""
    global _POOL
    workers = min(8, os.cpu_count() or 1)
    if workers < 2:
        return None
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="onyxrt-trees")
    return _POOL


class _Forest:
    """A compiled ensemble.

    Node rows as given: [0, n_internal) are decision nodes, rows from n_internal on are leaves.
    For the traversal the trees are re-laid out breadth first so that the two children of every
    decision node sit next to each other (true child first), and each position packs what a step
    needs into one 16-byte record: feature, false-child position and threshold (modes and the
    missing-value flags, when needed, come from a second table). A step is then
    ``s = false_child[s] - cond`` with two gathers (the record and the feature value). A leaf
    position reads a sentinel feature (an extra input column) whose comparison is always false and
    is its own false child, so finished (tree, row) pairs can stay in the batch until it is compacted.
    """

    def __init__(self, *, feat, thr, modes, tnext, fnext, mtt, roots, n_internal, leaf_entry, leaf_targets,
                 leaf_weights, leaf_first, n_targets, members=None):
        n_leaves = len(leaf_first)
        self.n_internal, self.n_leaves, self.n_targets = n_internal, n_leaves, n_targets
        self.n_trees = len(roots)
        feat = np.asarray(feat, dtype=np.int64)
        self.max_feature = int(feat.max()) if n_internal else -1
        if n_internal and feat.min() < 0:
            raise ValueError("tree ensemble: negative feature id")
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
        self._records: dict[np.dtype, np.ndarray] = {}
        # leaf values: every (leaf, target, weight) entry, in onnxruntime's order
        self.leaf_entry = np.asarray(leaf_entry, dtype=np.int64)
        self.leaf_targets = np.asarray(leaf_targets, dtype=np.int64)
        self.leaf_weights = np.asarray(leaf_weights, dtype=_F64)
        self.leaf_first = np.asarray(leaf_first, dtype=_F64)  # the first weight of each leaf
        if self.leaf_targets.size and (self.leaf_targets.min() < 0 or self.leaf_targets.max() >= n_targets):
            raise ValueError(f"tree ensemble: a target/class id is outside [0, {n_targets})")
        self._dense: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def _layout(self, feat, modes, mtt, tnext, fnext, roots) -> None:
        """Breadth-first positions with sibling children; a shared subtree is copied per parent."""
        n_int = self.n_internal
        total_rows = n_int + self.n_leaves
        frontier = roots
        levels = [roots]
        trees = np.arange(roots.size, dtype=np.int64)
        # the shallowest leaf of each tree: no (tree, row) pair of it finishes earlier
        self.min_depth = np.full(roots.size, np.iinfo(np.int64).max, dtype=np.int64)
        false_child = {}  # level -> positions of the false children of its decision nodes
        base = roots.size
        level = 0
        while frontier.size:
            inner = frontier < n_int
            if not inner.all():
                np.minimum.at(self.min_depth, trees[~inner], level)
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
                raise ValueError("tree ensemble: the nodes do not form trees (cycle or heavily shared subtrees)")
            levels.append(kids)
            frontier = kids
            level += 1
        orig = np.concatenate(levels) if levels else np.zeros(0, np.int64)
        if orig.size >= 2**31 - 1:
            raise ValueError("tree ensemble: too many nodes")
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

    def records(self, dtype: np.dtype, n_feat: int) -> np.ndarray:
        """The packed per-position records for thresholds of ``dtype`` (16 bytes each)."""
        key = (dtype, n_feat)
        rec = self._records.get(key)
        if rec is not None:
            return rec
        n = self.pos_feat.size
        feat = np.where(self.pos_feat < 0, n_feat, self.pos_feat).astype(np.int32)
        thr = np.where(self.pos_inner, self.thr.astype(dtype)[self.pos_thr_row] if self.thr.size else 0, 0)
        raw = np.zeros((n, 4), dtype=np.int32)
        raw[:, 0] = feat
        if dtype == np.dtype(_F64):  # [feature:int32, child:int32, threshold:float64]
            raw[:, 1] = self.pos_child
            raw.view(_F64)[:, 1] = thr
        else:  # [feature:int32, threshold:float32, child:int64]
            raw.view(_F32)[:, 1] = thr
            raw.view(np.int64)[:, 1] = self.pos_child
        self._codes = self.pos_code.astype(np.intp)
        rec = raw.reshape(-1).view(np.complex128)
        self._records[key] = rec
        return rec

    # ------------------------------------------------------------------ leaves

    def dense(self, how: str) -> tuple[np.ndarray, np.ndarray]:
        """[n_leaves, n_targets] leaf values combined with ``how`` (sum/min/max), and has-value flags."""
        cached = self._dense.get(how)
        if cached is not None:
            return cached
        n, c = self.n_leaves, self.n_targets
        flat = self.leaf_entry * c + self.leaf_targets
        has = np.bincount(flat, minlength=n * c).reshape(n, c) > 0
        if how == "sum":
            values = np.bincount(flat, weights=self.leaf_weights, minlength=n * c).reshape(n, c)
        else:
            values = np.full(n * c, np.inf if how == "min" else -np.inf, dtype=_F64)
            (np.minimum if how == "min" else np.maximum).at(values, flat, self.leaf_weights)
            values = values.reshape(n, c)
            values[~has] = 0.0
        self._dense[how] = (values, has)
        return values, has

    def constant_has(self, has: np.ndarray) -> np.ndarray:
        """Targets that every leaf has a value for, or none does."""
        if getattr(self, "_constant_has", None) is None:
            self._constant_has = has.all(axis=0) | ~has.any(axis=0)
        return self._constant_has

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
            raise ValueError(f"tree ensemble uses feature {self.max_feature} but the input has {n_feat} features")
        if t == 0:
            return []
        if n_rows == 0:
            return [fn(np.empty((t, 0), dtype=np.int64))]
        rec_table = self.records(x.dtype, n_feat)
        # the input plus the sentinel column read by leaves (NaN: every comparison is false)
        width = n_feat + 1
        xs = np.empty((n_rows, width), dtype=x.dtype)
        xs[:, :n_feat] = x
        xs[:, n_feat] = 0 if self.uniform_mode == NEQ else np.nan
        xf = xs.reshape(-1)
        # blocks of trees: a working set that stays in cache, and one block per thread
        per_block = max(1, _BLOCK_PAIRS // n_rows)
        blocks = [(a, min(t, a + per_block)) for a in range(0, t, per_block)]
        work = lambda ab: fn(self._walk(rec_table, xf, width, n_rows, ab[0], ab[1]))  # noqa: E731
        pool = _thread_pool() if len(blocks) > 1 else None
        if pool is None:
            return [work(ab) for ab in blocks]
        return list(pool.map(work, blocks))

    def _walk(self, rec_table, xf, width: int, n_rows: int, first: int, last: int) -> np.ndarray:
        """The leaves of trees [first, last) for all rows, as [last - first, N]."""
        double = xf.dtype == np.dtype(_F64)
        t = last - first
        res = np.empty(t * n_rows, dtype=np.int64)
        # (tree, row) pairs, tree-major so that neighbouring pairs walk the same tree
        s = np.repeat(self.roots_pos[first:last], n_rows)
        row_base = np.tile(np.arange(n_rows, dtype=np.int64) * width, t)
        entry = None  # positions of the pairs still in the batch (None: all of them, in order)
        size = s.size
        rec_buf = np.empty(size, dtype=np.complex128)
        f_buf = np.empty(size, dtype=np.int64)
        x_buf = np.empty(size, dtype=xf.dtype)
        c_buf = np.empty(size, dtype=bool)
        n_buf = np.empty(size, dtype=np.int64)
        same = np.empty(size, dtype=bool)
        steps = 0
        limit = self.pos_feat.size + 2
        quiet = int(self.min_depth[first:last].min())  # steps before any pair can reach a leaf
        while True:
            m = s.size
            rec = np.take(rec_table, s, out=rec_buf[:m], mode="wrap")
            r32 = rec.view(np.int32).reshape(m, 4)
            f = np.add(r32[:, 0], row_base, out=f_buf[:m])
            xv = np.take(xf, f, out=x_buf[:m], mode="wrap")
            if double:
                tv = rec.view(_F64).reshape(m, 2)[:, 1]
                child = r32[:, 1]
            else:
                tv = rec.view(_F32).reshape(m, 4)[:, 1]
                child = rec.view(np.int64).reshape(m, 2)[:, 1]
            if self.uniform_mode is not None:
                c = _compare(xv, tv, self.uniform_mode, c_buf[:m])
                if self.has_mtt:
                    c |= (np.take(self._codes, s, mode="wrap") >= 8) & np.isnan(xv)
            else:
                code = np.take(self._codes, s, mode="wrap")
                c = self._compare_mixed(s, code, xv, tv, c_buf[:m])
            nxt = np.subtract(child, c, out=n_buf[:m], dtype=np.int64)
            steps += 1
            if steps < quiet:
                n_buf = s.base if s.base is not None else s
                s = nxt
                continue
            done = np.equal(nxt, s, out=same[:m])
            n_done = int(np.count_nonzero(done))
            n_buf = s.base if s.base is not None else s
            s = nxt
            if n_done == m:
                if entry is None:
                    res[:] = s
                else:
                    res[entry] = s
                break
            if n_done * 4 >= m:  # compact: drop the pairs that reached a leaf
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
            if steps > limit:
                raise ValueError("tree ensemble: a tree has a cycle")
        np.take(self.leaf_of_pos, res, out=res)
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


def _compare(xv: np.ndarray, tv: np.ndarray, mode: int, out: np.ndarray) -> np.ndarray:
    if mode == LEQ:
        return np.less_equal(xv, tv, out=out)
    if mode == LT:
        return np.less(xv, tv, out=out)
    if mode == GTE:
        return np.greater_equal(xv, tv, out=out)
    if mode == GT:
        return np.greater(xv, tv, out=out)
    if mode == EQ:
        return np.equal(xv, tv, out=out)
    return np.not_equal(xv, tv, out=out)


# --------------------------------------------------------------------------- compiling


def _compile_v3(treeids, nodeids, featureids, modes, values, truenodeids, falsenodeids, mtt,
                t_treeids, t_nodeids, t_ids, t_weights, n_targets) -> _Forest:
    """The TreeEnsembleRegressor/Classifier encoding: nodes keyed by (tree id, node id)."""
    n = len(treeids)
    for name, arr in (("nodes_nodeids", nodeids), ("nodes_featureids", featureids), ("nodes_modes", modes),
                      ("nodes_values", values), ("nodes_truenodeids", truenodeids),
                      ("nodes_falsenodeids", falsenodeids)):
        if len(arr) != n:
            raise ValueError(f"tree ensemble: {name} has {len(arr)} entries, nodes_treeids has {n}")
    if not (len(t_treeids) == len(t_nodeids) == len(t_ids) == len(t_weights)):
        raise ValueError("tree ensemble: the target/class ids, nodeids, treeids and weights differ in length")
    names = dict(_MODE_NAMES, LEAF=-1)
    try:
        mode_codes = np.array([names[m] for m in modes], dtype=np.int64)
    except KeyError as exc:
        raise ValueError(f"tree ensemble: unknown node mode {exc.args[0]!r}") from None
    tree = np.asarray(treeids, dtype=np.int64).reshape(-1)
    node = np.asarray(nodeids, dtype=np.int64).reshape(-1)
    if n and (node.min() < 0 or tree.min() < 0):
        raise ValueError("tree ensemble: negative tree or node ids")
    span = int(node.max()) + 1 if n else 1
    keys = tree * span + node
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    if n > 1 and (np.diff(sorted_keys) == 0).any():
        dup = sorted_keys[np.flatnonzero(np.diff(sorted_keys) == 0)[0]]
        raise ValueError(f"tree ensemble: node {dup % span} in tree {dup // span} is defined twice")

    def find(trees: np.ndarray, ids: np.ndarray, what: str) -> np.ndarray:
        """Node positions of (tree, id) pairs; raises for a missing one."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        k = trees * span + ids
        pos = np.minimum(np.searchsorted(sorted_keys, k), max(n - 1, 0))
        ok = (ids >= 0) & (ids < span) & (sorted_keys[pos] == k) if n else np.zeros(ids.shape, bool)
        if not ok.all():
            bad = np.flatnonzero(~ok)[0]
            raise ValueError(f"tree ensemble: node {ids[bad]} of tree {trees[bad]} ({what}) does not exist")
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
        raise ValueError("tree ensemble: a node points to itself")
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
        raise ValueError(f"tree ensemble: target is missing for leaf {tree[j]}-{node[j]}")
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
    for name, arr in (("nodes_modes", modes), ("nodes_splits", splits), ("nodes_truenodeids", truenodeids),
                      ("nodes_trueleafs", trueleafs), ("nodes_falsenodeids", falsenodeids),
                      ("nodes_falseleafs", falseleafs)):
        if len(arr) != n:
            raise ValueError(f"TreeEnsemble: {name} has {len(arr)} entries, nodes_featureids has {n}")
    n_leaves = len(leaf_weights)
    if len(leaf_targetids) != n_leaves:
        raise ValueError("TreeEnsemble: leaf_targetids and leaf_weights differ in length")
    modes = np.asarray(modes, dtype=np.int64)
    if modes.size and (modes.min() < 0 or modes.max() > MEMBER):
        raise ValueError("TreeEnsemble: nodes_modes values must be in [0, 6]")

    def nxt(ids, leafs):
        ids = np.asarray(ids, dtype=np.int64)
        leafs = np.asarray(leafs, dtype=np.int64) != 0
        bound = np.where(leafs, n_leaves, n)
        if ids.size and ((ids < 0) | (ids >= bound)).any():
            raise ValueError("TreeEnsemble: a node or leaf index is out of range")
        return np.where(leafs, n + ids, ids)

    roots = np.asarray(tree_roots, dtype=np.int64)
    if roots.size and ((roots < 0) | (roots >= n)).any():
        raise ValueError("TreeEnsemble: a tree root is out of range")
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
            raise ValueError(f"tree ensemble: only one of {what} and {what}_as_tensor may be set")
        return np.asarray(as_tensor).reshape(-1)
    if plain is None:
        if required:
            raise ValueError(f"tree ensemble: attribute {what} is required")
        return None
    return np.asarray(plain, dtype=_F32)


def _compare_dtype(x: np.ndarray, thr: np.ndarray) -> np.dtype:
    if x.dtype == _F64 or thr.dtype == _F64:
        return np.dtype(_F64)
    return np.dtype(_F32)


def _prepare_input(x: np.ndarray, forest: _Forest, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind not in "fiu":
        raise TypeError(f"{what}: unsupported input type {x.dtype}")
    if x.ndim == 0:
        raise ValueError(f"{what}: the input needs at least one dimension")
    x2 = x.reshape(1, -1) if x.ndim == 1 else x.reshape(x.shape[0], -1)
    return x2.astype(_compare_dtype(x2, forest.thr), copy=False)


# --------------------------------------------------------------------------- aggregation


def _aggregate(forest: _Forest, x: np.ndarray, how: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-row, per-target aggregate of the reached leaves' values ([N, C]) and has-value flags."""
    values, has = forest.dense(how)
    n_rows, c = x.shape[0], forest.n_targets
    constant_has = forest.constant_has(has)
    fill = np.inf if how == "min" else -np.inf

    def block(leaves: np.ndarray):
        v = values[leaves]  # [trees, N, C]
        flags = has[leaves].any(axis=0) if not constant_has.all() else None
        if how == "sum":
            return v.sum(axis=0), flags
        v = np.where(has[leaves], v, fill)
        return (v.min(axis=0) if how == "min" else v.max(axis=0)), flags

    parts = forest.map_leaves(x, block)
    if how == "sum":
        acc = np.zeros((n_rows, c), dtype=_F64)
    else:
        acc = np.full((n_rows, c), fill, dtype=_F64)
    flags = np.zeros((n_rows, c), dtype=bool)
    for part, part_flags in parts:
        if how == "sum":
            acc += part
        elif how == "min":
            np.minimum(acc, part, out=acc)
        else:
            np.maximum(acc, part, out=acc)
        if part_flags is not None:
            flags |= part_flags
    if constant_has.any() and forest.n_trees:
        flags[:, constant_has] = has[0, constant_has]
    if how != "sum":
        acc[~flags] = 0.0
    return acc, flags


def _first_weight_scores(forest: _Forest, x: np.ndarray, how: str) -> np.ndarray:
    """The one-target path: each reached leaf contributes its first weight."""
    first = forest.leaf_first
    if how in ("sum", "average"):
        parts = forest.map_leaves(x, lambda leaves: first[leaves].sum(axis=0))
        return np.sum(parts, axis=0) if parts else np.zeros(x.shape[0], dtype=_F64)
    reduce = np.min if how == "min" else np.max
    parts = forest.map_leaves(x, lambda leaves: reduce(first[leaves], axis=0))
    return reduce(parts, axis=0) if parts else np.zeros(x.shape[0], dtype=_F64)


def _finish(s: np.ndarray, post_transform: str, out_dtype) -> np.ndarray:
    if post_transform == "NONE":
        return s.astype(out_dtype)
    return transform_rows(s.astype(_F32), post_transform).astype(out_dtype, copy=False)


def _regress(forest: _Forest, x: np.ndarray, aggregate: str, base_values, post_transform: str,
             out_dtype=_F32) -> np.ndarray:
    n_rows = x.shape[0]
    c = forest.n_targets
    t = forest.n_trees
    base = np.asarray(base_values if base_values is not None else [], dtype=_F64).reshape(-1)
    how = aggregate.lower()
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
    use_base = base.size == c
    s, has = _aggregate(forest, x, "sum" if how == "average" else how)
    if how == "average" and t:
        s = s / t
    if use_base:
        s = s + base
    # onnxruntime writes 0 (before the transform) for a target no reached leaf has a weight for
    return _finish(np.where(has, s, 0.0), post_transform, out_dtype)


def _classify(forest: _Forest, x: np.ndarray, base_values, post_transform: str, binary_case: bool,
              all_positive: bool, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(label positions, scores [N, C], raw) with onnxruntime's rules; ``raw``: the labels are 0/1 themselves."""
    n_rows = x.shape[0]
    base = np.asarray(base_values if base_values is not None else [], dtype=_F64).reshape(-1)
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
    s0, s1 = s[:, 0].copy(), s[:, 1].copy()
    h0, h1 = has[:, 0], has[:, 1]
    wa = np.full(n_rows, -1, dtype=np.int64)
    two = np.ones(n_rows, dtype=bool)
    if base.size == 2:
        new1 = np.where(h1, base[1] + s0, s1 + base[1])
        new0 = np.where(h1, -new1, s0 + base[0])
        s0, s1 = new0, new1
    elif base.size == 1:
        s0 = s0 + base[0]
        two = h1.copy()
    elif base.size == 0:
        wa[:] = 3
        two = h1.copy()
    pos = np.where(two & h1, s1, np.where(h0, s0, 0.0))
    raw = False
    if binary_case:
        if all_positive:
            winner = pos > 0.5
            wa = np.where(winner, 0, 1)
        else:
            winner = pos > 0
            wa = np.where(winner, 2, 3)
        label = winner.astype(np.int64)
    else:
        label = (pos > 0).astype(np.int64)
        raw = True
    # scores without a value are written as 0 (onnxruntime's ScoreValue conversion)
    s0 = np.where(h0, s0, 0.0)
    s1 = np.where(h1, s1, 0.0)
    z = np.empty((n_rows, 2), dtype=_F32)
    if two.any():
        z[two] = transform_rows(np.stack([s0[two], s1[two]], axis=1).astype(_F32), post_transform)
    one = ~two
    if one.any():
        z[one] = binary_scores(s0[one].astype(_F32), post_transform, wa[one])
    return label, z, raw


def _labels_out(label_pos: np.ndarray, raw: bool, classlabels_int64s, classlabels_strings):
    if classlabels_strings:
        labels = labels_array(classlabels_strings, True)
        return labels[label_pos]
    labels = np.asarray(classlabels_int64s, dtype=np.int64)
    if raw:  # onnxruntime returns 1/0 themselves when the binary scores are not of a binary-case model
        return label_pos.astype(np.int64)
    return labels[label_pos]


# --------------------------------------------------------------------------- ops


@op("TreeEnsembleRegressor", versions=(1, 3, 5), domain="ai.onnx.ml")
def tree_ensemble_regressor(x, *, aggregate_function="SUM", base_values=None, base_values_as_tensor=None,
                            n_targets=None, nodes_falsenodeids=None, nodes_featureids=None, nodes_hitrates=None,
                            nodes_hitrates_as_tensor=None, nodes_missing_value_tracks_true=None, nodes_modes=None,
                            nodes_nodeids=None, nodes_treeids=None, nodes_truenodeids=None, nodes_values=None,
                            nodes_values_as_tensor=None, post_transform="NONE", target_ids=None,
                            target_nodeids=None, target_treeids=None, target_weights=None,
                            target_weights_as_tensor=None):
    if aggregate_function not in _AGGREGATES:
        raise ValueError(f"TreeEnsembleRegressor: unknown aggregate_function '{aggregate_function}'")
    check_post_transform(post_transform)
    if not n_targets or n_targets <= 0:
        raise ValueError("TreeEnsembleRegressor: n_targets must be positive")
    attrs = (nodes_treeids, nodes_nodeids, nodes_featureids, nodes_modes, nodes_values, nodes_values_as_tensor,
             nodes_truenodeids, nodes_falsenodeids, nodes_missing_value_tracks_true, target_treeids,
             target_nodeids, target_ids, target_weights, target_weights_as_tensor, n_targets)

    def build():
        return _compile_v3(
            nodes_treeids or [], nodes_nodeids or [], nodes_featureids or [],
            nodes_modes or [], _values(nodes_values, nodes_values_as_tensor, "nodes_values"),
            nodes_truenodeids or [], nodes_falsenodeids or [], nodes_missing_value_tracks_true or [],
            target_treeids or [], target_nodeids or [], target_ids or [],
            _values(target_weights, target_weights_as_tensor, "target_weights", required=False)
            if (target_weights or target_weights_as_tensor is not None) else np.zeros(0, _F32),
            int(n_targets))

    forest = _CACHE.get(attrs, build)
    x2 = _prepare_input(x, forest, "TreeEnsembleRegressor")
    base = _values(base_values, base_values_as_tensor, "base_values", required=False)
    return _regress(forest, x2, aggregate_function, base, post_transform)


@op("TreeEnsembleClassifier", versions=(1, 3, 5), domain="ai.onnx.ml", multi_output=True)
def tree_ensemble_classifier(x, *, base_values=None, base_values_as_tensor=None, class_ids=None, class_nodeids=None,
                             class_treeids=None, class_weights=None, class_weights_as_tensor=None,
                             classlabels_int64s=None, classlabels_strings=None, nodes_falsenodeids=None,
                             nodes_featureids=None, nodes_hitrates=None, nodes_hitrates_as_tensor=None,
                             nodes_missing_value_tracks_true=None, nodes_modes=None, nodes_nodeids=None,
                             nodes_treeids=None, nodes_truenodeids=None, nodes_values=None,
                             nodes_values_as_tensor=None, post_transform="NONE"):
    check_post_transform(post_transform)
    if not classlabels_strings and not classlabels_int64s:
        raise ValueError("TreeEnsembleClassifier: classlabels_int64s or classlabels_strings is required")
    n_classes = len(classlabels_strings) if classlabels_strings else len(classlabels_int64s)
    attrs = (nodes_treeids, nodes_nodeids, nodes_featureids, nodes_modes, nodes_values, nodes_values_as_tensor,
             nodes_truenodeids, nodes_falsenodeids, nodes_missing_value_tracks_true, class_treeids,
             class_nodeids, class_ids, class_weights, class_weights_as_tensor, classlabels_int64s,
             classlabels_strings)

    def build():
        weights = _values(class_weights, class_weights_as_tensor, "class_weights", required=False)
        if weights is None:
            weights = np.zeros(0, _F32)
        forest = _compile_v3(
            nodes_treeids or [], nodes_nodeids or [], nodes_featureids or [],
            nodes_modes or [], _values(nodes_values, nodes_values_as_tensor, "nodes_values"),
            nodes_truenodeids or [], nodes_falsenodeids or [], nodes_missing_value_tracks_true or [],
            class_treeids or [], class_nodeids or [], class_ids or [], weights, n_classes)
        ids = np.asarray(class_ids or [], dtype=np.int64)
        forest.binary_case = n_classes == 2 and len(np.unique(ids)) == 1
        forest.all_positive = bool((np.asarray(weights) >= 0).all())
        return forest

    forest = _CACHE.get(attrs, build)
    x2 = _prepare_input(x, forest, "TreeEnsembleClassifier")
    base = _values(base_values, base_values_as_tensor, "base_values", required=False)
    label_pos, z, raw = _classify(forest, x2, base, post_transform, forest.binary_case, forest.all_positive,
                                  n_classes)
    return _labels_out(label_pos, raw, classlabels_int64s, classlabels_strings), z


@op("TreeEnsemble", versions=5, domain="ai.onnx.ml")
def tree_ensemble(x, *, aggregate_function=1, leaf_targetids=None, leaf_weights=None, membership_values=None,
                  n_targets=None, nodes_falseleafs=None, nodes_falsenodeids=None, nodes_featureids=None,
                  nodes_hitrates=None, nodes_missing_value_tracks_true=None, nodes_modes=None, nodes_splits=None,
                  nodes_trueleafs=None, nodes_truenodeids=None, post_transform=0, tree_roots=None):
    if aggregate_function not in _V5_AGGREGATES:
        raise ValueError(f"TreeEnsemble: unknown aggregate_function {aggregate_function}")
    if post_transform not in _V5_TRANSFORMS:
        raise ValueError(f"TreeEnsemble: unknown post_transform {post_transform}")
    if not n_targets or n_targets <= 0:
        raise ValueError("TreeEnsemble: n_targets must be positive")
    for name, value in (("leaf_targetids", leaf_targetids), ("leaf_weights", leaf_weights),
                        ("nodes_falseleafs", nodes_falseleafs), ("nodes_falsenodeids", nodes_falsenodeids),
                        ("nodes_featureids", nodes_featureids), ("nodes_modes", nodes_modes),
                        ("nodes_splits", nodes_splits), ("nodes_trueleafs", nodes_trueleafs),
                        ("nodes_truenodeids", nodes_truenodeids), ("tree_roots", tree_roots)):
        if value is None:
            raise ValueError(f"TreeEnsemble: attribute {name} is required")
    attrs = (tree_roots, nodes_modes, nodes_featureids, nodes_splits, nodes_truenodeids, nodes_trueleafs,
             nodes_falsenodeids, nodes_falseleafs, nodes_missing_value_tracks_true, leaf_targetids, leaf_weights,
             membership_values, n_targets)

    def build():
        splits = np.asarray(nodes_splits).reshape(-1)
        if splits.dtype not in (np.dtype(_F32), np.dtype(_F64)):
            splits = splits.astype(_F32)
        return _compile_v5(
            tree_roots=list(tree_roots), modes=np.asarray(nodes_modes).reshape(-1),
            featureids=list(nodes_featureids), splits=splits, truenodeids=list(nodes_truenodeids),
            trueleafs=list(nodes_trueleafs), falsenodeids=list(nodes_falsenodeids),
            falseleafs=list(nodes_falseleafs), mtt=nodes_missing_value_tracks_true,
            leaf_targetids=list(leaf_targetids), leaf_weights=np.asarray(leaf_weights).reshape(-1),
            membership=None if membership_values is None else np.asarray(membership_values).reshape(-1),
            n_targets=int(n_targets))

    forest = _CACHE.get(attrs, build)
    x = np.asarray(x)
    out_dtype = x.dtype if x.dtype.kind == "f" else np.dtype(_F32)
    x2 = _prepare_input(x, forest, "TreeEnsemble")
    return _regress(forest, x2, _V5_AGGREGATES[aggregate_function], None, _V5_TRANSFORMS[post_transform],
                    out_dtype)
