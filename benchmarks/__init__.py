"""Benchmarks: the latency harness (benchmarks/latency.py) and focused studies; an installed package, so scripts
import it without path edits."""
