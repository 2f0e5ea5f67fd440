"""Buffer planning for an execution plan: in-place donation, recycling freed buffers, peak bytes.

Two halves:

* :func:`plan_donations` (at plan build time) finds, per step, the inputs a kernel declared
  it may overwrite (``inplace``) whose buffer dies at that step: not a feed, weight, outer
  value or graph output, and no value aliasing it (a declared ``alias`` output) read later.
* :class:`Arena` (at run time, one per concurrent run, kept by the plan across runs) holds
  the pool of freed buffers, serves kernels' ``_alloc`` requests from it (or from a donated
  input), and counts live bytes.

Only memory nothing else can reach is recycled or overwritten. The static checks above are
not enough for that (a kernel may return an undeclared view, a caller may hold an output),
so every buffer is checked when it is freed or donated: it must be a writable,
C-contiguous numpy array that owns its memory (or a view whose owner does), and CPython's
reference counts must show no other reference to it or to its owner, so no view, list,
slot or caller still sees it. Weights are read-only and feeds, outer values and outputs
are never freed by the plan, so they are never recycled.

Peak bytes: live values produced by steps (deduplicated by memory owner; feeds, weights and
outer values excluded) plus the bytes the pool holds, sampled after every step.
"""

from __future__ import annotations

import bisect
import sys
from dataclasses import dataclass
from typing import AbstractSet, Any, Mapping, Sequence

import numpy as np

from ..providers.kernel_registry import KernelContract

_getrefcount = sys.getrefcount


@dataclass
class RunReport:
    """Memory figures of one run, filled in by ``ExecutionPlan.run(..., report=...)``."""

    peak_bytes: int = 0  # live step outputs (by memory owner, from TRACKED_MIN_BYTES up) plus the pool, at their highest
    reused_bytes: int = 0  # output bytes served from the pool
    inplace_bytes: int = 0  # output bytes written over a dying input


Donor = tuple[int, int]  # (input slot, output index)

# Values smaller than this are neither counted (``RunReport.peak_bytes``) nor recycled, and steps whose outputs are
# all smaller run without ``_alloc``: their bookkeeping costs more than recycling them saves, as malloc serves such
# blocks from its heap without page faults (``host_memory``). Measured on 2 Zen 5 cores against 4 KiB, paired
# alternating runs: the unseen ConvNeXt-, ViT- and GPT-2-like models of 64-256 KiB values 0.76, 0.83 and 0.88x the
# time; mobilenet_v2 0.975, minilm_l6 0.99, llama_tiny's decoding step 0.985, resnet50 1.00.
TRACKED_MIN_BYTES = 1 << 18
_NO_OWNERS: frozenset[int] = frozenset()


def plan_donations(
    steps: Sequence[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]],
    contracts: Sequence[KernelContract],
    protected: set[int],
    trash_slot: int = -1,
) -> list[tuple[Donor, ...]]:
    """Per step, the inputs whose buffer the kernel may take as an output buffer.

    ``steps`` gives each step's ``(input slots, output slots, slots freed after it)``;
    ``protected`` holds slots whose memory must never be written (feeds, weights, outer
    values, graph outputs, the none/trash slots); an output written to ``trash_slot`` (a
    skipped optional output) takes no donation. A declared alias output shares its input's
    buffer: the buffer dies with the last reader of any of them.
    """
    root: dict[int, int] = {}  # slot -> slot of the value that first held its buffer
    last_reader: dict[int, int] = {}  # buffer root -> index of the last step reading it
    for index, ((ins, outs, _), contract) in enumerate(zip(steps, contracts)):
        for slot in ins:
            buffer = root.get(slot, slot)
            last_reader[buffer] = index
        for i, o in contract.alias.items():
            if i < len(ins) and o < len(outs):
                root[outs[o]] = root.get(ins[i], ins[i])
    shielded = {root.get(slot, slot) for slot in protected}  # e.g. an output that is a view of a value
    donations: list[tuple[Donor, ...]] = []
    for index, ((ins, outs, frees), contract) in enumerate(zip(steps, contracts)):
        donors = []
        for i, o in contract.inplace.items():
            if i >= len(ins) or o >= len(outs) or outs[o] == trash_slot:
                continue
            slot = ins[i]
            buffer = root.get(slot, slot)
            if (slot in frees and slot not in protected and buffer not in shielded
                    and last_reader.get(buffer) == index and ins.count(slot) == 1):
                donors.append((slot, o))
        donations.append(tuple(donors))
    return donations


def _counts(value: Any) -> tuple[int, int]:
    """Reference counts of ``value`` and of its ``base`` (0 without one), as seen from one call deep."""
    base = value.base
    return _getrefcount(value), (0 if base is None else _getrefcount(base))


def _calibrate() -> tuple[int, int]:
    """What :func:`_counts` reports for a view nothing else references, reached as :func:`unshared_owner` reaches it.

    Measured rather than assumed: how many references the interpreter itself holds differs
    between Python versions.
    """
    owner = np.empty(1)
    values = [owner[:]]
    del owner
    value = values[0]
    values[0] = None
    return _probe(value)


def _probe(value: Any) -> tuple[int, int]:  # one frame, as unshared_owner
    return _counts(value)


_SOLE_VALUE, _SOLE_BASE = _calibrate()


def _recyclable(array: np.ndarray) -> bool:
    flags = array.flags
    return flags.owndata and flags.writeable and flags.c_contiguous and array.nbytes > 0 and not array.dtype.hasobject


def unshared_owner(value: Any, held: int = 0) -> np.ndarray | None:
    """The array owning ``value``'s memory when only the caller (plus ``held`` known references) reaches it.

    Call it with the value in a local variable, as the run loop does; None when the value
    is not a recyclable numpy array or anything else may still see its memory.
    """
    if type(value) is not np.ndarray:
        return None
    value_refs, base_refs = _counts(value)
    if value_refs > _SOLE_VALUE + held:
        return None
    base = value.base
    if base is None:
        return value if _recyclable(value) else None
    if type(base) is not np.ndarray or base_refs > _SOLE_BASE or not _recyclable(base):
        return None
    return base


class PoolPolicy:
    """What a plan's arenas learn from its runs, shared by them: which buffers are worth keeping.

    ``requests`` maps a buffer size to the steps that asked ``_alloc`` for that size in the
    last finished run (in order); ``live_peak`` is the most bytes of live values any run held.
    A pool that stays under ``live_peak - live bytes`` never raises a run's peak above what
    the values alone need, as far as values are concerned: kernels' own temporaries are
    unseen, so a buffer is only held for a request ``window`` steps away at most.
    """

    def __init__(self, steps_per_run: int, window: int = 4) -> None:
        self.requests: dict[int, list[int]] = {}
        self.live_peak = 0
        self.steps_per_run = steps_per_run
        self.window = window


class Arena:
    """The buffers of one run: the pool, in-place donations, the ``_alloc`` callable and the byte counts.

    A plan keeps its arenas between runs (one per concurrent run), so the buffers freed in
    one run serve later steps and the next run of the same shapes. A freed buffer is kept
    only when the previous run asked ``_alloc`` for its size within ``PoolPolicy.window``
    steps after this one (counting on into the next run), and only while the pool fits
    beside the live values within the largest live footprint seen so far; a new value that
    would break that bound evicts pooled buffers. So the pool holds nothing nobody will ask
    for soon, and the live values' peak stays where it was. Buffers a whole run did not take
    are dropped at its end.
    """

    __slots__ = ("reuse", "min_bytes", "donated", "step", "bound", "step_args", "step_inplace", "_policy", "_requests", "_pool",
                 "_carried", "_pool_bytes", "_live",
                 "_live_bytes", "_live_peak", "_weights", "_external", "peak_bytes", "reused_bytes", "inplace_bytes")

    def __init__(self, reuse: bool = True, policy: PoolPolicy | None = None,
                 min_bytes: int = TRACKED_MIN_BYTES) -> None:
        self.reuse = reuse
        self.min_bytes = min_bytes  # smaller values are neither counted nor recycled
        self.donated: dict[int, np.ndarray] = {}  # output index -> the dying input given for it
        self._policy = PoolPolicy(0) if policy is None else policy
        self.step = 0  # the running step's index, set by the plan
        # (step, output index) -> a caller's buffer bound to that graph output (IOBinding), for this run;
        # the plan sets step_args / step_inplace (the step's inputs, its inplace declaration) for those steps
        self.bound: dict[tuple[int, int], np.ndarray] = {}
        self.step_args: Sequence[Any] = ()
        self.step_inplace: Mapping[int, int] = {}
        self._requests: dict[int, list[int]] = {}  # nbytes -> steps that asked for that size so far in this run
        self._pool: dict[int, list[np.ndarray]] = {}  # nbytes -> freed owners, this run
        self._carried: dict[int, list[np.ndarray]] = {}  # nbytes -> owners freed by the previous run
        self._pool_bytes = 0
        self._live: dict[int, list[int]] = {}  # id(owner) -> [live slots holding it, its bytes]
        self._live_bytes = self._live_peak = 0
        self._weights: frozenset[int] = _NO_OWNERS
        self._external: AbstractSet[int] = _NO_OWNERS
        self.peak_bytes = self.reused_bytes = self.inplace_bytes = 0

    def begin(self, weights: frozenset[int], external: AbstractSet[int]) -> None:
        """Start a run; ``weights`` holds the ids of the memory owners of its plan's weights, ``external`` those of
        its feeds and outer values (two sets: the weights' can be large, and a union would copy it every run)."""
        self._weights = weights
        self._external = external
        self._live.clear()
        self._live_bytes = self._live_peak = 0
        self.peak_bytes = self._pool_bytes
        self.reused_bytes = self.inplace_bytes = 0

    def end(self) -> None:
        """Finish a run: what it freed is kept for the next one, what it left unused is dropped."""
        policy = self._policy
        policy.requests = self._requests  # one assignment: concurrent arenas read a whole table
        if self._live_peak > policy.live_peak:
            policy.live_peak = self._live_peak
        self._requests = {}
        carried = self._carried = self._pool
        self._pool = {}
        self._pool_bytes = sum(a.nbytes for owners in carried.values() for a in owners) if carried else 0
        self._live.clear()
        self._weights = self._external = _NO_OWNERS  # (no references kept to a finished run's memory owners)
        self.donated.clear()
        if self.bound:
            self.bound = {}
        self.step_args = ()

    def __call__(self, shape: Sequence[int], dtype: Any, output: int = 0) -> np.ndarray:
        """An uninitialized C-contiguous array for output ``output`` of the running step."""
        shape = tuple(shape)
        dtype = np.dtype(dtype)
        if self.bound:
            buffer = self._bound_buffer(shape, dtype, output)
            if buffer is not None:
                return buffer
        if self.donated:
            donor = self.donated.get(output)
            if donor is not None and donor.shape == shape and donor.dtype == dtype:
                del self.donated[output]
                self.inplace_bytes += donor.nbytes
                return donor
        if self.reuse and not dtype.hasobject:
            nbytes = dtype.itemsize
            for d in shape:
                nbytes *= d
            self._requests.setdefault(nbytes, []).append(self.step)
            owner = self._take(nbytes)
            if owner is not None:
                self.reused_bytes += nbytes
                if owner.shape == shape and owner.dtype == dtype:
                    return owner
                return np.ndarray(shape, dtype, buffer=owner)
        return np.empty(shape, dtype)

    def _bound_buffer(self, shape: tuple[int, ...], dtype: np.dtype, output: int) -> np.ndarray | None:
        """The caller's buffer bound to this output, when the kernel may write there directly.

        Not when it overlaps an input the kernel has not declared it may overwrite for this
        output: a kernel reading that input while writing would see its own results.
        """
        buffer = self.bound.get((self.step, output))
        if buffer is None or buffer.shape != shape or buffer.dtype != dtype:
            return None
        for index, value in enumerate(self.step_args):
            if isinstance(value, np.ndarray) and np.may_share_memory(buffer, value) \
                    and self.step_inplace.get(index) != output:
                return None
        del self.bound[(self.step, output)]
        return buffer

    def _take(self, nbytes: int) -> np.ndarray | None:
        for pool in (self._pool, self._carried):
            owners = pool.get(nbytes)
            if owners:
                self._pool_bytes -= nbytes
                return owners.pop()
        return None

    def _evict(self, room: int) -> None:
        """Drop pooled buffers until the pool holds at most ``room`` bytes."""
        for pool in (self._carried, self._pool):
            for nbytes, owners in pool.items():
                while owners and self._pool_bytes > room:
                    owners.pop()
                    self._pool_bytes -= nbytes

    def offer(self, values: list[Any], donors: tuple[Donor, ...]) -> None:
        """Before a step: hand each donor input to ``_alloc`` when nothing but its slot references it."""
        if not self.reuse:
            return
        for slot, output in donors:
            value = values[slot]
            if type(value) is not np.ndarray or value.nbytes < self.min_bytes:
                continue
            # nothing else reaches its memory: safe to overwrite (a view of a private owner too)
            if unshared_owner(value, held=1) is not None and value.flags.c_contiguous and value.flags.writeable:
                self.donated[output] = value

    def produced(self, value: Any) -> None:
        """Count a value a step just stored."""
        if type(value) is not np.ndarray or value.nbytes < self.min_bytes:
            return
        owner = _owner(value)
        key = id(owner)
        if key in self._external or key in self._weights:
            return
        entry = self._live.get(key)
        if entry is None:
            nbytes = owner.nbytes if type(owner) is np.ndarray else value.nbytes
            self._live[key] = [1, nbytes]
            self._live_bytes += nbytes
            if self._pool_bytes and self._live_bytes + self._pool_bytes > self._policy.live_peak:
                self._evict(max(self._policy.live_peak - self._live_bytes, 0))
            # the byte counts only grow while a step stores its outputs: note their highest here
            live = self._live_bytes
            if live > self._live_peak:
                self._live_peak = live
            if live + self._pool_bytes > self.peak_bytes:
                self.peak_bytes = live + self._pool_bytes
        else:
            entry[0] += 1

    def release(self, values: list[Any], slot: int) -> None:
        """Clear ``values[slot]`` after its last reader; its buffer joins the pool when nothing else reaches it."""
        value = values[slot]
        values[slot] = None
        if type(value) is not np.ndarray or value.nbytes < self.min_bytes:
            return
        owner = _owner(value)
        entry = self._live.get(id(owner))
        if entry is not None:
            entry[0] -= 1
            if entry[0] == 0:
                del self._live[id(owner)]
                self._live_bytes -= entry[1]
        if self.reuse and type(owner) is np.ndarray and owner.nbytes in self._policy.requests:  # sizes _alloc asks for
            del owner
            owner = unshared_owner(value)
            if owner is not None:
                self._pool_if_wanted(owner)

    def _pool_if_wanted(self, owner: np.ndarray) -> None:
        nbytes = owner.nbytes
        policy = self._policy
        held = len(self._pool.get(nbytes, ())) + len(self._carried.get(nbytes, ()))
        steps = policy.requests.get(nbytes)
        if not steps or self._live_bytes + self._pool_bytes + nbytes > policy.live_peak:
            return
        # the request this buffer would serve: the next one of its size after those the held ones serve
        later = bisect.bisect_right(steps, self.step) + held
        if later < len(steps):
            distance = steps[later] - self.step
        elif later - len(steps) < len(steps):  # a request of the next run of the same shapes
            distance = policy.steps_per_run - self.step + steps[later - len(steps)]
        else:
            return
        if distance <= policy.window:
            self._pool.setdefault(nbytes, []).append(owner)
            self._pool_bytes += nbytes


def owner_ids(values: Sequence[Any]) -> set[int]:
    """Ids of the memory owners of the arrays among ``values`` (see :meth:`Arena.begin`)."""
    return {id(_owner(v)) for v in values if type(v) is np.ndarray}


def _owner(array: np.ndarray) -> Any:
    """The object holding an array's memory (the array itself when it owns it)."""
    base = array.base
    return array if base is None else base
