"""A deferred MLflow costs nothing until used (DeepSpeed imports it in every process) and works when used."""

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

_SCRIPT = """
import sys
from sdft.tracking.lazy import defer
defer("mlflow")
import deepspeed  # its autotuner runs `import mlflow`
import inspect
inspect.getmodule(compile("1", "elsewhere.py", "eval"))  # asks every module for its __file__ (torch does, at import)
print("after deepspeed", "pandas" in sys.modules, type(sys.modules["mlflow"]).__name__)
from mlflow import MlflowClient
from mlflow.entities import Metric
print("after use", "pandas" in sys.modules, type(sys.modules["mlflow"]).__name__, MlflowClient.__name__, Metric.__name__)
"""


def test_a_deferred_mlflow_is_imported_on_first_use_only():
    pytest.importorskip("mlflow")
    env = {**os.environ, "PYTHONPATH": str(REPO), "DS_ACCELERATOR": "cpu"}
    res = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = [line for line in res.stdout.splitlines() if line.startswith("after")]
    assert lines == ["after deepspeed False _Deferred", "after use True module MlflowClient Metric"], res.stdout
