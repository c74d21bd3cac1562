"""benchmarks/onnx_lookup.py on the tiny preset: the whole comparison runs and reports both targets, and graphs
left in --workdir are reused only when checkpoint, lookup and exporting code all match."""
from __future__ import annotations

import contextlib
import io
import re

import pytest

import export.onnx
from benchmarks import onnx_lookup


@pytest.fixture(scope="module")
def tiny_run(tiny_ckpt, tmp_path_factory):
    """One run on the tiny checkpoint (~1 min): both graphs exported into a workdir the reuse test reads."""
    workdir = tmp_path_factory.mktemp("onnx_lookup")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = onnx_lookup.main(["--ckpt", str(tiny_ckpt), "--latency-size", "32x48", "--memory-size", "64x64",
                               "--repeats", "1", "--threads", "1", "--workdir", str(workdir)])
    return rc, out.getvalue(), workdir


def test_tiny_run_reports_both_graphs_and_the_lookup_stage(tiny_run):
    rc, out, _ = tiny_run
    assert rc == 0
    assert "max abs difference between the two graphs' outputs: 0" in out  # same model, same codes
    ours, onehot = (re.search(rf"^\| {label} \| (\d+) \| (\d+) \|", out, re.M) for label in ("ours", "one-hot"))
    assert ours and onehot and ours[2] == "0" and int(onehot[2]) >= 1  # Scatter* ops: none in ours
    assert re.search(r"ours / one-hot \|  \|  \| \d\.\d{3}x \((meets|MISSES) <= 1\.05x\) \| \d\.\d{3}x", out)
    assert "lookup stage alone (code grid 24x24)" in out  # 64 px pads to 96, codes at 1/4


def test_workdir_graphs_are_reused_only_from_the_same_exporting_code(tiny_run, tiny_ckpt, monkeypatch):
    workdir = tiny_run[2]
    paths = {label: workdir / f"codeenhance_{lookup}.onnx" for label, lookup in onnx_lookup.GRAPHS.items()}
    stamps = {label: path.stat().st_mtime_ns for label, path in paths.items()}
    assert onnx_lookup.export_graphs(tiny_ckpt, workdir) == paths
    assert {label: path.stat().st_mtime_ns for label, path in paths.items()} == stamps  # reused, not rewritten

    monkeypatch.setattr(export.onnx, "exporter_fingerprint", lambda: "0123456789ab")  # as after an upgrade
    monkeypatch.setattr(onnx_lookup, "GRAPHS", {"ours": "gather"})  # one graph is enough to show it
    again = onnx_lookup.export_graphs(tiny_ckpt, workdir)
    assert again["ours"].stat().st_mtime_ns != stamps["ours"]  # exported afresh
