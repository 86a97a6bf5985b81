"""Render the config reference (``docs/config-reference.md``) from the dataclasses' field docstrings.

    python -m sdft.config.reference > docs/config-reference.md

A test checks that the file is this text, so docs and code cannot drift apart.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect

from sdft.config import schema


def field_docs(cls: type) -> dict[str, str]:
    """The string literal under each field of a dataclass, joined to one line."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def sections(obj, name: str = "", doc: str = "") -> list[tuple[str, object, str]]:
    """``(dotted name, default instance, description)`` of the config and of every section in it,
    depth first. A section's defaults are its parent's (``eval.sampling`` is greedy, distill's is not)."""
    out = [(name, obj, doc or " ".join((type(obj).__doc__ or "").split()))]
    docs = field_docs(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            own = " ".join((type(value).__doc__ or "").split())
            out += sections(value, f"{name}.{f.name}" if name else f.name, " ".join(filter(None, [own, docs.get(f.name)])))
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render() -> str:
    lines = []
    for name, section, doc in sections(schema.RunConfig()):
        docs = field_docs(type(section))
        lines += [f"**{name or 'top level'}**" + (f" ({doc})" if name else ""), "",
                  "| option | default | meaning |", "|---|---|---|"]
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            if dataclasses.is_dataclass(value):  # a section, listed on its own
                continue
            key = f"{name}.{f.name}" if name else f.name
            lines.append(f"| `{key}` | `{_cell(repr(value))}` | {_cell(docs.get(f.name, ''))} |")
        lines.append("")
    return "\n".join(lines)


PAGE_HEAD = """# Config reference

Every option of a run's YAML file (or a `key=value` override on the command line), generated from the
dataclasses in `sdft/config/schema.py`: `python -m sdft.config.reference > docs/config-reference.md`
(a test checks that this page is current).
"""


def page() -> str:
    """The whole ``docs/config-reference.md``."""
    return PAGE_HEAD + "\n" + render()


if __name__ == "__main__":
    print(page(), end="")
