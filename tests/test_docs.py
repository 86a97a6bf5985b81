"""The README and docs/ state what the code does: links resolve, every command line they show parses and
its config loads (options validated), every option and repository path they name exists, and the config
reference is the one the code generates."""

from __future__ import annotations

import dataclasses
import re
import shlex

import pytest

from sdft.cli import COMMANDS
from sdft.config import load_config
from sdft.config.loader import MOVED
from sdft.config.reference import page
from sdft.config.schema import RunConfig
from tests.conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PAGE_IDS = [str(p.relative_to(REPO)) for p in PAGES]
# Where a shown command names its config: after the sdft command, or after a launcher and the command.
LAUNCHERS = ("sdft", "launch/torchrun.sh", "launch/deepspeed.sh", "launch/slurm/sdft.sbatch")
FILE_TYPES = {"json", "jsonl", "yaml", "md", "py", "txt", "csv", "sh", "png"}
REPO_DIRS = ("examples/", "ds_configs/", "launch/", "benchmarks/", "sdft/", "kernels/", "tests/", "docs/")


def _sections() -> set[str]:
    cfg = RunConfig()
    return {f.name for f in dataclasses.fields(cfg) if dataclasses.is_dataclass(getattr(cfg, f.name))}


def _resolves(dotted: str) -> bool:
    obj = RunConfig()
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(obj) or part not in {f.name for f in dataclasses.fields(obj)}:
            return False
        obj = getattr(obj, part)
    return True


def _prose_and_code(text: str) -> tuple[str, list[str]]:
    """The text outside fenced blocks, and the fenced blocks' logical lines (continuations joined)."""
    prose, code, fenced = [], [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif fenced:
            code.append(line)
        else:
            prose.append(line)
    joined = re.sub(r"\\\n\s*", " ", "\n".join(code)).splitlines()
    return "\n".join(prose), joined


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _commands(lines: list[str]) -> list[tuple[str, str, list[str]]]:
    """(command, config, overrides) of every sdft command line shown, launchers included."""
    found = []
    for line in lines:
        line = line.split(" #")[0].strip()
        if not line or line.startswith("#"):
            continue
        words = shlex.split(line.replace("'", ""))
        launched = False
        for i, w in enumerate(words[:-1]):
            launched = launched or w.split("=")[-1] in LAUNCHERS
            if launched and w in COMMANDS and words[i + 1].endswith(".yaml"):
                found.append((w, words[i + 1], [x for x in words[i + 2:] if re.match(r"[a-z_][\w.]*=", x)]))
                launched = False
    return found


def test_config_reference_is_current():
    assert (REPO / "docs" / "config-reference.md").read_text() == page(), \
        "regenerate: python -m sdft.config.reference > docs/config-reference.md"


def test_readme_is_a_front_page_and_its_test_command_is_what_ci_runs():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    assert "python -m pytest -q tests" in readme and "python -m pytest -q tests" in (REPO / ".ci" / "run").read_text()
    assert readme.index('-m "not slow"') < readme.index("python -m pytest -q tests\n")  # the fast tier first
    for doc in (REPO / "docs").glob("*.md"):
        assert f"(docs/{doc.name})" in readme, f"README's table of contents lacks docs/{doc.name}"


@pytest.mark.parametrize("path", PAGES, ids=PAGE_IDS)
def test_links_resolve(path):
    prose, _ = _prose_and_code(path.read_text())
    for target in re.findall(r"\]\(([^)\s]+)\)", prose):
        if re.match(r"[a-z]+://", target):
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        assert dest.exists(), f"{path.name}: link to {target}: no such file"
        if anchor and dest.suffix == ".md":
            slugs = {_slug(h) for h in re.findall(r"^#+ (.+)$", _prose_and_code(dest.read_text())[0], re.M)}
            assert anchor in slugs, f"{path.name}: link to {target}: no such heading in {dest.name}"


@pytest.mark.parametrize("path", PAGES, ids=PAGE_IDS)
def test_options_named_exist(path):
    sections = _sections()
    for dotted in set(re.findall(r"`([a-z_]+(?:\.[a-z_0-9]+)+)(?:[=:][^`]*)?`", path.read_text())):
        if dotted.split(".")[0] in sections and dotted not in MOVED and dotted.rsplit(".", 1)[1] not in FILE_TYPES:
            assert _resolves(dotted), f"{path.name}: `{dotted}` is not an option"


@pytest.mark.parametrize("path", PAGES, ids=PAGE_IDS)
def test_repository_paths_named_exist(path):
    for name in set(re.findall(r"`((?:" + "|".join(map(re.escape, REPO_DIRS)) + r")[\w./-]*)`", path.read_text())):
        if "<" not in name and "*" not in name:
            assert (REPO / name).exists(), f"{path.name}: `{name}` does not exist"


@pytest.mark.parametrize("path", PAGES, ids=PAGE_IDS)
def test_command_lines_shown_load_their_config(path, monkeypatch):
    """Each command line's config loads with its overrides (every key and value validated); a placeholder
    config (``my.yaml``) stands for any: its overrides are checked on the tiny example."""
    monkeypatch.chdir(REPO)
    _, code = _prose_and_code(path.read_text())
    for command, config, overrides in _commands(code):
        file = REPO / config if (REPO / config).exists() else REPO / "examples" / "tiny.yaml"
        shown = [o for o in overrides if not o.startswith(("NNODES", "NODE_RANK", "MASTER_ADDR"))]
        try:
            load_config(file, shown)
        except Exception as e:  # noqa: BLE001 -- the message names the page and line
            pytest.fail(f"{path.name}: sdft {command} {config} {' '.join(shown)}: {e}")


def test_the_command_scan_sees_launcher_lines_and_continuations():
    text = "\n".join(["```bash", "launch/torchrun.sh --nproc 8 run examples/quickstart.yaml train.deepspeed=zero2 \\",
                      "    train.lr=1e-4   # a comment", "sdft config CONFIG.yaml [key=value ...]",
                      "sbatch --nodes=1 launch/slurm/sdft.sbatch compare examples/paper/gsm8k.yaml compare.arms=[a,b]",
                      "```"])
    assert _commands(_prose_and_code(text)[1]) == [
        ("run", "examples/quickstart.yaml", ["train.deepspeed=zero2", "train.lr=1e-4"]),
        ("config", "CONFIG.yaml", []), ("compare", "examples/paper/gsm8k.yaml", ["compare.arms=[a,b]"])]
