"""Shared plumbing: configs, runs, checkpoints, data resolution, the experiment registry, reports.

How an experiment uses it: docs/core.md (HOW TO WRITE AN EXPERIMENT: config presets, Run, Result, checkpoints).
"""

from foresight.core.config import SCALES, Config, check_scale, with_overrides
from foresight.core.registry import Result, experiment
from foresight.core.run import Run, select_device

__all__ = ["SCALES", "Config", "Result", "Run", "check_scale", "experiment", "select_device", "with_overrides"]
