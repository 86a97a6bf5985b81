"""Deferred imports of the tracker libraries that other libraries import eagerly.

DeepSpeed's autotuner runs ``import mlflow`` whenever MLflow is installed, and transformers imports
DeepSpeed in every sdft process: 1.4 s of MLflow and pandas per process (more than a tiny run's
training). ``defer("mlflow")`` puts a stand-in module in its place; the first attribute asked of it (the
MLflow tracker's ``from mlflow import MlflowClient``, or a submodule import) imports MLflow for real and
puts it in the stand-in's place, so a bare ``import mlflow`` costs nothing.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types


class _Deferred(types.ModuleType):
    """Stands in for a module until an attribute of it is needed."""

    def __getattr__(self, attr: str):  # only for attributes the stand-in lacks: everything but its spec
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        return getattr(importlib.import_module(self.__name__), attr)


def defer(name: str) -> None:
    """Make ``import name`` cost nothing in this process until the module is used (a no-op when it is
    imported already or not installed)."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None:
        return
    stand_in = _Deferred(name)
    stand_in.__spec__ = spec  # what the import system reads of a module in sys.modules
    # inspect.getmodule asks every module in sys.modules for its __file__ (torch does it at import, for
    # each custom op it registers): answered here, it does not import the real module.
    stand_in.__file__ = spec.origin
    sys.modules[name] = stand_in
