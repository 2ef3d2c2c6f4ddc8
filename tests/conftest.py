"""Fixtures shared across the suite: tiny synthetic dumps written into tmp_path."""

from __future__ import annotations

import os

import numpy as np
import pytest
from helpers import make_class_folders

# Keep TensorFlow quiet and on the CPU in tests; Keras tests pick the backend from the environment.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def class_dump(tmp_path):
    """Three classes of six small JPEGs each, as class sub-folders."""
    return make_class_folders(tmp_path / "dump")
