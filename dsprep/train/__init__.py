"""Training and evaluation with Keras 3: models, run-folder callbacks, fit, resume, predict.

Importing the package is light; Keras loads when one of the names below is first used.
"""

from __future__ import annotations

import importlib

from .options import MODEL_NAMES, TrainConfig

_LAZY = {
    "alexnet": "models", "resnet": "models", "smallnet": "models", "build_model": "models",
    "count_params": "models",
    "train": "fit", "resume": "fit", "overfit_check": "fit", "sweep_lr": "fit",
    "configure_device": "fit", "TrainResult": "fit",
    "load_model": "predict", "evaluate_run": "predict",
}

__all__ = ["MODEL_NAMES", "TrainConfig", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
