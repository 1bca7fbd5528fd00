"""Fixtures of the UI tests (test_ui.py, test_handlers.py): studios on a tiny SD1.5 folder, a session, settings;
and `a1111_png`, a PNG as another app writes it.

Imported by name into those modules, so they stay out of the whole suite's conftest.py.
"""

from __future__ import annotations

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from studio.service import Studio
from ui.state import Session, Settings

__all__ = ["studio", "shared", "session", "settings"]


@pytest.fixture(scope="module")
def studio(engine, tiny_model):
    """A private (loopback) server's studio: the tests' engine lets users name folders, as app.py does on 127.0.0.1."""
    assert engine.config.local_paths
    return Studio(engine, default_model=str(tiny_model("sd15")))


@pytest.fixture(scope="module")
def shared(tiny_model):
    """A studio as on --share or a Space: its engine refuses files and folders, but for the server's own model."""
    from engine.engine import Engine

    return Studio(Engine(device="cpu", local_paths=False), default_model=str(tiny_model("sd15")))


@pytest.fixture
def session():
    s = Session.new()
    yield s
    s.close()


@pytest.fixture
def settings(studio):
    return Settings(model=studio.default_model, width=32, height=32, steps=2, guidance=5.0)


def a1111_png(path, parameters: str) -> str:
    """A small PNG at `path` with AUTOMATIC1111's `parameters` text chunk, as that app saves them."""
    info = PngInfo()
    info.add_text("parameters", parameters)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return str(path)
