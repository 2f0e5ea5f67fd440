"""A seeded slice of the fuzz run (tools/fuzz): no crash, hang, blow-up or untyped error on mutated models.

The full run (5000+ models, side by side with onnxruntime) is on demand; see
benchmarks/fuzz.md for its command and last summary.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tools.fuzz.report import classify, defects

REPO = Path(__file__).resolve().parents[2]
SEED, COUNT = 20261203, 300


def test_seeded_fuzz_slice_has_no_defects(tmp_path):
    out = tmp_path / "onyxrt.jsonl"
    command = [sys.executable, "-m", "tools.fuzz", "run", "--runtime", "onyxrt", "--seed", str(SEED),
               "--count", str(COUNT), "--seconds", "20", "--out", str(out)]
    subprocess.run(command, cwd=REPO, check=True, timeout=600)
    records = {record["case"]: record for record in map(json.loads, out.read_text().splitlines())}
    assert len(records) == COUNT
    bad = defects(records)
    assert not bad, "\n".join(
        f"case {r['case']} {r['model']} ({r['mutation']}): {classify(r)} {r.get('message', r.get('signal', ''))}"
        for r in bad
    )
    # The slice exercises both stages: some models run, some are refused at load.
    outcomes = {classify(r) for r in records.values()}
    assert {"ran", "typed load error"} <= outcomes
