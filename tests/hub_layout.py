"""Local folders laid out like hub data set repositories, so the hub code path runs offline:
``datasets.load_dataset(<folder>, <config>, split=...)`` reads them exactly as it reads a repository."""

from __future__ import annotations

import json
from pathlib import Path


def write_hub_repo(root: Path, files: dict[str, list[dict]], configs: dict[str, dict[str, str]] | None = None) -> Path:
    """Write ``files`` (repository path -> rows; .parquet, .jsonl or .json by suffix) under ``root`` and,
    with ``configs`` (config name -> {split: path glob}), the README.md card that declares them."""
    for rel, rows in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".parquet"):
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(rows), path)
        elif rel.endswith(".jsonl"):
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        else:
            path.write_text(json.dumps(rows))
    if configs:
        lines = ["---", "configs:"]
        for name, splits in configs.items():
            lines += [f"- config_name: {name}", "  data_files:"]
            lines += [f"  - split: {split}\n    path: {glob}" for split, glob in splits.items()]
        (root / "README.md").write_text("\n".join(lines + ["---", ""]))
    return root


def hub(root: Path, **query: str) -> str:
    """The ``hub:`` spec of a local repository folder."""
    return f"hub:{root}" + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")
