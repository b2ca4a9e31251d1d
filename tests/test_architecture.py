"""The package's shape, checked from its source (ast): the import rules of docs/architecture.md,
one definition per on-disk name, and every imported distribution declared."""

from __future__ import annotations

import ast
import sys
import tomllib
from collections import defaultdict
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "histosynth"

# Pipeline order: a stage may import core modules and the stages before it, never one after it.
STAGES = ("slides", "reports", "text", "latents", "train", "sample", "evaluate", "serve", "experiments")
# convert imports only core modules: it writes a run folder that sample/evaluate/train read.
ISOLATED_STAGES = ("convert",)
# The command-line entry point registers every stage's commands (their light cli.py modules).
ENTRY_POINTS = ("histosynth.cli",)

pytestmark = pytest.mark.unit


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path) -> set[str]:
    """Every histosynth module `name` imports, at any depth of the file (lazy imports count too)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("histosynth")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("histosynth"):
                continue
            for alias in node.names:  # `from . import x` may name a module
                candidate = f"{target}.{alias.name}"
                found.add(candidate if candidate in modules() else target)
    return found


def stage_of(name: str) -> str | None:
    parts = name.split(".")
    if len(parts) > 1 and parts[1] in STAGES + ISOLATED_STAGES:
        return parts[1]
    return None


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: {i for i in imports_of(name, path) if i in mods} for name, path in mods.items()}


def test_core_modules_import_no_stage():
    bad = [f"{name} imports {dep}" for name, deps in graph().items()
           if stage_of(name) is None and name not in ENTRY_POINTS
           for dep in deps if stage_of(dep) is not None]
    assert not bad, "core modules must not import stages:\n" + "\n".join(bad)


def test_stages_import_only_earlier_stages():
    bad = []
    for name, deps in graph().items():
        own = stage_of(name)
        if own is None:
            continue
        for dep in deps:
            other = stage_of(dep)
            if other is None or other == own:
                continue
            if own in ISOLATED_STAGES or other in ISOLATED_STAGES or STAGES.index(other) > STAGES.index(own):
                bad.append(f"{name} ({own}) imports {dep} ({other})")
    assert not bad, "a stage may import only core modules and earlier stages:\n" + "\n".join(bad)


def test_no_import_cycles():
    g = graph()
    # package __init__ files re-exporting their own children are not cycles worth reporting
    edges = {n: {d for d in deps if not n.startswith(d + ".") and not d.startswith(n + ".")} for n, deps in g.items()}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []
    counter = [0]

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in edges:
        if v not in index:
            visit(v)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


# ---- one definition per on-disk name ------------------------------------------------------------
# Each file or folder name of a workspace or a run folder is spelled once in src/ (as a string
# literal outside docstrings); everything else asks Workspace / RunFolder for the path.
ON_DISK_NAMES = (
    "histosynth.yaml", "split.json", "index.parquet", "reports.parquet", "links.json", "cache.sqlite",
    "model_index.json", "condition.json", "text_encoder.json", "unet_ema", "checkpoints", "thumbnails",
    "eval-cache", "ablation", "loss.csv", "status.json",
)
# Names that happen to match but belong to another tool's layout.
FOREIGN = {("checkpoints", "histosynth.evaluate.inception")}  # torch.hub's cache folder


def string_literals(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = getattr(node, "body", [])
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            out.append(node.value)
        elif isinstance(node, ast.JoinedStr):  # f-strings: their literal parts
            out += [v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str)]
    return out


def test_every_on_disk_name_is_defined_once():
    where = defaultdict(list)
    for name, path in modules().items():
        for literal in string_literals(path):
            for disk_name in ON_DISK_NAMES:
                if (literal == disk_name or literal.strip("/") == disk_name) and (disk_name, name) not in FOREIGN:
                    where[disk_name].append(name)
    repeated = {k: v for k, v in where.items() if len(v) > 1}
    assert not repeated, "defined more than once: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in repeated.items())


# ---- every imported distribution is declared --------------------------------------------------------
def third_party_imports() -> set[str]:
    std = set(sys.stdlib_module_names)
    found = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                found.add(node.module.split(".")[0])
    return {m for m in found if m not in std and m != "histosynth" and m != "__future__"}


def _normal(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def test_every_imported_distribution_is_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_normal(d.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].split("!")[0].strip())
                for d in project["dependencies"] + [x for extra in project.get("optional-dependencies", {}).values()
                                                      for x in extra]}
    distributions = metadata.packages_distributions()
    undeclared = []
    for module in sorted(third_party_imports()):
        dists = {_normal(d) for d in distributions.get(module, [])}
        if not dists:
            undeclared.append(f"{module} (not installed)")
        elif not dists & declared:
            undeclared.append(f"{module} (from {', '.join(sorted(dists))})")
    assert not undeclared, "imported but not declared in pyproject.toml: " + ", ".join(undeclared)
