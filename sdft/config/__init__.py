"""Typed run configuration: dataclasses (``schema``), YAML/CLI loading (``loader``), checks (``validate``)."""

from sdft.config.loader import config_to_dict, load_config
from sdft.config.schema import (
    DataConfig,
    DistillConfig,
    EvalConfig,
    ExportConfig,
    FilterConfig,
    ModelConfig,
    QuantizationConfig,
    RunConfig,
    SamplingConfig,
    TrainConfig,
)

__all__ = ["load_config", "config_to_dict", "RunConfig", "ModelConfig", "DataConfig", "SamplingConfig",
           "DistillConfig", "FilterConfig", "TrainConfig", "QuantizationConfig", "EvalConfig", "ExportConfig"]
