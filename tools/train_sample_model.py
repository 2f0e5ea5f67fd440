"""Train the digit classifier that ``onyxrt run`` uses when no model is given.

Command (from the repository root; needs torch, scikit-learn and onnxruntime,
none of which onyxrt itself imports at run time)::

    python tools/train_sample_model.py

It writes

* ``onyxrt/samples/digits.onnx``: a small CNN (about 38k float32 weights,
  roughly 150 KB) over scikit-learn's bundled ``load_digits`` images. Input
  ``image`` float32 ``[N, 1, 8, 8]`` with pixel intensities 0..16 as
  ``load_digits`` gives them (the graph rescales to 0..1 itself); output
  ``probabilities`` float32 ``[N, 10]`` (a Softmax is the last node).
* ``onyxrt/samples/digits_samples.npz``: a handful of held-out test images, their
  true labels and the probabilities onnxruntime computes for each.

Training is deterministic (fixed seeds, one thread, deterministic kernels), so a
rerun reproduces the same weights on the same torch build. The last run reached
a held-out accuracy of 99.33% (447 of 450 test images).

The ONNX graph is written by hand with ``onnx.helper`` from the trained weights
rather than with ``torch.onnx.export``: the graph is then exactly the eleven nodes of
``to_onnx``, with stable names, and no exporter dependency is needed.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

SEED = 0
TEST_FRACTION = 0.25
EPOCHS = 60
BATCH_SIZE = 32
LEARNING_RATE = 2e-3
WEIGHT_DECAY = 1e-4
PIXEL_SCALE = 16.0  # load_digits intensities run 0..16
SAMPLE_COUNT = 8
OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "onyxrt" / "samples"


class DigitsCNN(nn.Module):
    """conv3x3(16)-relu-conv3x3(32)-relu-maxpool2-fc(64)-relu-fc(10) over 8x8 images scaled to 0..1."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for images with intensities 0..16 (the softmax lives in the loss and in the ONNX graph)."""
        x = images * (1.0 / PIXEL_SCALE)
        x = torch.relu(self.conv1(x))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def _load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    digits = load_digits()
    images = digits.images.astype(np.float32)[:, None, :, :]  # [N, 1, 8, 8]
    labels = digits.target.astype(np.int64)
    return train_test_split(images, labels, test_size=TEST_FRACTION, stratify=labels, random_state=SEED)


def _shift_augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to one pixel in each direction (zero fill): handwriting is rarely centred."""
    shifted = torch.zeros_like(batch)
    offsets = torch.randint(-1, 2, (batch.shape[0], 2), generator=generator)
    for i, (dy, dx) in enumerate(offsets.tolist()):
        src = batch[i, :, max(0, -dy) : 8 - max(0, dy), max(0, -dx) : 8 - max(0, dx)]
        shifted[i, :, max(0, dy) : 8 - max(0, -dy), max(0, dx) : 8 - max(0, -dx)] = src
    return shifted


def train(train_images: np.ndarray, train_labels: np.ndarray) -> DigitsCNN:
    """Adam with cosine decay and one-pixel shift augmentation; returns the model in eval mode."""
    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=EPOCHS)
    loss_fn = nn.CrossEntropyLoss()
    images = torch.from_numpy(train_images)
    labels = torch.from_numpy(train_labels)
    generator = torch.Generator().manual_seed(SEED)
    for epoch in range(EPOCHS):
        model.train()
        order = torch.randperm(len(images), generator=generator)
        total = 0.0
        for start in range(0, len(order), BATCH_SIZE):
            index = order[start : start + BATCH_SIZE]
            optimizer.zero_grad()
            loss = loss_fn(model(_shift_augment(images[index], generator)), labels[index])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(index)
        scheduler.step()
        if epoch % 10 == 9 or epoch == EPOCHS - 1:
            print(f"epoch {epoch + 1:3d}  train loss {total / len(images):.4f}")
    return model.eval()


def _initializer(name: str, value: torch.Tensor | np.ndarray) -> TensorProto:
    array = value.detach().numpy() if isinstance(value, torch.Tensor) else value
    return numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name)


def to_onnx(model: DigitsCNN, test_accuracy: float, test_count: int) -> onnx.ModelProto:
    """The trained network as an opset-17 graph with a symbolic batch and a Softmax at the end."""
    weights = [
        _initializer("pixel_scale", np.array(1.0 / PIXEL_SCALE, dtype=np.float32)),
        _initializer("conv1.weight", model.conv1.weight),
        _initializer("conv1.bias", model.conv1.bias),
        _initializer("conv2.weight", model.conv2.weight),
        _initializer("conv2.bias", model.conv2.bias),
        # Gemm with transB=1 takes torch's [out, in] Linear weights as they are.
        _initializer("fc1.weight", model.fc1.weight),
        _initializer("fc1.bias", model.fc1.bias),
        _initializer("fc2.weight", model.fc2.weight),
        _initializer("fc2.bias", model.fc2.bias),
    ]
    conv = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("Mul", [INPUT_NAME, "pixel_scale"], ["scaled"], name="scale"),
        helper.make_node("Conv", ["scaled", "conv1.weight", "conv1.bias"], ["conv1"], name="conv1", **conv),
        helper.make_node("Relu", ["conv1"], ["relu1"], name="relu1"),
        helper.make_node("Conv", ["relu1", "conv2.weight", "conv2.bias"], ["conv2"], name="conv2", **conv),
        helper.make_node("Relu", ["conv2"], ["relu2"], name="relu2"),
        helper.make_node("MaxPool", ["relu2"], ["pooled"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc1.weight", "fc1.bias"], ["fc1"], name="fc1", transB=1),
        helper.make_node("Relu", ["fc1"], ["relu3"], name="relu3"),
        helper.make_node("Gemm", ["relu3", "fc2.weight", "fc2.bias"], ["logits"], name="fc2", transB=1),
        helper.make_node("Softmax", ["logits"], [OUTPUT_NAME], name="softmax", axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "digits_cnn",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", 10])],
        initializer=weights,
        doc_string="Small CNN classifying 8x8 handwritten digits into the classes 0..9.",
    )
    proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="onyxrt tools/train_sample_model.py",
        producer_version=f"torch {torch.__version__.split('+')[0]}",
        model_version=1,
        doc_string=(
            "Handwritten digit classifier trained on scikit-learn's load_digits (8x8 images, "
            "intensities 0..16). Input 'image' float32 [N, 1, 8, 8]; output 'probabilities' "
            "float32 [N, 10] over the digits 0..9."
        ),
    )
    proto.ir_version = 8  # opset 17's IR version; keeps the file loadable by older runtimes
    helper.set_model_props(
        proto,
        {
            "dataset": "scikit-learn load_digits (UCI optical recognition of handwritten digits, 1797 8x8 images)",
            "split": f"stratified train_test_split test_size={TEST_FRACTION} random_state={SEED}",
            "test_accuracy": f"{test_accuracy:.4f}",
            "test_images": str(test_count),
            "input_range": "0..16 (load_digits intensities)",
            "class_names": ",".join(str(d) for d in range(10)),
        },
    )
    onnx.checker.check_model(proto, full_check=True)
    return proto


def choose_samples(labels: np.ndarray, probabilities: np.ndarray, count: int) -> list[int]:
    """Test-set indices to ship: the first misread image (if any), the least confident correct one,
    then the first correct image of each digit not shown yet."""
    predictions = probabilities.argmax(axis=1)
    wrong = [int(i) for i in np.flatnonzero(predictions != labels)][:1]
    correct = np.flatnonzero(predictions == labels)
    unsure = int(correct[np.argmin(probabilities[correct].max(axis=1))])
    chosen = wrong + [unsure]
    shown = {int(labels[i]) for i in chosen}
    for index in correct:
        if len(chosen) == count:
            break
        if int(labels[index]) not in shown:
            chosen.append(int(index))
            shown.add(int(labels[index]))
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=SAMPLES_DIR, help="folder for digits.onnx and digits_samples.npz")
    args = parser.parse_args()
    _seed_everything(SEED)

    train_images, test_images, train_labels, test_labels = _load_split()
    model = train(train_images, train_labels)
    with torch.no_grad():
        torch_probabilities = torch.softmax(model(torch.from_numpy(test_images)), dim=1).numpy()

    # Accuracy, sample outputs and the cross-check all come from onnxruntime running the exported file.
    proto = to_onnx(model, test_accuracy=0.0, test_count=len(test_labels))
    session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    probabilities = session.run([OUTPUT_NAME], {INPUT_NAME: test_images})[0]
    np.testing.assert_allclose(probabilities, torch_probabilities, atol=1e-5)
    correct = int((probabilities.argmax(axis=1) == test_labels).sum())
    accuracy = correct / len(test_labels)
    print(f"held-out accuracy {accuracy:.2%} ({correct} of {len(test_labels)})")

    proto = to_onnx(model, test_accuracy=accuracy, test_count=len(test_labels))
    args.out.mkdir(parents=True, exist_ok=True)
    model_path = args.out / "digits.onnx"
    onnx.save_model(proto, model_path)
    print(f"wrote {model_path} ({model_path.stat().st_size} bytes)")

    chosen = choose_samples(test_labels, probabilities, SAMPLE_COUNT)
    images = test_images[chosen]
    session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    # One run per image, as the samples are fed one at a time.
    expected = np.concatenate([session.run([OUTPUT_NAME], {INPUT_NAME: image[None]})[0] for image in images])
    names = np.array([f"test{index:03d}-digit{test_labels[index]}" for index in chosen])
    samples_path = args.out / "digits_samples.npz"
    np.savez_compressed(
        samples_path,
        names=names,
        images=images,
        labels=test_labels[chosen],
        probabilities=expected,
    )
    print(f"wrote {samples_path} ({samples_path.stat().st_size} bytes)")
    for name, label, row in zip(names, test_labels[chosen], expected):
        verdict = "ok" if row.argmax() == label else "WRONG"
        print(f"  {name}: label {label} predicted {row.argmax()} p={row.max():.3f} {verdict}")


if __name__ == "__main__":
    main()
