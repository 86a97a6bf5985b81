"""The layering of docs/architecture.md, read from the source (ast, nothing is run): a module imports only
modules of its own layer or below, no stage package imports another, and no two modules import each other
in a cycle. A new module must be given a layer here, as in the document."""

import ast
from pathlib import Path

from tests.conftest import REPO

# Bottom to top; a module may import its own layer and the ones below. Names are module prefixes.
LAYERS = [
    ["sdft.errors", "sdft.layout", "sdft.utils", "sdft.gates", "sdft.templates"],
    ["sdft.config"],
    ["sdft.data", "sdft.distributed", "sdft.models", "sdft.tracking"],
    ["sdft.context", "sdft.run_record", "sdft.run_folder"],
    ["sdft.distill", "sdft.filter", "sdft.train", "sdft.eval", "sdft.export"],
    ["sdft.pipeline", "sdft.compare", "sdft.plan"],
    ["sdft.cli", "sdft.__main__"],
]
STAGES = {"sdft.distill", "sdft.filter", "sdft.train", "sdft.eval", "sdft.export"}
# sdft/__init__.py holds only the version; it is importable from anywhere.
ROOT = "sdft"


def _modules() -> dict[str, Path]:
    mods = {}
    for p in (REPO / "sdft").rglob("*.py"):
        name = ".".join(p.relative_to(REPO).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = p
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            out |= {base} | {f"{base}.{a.name}" for a in node.names}
    return {m for m in out if m in mods and m != name}


def _group(name: str) -> tuple[int, str]:
    for level, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if name == prefix or name.startswith(prefix + "."):
                return level, prefix
    raise AssertionError(f"{name} has no layer: add it to LAYERS here and to docs/architecture.md")


def test_every_import_goes_down_the_layers_and_stages_do_not_meet():
    mods = _modules()
    bad = []
    for name, path in mods.items():
        if name == ROOT:
            continue
        level, group = _group(name)
        for dep in _imports(name, path, mods):
            if dep == ROOT:
                continue
            dep_level, dep_group = _group(dep)
            if dep_level > level:
                bad.append(f"{name} (layer {level}) imports {dep} (layer {dep_level})")
            if group in STAGES and dep_group in STAGES and group != dep_group:
                bad.append(f"stage {group} imports stage {dep_group}: {name} -> {dep}")
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    mods = _modules()
    graph = {n: _imports(n, p, mods) - {ROOT} for n, p in mods.items()}
    # Package __init__ re-exports make a package and its modules import each other; not a cycle of code.
    graph = {n: {d for d in deps if mods[d].name != "__init__.py"} for n, deps in graph.items()}
    done, on_path = set(), []

    def visit(n):
        if n in on_path:
            raise AssertionError("import cycle: " + " -> ".join(on_path[on_path.index(n):] + [n]))
        if n in done:
            return
        on_path.append(n)
        for d in sorted(graph[n]):
            visit(d)
        on_path.pop()
        done.add(n)

    for n in sorted(graph):
        visit(n)


def test_the_architecture_document_names_every_layer():
    text = (REPO / "docs" / "architecture.md").read_text()
    table = [line for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(table) == len(LAYERS)
    for level, prefixes in enumerate(LAYERS):
        row = next(line for line in table if line.startswith(f"| {level} "))
        for prefix in prefixes:
            shown = prefix.removeprefix("sdft.")
            assert f"`{shown}`" in row or f"`{shown}/`" in row, f"docs/architecture.md: layer {level} lacks {prefix}"


def test_compare_evaluates_through_the_public_evaluation_api():
    """``sdft compare`` uses what ``sdft/eval/__init__.py`` exports, never the evaluation's modules."""
    mods = _modules()
    deep = {name: sorted(m for m in _imports(name, path, mods) if m.startswith("sdft.eval."))
            for name, path in mods.items() if name.startswith("sdft.compare")}
    assert not any(deep.values()), deep
