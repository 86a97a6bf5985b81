"""Render the config reference (README "Config reference") from the dataclasses' field docstrings.

    python -m sdft.config.reference > /tmp/ref.md

A test checks that README.md contains this text verbatim, so docs and code cannot drift apart.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect

from sdft.config import schema

SECTIONS = [("", schema.RunConfig), ("model", schema.ModelConfig), ("data", schema.DataConfig),
            ("distill", schema.DistillConfig), ("filter", schema.FilterConfig), ("train", schema.TrainConfig),
            ("eval", schema.EvalConfig), ("export", schema.ExportConfig)]


def field_docs(cls: type) -> dict[str, str]:
    """The string literal under each field of a dataclass, joined to one line."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    else:
        value = f.default_factory()
    return "`" + repr(value).replace("|", "\\|") + "`"


def render() -> str:
    lines = []
    for name, cls in SECTIONS:
        docs = field_docs(cls)
        lines += [f"**{name or 'top level'}**" + (f" ({' '.join((cls.__doc__ or '').split())})" if name else ""), "",
                  "| option | default | meaning |", "|---|---|---|"]
        for f in dataclasses.fields(cls):
            if not name and f.name in {s for s, _ in SECTIONS}:  # a section, listed on its own
                continue
            key = f"{name}.{f.name}" if name else f.name
            doc = docs.get(f.name, "").replace("|", "\\|")
            lines.append(f"| `{key}` | {_default(f)} | {doc} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render())
