"""The real TensorRT Python API, read without importing TensorRT, and the `tensorrt` names our code uses.

TensorRT 11: the `tensorrt-cu13-bindings` wheel's ``tensorrt.so`` (pybind11). Disassembled with binutils'
objdump: each ``.def("name", ...)``/``.value("NAME", ...)`` call loads its name string into %rsi right before
calling ``pybind11::class_<C>::def...``/``pybind11::enum_<C>::value``, so a member is only counted for the
C++ class C it is attached to. Module-level names: class names, every identifier string the code loads, and
the wheel's ``__init__.py``. TensorRT 10.x: the `tensorrt-stubs` .pyi files, read with ``ast``.
"""
from __future__ import annotations

import ast
import re
import subprocess
from collections import defaultdict
from pathlib import Path

IDENT = re.compile(rb"[A-Za-z_][A-Za-z0-9_]*\Z")
CPP = r"pybind11::(?:class_|enum_)<((?:[^<>,()]|\([^)]*\))+)[,>]"
ALIASES = {"OnnxParser": "IParser", "Logger": "DefaultLogger"}  # Python name -> C++ name when they differ


class Api:
    """``has(owner, name)``: ``owner`` None for a module-level name. ``loose`` (TensorRT 11): class members the
    disassembly could not attach to their class (defs inlined into the module init) are accepted when the
    name is bound somewhere in the .so; enum members never are (``.value()`` calls are always seen)."""

    def __init__(self, top: set[str], members: dict[str, set[str]], bases: dict[str, list[str]] | None = None,
                 returns: dict[tuple[str, str], str] | None = None, loose: set[str] | None = None,
                 enums: set[str] = frozenset()):
        self.top, self.members, self.bases, self.returns = top, members, bases or {}, returns or {}
        self.loose, self.enums = loose, enums

    def has(self, owner: str | None, name: str) -> bool:
        if owner is None:
            return name in self.top
        seen, todo = set(), [owner]
        while todo:
            cls = todo.pop()
            if cls not in seen:
                seen.add(cls)
                if name in self.members.get(cls, ()):
                    return True
                todo += self.bases.get(cls, [])
        if owner in self.enums:
            return name in ("name", "value")
        return self.loose is not None and owner in self.members and name in self.loose


def bindings_api(so_path: Path, init_py: Path, stub_bases: dict[str, list[str]]) -> Api:
    data = so_path.read_bytes()
    dis = subprocess.run(["objdump", "-d", "-C", "-w", "--no-show-raw-insn", str(so_path)],
                         capture_output=True, text=True, check=True).stdout
    members: dict[str, set[str]] = defaultdict(set)
    pynames: dict[str, str] = {}
    referenced: set[str] = set()
    enums: set[str] = set()
    func, regs = "", {}
    for line in dis.splitlines():
        if line.endswith(">:"):
            func, regs = line[line.index("<") + 1:-2], {}
        elif m := re.search(r"\tlea\s+-?0x\w+\(%rip\),%(\w+)\s+# (\w+)", line):
            addr = int(m.group(2), 16)
            raw = data[addr:data.find(b"\0", addr)] if addr < len(data) else b""
            regs[m.group(1)] = s = raw.decode() if IDENT.match(raw) else None
            if s:
                referenced.add(s)
                if own := re.match(CPP + r".*::def", func):  # a .def() outlined with its name inside
                    members[own.group(1)].add(s)
                if (ctor := re.match(CPP + r".*::(?:class_|enum_)<[^()]*>\(pybind11::handle", func)):
                    pynames.setdefault(ctor.group(1), s)
        elif m := re.search(r"\tmov\s+%(\w+),%(\w+)$", line):
            regs[m.group(2)] = regs.get(m.group(1))
        elif m := re.search(r"\tcall\s+\w+ <(.*)>$", line):
            callee = m.group(1)
            if (own := re.match(CPP, callee)) and (kind := re.search(r"::(value|def\w*)(<.*>)?\(char const\*", callee)):
                if regs.get("rsi"):
                    members[own.group(1)].add(regs["rsi"])
                if kind.group(1) == "value":
                    enums.add(own.group(1))
            regs = {}
    by_py: dict[str, set[str]] = defaultdict(set)
    for cpp, names in members.items():
        parts = cpp.split("::")
        for owner in {pynames.get(cpp, parts[-1]), *(p for p in parts[:-1] if p[:1].isupper())}:
            by_py[owner] |= names  # nested enums (ILogger::Severity) are exported into their parent class
    for py, cpp in [*ALIASES.items(), *((p, "I" + p) for p in stub_bases)]:
        if py not in pynames.values() and cpp in by_py:
            by_py[py] |= by_py[cpp]
    init = ast.parse(init_py.read_text())
    top = referenced | set(pynames.values()) | {
        n.name for n in init.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))} | {
        t.id for n in init.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    enum_py = {pynames.get(cpp, cpp.split("::")[-1]) for cpp in enums}
    return Api(top, dict(by_py), stub_bases, loose=referenced, enums=enum_py)


def _parse_lenient(text: str) -> ast.Module:
    """The stubs hold a few signatures Python rejects (a default before a non-default): blank them."""
    lines = text.splitlines()
    while True:
        try:
            return ast.parse("\n".join(lines))
        except SyntaxError as exc:
            bad = lines[exc.lineno - 1]
            m = re.match(r"(\s*)def (\w+)\(.*\)( -> .*)?:(.*)$", bad)
            if not m:
                raise
            lines[exc.lineno - 1] = f"{m.group(1)}def {m.group(2)}(self, *a, **k){m.group(3) or ''}:{m.group(4)}"


def _annotation_class(node: ast.expr | None) -> str | None:
    text = ast.unparse(node) if node is not None else ""
    names = [n for n in re.split(r"[\[\]|, ]+", text.replace("typing.", "")) if n and n not in ("None", "Optional")]
    return names[0].split(".")[-1] if len(names) == 1 else None


def stubs_api(pyi_files: list[Path]) -> Api:
    top, members, bases, returns = set(), defaultdict(set), {}, {}

    def walk(cls: ast.ClassDef) -> None:
        bases[cls.name] = [ast.unparse(b).split(".")[-1] for b in cls.bases]
        for node in cls.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                members[cls.name].add(node.name)
                if isinstance(node, ast.ClassDef):
                    walk(node)
                elif r := _annotation_class(node.returns):
                    returns[cls.name, node.name] = r
            for t in (node.targets if isinstance(node, ast.Assign) else
                      [node.target] if isinstance(node, ast.AnnAssign) else []):
                if isinstance(t, ast.Name):
                    members[cls.name].add(t.id)
                    if isinstance(node, ast.AnnAssign) and (r := _annotation_class(node.annotation)):
                        returns[cls.name, t.id] = r

    for path in pyi_files:
        for node in _parse_lenient(path.read_text()).body:
            if isinstance(node, ast.ClassDef):
                walk(node)
            if isinstance(node, (ast.ImportFrom, ast.Import)):
                top |= {a.asname or a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.Assign):
                top |= {t.id for t in node.targets if isinstance(t, ast.Name)}
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                top.add(node.target.id)
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                top.add(node.name)
    returns.setdefault(("OnnxParser", "get_error"), "ParserError")  # the stub's return annotation is `...`
    returns = {k: ("I" + r if r not in members and "I" + r in members else r) for k, r in returns.items()}
    return Api(top, dict(members), bases, returns)  # ParserError -> IParserError


GATE = re.compile(r"__version__|trt_major|hasattr\(")  # an `if` on the TensorRT version or on hasattr()
MODULE_PARAMS = {"trt"}  # functions that take the tensorrt module as an argument call it `trt`


def uses(source: str, stubs: Api) -> list[tuple[int, str | None, str, bool]]:
    """(line, owner class or None for the module, name, gated) for each `tensorrt` name ``source`` uses.

    The module: ``import tensorrt [as x]``, ``x = import_tensorrt()``, ``self.x = import_tensorrt()``, a
    parameter named ``trt``. Objects: variables (and ``self.`` attributes) assigned from ``trt.Class(...)``
    or from a method whose stub return type is a TensorRT class, same-module function parameters that
    receive such objects, and parameters annotated ``trt.Class``. One namespace per file, flow-insensitive: simple, and enough for this code.
    """
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    key = lambda e: e.id if isinstance(e, ast.Name) else (  # noqa: E731
        f"self.{e.attr}" if isinstance(e, ast.Attribute) and isinstance(e.value, ast.Name) and e.value.id == "self" else None)
    modules, types = set(), {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {a.asname or a.name for a in node.names if a.name == "tensorrt"}
        elif isinstance(node, ast.arg) and node.arg in MODULE_PARAMS:  # a file with only a local `trt = {...}` has none
            modules.add(node.arg)

    def is_module(e) -> bool:
        return key(e) in modules or (isinstance(e, ast.Call) and "import_tensorrt" in ast.unparse(e.func))

    def type_of(e) -> str | None:
        if isinstance(e, ast.Call):
            f = e.func
            if isinstance(f, ast.Attribute):
                if is_module(f.value) and f.attr in stubs.members:
                    return f.attr
                if owner := type_of(f.value):
                    return stubs.returns.get((owner, f.attr))
            return None
        if isinstance(e, ast.Attribute) and (owner := type_of(e.value)) and key(e) not in types:
            return stubs.returns.get((owner, e.attr))
        return types.get(key(e))

    funcs = {n.name: n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    for func in funcs.values():  # parameters annotated with a TensorRT class (``config: trt.IBuilderConfig``), for
        for arg in func.args.args:  # callbacks that a library (Polygraphy) calls, so no call site here types them
            ann = arg.annotation
            if isinstance(ann, ast.Attribute) and is_module(ann.value) and ann.attr in stubs.members:
                types[arg.arg] = ann.attr
    for _ in range(4):  # to a fixed point: types flow through assignments and same-module calls
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign):
                pairs = [(t, node.value) for t in node.targets]
                if isinstance(node.targets[0], ast.Tuple) and isinstance(node.value, ast.Tuple):
                    pairs = list(zip(node.targets[0].elts, node.value.elts))
                for target, value in pairs:
                    if is_module(value) and key(target):
                        modules.add(key(target))
                    elif (cls := type_of(value)) and key(target):
                        types[key(target)] = cls
            elif isinstance(node, ast.Call) and (name := getattr(node.func, "attr", getattr(node.func, "id", None))) in funcs:
                params = [a.arg for a in funcs[name].args.args if a.arg != "self"]
                for param, arg in zip(params, node.args):
                    if cls := type_of(arg):
                        types[param] = cls

    def gated(node) -> bool:
        while node in parents:
            node = parents[node]
            if isinstance(node, (ast.If, ast.IfExp)) and GATE.search(ast.unparse(node.test)):
                return True
        return False

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "getattr" and len(node.args) == 3 \
                and isinstance(node.args[1], ast.Constant):  # getattr(x, "name", default): a feature test
            target, name = node.args[0], node.args[1].value
            owner = None if is_module(target) else (target.attr if isinstance(target, ast.Attribute)
                                                    and is_module(target.value) else type_of(target))
            if owner or is_module(target):
                found.append((node.lineno, owner, name, True))
        elif isinstance(node, ast.Attribute):  # loads, and stores such as config.builder_optimization_level = 3
            if is_module(node.value):
                found.append((node.lineno, None, node.attr, gated(node)))
            elif isinstance(node.value, ast.Attribute) and is_module(node.value.value) and node.value.attr[:1].isupper():
                found.append((node.lineno, node.value.attr, node.attr, gated(node)))
            elif owner := type_of(node.value):
                found.append((node.lineno, owner, node.attr, gated(node)))
    return found


def problems(found, trt11: Api, trt10: Api) -> list[str]:
    out = []
    for line, owner, name, is_gated in found:
        label = f"line {line}: {owner + '.' if owner else 'tensorrt.'}{name}"
        in11, in10 = trt11.has(owner, name), trt10.has(owner, name)
        if not (in11 or in10):
            out.append(f"{label} is in neither TensorRT 11 nor 10.x")
        elif in10 and not in11 and not is_gated:
            out.append(f"{label} is gone in TensorRT 11: use it under a version gate")
    return out
