"""What a generation gives back: `Result` (images, seeds, the settings that made them, metadata, notes), the
`Cancelled` signal, and turning a pipeline's float output into PIL images with NaN/inf found on the way."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from .request import Note, Request


@dataclass
class Result:
    images: list  # PIL images
    seeds: list[int]
    request: Request  # with every default filled in and the seed used for the first image
    model_name: str
    family: str
    infotexts: list[str]
    control_maps: list = field(default_factory=list)  # the maps the ControlNets were given (PIL)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)  # things the user should know (offload turned on, ...)
    triggers: list[str] = field(default_factory=list)  # LoRA trigger words added to the prompt
    extra: dict = field(default_factory=dict)  # infotext keys the engine knows (Lora hashes, ControlNet units)
    broken: int = 0  # images whose pixels held NaN/inf (shown black; a note says why)
    batch: int = 1  # requests sampled in the same pipeline call (a shared server's batching, engine/batch.py)
    parts: list = field(default_factory=list)  # one Result per image when each ran alone (wildcards picked per image)

    @classmethod
    def joined(cls, parts: list[Result], request: Request) -> Result:
        """One result of `parts` (one image each), each image keeping its own settings and metadata."""
        first = parts[0]
        notes = list(dict.fromkeys(n for p in parts for n in p.notes))
        return cls([im for p in parts for im in p.images], [s for p in parts for s in p.seeds], request,
                   first.model_name, first.family, [t for p in parts for t in p.infotexts], first.control_maps,
                   sum(p.seconds for p in parts), notes, first.triggers, first.extra, sum(p.broken for p in parts),
                   parts=parts)

    def image_request(self, i: int) -> Request:
        """The settings that remake image i on its own (its seed, count 1)."""
        if self.parts:
            return self.parts[i].image_request(0)
        return dataclasses.replace(self.request, seed=self.seeds[i], count=1)

    def save_png(self, i: int, path_or_file) -> None:
        """Image i as a PNG with the A1111 `parameters` text (LoRA hashes, control units) and our JSON chunk."""
        from .images import metadata

        if self.parts:
            return self.parts[i].save_png(0, path_or_file)
        metadata.save_png(self.images[i], path_or_file, self.image_request(i), self.seeds[i], self.model_name,
                          None, self.extra)

    def settings_line(self) -> str:
        r = self.request
        seeds = str(self.seeds[0]) if len(self.seeds) == 1 else f"{self.seeds[0]}..{self.seeds[-1]}"
        size = f"{self.images[0].width}x{self.images[0].height}" if self.images else f"{r.width}x{r.height}"
        parts = [Path(self.model_name).name or self.model_name, size, f"{r.steps} steps", f"cfg {r.guidance:g}",
                 f"seed {seeds}", r.scheduler]
        if r.outpaint:
            parts.append("outpaint " + " ".join(f"{k}={v}" for k, v in zip(("left", "top", "right", "bottom"),
                                                                        r.outpaint) if v))
        elif r.mask is not None:
            parts.append(f"inpaint strength {r.strength:g}" + ("" if r.inpaint_padding is None else
                                                                ", masked area only"))
        elif r.init_image is not None and r.strength is None:  # an editing model's instruction edit
            parts.append(f"edit of {len(r.references) + 1} images" if r.references else "edit")
        elif r.init_image is not None and not r.upscale:
            parts.append(f"strength {r.strength:g}")
        if r.upscale:
            parts.append(f"upscaled {r.upscale:g}x from {r.width}x{r.height}, hires strength {r.hires_strength:g}")
        parts += [f"<lora:{x.name}:{x.weight:g}>" for x in r.loras]
        if self.triggers:
            parts.append("+ " + ", ".join(self.triggers))
        parts += [f"{u.kind} x{u.scale:g}" for u in r.controls]
        if r.image_prompts:
            shown = self.extra.get("Image prompt", "").split(" ")
            scale = shown[1] if len(shown) > 1 else "?"
            n = len(r.image_prompts)
            parts.append(f"image prompt{'s' if n > 1 else ''} x{scale}" + (f" ({n})" if n > 1 else ""))
        return " · ".join(parts) + f" · {self.seconds:.1f}s"


class Cancelled(Exception):
    """The user stopped the generation."""


def to_pil(pipe, array) -> tuple[list, int]:
    """The pipeline's float images as PIL (exactly as diffusers' own "pil" output), and how many held NaN/inf."""
    import numpy as np

    finite = np.isfinite(array).reshape(len(array), -1).all(axis=1)
    broken = int((~finite).sum())
    if broken:
        array = np.nan_to_num(array, nan=0.0, posinf=1.0, neginf=0.0)
    return pipe.numpy_to_pil(array), broken


def broken_note(broken: int, total: int, req: Request, dtype) -> Note:
    which = "The image" if total == 1 else f"{broken} of the {total} images"
    causes = []
    if req.loras:
        causes.append(f"a broken LoRA ({', '.join(x.name for x in req.loras)}: try without it)")
    half = "16" in str(dtype)
    if half:
        causes.append(f"{str(dtype).replace('torch.', '')} overflow")
    causes.append("broken model weights")
    return Note(f"{which} came out with invalid pixel values (NaN/inf), shown black. Likely cause: "
                f"{' or '.join(causes)}.", kind="broken",
                operator="Start the app with --dtype fp32, or use a VAE fixed for half precision." if half else "")
