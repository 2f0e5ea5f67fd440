"""Key/value cache buffers with spare capacity, appended to in place by the kernels that extend a cache.

A decoder exported the common way computes ``present = Concat(past, new, axis=2)``: run step by
step, that copies the whole cache every token. A :class:`CacheBuffer` owns a
``(batch, heads, capacity, head_size)`` array whose first ``length`` rows along the sequence axis
are valid; its :meth:`CacheBuffer.view` (``array[:, :, :length]``) is fed as the past. A kernel
that would concatenate onto a past (Concat, GroupQueryAttention) first asks
:func:`append_in_place`: when the past is exactly the valid view of a registered buffer with room,
the new rows are written right after it and the extended view is the present; anything else
(an ordinary array, a stale view, a full buffer, another dtype) gets ``None`` and the kernel
concatenates as usual. So plain ``session.run`` callers are unaffected.

Safety: only memory a :class:`CacheBuffer` owns is ever written, and only rows at or beyond its
``length``, which no view handed out before covers. ``length`` is a cursor claimed under a lock:
each row is appended once, so a past fed twice (a rerun, two readers of one past) appends once
and the other concatenates. Views stay valid until :meth:`CacheBuffer.reset` or a growth that
moves the buffer (the old array stays intact for views already out).
"""

from __future__ import annotations

import threading
import weakref
from typing import Sequence

import numpy as np

# id(array owned by a CacheBuffer) -> that CacheBuffer; weak, so a dropped buffer unregisters itself
_REGISTRY: "weakref.WeakValueDictionary[int, CacheBuffer]" = weakref.WeakValueDictionary()


def _address(array: np.ndarray) -> int:
    return array.__array_interface__["data"][0]


class CacheBuffer:
    """One cache tensor (a layer's keys or values): ``(batch, heads, capacity, head_size)``, valid up to ``length``.

    ``axis`` is the sequence axis (2, BNSH). Capacity grows by doubling (:meth:`reserve`), so
    appending n tokens one by one copies O(n) rows in all. A decode loop, per cache tensor::

        buffer.reserve(buffer.length + new_tokens)      # appends never grow the buffer themselves
        present = session.run(..., {past_name: buffer.view(), ...})[...]
        if not buffer.holds(present):                   # a kernel concatenated instead (e.g. no room)
            buffer.load(present)
    """

    def __init__(self, shape: Sequence[int], dtype: np.dtype | type, capacity: int, axis: int = 2) -> None:
        shape = tuple(int(d) for d in shape)
        if not 0 <= axis < len(shape):
            raise ValueError(f"CacheBuffer: axis {axis} is not an axis of shape {list(shape)}")
        if capacity < 0 or any(d < 0 for d in shape):
            raise ValueError(f"CacheBuffer: capacity {capacity} and shape {list(shape)} must not be negative")
        self.axis = axis
        self.dtype = np.dtype(dtype)
        self._shape = shape  # the shape with the sequence axis ignored
        self.length = 0
        self._lock = threading.Lock()
        self._lead = (slice(None),) * axis  # index of the axes before the sequence axis
        self.array = self._allocate(capacity)
        self._view: np.ndarray | None = None  # the last valid view handed out (the cheap check in append)
        _REGISTRY[id(self.array)] = self

    @property
    def capacity(self) -> int:
        return self.array.shape[self.axis]

    def _allocate(self, capacity: int) -> np.ndarray:
        shape = list(self._shape)
        shape[self.axis] = capacity
        return np.zeros(shape, self.dtype)

    def _rows(self, start: int, stop: int) -> tuple[slice, ...]:
        return self._lead + (slice(start, stop),)

    def view(self) -> np.ndarray:
        """The valid rows, a view of the buffer (feed it as the past)."""
        self._view = view = self.array[self._rows(0, self.length)]
        return view

    def holds(self, array: np.ndarray) -> bool:
        """Whether ``array`` is this buffer's current valid view (what an in-place append returned)."""
        if array is self._view:
            return array.shape[self.axis] == self.length
        return (type(array) is np.ndarray and array.base is self.array and array.shape == self.view_shape
                and array.strides == self.array.strides and _address(array) == _address(self.array))

    @property
    def view_shape(self) -> tuple[int, ...]:
        shape = list(self._shape)
        shape[self.axis] = self.length
        return tuple(shape)

    def reserve(self, needed: int, limit: int | None = None) -> None:
        """Room for ``needed`` valid rows: a full buffer grows to max(needed, 2 x capacity), at most ``limit``
        (when that still holds ``needed``). The valid rows are copied once; earlier views keep the old array."""
        if needed <= self.capacity:
            return
        capacity = max(needed, 2 * self.capacity)
        if limit is not None and limit >= needed:
            capacity = min(capacity, limit)
        with self._lock:
            grown = self._allocate(capacity)
            grown[self._rows(0, self.length)] = self.array[self._rows(0, self.length)]
            _REGISTRY.pop(id(self.array), None)
            self.array = grown
            self._view = None
            _REGISTRY[id(grown)] = self

    def reset(self) -> None:
        """Forget the valid rows (a new sequence): views handed out before may then see new rows."""
        self.truncate(0)

    def truncate(self, length: int) -> None:
        """Keep only the first ``length`` valid rows (e.g. to rerun a step): views longer than that may then see new rows."""
        if not 0 <= length <= self.length:
            raise ValueError(f"CacheBuffer: cannot truncate {self.length} valid rows to {length}")
        with self._lock:
            self.length = length

    def load(self, present: np.ndarray) -> np.ndarray:
        """Copy ``present`` (a whole cache, e.g. a kernel's concatenation) in as the valid rows; returns the view."""
        present = np.asarray(present)
        expected = list(self._shape)
        expected[self.axis] = present.shape[self.axis] if present.ndim == len(self._shape) else -1
        if list(present.shape) != expected:
            raise ValueError(f"CacheBuffer: a cache of shape {list(present.shape)} does not fit {list(self._shape)} "
                             f"(sequence axis {self.axis})")
        rows = present.shape[self.axis]
        self.reserve(rows)
        with self._lock:
            self.array[self._rows(0, rows)] = present
            self.length = rows
        return self.view()

    def append(self, past: np.ndarray, new: np.ndarray, axis: int) -> np.ndarray | None:
        """``past`` ++ ``new`` written in place when ``past`` is the valid view and the rows fit; else None."""
        array = self.array
        if axis != self.axis or new.dtype != self.dtype or new.ndim != past.ndim:
            return None
        # a view this buffer handed out is checked by its length alone; any other by where it lies
        if past is not self._view and (past.dtype != self.dtype or past.strides != array.strides
                                       or _address(past) != _address(array)):
            return None
        if new.shape[:axis] != past.shape[:axis] or new.shape[axis + 1:] != past.shape[axis + 1:] \
                or past.shape[:axis] != array.shape[:axis] or past.shape[axis + 1:] != array.shape[axis + 1:]:
            return None
        rows = new.shape[axis]
        with self._lock:
            start = self.length
            if past.base is not self.array or past.shape[axis] != start or start + rows > array.shape[axis]:
                return None
            self.length = start + rows  # claimed: no other append can write these rows
        array[self._lead + (slice(start, start + rows),)] = new
        self._view = view = array[self._lead + (slice(0, start + rows),)]
        return view


def owner_of(array: object) -> CacheBuffer | None:
    """The CacheBuffer whose memory ``array`` views, if any (cheap when no buffer exists)."""
    if not _REGISTRY or type(array) is not np.ndarray:
        return None
    base = array.base
    if base is None:
        return None
    owner = _REGISTRY.get(id(base))
    return owner if owner is not None and owner.array is base else None


def append_in_place(past: object, new: np.ndarray, axis: int) -> np.ndarray | None:
    """``Concat([past, new], axis)`` without copying ``past`` -- when ``past`` is the valid view of a
    :class:`CacheBuffer` with room after it; None (concatenate as usual) otherwise."""
    owner = owner_of(past)
    if owner is None or type(new) is not np.ndarray and not isinstance(new, np.ndarray):
        return None
    return owner.append(past, np.asarray(new), axis)
