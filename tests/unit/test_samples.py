"""The bundled digit classifier (onyxrt.samples): a small real model whose stored outputs onyxrt must reproduce."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest

import onyxrt
from onyxrt import samples

SAMPLES = samples.load_samples()
MAX_MODEL_BYTES = 300 * 1024


@pytest.fixture(scope="module")
def session() -> onyxrt.InferenceSession:
    return onyxrt.InferenceSession(str(samples.model_path()), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def ort_session():
    onnxruntime = pytest.importorskip("onnxruntime")
    return onnxruntime.InferenceSession(str(samples.model_path()), providers=["CPUExecutionProvider"])


def test_model_file_is_small_and_valid() -> None:
    path = samples.model_path()
    assert path.name == "digits.onnx"
    assert path.stat().st_size <= MAX_MODEL_BYTES
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", 17)]
    assert proto.graph.node[-1].op_type == "Softmax"


def test_model_metadata_names_dataset_and_accuracy(session) -> None:
    meta = session.get_modelmeta()
    assert meta.producer_name == "onyxrt tools/train_sample_model.py"
    assert "load_digits" in meta.description
    assert meta.graph_name == "digits_cnn"
    props = meta.custom_metadata_map
    assert "load_digits" in props["dataset"]
    assert float(props["test_accuracy"]) >= 0.97
    assert props["class_names"].split(",") == list(samples.CLASS_NAMES)


def test_metadata_matches_onnxruntime(session, ort_session) -> None:
    ours, theirs = session.get_modelmeta(), ort_session.get_modelmeta()
    for field in ("producer_name", "domain", "description", "graph_name", "graph_description", "version", "custom_metadata_map"):
        assert getattr(ours, field) == getattr(theirs, field), field


def test_model_signature(session) -> None:
    (image,) = session.get_inputs()
    (probabilities,) = session.get_outputs()
    assert (image.name, image.type, image.shape) == (samples.INPUT_NAME, "tensor(float)", ["batch", 1, 8, 8])
    assert (probabilities.name, probabilities.type) == (samples.OUTPUT_NAME, "tensor(float)")
    assert probabilities.shape == ["batch", 10]


def test_class_names_are_the_ten_digits() -> None:
    assert samples.CLASS_NAMES == tuple("0123456789")


def test_samples_are_held_out_digit_images() -> None:
    assert 6 <= len(SAMPLES) <= 16
    assert len({s.name for s in SAMPLES}) == len(SAMPLES)
    assert len({s.label for s in SAMPLES}) >= 6
    for sample in SAMPLES:
        (image,) = sample.feeds.values()
        assert list(sample.feeds) == [samples.INPUT_NAME]
        assert image.dtype == np.float32 and image.shape == (1, 1, 8, 8)
        assert 0 <= image.min() and image.max() <= 16 and image.max() > 0
        assert 0 <= sample.label < len(samples.CLASS_NAMES)
        assert sample.expected_probabilities.shape == (10,)
        np.testing.assert_allclose(sample.expected_probabilities.sum(), 1.0, atol=1e-5)


def test_sample_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        SAMPLES[0].label = 3  # type: ignore[misc]


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: s.name)
def test_onyxrt_reproduces_stored_probabilities(session, sample: samples.Sample) -> None:
    (probabilities,) = session.run(None, sample.feeds)
    assert probabilities.shape == (1, 10) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities[0], sample.expected_probabilities, rtol=0, atol=1e-5)
    assert int(probabilities[0].argmax()) == int(sample.expected_probabilities.argmax())


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: s.name)
def test_stored_probabilities_are_onnxruntimes(ort_session, sample: samples.Sample) -> None:
    (probabilities,) = ort_session.run(None, sample.feeds)
    np.testing.assert_allclose(probabilities[0], sample.expected_probabilities, rtol=0, atol=1e-6)


def test_predictions_match_labels_where_the_model_is_right(session) -> None:
    right = [s for s in SAMPLES if int(s.expected_probabilities.argmax()) == s.label]
    # The set is chosen to show mostly correct reads plus the model's first mistake on the test split.
    assert len(right) >= len(SAMPLES) - 2
    for sample in right:
        (probabilities,) = session.run([samples.OUTPUT_NAME], sample.feeds)
        assert int(probabilities[0].argmax()) == sample.label, sample.name


def test_samples_run_as_one_batch(session) -> None:
    batch = np.concatenate([s.feeds[samples.INPUT_NAME] for s in SAMPLES])
    (probabilities,) = session.run(None, {samples.INPUT_NAME: batch})
    expected = np.stack([s.expected_probabilities for s in SAMPLES])
    np.testing.assert_allclose(probabilities, expected, rtol=0, atol=1e-5)


def test_held_out_accuracy_matches_metadata(session) -> None:
    """onyxrt on the whole held-out split scores what the training script recorded."""
    datasets = pytest.importorskip("sklearn.datasets")
    model_selection = pytest.importorskip("sklearn.model_selection")
    digits = datasets.load_digits()
    images = digits.images.astype(np.float32)[:, None, :, :]
    _, test_images, _, test_labels = model_selection.train_test_split(
        images, digits.target, test_size=0.25, stratify=digits.target, random_state=0
    )
    meta = session.get_modelmeta().custom_metadata_map
    assert int(meta["test_images"]) == len(test_labels)
    (probabilities,) = session.run(None, {samples.INPUT_NAME: test_images})
    accuracy = float((probabilities.argmax(axis=1) == test_labels).mean())
    assert accuracy == pytest.approx(float(meta["test_accuracy"]), abs=1e-4)


def test_render_draws_shades_in_a_fixed_grid() -> None:
    drawing = samples.render(SAMPLES[0].feeds[samples.INPUT_NAME])
    lines = drawing.split("\n")
    assert len(lines) == 8 and {len(line) for line in lines} == {16}
    assert set(drawing) <= set(" .:-=+*#%@\n")
    assert drawing.strip()


def test_render_maps_intensity_to_shade() -> None:
    image = np.zeros((8, 8), dtype=np.float32)
    image[0, 0] = 16.0
    lines = samples.render(image).split("\n")
    assert lines[0] == "@@" + " " * 14
    assert all(line == " " * 16 for line in lines[1:])


def test_render_rejects_non_image_shapes() -> None:
    with pytest.raises(ValueError, match="2-D"):
        samples.render(np.zeros((2, 8, 8)))
