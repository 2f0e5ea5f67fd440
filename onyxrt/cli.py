"""The ``onyxrt`` command line: ``run [MODEL]``, ``info MODEL``, ``optimize IN OUT``, ``bench MODEL``, ``generate MODEL``, ``quantize MODEL OUT``, ``convert MODEL OUT`` and ``prune MODEL OUT``."""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx

from . import benchmark
from . import feeds as feeds_module
from .errors import OnyxRuntimeError
from .framework.partitioner import FUSED_GROUP, PROVIDER_KEY
from .graph.builder import subgraphs
from .graph.model_loader import load_model, read_model_proto
from .graph.types import np_dtype, tensor_shape, type_string
from .providers import get_available_providers
from .session.inference_session import InferenceSession
from .session.placement import optimize_and_partition
from .session.providers import create_providers, normalize_providers
from .session.session_options import GraphOptimizationLevel, SessionOptions
from .version import __version__

DEFAULT_RTOL, DEFAULT_ATOL = 1e-3, 1e-4
SAMPLE_TOLERANCE = 1e-4  # the bundled samples' probabilities must match onnxruntime's this closely
WORST_ROWS = 10


class UsageError(Exception):
    """A bad command-line argument: reported as one ``onyxrt: error: ...`` line, exit code 2."""


class RunFailure(Exception):
    """A run failed (onyxrt on made-up inputs, or onnxruntime as the reference): one error line, exit code 1."""


class _Parser(argparse.ArgumentParser):
    """argparse, but its errors are one line in onyxrt's format (exit code 2 as usual)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"onyxrt: error: {message} (see '{self.prog} --help')\n")


def _count(minimum: int):
    """An argparse type: an integer of at least ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _dim_pair(text: str) -> tuple[str, int]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"'{text}' must look like NAME=INTEGER")
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}': '{value}' is not an integer") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"'{text}': a dimension cannot be negative")
    return name, number


def _input_pair(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"'{text}' must look like NAME=FILE.npy")
    return name, path


def _summary(value: Any) -> str:
    if isinstance(value, list):
        return f"sequence of {len(value)}" + (f" [{_summary(value[0])}, ...]" if value else "")
    if value is None:
        return "None (empty optional)"
    if not isinstance(value, np.ndarray):
        return f"{type(value).__name__} of {len(value)}" if hasattr(value, "__len__") else repr(value)
    head = f"shape={list(value.shape)} dtype={value.dtype}"
    if value.size and value.dtype.kind in "fiub":
        data = value.astype(np.float64)
        return f"{head} min={data.min():.6g} max={data.max():.6g} mean={data.mean():.6g}"
    return head


def _resolve_model(argument: str) -> Path:
    path = Path(argument)
    if path.is_dir() and (path / "model.onnx").is_file():  # onnx's test-case layout: DIR/model.onnx
        path = path / "model.onnx"
    if not path.is_file():
        raise UsageError(f"model '{argument}': no such file")
    return path


def _load_graph(path: Path) -> onnx.ModelProto:
    """The model's graph without external weights (enough to make inputs)."""
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several kinds for a file that is no model
        raise UsageError(f"model '{path}' is not a readable ONNX model: {type(exc).__name__}: {_first_line(exc)}") from None


def _load_input(name: str, file: str) -> np.ndarray:
    path = Path(file)
    if not path.is_file():
        raise UsageError(f"--input {name}={file}: no such file")
    try:
        if path.suffix == ".pb":
            return onnx.numpy_helper.to_array(onnx.load_tensor(str(path)))
        value = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - numpy raises several kinds for a file that is no array
        raise UsageError(f"--input {name}={file}: cannot read it as a .npy array "
                         f"({type(exc).__name__}: {_first_line(exc)})") from None
    if not isinstance(value, np.ndarray):  # an .npz archive
        value.close()
        raise UsageError(f"--input {name}={file}: an archive of several arrays; give one array as a .npy file")
    return value


def _declared_dims(arg: onnx.ValueInfoProto) -> list:
    if not arg.type.HasField("tensor_type") or not arg.type.tensor_type.HasField("shape"):
        return []
    return [d.dim_param if d.HasField("dim_param") else d.dim_value for d in arg.type.tensor_type.shape.dim]


def _model_feeds(model: onnx.ModelProto, args: argparse.Namespace, given: dict[str, np.ndarray]) -> dict[str, Any]:
    """The user's --input values, then made-up values for the rest of the inputs (in the model's order)."""
    declared = feeds_module.graph_inputs(model)
    names = [arg.name for arg in declared]
    unknown = [name for name in given if name not in names]
    if unknown:
        raise UsageError(f"--input {unknown[0]}: the model has no input of that name (its inputs: {', '.join(names) or 'none'})")
    explicit = dict(args.dim)
    known = feeds_module.symbolic_dims(model)
    misspelled = [name for name in explicit if name not in known]
    if misspelled:
        raise UsageError(f"--dim {misspelled[0]}: the model has no symbolic dimension of that name "
                         f"(its symbolic dimensions: {', '.join(known) or 'none'})")
    dims = dict(explicit)
    for arg in declared:  # dims the given arrays pin down hold for the made-up inputs too
        if arg.name in given and isinstance(given[arg.name], np.ndarray):
            for dim, actual in zip(_declared_dims(arg), given[arg.name].shape):
                if isinstance(dim, str) and dim and dim not in explicit:
                    dims.setdefault(dim, actual)
    shapes = feeds_module.Shapes(dims, args.batch, args.seq, args.past)
    try:
        made = feeds_module.make_feeds(model, shapes, args.seed, skip=set(given))
    except feeds_module.FeedSynthesisError as exc:
        raise UsageError(f"{exc}; pass it with --input NAME=FILE.npy") from None
    return {name: given[name] if name in given else made[name] for name in names}


def _made_up_dims(model: onnx.ModelProto, args: argparse.Namespace, given: dict[str, Any]) -> str:
    """The symbolic dims the made-up inputs got by default, for a hint when the run fails; '' when none."""
    shapes = feeds_module.Shapes(dict(args.dim), args.batch, args.seq, args.past)
    named: dict[str, int] = {}
    unnamed: list[str] = []
    for arg in feeds_module.graph_inputs(model):
        if arg.name in given:
            continue
        dims = arg.type.tensor_type.shape.dim if arg.type.HasField("tensor_type") else []
        for position, dim in enumerate(dims):
            if dim.HasField("dim_param") and dim.dim_param and dim.dim_param not in shapes.dims:
                named.setdefault(dim.dim_param, shapes.value(dim.dim_param, position))
            elif not dim.HasField("dim_value") and not dim.dim_param and arg.name not in unnamed:
                unnamed.append(arg.name)
    parts = []
    if named:
        parts.append("the made-up inputs had " + ", ".join(f"{name}={value}" for name, value in named.items())
                     + "; set them with --dim NAME=VALUE or --batch/--seq/--past")
    if unnamed:
        parts.append(f"inputs with unnamed dims ({', '.join(unnamed)}) can be given with --input")
    return "; ".join(parts)


def _session(path_or_bytes: str | bytes, level: int) -> InferenceSession:
    options = SessionOptions()
    options.graph_optimization_level = GraphOptimizationLevel(level)
    return InferenceSession(path_or_bytes, options, providers=["CPUExecutionProvider"])


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise UsageError("--compare onnxruntime needs the onnxruntime package, which is not installed "
                         "(pip install onnxruntime)") from None
    return onnxruntime


def _reference_session(onnxruntime, path_or_bytes: str | bytes, level: int):
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel(level)
    options.log_severity_level = 3  # onnxruntime's warnings (unused initializers ...) are not this report's business
    try:
        return onnxruntime.InferenceSession(path_or_bytes, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own exception classes
        raise RunFailure(f"onnxruntime cannot load the model: {_first_line(exc)}") from None


def _reference_run(session, feeds: dict[str, Any]) -> list:
    try:
        return session.run(None, feeds)
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own exception classes
        raise RunFailure(f"onnxruntime cannot run the model: {_first_line(exc)}") from None


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _timed_runs(session: InferenceSession, feeds: dict[str, Any], warmup: int, repeat: int) -> tuple[list, list[float], list[float]]:
    """Outputs of the last run, the warm-up runs' times and the timed runs' times (ms)."""
    warm, timed, outputs = [], [], None
    for index in range(warmup + repeat):
        start = time.perf_counter()
        outputs = session.run(None, feeds)
        (warm if index < warmup else timed).append((time.perf_counter() - start) * 1000)
    return outputs, warm, timed


def _latency_line(warm: list[float], timed: list[float]) -> str:
    data = np.asarray(timed)
    line = (f"latency: p50 {np.percentile(data, 50):.3f} ms, p90 {np.percentile(data, 90):.3f} ms, "
            f"min {data.min():.3f} ms over {len(timed)} run(s)")
    if warm:
        line += f"; first run {warm[0]:.3f} ms" + (f" and {len(warm) - 1} more warm-up run(s)" if len(warm) > 1 else "") + " not counted"
    return line


# --- comparison with onnxruntime -------------------------------------------------------------


class _Difference:
    """How one value differs from onnxruntime's: max abs/rel error and whether it is within tolerance."""

    def __init__(self, name: str, got: Any, want: Any, rtol: float, atol: float) -> None:
        self.name = name
        self.max_abs = self.max_rel = self.excess = 0.0
        self.note = ""
        self.ok = self._measure(got, want, rtol, atol)

    def _measure(self, got: Any, want: Any, rtol: float, atol: float) -> bool:
        if isinstance(want, list) or isinstance(got, list):
            if not (isinstance(want, list) and isinstance(got, list)) or len(got) != len(want):
                self.note = f"sequence lengths {_length(got)} vs {_length(want)}"
                return False
            parts = [_Difference(self.name, g, w, rtol, atol) for g, w in zip(got, want)]
            self.max_abs = max((p.max_abs for p in parts), default=0.0)
            self.max_rel = max((p.max_rel for p in parts), default=0.0)
            self.excess = max((p.excess for p in parts), default=0.0)
            self.note = next((p.note for p in parts if p.note), "")
            return all(p.ok for p in parts)
        if want is None or got is None or isinstance(want, dict) or isinstance(got, dict):
            if got != want:
                self.note = "values differ"
            return got == want
        got, want = np.asarray(got), np.asarray(want)
        if got.shape != want.shape:
            self.note = f"shape {list(got.shape)} vs {list(want.shape)}"
            return False
        if got.dtype != want.dtype:
            self.note = f"dtype {got.dtype} vs {want.dtype}"
            return False
        if got.dtype.kind not in "fiub":
            equal = bool(np.array_equal(got, want))
            self.note = "" if equal else "values differ"
            return equal
        g, w = got.astype(np.float64), want.astype(np.float64)
        same = (g == w) | (np.isnan(g) & np.isnan(w))  # equal infinities and NaN in the same places agree
        with np.errstate(invalid="ignore"):
            error = np.where(same, 0.0, np.abs(g - w))
        error = np.where(np.isnan(error), np.inf, error)
        if not error.size:
            return True
        self.max_abs = float(error.max())
        self.max_rel = float((error / np.maximum(np.abs(w), np.finfo(np.float64).tiny)).max()) if self.max_abs else 0.0
        allowed = atol + rtol * np.abs(np.nan_to_num(w))
        self.excess = float((error / np.maximum(allowed, np.finfo(np.float64).tiny)).max())
        return bool(np.all(error <= allowed))


def _length(value: Any) -> str:
    return str(len(value)) if isinstance(value, list) else "not a sequence"


def _print_differences(differences: list[_Difference]) -> None:
    width = max([len(d.name) for d in differences] + [6])
    print(f"  {'output':<{width}}  {'max abs':>10}  {'max rel':>10}  result")
    for d in differences:
        print(f"  {d.name:<{width}}  {d.max_abs:10.3g}  {d.max_rel:10.3g}  {'PASS' if d.ok else 'FAIL'}"
              + (f"  ({d.note})" if d.note else ""))


def _output_differences(reference, output_names: list[str], outputs: list, feeds: dict[str, Any],
                        args: argparse.Namespace) -> list[_Difference]:
    """onnxruntime's outputs for the same feeds against onyxrt's ``outputs``."""
    want = _reference_run(reference, feeds)
    return [_Difference(name, got, expected, args.rtol, args.atol) for name, got, expected in zip(output_names, outputs, want)]


def _compare_outputs(reference, output_names: list[str], outputs: list, feeds: dict[str, Any], args: argparse.Namespace) -> bool:
    """onnxruntime's outputs for the same feeds against onyxrt's; prints a table, True when all pass."""
    differences = _output_differences(reference, output_names, outputs, feeds, args)
    failed = [d for d in differences if not d.ok]
    _print_differences(differences)
    print(f"  {len(differences) - len(failed)} of {len(differences)} output(s) PASS" + (f", {len(failed)} FAIL" if failed else ""))
    return not failed


def _layerwise(model_path: Path, feeds: dict[str, Any], onnxruntime, args: argparse.Namespace) -> bool:
    """Every node output made a graph output in both runtimes, optimizers off; the first diverging node and the worst ones."""
    model = onnx.load(str(model_path))
    declared = {o.name for o in model.graph.output} | {i.name for i in model.graph.input}
    producers: dict[str, onnx.NodeProto] = {}
    for node in model.graph.node:
        for name in node.output:
            if name and name not in declared and name not in producers:
                producers[name] = node
                model.graph.output.append(onnx.ValueInfoProto(name=name))
    try:
        serialized = model.SerializeToString()
    except ValueError:
        raise UsageError("--layerwise: the model is too large (over 2 GiB) to copy with every value as an output") from None
    ours = _session(serialized, 0)
    theirs = _reference_session(onnxruntime, serialized, 0)
    names = [o.name for o in ours.get_outputs()]
    got = dict(zip(names, ours.run(None, feeds)))
    want = dict(zip([o.name for o in theirs.get_outputs()], _reference_run(theirs, feeds)))
    rows = []
    for name, node in producers.items():
        if name in got and name in want:
            rows.append((node, _Difference(name, got[name], want[name], args.rtol, args.atol)))
    failed = [(node, d) for node, d in rows if not d.ok]
    print(f"layerwise (optimizations off in both, {len(rows)} intermediate values compared):")
    if not failed:
        print("  every intermediate value within tolerance")
        return True
    node, first = failed[0]
    print(f"  first diverging node: {node.op_type} '{node.name or '(unnamed)'}' output '{first.name}': "
          f"max abs {first.max_abs:.3g}, max rel {first.max_rel:.3g}" + (f" ({first.note})" if first.note else ""))
    worst = sorted(failed, key=lambda row: (not row[1].note, -row[1].excess))[:WORST_ROWS]
    width = max(len(d.name) for _, d in worst)
    node_width = max([len(node.name) for node, _ in worst] + [4])
    print(f"  {len(failed)} of {len(rows)} values FAIL; the worst (x allowed: error / (atol + rtol * |onnxruntime's value|)):")
    print(f"  {'op':<20}  {'node':<{node_width}}  {'output':<{width}}  {'max abs':>10}  {'max rel':>10}  {'x allowed':>10}")
    for node, d in worst:
        print(f"  {node.op_type:<20}  {node.name:<{node_width}}  {d.name:<{width}}  {d.max_abs:10.3g}  {d.max_rel:10.3g}  "
              + (f"{d.note}" if d.note else f"{d.excess:10.3g}"))
    return False


# --- saving ----------------------------------------------------------------------------------


def _file_stem(name: str, taken: set[str]) -> str:
    """A file name for a value name: characters other than letters, digits, '.', '-' and '_' become '_'."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", name).strip(".") or "value"
    candidate, number = stem, 1
    while candidate.lower() in taken:
        number += 1
        candidate = f"{stem}_{number}"
    taken.add(candidate.lower())
    return candidate


def _save_values(folder: Path, values: dict[str, Any]) -> list[Path]:
    """Each value to ``folder``: tensors as .npy, sequences as .npz (item_0 ...), other values as .json."""
    folder.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    written = []
    for name, value in values.items():
        stem = _file_stem(name, taken)
        if isinstance(value, np.ndarray):
            path = folder / f"{stem}.npy"
            np.save(path, value.astype(str) if value.dtype == object else value, allow_pickle=False)
        elif isinstance(value, list) and all(isinstance(item, np.ndarray) for item in value):
            path = folder / f"{stem}.npz"
            np.savez(path, **{f"item_{i}": item.astype(str) if item.dtype == object else item for i, item in enumerate(value)})
        else:
            path = folder / f"{stem}.json"
            path.write_text(json.dumps(_jsonable(value), indent=1))
        written.append(path)
    return written


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return [[_jsonable(k), _jsonable(v)] for k, v in value.items()]
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _prepare_output_folder(argument: str | None) -> Path | None:
    if argument is None:
        return None
    folder = Path(argument)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--save-outputs {argument}: exists and is not a folder")
    return folder


# --- the command -----------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    """``onyxrt run [MODEL]``: run a model on given or made-up inputs (no MODEL: the bundled samples)."""
    if args.layerwise and not args.compare:
        raise UsageError("--layerwise needs --compare onnxruntime")
    onnxruntime = _onnxruntime() if args.compare else None
    given: dict[str, np.ndarray] = {}
    for name, file in args.input:
        if name in given:
            raise UsageError(f"--input {name}: given twice")
        given[name] = _load_input(name, file)
    save_folder = _prepare_output_folder(args.save_outputs)
    if args.model is None and not given:
        return _run_samples(args, onnxruntime, save_folder)
    if args.model is None:
        model_path = _samples().model_path()
        print(f"No model given: running the bundled sample model ({model_path}) on your inputs; "
              "nothing to check them against")
    else:
        model_path = _resolve_model(args.model)
    model = _load_graph(model_path)
    feeds = _model_feeds(model, args, given)
    session = _session(str(model_path), args.optimization_level)
    try:
        outputs, warm, timed = _timed_runs(session, feeds, args.warmup, args.repeat)
    except OnyxRuntimeError as exc:
        hint = _made_up_dims(model, args, given)
        if not hint:
            raise
        raise RunFailure(f"{_first_line(exc)} ({hint})") from None
    output_names = [o.name for o in session.get_outputs()]
    for name, value in feeds.items():
        print(f"input  {name}: {_summary(value)}" + ("  (from --input)" if name in given else ""))
    for name, value in zip(output_names, outputs):
        print(f"output {name}: {_summary(value)}")
    print(_latency_line(warm, timed))
    if save_folder is not None:
        _save_values(save_folder, dict(zip(output_names, outputs)))
        _save_values(save_folder / "inputs", feeds)
        print(f"saved {len(outputs)} output(s) to {save_folder} and the inputs to {save_folder / 'inputs'}")
    ok = True
    if onnxruntime is not None:
        reference = _reference_session(onnxruntime, str(model_path), args.optimization_level)
        print(f"compare with onnxruntime {onnxruntime.__version__} (rtol {args.rtol:g}, atol {args.atol:g}):")
        ok = _compare_outputs(reference, output_names, outputs, feeds, args)
        if args.layerwise:
            ok = _layerwise(model_path, feeds, onnxruntime, args) and ok
    return 0 if ok else 1


def _samples():
    from . import samples
    return samples


def _run_samples(args: argparse.Namespace, onnxruntime, save_folder: Path | None) -> int:
    """The bundled model on each bundled sample, checked against onnxruntime's stored probabilities."""
    if args.dim:
        raise UsageError("--dim applies to a MODEL's symbolic dimensions; the bundled samples have fixed shapes")
    samples = _samples()
    model_path = samples.model_path()
    cases = samples.load_samples()
    print(f"No model given: onyxrt's bundled digit classifier on its {len(cases)} sample images\nmodel: {model_path}")
    session = _session(str(model_path), args.optimization_level)
    output_names = [o.name for o in session.get_outputs()]
    probability_index = output_names.index(samples.OUTPUT_NAME) if samples.OUTPUT_NAME in output_names else 0
    reference = _reference_session(onnxruntime, str(model_path), args.optimization_level) if onnxruntime else None
    width = max(len(case.name) for case in cases)
    live = f"  {'live ort':>8}" if reference is not None else ""
    print(f"{'sample':<{width}}  {'true':>5}  {'predicted':>9}  {'probability':>11}  {'ort diff':>9}{live}  check")
    failures = correct = 0
    mismatches: list[tuple[str, list[_Difference]]] = []
    for index, case in enumerate(cases):
        if index == 0:
            outputs, warm, timed = _timed_runs(session, case.feeds, args.warmup, args.repeat)
        else:
            outputs = session.run(None, case.feeds)
        probabilities = np.asarray(outputs[probability_index]).reshape(-1)
        expected = np.asarray(case.expected_probabilities).reshape(-1)
        predicted = int(np.argmax(probabilities))
        difference = float(np.max(np.abs(probabilities.astype(np.float64) - expected))) if probabilities.shape == expected.shape else float("inf")
        ok = predicted == int(np.argmax(expected)) and difference <= SAMPLE_TOLERANCE
        failures += not ok
        correct += predicted == case.label
        if reference is not None:
            differences = _output_differences(reference, output_names, outputs, case.feeds, args)
            if not all(d.ok for d in differences):
                mismatches.append((case.name, differences))
            live = f"  {'PASS' if all(d.ok for d in differences) else 'FAIL':>8}"
        print(f"{case.name:<{width}}  {samples.CLASS_NAMES[case.label]:>5}  {samples.CLASS_NAMES[predicted]:>9}  "
              f"{probabilities[predicted]:11.4f}  {difference:9.2g}{live}  {'OK' if ok else 'FAIL'}")
        if save_folder is not None:
            _save_values(save_folder / case.name, dict(zip(output_names, outputs)))
            _save_values(save_folder / case.name / "inputs", case.feeds)
    print(_latency_line(warm, timed) + f" (sample {cases[0].name})")
    compare_ok = not mismatches
    if reference is not None:
        print(f"live ort: all outputs against onnxruntime {onnxruntime.__version__} run now "
              f"(rtol {args.rtol:g}, atol {args.atol:g}): {len(cases) - len(mismatches)} of {len(cases)} samples PASS")
        for name, differences in mismatches:
            print(f"sample {name}:")
            _print_differences(differences)
        if args.layerwise:
            print(f"layerwise on sample {cases[0].name}:")
            compare_ok = _layerwise(model_path, cases[0].feeds, onnxruntime, args) and compare_ok
    if save_folder is not None:
        print(f"saved each sample's outputs and inputs to {save_folder}/<sample>/")
    print(f"{correct} of {len(cases)} samples predicted as their true digit")
    if not compare_ok:
        print("FAIL: onyxrt's values differ from onnxruntime's run now (see above)")
    if failures:
        print(f"FAIL: {failures} of {len(cases)} samples differ from onnxruntime's stored probabilities "
              f"(by more than {SAMPLE_TOLERANCE:g}, or in the predicted class)")
    else:
        print(f"OK: all {len(cases)} predictions and probabilities match onnxruntime's (within {SAMPLE_TOLERANCE:g})")
    return 0 if failures == 0 and compare_ok else 1


def cmd_info(args: argparse.Namespace) -> int:
    proto, base_dir = read_model_proto(args.model)
    graph = proto.graph
    print(f"model: {args.model}")
    print(f"ir_version: {proto.ir_version}  producer: {proto.producer_name} {proto.producer_version}".rstrip())
    print("opsets: " + ", ".join(f"{imp.domain or 'ai.onnx'}={imp.version}" for imp in proto.opset_import))
    initializer_names = {t.name for t in graph.initializer}
    print("inputs:")
    for vi in graph.input:
        if vi.name not in initializer_names:
            print(f"  {vi.name}: {type_string(vi.type)} {tensor_shape(vi.type)}")
    print("outputs:")
    for vi in graph.output:
        print(f"  {vi.name}: {type_string(vi.type)} {tensor_shape(vi.type)}")
    histogram = _op_histogram(graph)
    print(f"nodes: {len(graph.node)}")
    for op_type, count in histogram.most_common():
        print(f"  {op_type:32s} {count}")
    total = sum(_tensor_bytes(t) for t in graph.initializer)
    print(f"initializers: {len(graph.initializer)}, {total:,} bytes ({total / 2**20:.2f} MiB)")
    from .sparsity import weight_sparsity_lines
    for line in weight_sparsity_lines(graph, base_dir):
        print(line)
    if proto.functions:
        print(f"model-local functions: {', '.join(f.name for f in proto.functions)}")
    if args.providers:
        _print_placement(args.model, args.providers)
    return 0


def _provider_names(text: str) -> list[str]:
    """An argparse type: comma-separated names of execution providers this build has."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    available = get_available_providers()
    unknown = [name for name in names if name not in available]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown or unavailable provider(s) {', '.join(unknown) or repr(text)} (available: {', '.join(available)})")
    return names


def _print_placement(model_path: str, names: list[str]) -> None:
    """Which nodes each provider takes, as a session with ``names`` would partition the model (nothing compiled or run)."""
    providers = create_providers(normalize_providers(names, None))
    model = load_model(model_path)
    optimize_and_partition(model, providers, SessionOptions())
    nodes_by_provider: dict[str, int] = {p.name: 0 for p in providers}
    regions: list[tuple[str, list]] = []
    others: dict[str, list] = collections.defaultdict(list)

    def visit(graph) -> None:
        for node in graph:
            provider = node.meta[PROVIDER_KEY]
            region = node.meta.get(FUSED_GROUP)
            if region is not None:
                regions.append((provider, region.nodes))
                nodes_by_provider[provider] += len(region.nodes)
                continue
            others[provider].append(node)
            nodes_by_provider[provider] += 1
            for subgraph in subgraphs(node):
                visit(subgraph)

    visit(model.graph)
    print(f"placement with providers {', '.join(p.name for p in providers)} (after optimization, subgraphs included):")
    for name, count in nodes_by_provider.items():
        in_regions = sum(1 for provider, _ in regions if provider == name)
        print(f"  {name:32s} {count:6d} nodes" + (f" in {in_regions} region(s)" if in_regions else ""))
    for number, (provider, nodes) in enumerate(regions, 1):
        print(f"region {number} ({provider}, {len(nodes)} nodes): {_histogram_text(nodes)}")
        print("  nodes: " + ", ".join(node.name or f"<{node.op_type}>" for node in nodes))
    for provider, nodes in others.items():
        print(f"{provider} nodes ({len(nodes)}): {_histogram_text(nodes)}")
        print("  nodes: " + ", ".join(node.name or f"<{node.op_type}>" for node in nodes))


def _histogram_text(nodes) -> str:
    """'OpType count, ...' of ``nodes`` (domain-qualified outside ai.onnx), most frequent first."""
    histogram = collections.Counter((n.domain + "::" if n.domain not in ("", "ai.onnx") else "") + n.op_type
                                    for n in nodes)
    return ", ".join(f"{op_type} {count}" for op_type, count in histogram.most_common())


def _op_histogram(graph: onnx.GraphProto) -> collections.Counter:
    """Op types of the graph's own nodes (domain-qualified outside ai.onnx), counted."""
    return collections.Counter(
        (n.domain + "::" if n.domain not in ("", "ai.onnx") else "") + n.op_type for n in graph.node
    )


_LEVELS = {"disabled": 0, "basic": 1, "extended": 2, "layout": 3, "all": 99}


def cmd_optimize(args: argparse.Namespace) -> int:
    """Optimize IN at a level and save it to OUT (onnxruntime's optimized_model_filepath), with a report."""
    before, _ = read_model_proto(args.model)
    options = SessionOptions()
    options.graph_optimization_level = GraphOptimizationLevel(_LEVELS[args.level])
    options.optimized_model_filepath = args.output
    start = time.perf_counter()
    session = InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    seconds = time.perf_counter() - start
    after, _ = read_model_proto(args.output)
    print(f"{args.model} -> {args.output} at level {args.level}: "
          f"{len(before.graph.node)} -> {len(after.graph.node)} nodes, session created in {seconds:.2f} s")
    if not args.report:
        return 0
    report = session._optimization_report
    print(f"passes ({report.rounds} rounds, fixed point {'reached' if report.reached_fixed_point else 'not reached'}):")
    for name, spent in report.seconds.items():
        print(f"  {name:40s} {report.counts.get(name, 0):6d} rewrites {spent * 1000:9.1f} ms")
    old, new = _op_histogram(before.graph), _op_histogram(after.graph)
    print("ops (before -> after):")
    for op_type in sorted(old.keys() | new.keys(), key=lambda op: (-old[op], op)):
        print(f"  {op_type:32s} {old[op_type]:6d} -> {new[op_type]}")
    return 0


def _tensor_bytes(tensor: onnx.TensorProto) -> int:
    count = int(np.prod(tensor.dims)) if tensor.dims else 1
    if tensor.data_type == onnx.TensorProto.STRING:
        return sum(len(s) for s in tensor.string_data)
    return count * np_dtype(tensor.data_type).itemsize


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="onyxrt", description="Run and inspect ONNX models with onyxrt.")
    parser.add_argument("--version", action="version", version=f"onyxrt {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run", help="run a model on given or made-up inputs (no MODEL: the bundled sample model, checked)",
        description="Run MODEL on inputs from --input files, made up for the rest: ids inside the tables they "
                    "index, masks as ones, position ids counting from the past length, floats normal. Without "
                    "MODEL, run onyxrt's bundled digit classifier on its samples and check onnxruntime's stored "
                    "probabilities.")
    run.add_argument("model", nargs="?", help="path of an .onnx model (or a folder holding model.onnx)")
    run.add_argument("--input", action="append", default=[], type=_input_pair, metavar="NAME=FILE.npy",
                     help="feed input NAME from a .npy (or TensorProto .pb) file; repeatable")
    run.add_argument("--dim", action="append", default=[], type=_dim_pair, metavar="NAME=VALUE",
                     help="value of the symbolic dimension NAME of the made-up inputs; repeatable")
    run.add_argument("--batch", type=_count(0), default=1, help="value of batch-like symbolic dims (default 1)")
    run.add_argument("--seq", type=_count(0), default=8, help="value of sequence-like symbolic dims (default 8)")
    run.add_argument("--past", type=_count(0), default=0,
                     help="value of past-length dims (default 0); total-length dims are past + seq")
    run.add_argument("--repeat", type=_count(1), default=1, help="timed runs, reported as p50/p90/min (default 1)")
    run.add_argument("--warmup", type=_count(0), default=1, help="untimed runs before them (default 1)")
    run.add_argument("--seed", type=int, default=0, help="seed of the made-up inputs")
    run.add_argument("--optimization-level", type=int, default=99, choices=(0, 1, 2, 3, 99), help="graph optimization level")
    run.add_argument("--save-outputs", metavar="DIR", help="save each output to DIR/<name>.npy and the inputs to DIR/inputs/")
    run.add_argument("--compare", choices=("onnxruntime",),
                     help="run the same inputs through onnxruntime; per output max abs/rel error, PASS/FAIL; exit 1 on FAIL")
    run.add_argument("--layerwise", action="store_true",
                     help="with --compare: every intermediate value compared (optimizations off), the first diverging node")
    run.add_argument("--rtol", type=_tolerance, default=DEFAULT_RTOL, help=f"relative tolerance of --compare (default {DEFAULT_RTOL:g})")
    run.add_argument("--atol", type=_tolerance, default=DEFAULT_ATOL, help=f"absolute tolerance of --compare (default {DEFAULT_ATOL:g})")
    run.set_defaults(handler=cmd_run)
    info = commands.add_parser("info", help="describe a model: inputs, outputs, opsets, ops, weights")
    info.add_argument("model", help="path of an .onnx model")
    info.add_argument("--providers", type=_provider_names, metavar="NAME,NAME",
                      help="also show which nodes each provider takes (counts, each region with its nodes), "
                           "as a session with these providers partitions the model, without running it")
    info.set_defaults(handler=cmd_info)
    optimize = commands.add_parser("optimize", help="optimize a model and save it (loadable by onnxruntime)")
    optimize.add_argument("model", help="path of the .onnx model to optimize")
    optimize.add_argument("output", help="path to write the optimized model to")
    optimize.add_argument("--level", choices=tuple(_LEVELS), default="extended", help="graph optimization level")
    optimize.add_argument("--report", action="store_true", help="each pass's rewrites and time, ops before and after")
    optimize.set_defaults(handler=cmd_optimize)
    bench = commands.add_parser("bench", help="latency percentiles, throughput, memory and session creation (--compare onnxruntime)")
    benchmark.add_arguments(bench)
    bench.set_defaults(handler=benchmark.run)
    from .genai import cli as genai_cli  # here, not at the top: it imports this module's helpers
    generate = commands.add_parser("generate", help="generate tokens with a decoder (KV cache); prefill and decode tokens/s")
    genai_cli.add_arguments(generate)
    generate.set_defaults(handler=genai_cli.run)
    from .quantization import cli as quantize_cli
    quantize = commands.add_parser("quantize", help="quantize a model (dynamic, static with --calib, weight-only int4/int8); nodes, size, output error")
    quantize_cli.add_arguments(quantize)
    quantize.set_defaults(handler=quantize_cli.run)
    from .quantization import convert_cli
    convert = commands.add_parser("convert", help="convert a model to float16, bfloat16 or mixed precision; nodes, size, output error")
    convert_cli.add_arguments(convert)
    convert.set_defaults(handler=convert_cli.run)
    from .sparsity import cli as prune_cli
    prune = commands.add_parser("prune", help="prune weights by magnitude (unstructured, N:M such as 2:4, blocks); per-weight sparsity and size")
    prune_cli.add_arguments(prune)
    prune.set_defaults(handler=prune_cli.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (2 for a bad argument, 1 for a failure or a mismatch)."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except UsageError as exc:
        print(f"onyxrt: error: {exc}", file=sys.stderr)
        return 2
    except RunFailure as exc:
        print(f"onyxrt: error: {exc}", file=sys.stderr)
        return 1
    except OnyxRuntimeError as exc:
        print(f"onyxrt: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # output piped into a pager or `head` that closed early
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
