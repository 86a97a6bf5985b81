"""The project installs under its own names, ``sdft`` and ``sdft_kernels`` (from kernels/sdft_kernels/),
with the DeepSpeed configs as package data; and its kernels/ folder never stands in for the PyPI
``kernels`` package, which transformers and bitsandbytes import when it exists."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import tomllib

from tests.conftest import REPO, free_port

KERNELS_PYPI = "kernels==0.17.2"  # the hub-kernels loader that transformers and bitsandbytes look for


def test_every_package_folder_is_listed_in_pyproject():
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "sdft").rglob("__init__.py")}
    assert found | {"sdft_kernels", "sdft.distributed.ds_configs"} == set(setuptools["packages"])
    assert setuptools["package-dir"] == {"sdft_kernels": "kernels/sdft_kernels", "sdft.distributed.ds_configs": "ds_configs"}
    assert not (REPO / "kernels" / "__init__.py").exists()  # kernels/ is a plain folder, never a package


def _build_wheel(tmp_path: Path) -> Path:
    # Build from a copy: setuptools builds in the source tree and would leave build/ in the repo.
    src, wheel_dir = tmp_path / "src", tmp_path / "wheel"
    for name in ("sdft", "kernels", "ds_configs"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(wheel_dir), str(src)], check=True, capture_output=True, timeout=300)
    return next(wheel_dir.glob("sdft-*.whl"))


def _fresh_venv(root: Path, wheel: Path) -> Path:
    """A new venv with the wheel installed in it; the heavy dependencies (torch, deepspeed, ...) are
    borrowed from this interpreter's site-packages through a .pth line, which adds the folder without
    running its .pth files (so this checkout's editable install stays out)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    python = root / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "borrowed-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    return python


def _clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
            "DS_ACCELERATOR": "cpu", **extra}


@pytest.mark.slow
@pytest.mark.distributed
def test_a_wheel_in_a_fresh_venv_trains_on_two_ranks_with_a_shipped_deepspeed_config(tmp_path, tiny_config):
    """Outside the repository, a non-editable install finds ds_configs/ (as package data): a 2-rank
    ``sdft train train.deepspeed=zero2`` runs."""
    wheel = _build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if not n.startswith("sdft-")} == {"sdft", "sdft_kernels"}
    assert {"sdft/distributed/ds_configs/zero2.json", "sdft/distributed/ds_configs/zero3.json",
            "sdft/eval/data/harmful_requests.jsonl"} <= set(names)
    python = _fresh_venv(tmp_path / "fresh", wheel)
    where = tmp_path / "elsewhere"
    where.mkdir()
    env = _clean_env()
    probe = subprocess.run([str(python), "-c", "import sdft, sdft_kernels; from sdft.distributed.deepspeed import "
                            "shipped_configs; print(sdft.__file__); print(shipped_configs()['zero2'])"],
                           capture_output=True, text=True, cwd=where, env=env, timeout=120)
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert all(line.startswith(str(tmp_path / "fresh")) for line in probe.stdout.splitlines())

    path, out = tiny_config(train={"max_steps": 2, "save_every": 0})
    sdft = [str(python), "-m", "sdft"]
    res = subprocess.run([*sdft, "distill", str(path)], capture_output=True, text=True, cwd=where, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    res = subprocess.run([str(python), "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
                          "-m", "sdft", "train", str(path), "train.deepspeed=zero2"],
                         capture_output=True, text=True, cwd=where, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((out / "train" / "ds_config.json").read_text())["zero_optimization"]["stage"] == 2
    record = json.loads((out / "train" / "COMPLETE.json").read_text())
    assert record["world_size"] == 2 and record["summary"]["zero_stage"] == 2


def _python(code: str, **env) -> subprocess.CompletedProcess:
    """``python -c`` at the repository root (the repository is then first on sys.path)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env=_clean_env(**env), timeout=300)


@pytest.mark.slow
def test_the_installed_kernels_package_wins_at_the_repository_root(tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), KERNELS_PYPI],
                   check=True, capture_output=True, timeout=300)
    res = _python("import kernels, sdft_kernels; print(kernels.__file__); print(hasattr(kernels, 'get_kernel')); "
                  "print(sdft_kernels.__file__)", PYTHONPATH=str(site))
    assert res.returncode == 0, res.stderr[-2000:]
    real, has_get_kernel, ours = res.stdout.splitlines()
    assert real == str(site / "kernels" / "__init__.py") and has_get_kernel == "True"
    assert ours == str(REPO / "kernels" / "sdft_kernels" / "__init__.py")


def test_without_the_kernels_package_nothing_of_ours_is_imported_as_kernels():
    """With no ``kernels`` installed, the folder is at most an empty namespace (no code of ours runs),
    which transformers does not take for the package, and bitsandbytes' probe fails as when it is absent."""
    res = _python("import kernels; print(getattr(kernels, '__file__', None)); print(hasattr(kernels, 'get_kernel')); "
                  "from transformers.utils.import_utils import is_kernels_available; print(is_kernels_available()); "
                  "import bitsandbytes")
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.splitlines() == ["None", "False", "False"]
    assert str(REPO / "kernels") not in res.stderr
