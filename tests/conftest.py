"""Shared fixtures: one torch thread, offline Hub, tiny pipelines saved once per session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="session")
def tiny_model(tiny_dir):
    """tiny_model("sdxl") -> folder of a saved tiny SDXL pipeline (built once per session)."""
    from tests import tiny_models

    made: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in made:
            made[family] = tiny_models.BUILDERS[family](tiny_dir / family)
        return made[family]

    return get


@pytest.fixture(scope="session")
def engine():
    from engine.engine import Engine

    return Engine(device="cpu", local_paths=True)  # the tests load their tiny models from folders
