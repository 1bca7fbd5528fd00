"""Upscaler plugins: super-resolution models (ESRGAN, SwinIR, SPAN and the other families spandrel reads) from a
`.safetensors` file named by a plugin manifest (`kind = "upscaler"`), used before the hires pass or alone.

spandrel tells the architecture and scale from the tensors; the model runs once (tiled for large images, with an
overlap so tile seams do not show), then Lanczos brings the result to the exact size asked for.
"""

from __future__ import annotations

import difflib
import logging
import time

import numpy as np
from PIL import Image

from .request import UserError

log = logging.getLogger(__name__)

TILE, OVERLAP = 256, 16


class Upscalers:
    """Loaded upscaler models, by file (kept while the engine lives; they are small)."""

    def __init__(self, device: str):
        self.device = device
        self.models: dict[str, object] = {}

    def find(self, name: str, manifests: list):
        """The upscaler plugin `name`, or a UserError naming the ones there are."""
        found = {m.name: m for m in manifests if m.kind == "upscaler"}
        plugin = found.get(name)
        if plugin is None:
            close = difflib.get_close_matches(name, list(found), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            known = ", ".join(sorted(found)) or 'none (add a manifest with kind = "upscaler")'
            raise UserError(f"There is no upscaler plugin named {name!r}.{hint} Upscalers: {known}; without "
                            "--upscaler the image is resized with Lanczos.")
        if plugin.error:
            raise UserError(f"Upscaler {name!r} cannot be used: {plugin.error.rstrip('.')}.")
        return plugin

    def run(self, plugin, file, image: Image.Image, width: int, height: int) -> Image.Image:
        """`image` upscaled by the model, then resized to exactly width x height."""
        model = self._load(plugin, file)
        t0 = time.perf_counter()
        out = _tiled(model, image.convert("RGB"), self.device)
        log.info("upscaled %dx%d by %s (x%d) in %.2f s", image.width, image.height, plugin.name, model.scale,
                 time.perf_counter() - t0)
        return out if out.size == (width, height) else out.resize((width, height), Image.Resampling.LANCZOS)

    def _load(self, plugin, file):
        key = str(file)
        if key not in self.models:
            import spandrel

            try:
                model = spandrel.ModelLoader(device=self.device).load_from_file(str(file))
            except Exception as e:  # spandrel raises several types for files it does not know
                why = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
                raise UserError(f"Upscaler {plugin.name!r} ({file.name}): spandrel cannot read it as a "
                                f"super-resolution model ({why}).") from None
            if not isinstance(model, spandrel.ImageModelDescriptor) or model.input_channels != 3:
                raise UserError(f"Upscaler {plugin.name!r} is a {model.architecture.name} model for "
                                f"{getattr(model, 'purpose', 'another job')}, not an RGB upscaler.")
            self.models[key] = model.eval()
        return self.models[key]


def _tiled(model, image: Image.Image, device: str) -> Image.Image:
    """Run `model` over `image` in overlapping tiles (one tile when small), blending the overlaps."""
    import torch

    scale = model.scale
    array = np.asarray(image, np.float32) / 255.0
    h, w = array.shape[:2]
    out = np.zeros((h * scale, w * scale, 3), np.float32)
    weight = np.zeros((h * scale, w * scale, 1), np.float32)
    step = TILE - 2 * OVERLAP
    for y in range(0, max(1, h - 2 * OVERLAP), step) if h > TILE else [0]:
        for x in range(0, max(1, w - 2 * OVERLAP), step) if w > TILE else [0]:
            y1, x1 = min(h, y + TILE), min(w, x + TILE)
            y0, x0 = max(0, y1 - TILE), max(0, x1 - TILE)
            tile = torch.from_numpy(array[y0:y1, x0:x1]).permute(2, 0, 1)[None].to(device)
            with torch.no_grad():
                result = model(tile)[0].permute(1, 2, 0).clamp(0, 1).float().cpu().numpy()
            out[y0 * scale:y1 * scale, x0 * scale:x1 * scale] += result
            weight[y0 * scale:y1 * scale, x0 * scale:x1 * scale] += 1
    return Image.fromarray((out / np.maximum(weight, 1) * 255).round().astype(np.uint8))
