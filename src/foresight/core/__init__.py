"""Shared plumbing: configs, runs, checkpoints, data resolution, the experiment registry, reports.

How an experiment uses it: docs/core.md (HOW TO WRITE AN EXPERIMENT: config presets, Run, Result, checkpoints).
The names below are imported on first use, so ``import foresight.core.fs`` (the CLI) does not pay for torch.
"""

import importlib

_EXPORTS = {
    "SCALES": "foresight.core.config",
    "Config": "foresight.core.config",
    "check_scale": "foresight.core.config",
    "with_overrides": "foresight.core.config",
    "Result": "foresight.core.registry",
    "experiment": "foresight.core.registry",
    "Run": "foresight.core.run",
    "select_device": "foresight.core.run",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'foresight.core' has no attribute {name!r}")
