"""Tallies of fuzz records: each runtime's outcomes, and how onyxrt's agree with onnxruntime's."""

from __future__ import annotations

import math
from collections import Counter

SLOW_SECONDS = 10.0
FAST_SECONDS = 1.0
BIG_RSS_MB = 2048


def classify(record: dict) -> str:
    """One row of the outcome table for ``record``."""
    outcome = record["outcome"]
    if outcome in ("timeout", "crash"):
        return outcome
    if outcome in ("ran", "not fed"):
        return outcome
    if not record["typed"]:
        return "untyped exception"
    if record["internal"]:
        return "typed error naming an internal exception"
    return f"typed {outcome}"


def defects(onyxrt: dict[int, dict], onnxruntime: dict[int, dict] | None = None) -> list[dict]:
    """onyxrt's records that break the hardening bar: crashes, hangs, >2 GB, untyped or internal errors."""
    bad = []
    for case, record in sorted(onyxrt.items()):
        peer = (onnxruntime or {}).get(case)
        slow = record["seconds"] > SLOW_SECONDS and (peer is None or peer["seconds"] < FAST_SECONDS)
        kind = classify(record)
        if kind in ("timeout", "crash", "untyped exception", "typed error naming an internal exception") or slow:
            bad.append(record)
        elif record["peak_rss_mb"] > BIG_RSS_MB:
            bad.append(record)
    return bad


def compare_markdown(onyxrt: dict[int, dict], onnxruntime: dict[int, dict], command: str = "") -> str:
    cases = sorted(set(onyxrt) & set(onnxruntime))
    ours, theirs = ({c: records[c] for c in cases} for records in (onyxrt, onnxruntime))
    rows = ["ran", "not fed", "typed load error", "typed run error", "typed error naming an internal exception",
            "untyped exception", "timeout", "crash"]
    counts = [Counter(classify(r) for r in records.values()) for records in (ours, theirs)]
    lines = [f"## Fuzz: {len(cases)} mutated models", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    lines += ["| outcome | onyxrt | onnxruntime |", "|---|---|---|"]
    lines += [f"| {row} | {counts[0][row]} | {counts[1][row]} |" for row in rows]
    for label, test in (
        (f"over {SLOW_SECONDS:g} s", lambda r: r["seconds"] > SLOW_SECONDS),
        (f"peak RSS over {BIG_RSS_MB} MB", lambda r: r["peak_rss_mb"] > BIG_RSS_MB),
    ):
        lines.append(f"| {label} | {sum(map(test, ours.values()))} | {sum(map(test, theirs.values()))} |")

    rejected = [c for c in cases if theirs[c]["outcome"] == "load error"]
    also = [c for c in rejected if ours[c]["outcome"] == "load error"]
    same_class = [c for c in also if ours[c].get("status") == theirs[c].get("status")]
    accepted = [c for c in cases if theirs[c]["outcome"] != "load error"]
    we_reject = [c for c in accepted if ours[c]["outcome"] == "load error"]
    # onnxruntime refusals there is no class to match: its untyped exceptions, and ops it has no
    # kernel or schema for while onyxrt loads the model (onyxrt implements them).
    incomparable = [
        c for c in rejected
        if theirs[c].get("status") is None
        or (_lacks_op(theirs[c]) and ours[c]["outcome"] != "load error")
    ]
    comparable = [c for c in rejected if c not in incomparable]
    also_comparable = [c for c in comparable if ours[c]["outcome"] == "load error"]
    same_comparable = [c for c in also_comparable if ours[c].get("status") == theirs[c].get("status")]
    both_ran = [c for c in cases if ours[c]["outcome"] == theirs[c]["outcome"] == "ran"]
    agree = [c for c in both_ran if _outputs_agree(ours[c], theirs[c])]
    lines += [
        "",
        "| agreement | count |",
        "|---|---|",
        f"| onnxruntime rejects at load | {len(rejected)} |",
        f"| ... onyxrt rejects at load too | {len(also)} ({_percent(len(also), len(rejected))}) |",
        f"| ... with the same status | {len(same_class)} ({_percent(len(same_class), len(rejected))}) |",
        f"| onnxruntime rejects at load, leaving out its untyped errors and ops it lacks that onyxrt runs | "
        f"{len(comparable)} |",
        f"| ... onyxrt rejects at load too | {len(also_comparable)} ({_percent(len(also_comparable), len(comparable))}) |",
        f"| ... with the same status | {len(same_comparable)} ({_percent(len(same_comparable), len(comparable))}) |",
        f"| onnxruntime loads, onyxrt rejects at load | {len(we_reject)} |",
        f"| both ran | {len(both_ran)} |",
        f"| ... outputs agree (dtype, shape, values to 1e-3) | {len(agree)} |",
    ]
    bad = defects(ours, theirs)
    lines += ["", f"onyxrt defects (crash, hang, >2 GB, untyped or internal errors): {len(bad)}"]
    for record in bad[:40]:
        lines.append(f"- case {record['case']} `{record['model']}` ({record['mutation']}): {classify(record)} "
                     f"{record.get('error_type', '')} {record.get('message', '')[:160]!r}")
    differ = [c for c in both_ran if c not in agree]
    if differ:
        lines += ["", f"Both ran, outputs differ: {len(differ)}"]
        lines += [f"- case {c} `{ours[c]['model']}` ({ours[c]['mutation']})" for c in differ[:20]]
    return "\n".join(lines)


def _lacks_op(record: dict) -> bool:
    """onnxruntime refused for want of a kernel or an op schema, not for a fault of the model."""
    message = record.get("message", "")
    return record.get("status") == "NOT_IMPLEMENTED" or "is not a registered function/op" in message


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "n/a"


def _outputs_agree(ours: dict, theirs: dict) -> bool:
    if len(ours["outputs"]) != len(theirs["outputs"]):
        return False
    for a, b in zip(ours["outputs"], theirs["outputs"]):
        if a.get("dtype") != b.get("dtype") or a.get("shape") != b.get("shape"):
            return False
        for x, y in zip(a.get("values", []), b.get("values", [])):
            if (x is None) != (y is None) or (x is not None and not math.isclose(x, y, rel_tol=1e-3, abs_tol=1e-3)):
                return False
    return True
