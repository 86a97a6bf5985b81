"""Experiment tracking: TensorBoard, W&B and MLflow runs that mirror a run folder (``tracking.report_to``)."""

from sdft.tracking.trackers import Trackers, check_trackers, open_trackers

__all__ = ["Trackers", "check_trackers", "open_trackers"]
