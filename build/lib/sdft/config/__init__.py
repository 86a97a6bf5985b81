"""Typed run configuration: dataclasses (``schema``) and YAML/CLI loading (``loader``)."""

from sdft.config.loader import config_to_dict, load_config
from sdft.config.schema import (ConfigError, DataConfig, DistillConfig, EvalConfig, ExportConfig,
                                FilterConfig, ModelConfig, RunConfig, TrainConfig)

__all__ = ["load_config", "config_to_dict", "ConfigError", "RunConfig", "ModelConfig", "DataConfig",
           "DistillConfig", "FilterConfig", "TrainConfig", "EvalConfig", "ExportConfig"]
