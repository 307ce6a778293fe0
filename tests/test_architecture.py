"""The package's layout rules, checked on its source: no import cycle among modules, nothing imports
a layer above its own, no module over 500 lines, and every SplitDiT attribute in exactly one part."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "sddit"

# Bottom to top. A module may import modules of its own layer or below, never above.
LAYERS = [
    {"errors", "seeding", "runtime", "distributed"},
    {"config", "config_files", "config_values", "checkpoint"},
    {"models"},
    {"diffusion", "data"},
    {"objectives", "pretrained"},
    {"sampling"},
    {"eval"},
    {"train"},
    {"cli", "cli_args", "cli_parser", "api", "__init__"},
]
MAX_LINES = 500


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """sddit modules `path` imports (absolute names), from `import` and `from ... import` anywhere in it."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "sddit":
                continue
            for alias in node.names:  # `from . import x` / `from .models import vae` name modules too
                sub = f"{target}.{alias.name}"
                found.add(
                    sub
                    if (PACKAGE.parent / sub.replace(".", "/")).with_suffix(".py").exists()
                    or (PACKAGE.parent / sub.replace(".", "/")).is_dir()
                    else target
                )
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "sddit"}
    found.discard(me)
    return found


def graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    names = {module_name(f) for f in files}
    return {module_name(f): {t for t in imports_of(f) if t in names} for f in files}


def layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    return next(i for i, group in enumerate(LAYERS) if top in group)


def test_every_module_has_a_layer():
    for name in graph():
        layer(name)  # StopIteration (a failure) for a module no layer lists


def test_nothing_imports_upward():
    bad = [
        f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
        for a, targets in graph().items()
        for b in targets
        if layer(b) > layer(a)
    ]
    assert not bad, "\n".join(bad)


def test_no_import_cycle():
    g = graph()
    # A package's __init__ re-exports its modules, and those import siblings through the package
    # name only when they mean a sibling module; an edge to a package __init__ from inside it is a cycle.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(g[n]):
            if state.get(m) == 1:
                cycle = stack[stack.index(m) :] + [m]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(g):
        if n not in state:
            visit(n)


def test_the_cycle_check_can_fail(tmp_path, monkeypatch):
    """The checker itself: a two-module cycle written to disk is found."""
    pkg = tmp_path / "sddit"
    (pkg / "a").mkdir(parents=True)
    (pkg / "a" / "__init__.py").write_text("")
    (pkg / "a" / "x.py").write_text("from .y import f\n")
    (pkg / "a" / "y.py").write_text("from sddit.a.x import g\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", pkg)
    assert graph()["sddit.a.x"] == {"sddit.a.y"} and graph()["sddit.a.y"] == {"sddit.a.x"}


def test_no_module_over_500_lines():
    long = {
        str(f.relative_to(PACKAGE)): n
        for f in PACKAGE.rglob("*.py")
        if (n := len(f.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"split these modules: {long}"


def test_every_splitdit_attribute_belongs_to_exactly_one_part():
    from sddit.models.split import PARTS, SplitDiT

    with torch.device("meta"):
        model = SplitDiT(
            input_size=8,
            patch_size=2,
            in_channels=1,
            hidden_size=32,
            encoder_depth=2,
            decoder_depth=1,
            num_heads=2,
            num_classes=10,
            head_dim=16,
            head_hidden_dim=16,
            head_bottleneck_dim=8,
            decoder_hidden_size=24,
        )
    tops = {name.split(".", 1)[0] for name, _ in model.named_parameters()}
    tops |= {name for name, _ in model.named_children()}
    owners = {t: [p for p, names in PARTS.items() if t in names] for t in tops}
    assert all(len(o) == 1 for o in owners.values()), owners
