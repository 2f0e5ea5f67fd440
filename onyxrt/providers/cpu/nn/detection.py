"""Object-detection kernels: NonMaxSuppression and RoiAlign.

NonMaxSuppression is greedy, as in onnxruntime: per (batch, class), boxes whose
score is strictly above ``score_threshold`` are visited by decreasing score (ties
by increasing box index); a box is kept unless its IoU with an already kept box
is strictly greater than ``iou_threshold``. The Python loop runs once per kept
box, each step suppressing against all remaining candidates at once.

RoiAlign follows onnxruntime's (Caffe2's) sampling: each output bin averages (or
maxes) ``sampling_ratio``² bilinear samples (adaptive ``ceil(roi_size / output_size)``
per axis when 0). In ``avg`` mode bilinear sampling is separable, so a RoI's
output is ``Ay @ X @ Axᵀ`` (two GEMMs) with per-axis weight matrices restricted to
the RoI's window; ``max`` mode takes, like onnxruntime, the largest weighted corner value of
each sample and then the largest over a bin's samples.

MaxRoiPool lives with the pooling kernels in ``pool.py``.
"""

from __future__ import annotations

import math

import numpy as np

from ..kernel_table import op
from ....errors import NodeInputError


def _scalar(value, default, cast):
    if value is None:
        return default
    arr = np.asarray(value)
    if arr.size == 0:
        return default
    return cast(arr.reshape(-1)[0])


# --------------------------------------------------------------------------- NonMaxSuppression


def _box_corners(boxes: np.ndarray, center_point_box: int):
    """(y_min, x_min, y_max, x_max) arrays of ``boxes`` (..., 4)."""
    if center_point_box == 0:
        y1, x1, y2, x2 = (boxes[..., k] for k in range(4))
        return np.minimum(y1, y2), np.minimum(x1, x2), np.maximum(y1, y2), np.maximum(x1, x2)
    if center_point_box == 1:
        xc, yc, w, h = (boxes[..., k] for k in range(4))
        hw = w / 2
        hh = h / 2
        return yc - hh, xc - hw, yc + hh, xc + hw
    raise NodeInputError(f"NonMaxSuppression center_point_box must be 0 or 1, got {center_point_box}")


def _suppresses(ymin, xmin, ymax, xmax, area, a, b, iou_threshold):
    """Boolean matrix (len(a), len(b)): IoU of boxes ``a[i]`` and ``b[j]`` strictly above the threshold.

    Boxes that do not overlap, or have no area, never suppress each other. Only
    pairs overlapping along x get the full IoU computation (they are usually few).
    """
    result = np.zeros((a.size, b.size), dtype=bool)
    iw = np.minimum(xmax[a][:, None], xmax[b]) - np.maximum(xmin[a][:, None], xmin[b])
    ia, ib = np.nonzero(iw > 0)
    if not ia.size:
        return result
    iw = iw[ia, ib]
    pa = a[ia]
    pb = b[ib]
    ih = np.minimum(ymax[pa], ymax[pb]) - np.maximum(ymin[pa], ymin[pb])
    inter = iw * ih
    union = area[pa] + area[pb] - inter
    overlapping = (ih > 0) & (area[pa] > 0) & (area[pb] > 0) & (union > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / np.where(overlapping, union, 1)
    hit = overlapping & (iou > iou_threshold)
    result[ia[hit], ib[hit]] = True
    return result


def _score_order(scores, candidates, max_out):
    """``candidates`` by decreasing score (ties by increasing index), as a lazy list of runs.

    When only a few boxes can be kept, the best ones are sorted first and the
    rest only if the greedy pass needs them.
    """
    first = max(4 * max_out, 64)
    if candidates.size > 2 * first:
        sc = scores[candidates]
        kth = candidates.size - first
        top_mask = sc >= np.partition(sc, kth)[kth]
        for part in (candidates[top_mask], candidates[~top_mask]):
            yield part[np.argsort(-scores[part], kind="stable")]
    else:
        yield candidates[np.argsort(-scores[candidates], kind="stable")]


def _nms_one(ymin, xmin, ymax, xmax, area, runs, max_out, iou_threshold):
    """Greedy NMS over candidate box indices, ``runs`` of them by decreasing score.

    Candidates are taken in chunks: a chunk is first checked against the boxes
    kept so far (one vectorised IoU block), then the survivors are resolved in
    order with their pairwise suppression pairs, each kept box masking later ones.
    """
    keep: list[int] = []
    kept = np.zeros(0, dtype=np.intp)
    for order in runs:
        pos = 0
        n = order.size
        while pos < n and len(keep) < max_out:
            size = min(max(32, max_out - len(keep)), 512, n - pos)
            chunk = order[pos : pos + size]
            pos += size
            if kept.size:
                chunk = chunk[~_suppresses(ymin, xmin, ymax, xmax, area, chunk, kept, iou_threshold).any(axis=1)]
                if not chunk.size:
                    continue
            # pairs (i, j), i < j, where chunk[i] would suppress chunk[j]; usually sparse
            ii, jj = np.nonzero(np.triu(_suppresses(ymin, xmin, ymax, xmax, area, chunk, chunk, iou_threshold), 1))
            bounds = np.searchsorted(ii, np.arange(chunk.size + 1)).tolist()
            jj = jj.tolist()
            alive = [True] * chunk.size
            new = []
            for i in range(chunk.size):
                if not alive[i]:
                    continue
                new.append(i)
                if len(keep) + len(new) >= max_out:
                    break
                for j in jj[bounds[i] : bounds[i + 1]]:
                    alive[j] = False
            chosen = chunk[new]
            keep.extend(chosen.tolist())
            kept = np.concatenate([kept, chosen])
        if len(keep) >= max_out:
            break
    return keep


def non_max_suppression_impl(
    boxes, scores, max_output_boxes_per_class, iou_threshold, score_threshold, center_point_box
) -> np.ndarray:
    boxes = np.asarray(boxes)
    scores = np.asarray(scores)
    if boxes.ndim != 3 or boxes.shape[2] != 4:
        raise NodeInputError(f"NonMaxSuppression boxes must have shape [batches, boxes, 4], got {boxes.shape}")
    if scores.ndim != 3 or scores.shape[0] != boxes.shape[0] or scores.shape[2] != boxes.shape[1]:
        raise NodeInputError(f"NonMaxSuppression scores shape {scores.shape} does not match boxes shape {boxes.shape}")
    max_out = min(_scalar(max_output_boxes_per_class, 0, int), boxes.shape[1])
    iou_thr = _scalar(iou_threshold, 0.0, float)
    score_thr = _scalar(score_threshold, None, float)
    if not 0.0 <= iou_thr <= 1.0:
        raise NodeInputError(f"NonMaxSuppression iou_threshold must be in [0, 1], got {iou_thr}")
    if max_out <= 0 or boxes.shape[1] == 0:
        return np.zeros((0, 3), dtype=np.int64)
    cdt = np.float64 if boxes.dtype == np.float64 else np.float32
    ymin, xmin, ymax, xmax = _box_corners(boxes.astype(cdt, copy=False), int(center_point_box))
    area = (xmax - xmin) * (ymax - ymin)
    iou_thr_c = cdt(iou_thr)
    sdt = np.float64 if scores.dtype == np.float64 else np.float32
    num_batches, num_classes, _ = scores.shape
    selected = []
    for b in range(num_batches):
        yb, xb, Yb, Xb, ab = ymin[b], xmin[b], ymax[b], xmax[b], area[b]
        for c in range(num_classes):
            s = scores[b, c].astype(sdt, copy=False)
            if score_thr is not None:
                candidates = np.flatnonzero(s > sdt(score_thr))
            else:
                candidates = np.arange(s.size)
            if not candidates.size:
                continue
            runs = _score_order(s, candidates, max_out)
            keep = _nms_one(yb, xb, Yb, Xb, ab, runs, max_out, iou_thr_c)
            rows = np.empty((len(keep), 3), dtype=np.int64)
            rows[:, 0] = b
            rows[:, 1] = c
            rows[:, 2] = keep
            selected.append(rows)
    if not selected:
        return np.zeros((0, 3), dtype=np.int64)
    return np.concatenate(selected, axis=0)


@op("NonMaxSuppression", versions=(10, 11))
def non_max_suppression(
    boxes, scores, max_output_boxes_per_class=None, iou_threshold=None, score_threshold=None, *, center_point_box=0
):
    return non_max_suppression_impl(
        boxes, scores, max_output_boxes_per_class, iou_threshold, score_threshold, center_point_box
    )


# --------------------------------------------------------------------------- RoiAlign


def _axis_samples(start, bin_size, pooled: int, grid: int, size: int, dtype):
    """Sample positions of one axis: low/high indices, their weights, and validity, shape (pooled*grid,)."""
    ph, k = np.divmod(np.arange(pooled * grid), grid)
    ph = ph.astype(dtype)
    k = k.astype(dtype)
    pos = (start + ph * bin_size) + (k + dtype(0.5)) * bin_size / dtype(grid)
    valid = (pos >= -1.0) & (pos <= size)
    pos = np.maximum(pos, 0)
    low = pos.astype(np.intp)  # pos >= 0: truncation is floor
    at_end = low >= size - 1
    low = np.where(at_end, size - 1, low)
    high = np.where(at_end, size - 1, low + 1)
    pos = np.where(at_end, low.astype(dtype), pos)
    frac = (pos - low).astype(dtype)
    return low, high, (1 - frac).astype(dtype), frac, valid


def roi_align_impl(
    x, rois, batch_indices, *, half_pixel, mode, output_height, output_width, sampling_ratio, spatial_scale
) -> np.ndarray:
    x = np.asarray(x)
    rois = np.asarray(rois)
    batch_indices = np.asarray(batch_indices).reshape(-1)
    if x.ndim != 4:
        raise NodeInputError(f"RoiAlign input X must be 4-D, got shape {x.shape}")
    if rois.ndim != 2 or rois.shape[1] != 4 or rois.shape[0] != batch_indices.size:
        raise NodeInputError(f"RoiAlign rois shape {rois.shape} / batch_indices shape {batch_indices.shape} are invalid")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    if mode not in ("avg", "max"):
        raise NodeInputError(f"RoiAlign mode must be 'avg' or 'max', got {mode!r}")
    N, C, H, W = x.shape
    PH, PW = int(output_height), int(output_width)
    sampling_ratio = int(sampling_ratio)
    R = rois.shape[0]
    cdt = np.float64 if x.dtype == np.float64 else np.float32
    out = np.zeros((R, C, PH, PW), dtype=cdt)
    if R == 0 or C == 0 or PH * PW == 0:
        return out.astype(x.dtype, copy=False)
    if batch_indices.size and (batch_indices.min() < 0 or batch_indices.max() >= N):
        raise NodeInputError(f"RoiAlign batch_indices must be in [0, {N}), got {batch_indices.tolist()}")
    xc = x.astype(cdt, copy=False)
    offset = cdt(0.5) if half_pixel else cdt(0)
    boxes = rois.astype(cdt, copy=False) * cdt(spatial_scale) - offset
    channels_last = np.ascontiguousarray(xc.transpose(0, 2, 3, 1)).reshape(N, H * W, C) if mode == "max" else None
    for r in range(R):
        b = int(batch_indices[r])
        start_w, start_h, end_w, end_h = boxes[r]
        roi_w = end_w - start_w
        roi_h = end_h - start_h
        if not half_pixel:
            roi_w = max(roi_w, cdt(1))
            roi_h = max(roi_h, cdt(1))
        bin_h = roi_h / cdt(PH)
        bin_w = roi_w / cdt(PW)
        gh = sampling_ratio if sampling_ratio > 0 else int(math.ceil(roi_h / PH))
        gw = sampling_ratio if sampling_ratio > 0 else int(math.ceil(roi_w / PW))
        if gh <= 0 or gw <= 0:
            continue  # no samples: the bin stays 0
        count = cdt(max(gh * gw, 1))
        yl, yh, wyl, wyh, vy = _axis_samples(start_h, bin_h, PH, gh, H, cdt)
        xl, xh, wxl, wxh, vx = _axis_samples(start_w, bin_w, PW, gw, W, cdt)
        img = xc[b]
        if mode == "avg":
            # invalid samples contribute nothing; weights of one axis are summed per output bin
            wyl = np.where(vy, wyl, 0)
            wyh = np.where(vy, wyh, 0)
            wxl = np.where(vx, wxl, 0)
            wxh = np.where(vx, wxh, 0)
            h0, h1 = int(min(yl.min(), yh.min())), int(max(yl.max(), yh.max())) + 1
            w0, w1 = int(min(xl.min(), xh.min())), int(max(xl.max(), xh.max())) + 1
            Ay = np.zeros((PH, h1 - h0), dtype=cdt)
            rows = np.repeat(np.arange(PH), gh)
            np.add.at(Ay, (rows, yl - h0), wyl)
            np.add.at(Ay, (rows, yh - h0), wyh)
            Ax = np.zeros((PW, w1 - w0), dtype=cdt)
            cols = np.repeat(np.arange(PW), gw)
            np.add.at(Ax, (cols, xl - w0), wxl)
            np.add.at(Ax, (cols, xh - w0), wxh)
            window = img[:, h0:h1, w0:w1]
            hw = h1 - h0
            # two plain GEMMs: contract the x axis over (C*h, w), then the y axis over (h, C*PW)
            cols = np.matmul(window.reshape(C * hw, w1 - w0), Ax.T)
            cols = cols.reshape(C, hw, PW).transpose(1, 0, 2).reshape(hw, C * PW)
            pooled = np.matmul(Ay, cols).reshape(PH, C, PW)
            out[r] = pooled.transpose(1, 0, 2) / count
        else:
            valid = (vy[:, None] & vx[None, :]).reshape(-1, 1)
            rows_img = channels_last[b]  # (H*W, C): each gather copies whole channel rows
            best = None
            for yi, wy in ((yl, wyl), (yh, wyh)):
                for xi, wx in ((xl, wxl), (xh, wxh)):
                    v = rows_img.take((yi[:, None] * W + xi[None, :]).reshape(-1), axis=0)
                    v *= np.where(valid, (wy[:, None] * wx[None, :]).reshape(-1, 1), 0)
                    best = v if best is None else np.maximum(best, v, out=best)
            # max over each bin's gh x gw samples, as slice-wise maxima (faster than a 2-axis reduce)
            best = best.reshape(PH, gh, PW, gw, C)
            rows_max = best[:, 0].copy()
            for k in range(1, gh):
                np.maximum(rows_max, best[:, k], out=rows_max)
            bin_max = rows_max[:, :, 0].copy()
            for k in range(1, gw):
                np.maximum(bin_max, rows_max[:, :, k], out=bin_max)
            out[r] = bin_max.transpose(2, 0, 1)
    return out.astype(x.dtype, copy=False)


@op("RoiAlign", versions=(10,))
def roi_align_10(
    x, rois, batch_indices, *, mode="avg", output_height=1, output_width=1, sampling_ratio=0, spatial_scale=1.0
):
    return roi_align_impl(
        x,
        rois,
        batch_indices,
        half_pixel=False,
        mode=mode,
        output_height=output_height,
        output_width=output_width,
        sampling_ratio=sampling_ratio,
        spatial_scale=spatial_scale,
    )


@op("RoiAlign", versions=(16, 22))
def roi_align(
    x,
    rois,
    batch_indices,
    *,
    coordinate_transformation_mode="half_pixel",
    mode="avg",
    output_height=1,
    output_width=1,
    sampling_ratio=0,
    spatial_scale=1.0,
):
    ctm = coordinate_transformation_mode
    ctm = ctm.decode() if isinstance(ctm, bytes) else str(ctm)
    if ctm not in ("half_pixel", "output_half_pixel"):
        raise NodeInputError(
            f"RoiAlign coordinate_transformation_mode must be half_pixel or output_half_pixel, got {ctm!r}"
        )
    return roi_align_impl(
        x,
        rois,
        batch_indices,
        half_pixel=ctm == "half_pixel",
        mode=mode,
        output_height=output_height,
        output_width=output_width,
        sampling_ratio=sampling_ratio,
        spatial_scale=spatial_scale,
    )
