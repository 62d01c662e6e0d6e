"""Import direction: no module imports from a layer above its own (sgkernels/layers.py LAYERS).

Every import statement of every .py under sgkernels/ and benchmarks/ counts, at module level or
inside a function, class or `if TYPE_CHECKING:` block, and so does importlib.import_module with a
literal name. Relative imports are resolved against the file's package; `from P import n` is
module P.n when that is a module of the repository or a LAYERS entry, the module the root
facade's _LAZY maps n to for P = sgkernels, otherwise P.
"""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

import sgkernels
from sgkernels.layers import LAYERS

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sgkernels", "benchmarks")
# Known upward imports, each failing strictly until fixed (then the mark must go); none at present.
KNOWN_UPWARD = {}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    """A module or package (benchmarks/ has no __init__.py) of the repository, or a LAYERS entry
    (sgkernels._C is compiled from csrc/, absent from a source tree)."""
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or path.is_dir() or name in ENTRIES


def _layer(name: str) -> int | None:
    """Index in LAYERS of the longest entry equal to `name` or a package above it; "sgkernels"
    matches the root package only."""
    best, index = "", None
    for i, entries in enumerate(LAYERS):
        for entry in entries:
            exact_only = entry == "sgkernels"
            if (name == entry or (not exact_only and name.startswith(entry + "."))) \
                    and len(entry) > len(best):
                best, index = entry, i
    return index


def _imports(path: Path):
    """(line, imported module) of every import of a repository module in `path`."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module
            names = []
            for alias in node.names:
                if _is_module(f"{base}.{alias.name}"):
                    names.append(f"{base}.{alias.name}")
                elif base == "sgkernels" and alias.name in sgkernels._LAZY:
                    names.append(sgkernels._LAZY[alias.name])
                else:
                    names.append(base)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            names = [node.args[0].value]
        else:
            continue
        for name in names:
            if name.split(".")[0] in PACKAGES:
                yield node.lineno, name


ENTRIES = {e for layer in LAYERS for e in layer}
FILES = sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def _param(path: Path):
    rel = path.relative_to(ROOT).as_posix()
    if rel not in KNOWN_UPWARD:
        return pytest.param(path, id=rel)
    return pytest.param(path, id=rel, marks=pytest.mark.xfail(strict=True, reason=KNOWN_UPWARD[rel]))


@pytest.mark.parametrize("path", [_param(p) for p in FILES])
def test_no_import_goes_up_a_layer(path):
    module = _module_name(path)
    own = _layer(module)
    assert own is not None, f"{module} is in no layer of sgkernels/layers.py LAYERS"
    upward = []
    for line, name in _imports(path):
        target = _layer(name)
        assert target is not None, f"{path.relative_to(ROOT)}:{line}: {name} is in no layer"
        if target > own:
            upward.append(f"{path.relative_to(ROOT)}:{line}: {module} (layer {own}: "
                          f"{', '.join(LAYERS[own])}) imports {name} (layer {target}: "
                          f"{', '.join(LAYERS[target])})")
    assert not upward, "imports going up a layer (sgkernels/layers.py):\n" + "\n".join(upward)


def test_layer_list_is_consistent():
    entries = [e for layer in LAYERS for e in layer]
    assert len(entries) == len(set(entries)), "an entry is listed in two layers"
    for entry in entries:
        path = ROOT.joinpath(*entry.split("."))
        assert entry == "sgkernels._C" or path.with_suffix(".py").is_file() or path.is_dir(), \
            f"LAYERS entry {entry} is not a module of the repository"
    assert KNOWN_UPWARD.keys() <= {p.relative_to(ROOT).as_posix() for p in FILES}
    for path in FILES:      # no module falls back to the root facade's layer
        module = _module_name(path)
        assert module == "sgkernels" or not module.startswith("sgkernels.") or any(
            module == e or module.startswith(e + ".") for e in entries if e != "sgkernels"), module


def test_eval_imports_nothing_from_train():
    code = ("import sys, sgkernels.eval; "
            "print(' '.join(m for m in sys.modules if m.startswith('sgkernels.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT).stdout.split()
    assert "sgkernels.eval" in out
    assert not [m for m in out if m == "sgkernels.train" or m.startswith("sgkernels.train.")], out
