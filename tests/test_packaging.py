"""The project installs under its own names: ``sdft`` and ``sdft_kernels`` (from kernels/), and never
``kernels``, which transformers and bitsandbytes import when it exists (the PyPI hub-kernels package)."""

import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest

from tests.conftest import REPO


def test_every_package_folder_is_listed_in_pyproject():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "sdft").rglob("__init__.py")}
    assert found | {"sdft_kernels"} == listed


@pytest.mark.slow
def test_installed_project_imports_and_does_not_shadow_the_kernels_package(tmp_path):
    wheel_dir, target, fake, src = tmp_path / "wheel", tmp_path / "site", tmp_path / "other", tmp_path / "src"
    # Build from a copy: setuptools builds in the source tree and would leave build/ in the repo.
    for name in ("sdft", "kernels"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(wheel_dir), str(src)], check=True, capture_output=True, timeout=300)
    wheel = next(wheel_dir.glob("sdft-*.whl"))
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist() if not name.startswith("sdft-")}
    assert tops == {"sdft", "sdft_kernels"}
    assert "sdft/eval/data/harmful_requests.jsonl" in zipfile.ZipFile(wheel).namelist()
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    # A stand-in for the PyPI "kernels" package, importable next to the installed project.
    (fake / "kernels").mkdir(parents=True)
    (fake / "kernels" / "__init__.py").write_text("MARK = 'the real kernels package'\n")
    code = ("import kernels, sdft_kernels, sdft.eval.safety as s; "
            "print(kernels.MARK); print(sdft_kernels.__file__); print(s.SHIPPED_REQUESTS.exists())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                         env={"PYTHONPATH": f"{target}:{fake}", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    mark, path, data = out.stdout.splitlines()
    assert mark == "the real kernels package" and path.startswith(str(target)) and data == "True"
