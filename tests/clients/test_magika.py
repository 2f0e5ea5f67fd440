"""magika (Google's file-type detector, built on onnxruntime) runs unchanged on onyxrt."""

import pytest
from drop_in import run_snippet

pytest.importorskip("magika")

SNIPPET = """
import json
from magika import Magika
magika = Magika()
samples = [
    b"#!/usr/bin/env python\\nimport os\\n\\ndef main():\\n    print(os.getcwd())\\n" * 4,
    b"<!DOCTYPE html><html><head><title>t</title></head><body><p>hello</p></body></html>" * 3,
    b'{"name": "onyxrt", "version": [0, 1], "tags": ["onnx", "runtime"]}' * 5,
    b"int main(void) {\\n  return printf(\\"hi\\\\n\\");\\n}\\n" * 5,
]
results = [magika.identify_bytes(s) for s in samples]
print(json.dumps([[r.output.label, float(r.score)] for r in results]))
"""


def test_magika_identifies_like_onnxruntime():
    ours = run_snippet(SNIPPET, use_onyxrt=True)
    reference = run_snippet(SNIPPET, use_onyxrt=False)
    assert [label for label, _ in ours] == [label for label, _ in reference]
    for (_, got), (_, want) in zip(ours, reference):
        assert got == pytest.approx(want, abs=1e-4)
