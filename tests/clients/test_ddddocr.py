"""ddddocr (captcha OCR and text detection; quantized CNN+LSTM models inside the wheel) runs unchanged on onyxrt.

Inputs are captcha-like images drawn with Pillow from fixed seeds, so both runtimes see the same bytes.
"""

import pytest
from drop_in import run_snippet

pytest.importorskip("ddddocr")
pytest.importorskip("PIL")

CAPTCHAS = """
import io
import json
import random
from PIL import Image, ImageDraw, ImageFont

def captcha(text: str, seed: int) -> bytes:
    rng = random.Random(seed)
    image = Image.new("RGB", (130, 42), (240, 238, 228))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=26)
    for index, char in enumerate(text):
        ink = rng.randint(0, 90)
        draw.text((8 + index * 28, 5 + rng.randint(-3, 3)), char, fill=(ink, ink, ink + 20), font=font)
    for _ in range(2):
        start = (rng.randint(0, 130), rng.randint(0, 42))
        end = (rng.randint(0, 130), rng.randint(0, 42))
        draw.line([start, end], fill=(150, 150, 150), width=1)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()

TEXTS = ["a7k2", "XY39", "m4pq", "8806", "hb5w"]
"""

OCR_SNIPPET = CAPTCHAS + """
import ddddocr
ocr = ddddocr.DdddOcr(show_ad=False, beta={beta})
results = []
for seed, text in enumerate(TEXTS):
    read = ocr.classification(captcha(text, seed), probability=True)
    step_best = [max(step[0]) for step in read["probabilities"]]
    results.append({{"text": read["text"], "confidence": read["confidence"], "step_best": step_best}})
print(json.dumps(results))
"""

DETECTION_SNIPPET = """
import io
import json
from PIL import Image, ImageDraw, ImageFont
import ddddocr
detector = ddddocr.DdddOcr(show_ad=False, det=True, ocr=False)
image = Image.new("RGB", (320, 160), (250, 250, 245))
draw = ImageDraw.Draw(image)
font = ImageFont.load_default(size=34)
for (x, y), char in zip([(20, 20), (150, 40), (250, 90), (60, 100)], "QAZW"):
    draw.text((x, y), char, fill=(20, 20, 20), font=font)
buffer = io.BytesIO()
image.save(buffer, "PNG")
print(json.dumps(detector.detection(buffer.getvalue())))
"""

# The default model is dynamically quantized (DynamicQuantizeLinear before each ConvInteger and the
# LSTM): onnxruntime's Sigmoid is an approximation one or two ulps off the exact one, and such a
# difference can move a value across a quantization step, which later layers amplify. So its
# probabilities agree to about 1e-2 (the chosen character stays the same); the beta model is float
# and agrees to float rounding. The decoded text must be identical for both.
@pytest.mark.parametrize(
    "beta, tolerance",
    [(False, 5e-2), (True, 1e-5)],
    ids=["default_quantized_model", "beta_float_model"],
)
def test_ddddocr_reads_captchas_like_onnxruntime(beta, tolerance):
    ours = run_snippet(OCR_SNIPPET.format(beta=beta), use_onyxrt=True)
    reference = run_snippet(OCR_SNIPPET.format(beta=beta), use_onyxrt=False)
    assert [r["text"] for r in ours] == [r["text"] for r in reference]
    for got, want in zip(ours, reference):
        assert got["confidence"] == pytest.approx(want["confidence"], abs=tolerance / 5)
        assert got["step_best"] == pytest.approx(want["step_best"], abs=tolerance)


def test_ddddocr_detects_characters_like_onnxruntime():
    ours = run_snippet(DETECTION_SNIPPET, use_onyxrt=True)
    reference = run_snippet(DETECTION_SNIPPET, use_onyxrt=False)
    assert len(reference) >= 3, "the synthetic image should give the detector something to find"
    # boxes are ints truncated from float coordinates: allow one pixel either way
    assert len(ours) == len(reference)
    for got, want in zip(sorted(ours), sorted(reference)):
        assert got == pytest.approx(want, abs=1)
