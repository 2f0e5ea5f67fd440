"""``onyxrt run MODEL`` with no other flag on every model file of onnx's backend-test data.

The inputs are made up by ``onyxrt run`` itself (not the stored test data), so this checks
that the made-up inputs are valid for real and operator-level models: ids inside their
tables, shape operands that fit, sequences where a sequence is declared.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import onnx
import pytest
from onnx.backend.test.case.node import collect_testcases

from onyxrt.cli import main

DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"
CATEGORIES = ("light", "pytorch-converted", "pytorch-operator", "simple", "node")
# Node models whose made-up inputs are still invalid: the valid values depend on attributes
# in ways onyxrt.feeds does not model (Col2Im's strides and pads, a Loop body's shapes, an
# expanded AffineGrid's index tensors sized by the size operand).
NOT_SYNTHESIZABLE = {
    "test_col2im_strides": "image_shape must match the block count under strides",
    "test_col2im_pads": "image_shape must match the block count under pads",
    "test_loop11": "the loop body needs trip count and inputs that keep its scan shapes fixed",
    "test_affine_grid_2d_expanded": "size sizes index tensors of the expanded body",
    "test_affine_grid_2d_align_corners_expanded": "size sizes index tensors of the expanded body",
}
# Node test cases (built in memory by onnx) whose inputs are operands, not data: axes, Slice
# bounds, scales, K, ratios, thresholds, class ids, split lengths, indices into computed tensors.
OPERAND_CASES = (
    "test_slice", "test_resize_upsample_scales_nearest", "test_top_k", "test_training_dropout_default",
    "test_sce_mean_expanded", "test_squeeze", "test_onehot_without_axis", "test_reversesequence_time",
    "test_roialign_aligned_false", "test_col2im", "test_nllloss_NCd1_ii_expanded", "test_tensorscatter", "test_dft",
    "test_reduce_sum_do_not_keepdims_example", "test_unsqueeze_axis_0", "test_scatter_elements_with_axis",
    "test_scatternd", "test_ai_onnx_ml_array_feature_extractor", "test_nonmaxsuppression_suppress_by_IOU",
    "test_cumsum_1d", "test_constant_pad_axes", "test_affine_grid_2d", "test_expand_dim_changed",
    "test_reshape_reordered_all_dims", "test_split_variable_parts_1d_opset18", "test_gather_elements_0",
)


def _models() -> list[Path]:
    found = []
    for category in CATEGORIES:
        folder = DATA / category
        if folder.is_dir():
            found += sorted(folder.glob("*.onnx")) + sorted(folder.glob("*/model.onnx"))
    return found


MODELS = _models()


def test_the_backend_test_data_is_there():
    assert len(MODELS) > 100, f"expected onnx's backend-test models under {DATA}"


def _marks(path: Path) -> list:
    reason = NOT_SYNTHESIZABLE.get(path.parent.name if path.name == "model.onnx" else path.stem)
    return [pytest.mark.xfail(reason=reason, strict=True)] if reason else []


@pytest.mark.parametrize("path", [pytest.param(p, marks=_marks(p), id=str(p.relative_to(DATA).with_suffix(""))) for p in MODELS])
def test_onyxrt_run_with_no_flags(path, capsys):
    assert main(["run", str(path)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    declared = [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]
    for name in declared:
        assert f"output {name}: " in out
    assert "latency: p50" in out


@functools.lru_cache(maxsize=1)
def _node_cases() -> dict[str, onnx.ModelProto]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {case.name: case.model for case in collect_testcases(None) if case.name in OPERAND_CASES}


@pytest.mark.parametrize("name", OPERAND_CASES)
def test_onyxrt_run_makes_valid_operands(name, tmp_path, capsys):
    path = tmp_path / f"{name}.onnx"
    onnx.save(_node_cases()[name], path)
    assert main(["run", str(path)]) == 0, capsys.readouterr().err
    assert "latency: p50" in capsys.readouterr().out
