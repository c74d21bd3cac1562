"""Helpers of benchmarks/latency.py, Polygraphy-style: measurement (``worker``, one fresh process per backend and
size) is kept apart from comparison (``compare``) and reporting (``report``).

Modules imported by the worker (``specs``, ``worker``, ``machine``) import neither torch nor codeenhance at module
level, so that an onnxruntime measurement does not carry torch's memory in its peak RSS.
"""
