"""engine/sources/pinned.py: a pinned pipeline answers its devices at once and samples exactly as before."""

from __future__ import annotations

import numpy as np
import torch

from engine.request import Request
from engine.sources.pinned import pin


def test_pinned_pipelines_keep_their_class_name_devices_and_pixels(engine, tiny_model):
    folder = str(tiny_model("sd15"))
    loaded = engine.load(folder)
    pipe = loaded.pipe
    assert getattr(type(pipe), "_devices_pinned", False)  # the engine pins what it placed
    base = type(pipe).__bases__[0]
    assert type(pipe).__name__ == base.__name__ == "StableDiffusionPipeline"
    assert pipe._execution_device == base._execution_device.fget(pipe) == torch.device("cpu")
    assert pipe.device == base.device.fget(pipe)
    img2img = loaded.variant("img2img")  # derived with from_pipe from the pinned pipeline: pinned too
    assert getattr(type(img2img), "_devices_pinned", False) and type(img2img).__name__.endswith("Img2ImgPipeline")

    request = Request(prompt="a red circle", model=folder, seed=3, steps=2, width=32, height=32)
    pinned_pixels = np.asarray(engine.generate(request).images[0])
    pipe.__class__ = base  # unpinned: diffusers' own device walk
    try:
        assert np.array_equal(np.asarray(engine.generate(request).images[0]), pinned_pixels)
    finally:
        pin(pipe)
    assert getattr(type(pipe), "_devices_pinned", False) and type(pipe).__bases__[0] is base  # re-pinning nests not
