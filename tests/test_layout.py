"""The layout's promises (issue 13): contract/ at the bottom imports no other package of the project and no torch;
runtime/ never imports export/; an .onnx model runs through runtime.Enhancer without torch or export loaded.
The model contract's facts (graph I/O names, precision labels, the pad multiple) and the provenance record's field
names are spelled only in contract/, and no command declares a flag twice."""
from __future__ import annotations

import ast
import collections
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROJECT_PACKAGES = {"contract", "codeenhance", "export", "runtime", "benchmarks"}


def imported_top_levels(folder: str, *, module_level_only: bool = False) -> dict[str, set[str]]:
    """file -> the top-level names it imports (absolute imports; relative ones stay inside the package).
    ``module_level_only``: leave out imports inside functions (optional fallbacks imported on use)."""
    found = {}
    for path in sorted((REPO / folder).glob("*.py")):
        names = set()
        tree = ast.parse(path.read_text())
        nodes = tree.body if module_level_only else ast.walk(tree)
        for node in nodes:
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[path.name] = names
    return found


def test_contract_is_the_bottom():
    for name, imports in imported_top_levels("contract").items():
        assert not imports & (PROJECT_PACKAGES - {"contract"}), f"contract/{name} imports {imports & PROJECT_PACKAGES}"
    for name, imports in imported_top_levels("contract", module_level_only=True).items():
        assert "torch" not in imports, f"contract/{name} imports torch when it is imported"


def test_runtime_never_imports_export():
    for name, imports in imported_top_levels("runtime").items():
        assert "export" not in imports, f"runtime/{name} imports export"


def test_an_onnx_model_runs_without_torch_or_export(tiny_onnx):
    script = f"""
import sys
import numpy as np
from runtime import Enhancer
with Enhancer({str(tiny_onnx)!r}) as enhancer:
    out = enhancer.enhance(np.full((20, 24, 3), 40, np.uint8))
assert out.shape == (20, 24, 3), out.shape
print(sorted({{m.split('.')[0] for m in sys.modules}} & {{'torch', 'export', 'codeenhance'}}))
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_cli_on_an_onnx_model_loads_no_torch(tiny_onnx, tmp_path):
    import cv2
    import numpy as np

    cv2.imwrite(str(tmp_path / "a.png"), np.full((12, 12, 3), 30, np.uint8))
    script = (f"import sys, runtime.cli as c; rc = c.main([{str(tmp_path / 'a.png')!r}, '-o', {str(tmp_path / 'out')!r}, "
              f"'--model', {str(tiny_onnx)!r}]); print(rc, 'torch' in sys.modules, 'export' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.stdout.strip().splitlines()[-1] == "0 False False", result.stdout + result.stderr


# --- the model contract is said once, in contract/ -----------------------------------------------------------------

PRODUCTION = ("codeenhance", "runtime", "export", "benchmarks")  # every package but contract/, recursively
GRAPH_NAMES = {"image", "w_texture", "w_style", "enhanced", "codes"}  # contract.graph's input and output names
PAD = 32  # contract.graph.PAD_MULTIPLE
# A graph name quoted inside a message or generated text: 'image', "enhanced", `w_style`.
QUOTED_NAME = re.compile(r"""['"`](?:%s)['"`]""" % "|".join(sorted(GRAPH_NAMES)))
# The precision labels a backend reports (fp16-mixed, bf16-mixed) are the reduced type + this suffix.
LABEL_SUFFIX = "-mixed"
# The pad multiple in prose or formulas: "(H//32+1)*32", "a multiple of 32", "32k-1 pixels".
PAD_PROSE = re.compile(r"//\s*32\b|\bmultiple of 32\b|\b32k\b")
# The provenance record's field names (contract.provenance): read and written through Provenance's attributes and
# keywords, never as strings. Generic words (precision, device, kind, shapes, model_config: also Triton's argument
# name) are left out.
RECORD_NAMES = {"toolkit_version", "checkpoint_sha256", "source_sha256", "exporter_fingerprint", "payload_sha256",
                "torch_version", "cpu_capability", "tensorrt_version", "gpu_name", "compute_capability"}
# (file, literal) -> why it may stay. Keep this short: a new entry needs a reason a constant cannot serve.
ALLOWED = {
    # Key of a per-image row in the harness's results (the photo's file name), not the graph input: the results
    # JSON already published uses it.
    ("benchmarks/harness/compare.py", "image"): "results row key",
    ("benchmarks/harness/report.py", "image"): "results row key and column title",
    ("benchmarks/fp16_fidelity.py", "image"): "results row key",
}


def production_files():
    for package in PRODUCTION:
        yield from sorted((REPO / package).rglob("*.py"))


def documentation_strings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are statements of their own (docstrings and other bare strings): prose that
    describes the contract, which may name it; every other string is code and must take the names from contract/."""
    return {id(node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)}


def is_pad(node) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) is int and node.value == PAD


def names_multiple(node) -> bool:
    """A name, attribute, parameter, keyword or string key that speaks of a multiple (pad_multiple, multiple)."""
    text = (getattr(node, "id", None) or getattr(node, "attr", None) or getattr(node, "arg", None)
            or (node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None))
    return bool(text) and "multiple" in text.lower()


def pad_literals(tree: ast.AST):
    """Line numbers where 32 is used as the pad multiple: the divisor of // or %, the factor of a rounding
    ``n // 32 * 32``, the default of a parameter or the value of a name or keyword that names a multiple, or the
    fallback of ``meta.get("pad_multiple", 32)``. (A plain ``x * 32`` is left alone: widths and counts use it.)"""
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.FloorDiv, ast.Mod)) and is_pad(node.right):
            yield node.lineno
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            rounded = [(a, b) for a, b in ((node.left, node.right), (node.right, node.left)) if is_pad(b)]
            if any(isinstance(a, ast.BinOp) and isinstance(a.op, ast.FloorDiv) for a, _ in rounded):
                yield node.lineno
        elif isinstance(node, ast.arguments):
            positional = node.posonlyargs + node.args
            pairs = list(zip(positional[len(positional) - len(node.defaults):], node.defaults))
            pairs += [(a, d) for a, d in zip(node.kwonlyargs, node.kw_defaults) if d is not None]
            yield from (d.lineno for a, d in pairs if is_pad(d) and names_multiple(a))
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and is_pad(node.value):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(names_multiple(t) for t in targets):
                yield node.lineno
        elif isinstance(node, ast.Call):
            if any(is_pad(k.value) and names_multiple(k) for k in node.keywords):
                yield node.lineno
            elif any(is_pad(a) for a in node.args) and any(names_multiple(a) for a in node.args):
                yield node.lineno


def contract_literals(path: Path) -> list[tuple[int, object, str]]:
    """(line, literal, what) for each contract fact spelled in ``path`` instead of taken from contract/."""
    tree = ast.parse(path.read_text())
    prose = documentation_strings(tree)
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)) or id(node) in prose:
            continue
        text = node.value
        if text in GRAPH_NAMES:
            found.append((node.lineno, text, "graph I/O name"))
        for quoted in QUOTED_NAME.findall(text):
            found.append((node.lineno, quoted.strip("'\"`"), "graph I/O name in a message"))
        if LABEL_SUFFIX in text:
            found.append((node.lineno, text, "precision label"))
        if text in RECORD_NAMES:
            found.append((node.lineno, text, "provenance field"))
        if PAD_PROSE.search(text):
            found.append((node.lineno, PAD, "pad multiple in text"))
    found += [(line, PAD, "pad multiple") for line in pad_literals(tree)]
    return found


def test_contract_literals_stay_in_contract():
    """Graph I/O names, precision labels and the pad multiple come from contract.graph everywhere else, and the
    provenance record's fields from contract.provenance."""
    problems = []
    for path in production_files():
        rel = path.relative_to(REPO).as_posix()
        for line, literal, what in contract_literals(path):
            if (rel, literal) not in ALLOWED:
                problems.append(f"{rel}:{line}: {what} {literal!r} spelled here; use contract's constant or record")
    assert not problems, "\n".join(problems)


def test_the_contract_literal_scan_finds_each_form(tmp_path):
    """The scan above catches each form it is meant to (a scan that finds nothing would pass silently)."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        '''"""Docstrings may say image, 'enhanced' and (H//32+1)*32."""
def f(x, multiple=32, size=7):
    feeds = {"image": x}
    print(f"missing output 'codes' in {x}")
    label = f"{x}-mixed"
    meta = {}.get("pad_multiple", 32) or {}.get("checkpoint_sha256")
    return (x + 1) // 32 * 32 - 1, x % 32, "a multiple of 32", size * 32
''')
    found = sorted((line, what) for line, _, what in contract_literals(sample))
    assert found == [(2, "pad multiple"), (3, "graph I/O name"), (4, "graph I/O name in a message"),
                     (5, "precision label"), (6, "pad multiple"), (6, "provenance field"), (7, "pad multiple"),
                     (7, "pad multiple"),
                     (7, "pad multiple"), (7, "pad multiple in text")], found


# --- each command declares each flag once ---------------------------------------------------------------------

def declared_flags(tree: ast.AST) -> collections.Counter:
    """Option strings ("--threads") passed to add_argument in a module, through any parser, group or local alias
    (``add = p.add_argument``)."""
    aliases = {t.id for node in ast.walk(tree) if isinstance(node, ast.Assign)
               and isinstance(node.value, ast.Attribute) and node.value.attr == "add_argument"
               for t in node.targets if isinstance(t, ast.Name)}
    flags = collections.Counter()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and (getattr(node.func, "attr", None) == "add_argument"
                                           or getattr(node.func, "id", None) in aliases):
            flags.update(a.value for a in node.args
                         if isinstance(a, ast.Constant) and isinstance(a.value, str) and a.value.startswith("-"))
    return flags


def test_no_flag_is_declared_twice_in_one_module():
    problems = []
    for path in [*production_files(), *sorted((REPO / "contract").glob("*.py"))]:
        twice = {flag: n for flag, n in declared_flags(ast.parse(path.read_text())).items() if n > 1}
        if twice:
            problems.append(f"{path.relative_to(REPO).as_posix()}: {twice}")
    assert not problems, "flags declared more than once: " + "; ".join(problems)


def test_the_flag_scan_counts_aliases_and_groups():
    tree = ast.parse("import argparse\np = argparse.ArgumentParser()\nadd = p.add_argument\nadd('--threads')\n"
                     "g = p.add_argument_group('x')\ng.add_argument('-t', '--threads', type=int)\n")
    assert declared_flags(tree) == {"--threads": 2, "-t": 1}
