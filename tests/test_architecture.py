"""The structure drawn from the imports: every arrow points down the layers of ARCHITECTURE.md.

Every `import` in `lune_hf/` counts, the ones inside functions too (a lazy import is still a dependency). A module
belongs to a room (its first package component; `testing.*` modules each are their own room); a room may import
its own layer and the layers below, never a higher one.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lune_hf"

# Lowest first. The same list, drawn, is in ARCHITECTURE.md.
LAYERS: list[set[str]] = [
    {"objectives", "snapshot", "metrics", "commitment", "_version", "testing.smollm2"},  # pure math, weights, hashes
    {"data", "logits", "outcome"},  # rows -> tensors, answer-only logits, verdicts
    {"config", "evaluation", "report", "finetune", "testing.synthetic"},  # settings, scoring, reports, SFT loop
    {"evaluator", "probes", "card"},  # one Evaluator; attacks measured with it; the model card from a report
    {"callbacks", "hub"},  # checks during training; publish / load (reads saved folders, never the trainer)
    {"trainer", "verify"},  # LuneTrainer; verify (loads through the hub, never the trainer)
    {"memory", "demo", "tofu"},  # what stands on the trainer
    {"cli"},  # the command line
    {"__init__", "__main__"},  # the package's front door
]


def room(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "testing" else parts[0]


def layer(name: str) -> int:
    for i, rooms in enumerate(LAYERS):
        if name in rooms:
            return i
    raise AssertionError(f"room {name!r} is in no layer of LAYERS: place it")


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path) -> set[str]:
    """The lune_hf modules that `name` imports (absolute or relative, at any depth of the file)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name.removeprefix("lune_hf.") for a in node.names if a.name.startswith("lune_hf.")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            elif node.module and node.module.startswith("lune_hf"):
                target = node.module.removeprefix("lune_hf").lstrip(".")
            else:
                continue
            names = {f"{target}.{a.name}" if target else a.name for a in node.names}
            known = modules()
            out |= {n for n in names if n in known} or {target or "__init__"}
    return {m for m in out if m}


def graph() -> dict[str, set[str]]:
    return {name: imports(name, path) for name, path in modules().items()}


def test_every_arrow_points_down():
    upward = []
    for source, targets in graph().items():
        for target in targets:
            if room(target) == room(source):
                continue
            if layer(room(target)) > layer(room(source)):
                upward.append(f"{source} -> {target}")
    assert not upward, "imports from a lower layer to a higher one: " + ", ".join(sorted(upward))


def test_no_module_imports_both_the_trainer_and_the_hub():
    both = [m for m, targets in graph().items() if {room(t) for t in targets} >= {"trainer", "hub"}]
    assert not both, f"modules importing both the trainer and the hub: {both}"


def test_the_check_sees_lazy_and_relative_imports():
    """The parser above is what the two tests rely on: it must see imports inside functions and `..` ones."""
    g = graph()
    assert "hub" in g["trainer"]  # `push_to_hub` imports `hub.publish` inside the method
    assert "trainer" in g["tofu.train"]  # `from ..trainer import LuneTrainer` inside `unlearn`
    assert "metrics.functional" in g["tofu.evaluate"] or "metrics" in g["tofu.evaluate"]
