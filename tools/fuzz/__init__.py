"""Fuzzing onyxrt's loader and kernels with mutated ONNX models, side by side with onnxruntime.

``python -m tools.fuzz run``: mutate the backend-test models (seeded), load and run each case
in a forked child under time and memory limits, write one JSON line per case.
``python -m tools.fuzz compare``: tally two such files (onyxrt, onnxruntime) into a table.
"""
