"""ControlNet units: preprocessors (controlnet_aux), the ControlNet table per family, and pipeline arguments.

A unit's image is a photo to preprocess or a ready map (preprocessor "none"). Maps follow the usual
conventions: edge = white lines on black, depth = near bright, pose = OpenPose skeleton on black.
Maps are matched to the generation size by centre-crop to its aspect, then resize.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from .config import ROOT
from .families import family as family_of
from .request import DEFAULT_PREPROCESSOR, PREPROCESSORS, ControlUnit, Request, UserError
from .sources.checkpoint import refuse_pickle
from .sources.hub import Hub

log = logging.getLogger(__name__)

# family -> kind -> (source, union control_mode or None). Plugin manifests (kind = "controlnet") add to it.
CONTROLNETS: dict[str, dict[str, tuple[str, int | None]]] = {
    "builtin": {k: (str(ROOT / "assets" / f"controlnet-{k}"), None) for k in ("edge", "depth", "pose")},
    "sd15": {"edge": ("lllyasviel/control_v11p_sd15_canny", None),
             "depth": ("lllyasviel/control_v11f1p_sd15_depth", None),
             "pose": ("lllyasviel/control_v11p_sd15_openpose", None)},
    "sdxl": {"edge": ("diffusers/controlnet-canny-sdxl-1.0", None),
             "depth": ("diffusers/controlnet-depth-sdxl-1.0", None),
             "pose": ("thibaud/controlnet-openpose-sdxl-1.0", None)},
    "flux": {"edge": ("InstantX/FLUX.1-dev-Controlnet-Union", 0),
             "depth": ("InstantX/FLUX.1-dev-Controlnet-Union", 2),
             "pose": ("InstantX/FLUX.1-dev-Controlnet-Union", 4)},
    # Stability's own for SD3.5 Large (they refuse a Medium model: another width), InstantX's pose for SD3
    "sd3": {"edge": ("stabilityai/stable-diffusion-3.5-large-controlnet-canny", None),
            "depth": ("stabilityai/stable-diffusion-3.5-large-controlnet-depth", None),
            "pose": ("InstantX/SD3-Controlnet-Pose", None)},
    # one union ControlNet reads every kind of map, with no mode to name
    "qwenimage": {k: ("InstantX/Qwen-Image-ControlNet-Union", None) for k in ("edge", "depth", "pose")},
}


@dataclass
class PreparedControl:
    """What one generation's ControlNets need: the (multi) model, maps and per-unit settings."""

    model: object
    maps: list  # PIL control maps at the generation size
    units: list[ControlUnit]
    sources: list[str]
    modes: list[int | None]
    preprocessors: list[str] = field(default_factory=list)

    def kwargs(self, pipe) -> dict:
        """The pipeline's ControlNet arguments, by the names its __call__ takes (SD's text-to-image: `image`;
        every other: `control_image`; a union net's `control_mode`)."""
        import inspect

        takes = set(inspect.signature(type(pipe).__call__).parameters)
        single = not isinstance(self.model, list) and type(self.model).__name__.find("Multi") < 0
        pick = (lambda xs: xs[0]) if single else list
        args = {"controlnet_conditioning_scale": pick([u.scale for u in self.units])}
        if "control_guidance_start" in takes:
            args.update(control_guidance_start=pick([u.start for u in self.units]),
                        control_guidance_end=pick([u.end for u in self.units]))
        args["control_image" if "control_image" in takes else "image"] = pick(self.maps)
        if "control_mode" in takes and any(m is not None for m in self.modes):
            args["control_mode"] = pick([m if m is not None else -1 for m in self.modes])
        return args

    def infotext(self) -> dict:
        from .images.infotext import control_unit_text

        return {f"ControlNet {i}": control_unit_text(u, model=Path(s).name, module=p)
                for i, (u, s, p) in enumerate(zip(self.units, self.sources, self.preprocessors))}


class ControlManager:
    """Loads ControlNets once (cached by source) and turns control units into pipeline arguments."""

    def __init__(self, device: str, dtype, hub: Hub | None = None):
        self.device, self.dtype, self.hub = device, dtype, hub or Hub()
        self.nets: dict[str, object] = {}
        self.detectors: dict[str, object] = {}

    def table(self, family: str, manifests: list | None = None) -> dict[str, tuple[str, int | None]]:
        """The family's ControlNets, with plugin manifests of kind controlnet added (they win)."""
        table = dict(CONTROLNETS.get(family, {}))
        for m in manifests or []:
            if m.kind == "controlnet" and m.family == family and m.control and m.error is None:
                table[m.control] = (str(m.file) if m.file is not None else m.source, m.mode)
        return table

    def prepare(self, loaded, req: Request, manifests: list | None = None) -> PreparedControl:
        """Load the units' ControlNets and make their maps; `manifests` are the plugins (kind controlnet)."""
        family = loaded.source.family
        table = self.table(family, manifests)
        nets, maps, sources, modes, pres = [], [], [], [], []
        for i, unit in enumerate(req.controls, 1):
            if unit.kind not in table:
                raise UserError(f"Control unit {i}: there is no {unit.kind} ControlNet for {family} models. Add one "
                                "with a plugin manifest (kind = \"controlnet\") in plugins/, or remove the unit.")
            source, mode = table[unit.kind]
            nets.append(self._load_net(source, family, loaded))
            pre = self._preprocessor_name(unit)
            maps.append(self.make_map(unit, req.width, req.height, pre))
            sources.append(source)
            modes.append(mode)
            pres.append(pre)
        model = self._combine(nets, family)
        return PreparedControl(model, maps, list(req.controls), sources, modes, pres)

    @staticmethod
    def _combine(nets: list, family: str):
        """One net, or a list that the pipeline wraps in its multi-ControlNet model (or the family's own
        multi-ControlNet class wraps here, where the pipeline does not)."""
        if len(nets) == 1:
            return nets[0]
        multi = family_of(family).multi_controlnet_class
        if multi:  # Qwen-Image: one union ControlNet reads every unit's map in turn
            import diffusers

            if any(net is not nets[0] for net in nets):
                raise UserError(f"{family_of(family).label} runs several control units through one union "
                                "ControlNet only; these units name different ones. Use one ControlNet for all units.")
            return getattr(diffusers, multi)([nets[0]])
        return list(nets)

    def _load_net(self, source: str, family: str, loaded):
        if source in self.nets:
            self._check_fits(self.nets[source], source, family, loaded)
            return self.nets[source]
        import diffusers

        cls = getattr(diffusers, family_of(family).controlnet_class)
        path = Path(source)
        if family_of(family).caption_words and not (path / "config.json").is_file():
            raise UserError(f"The built-in {path.name} is missing from assets/. Restore it with `git checkout assets` "
                            "or train it with `python app.py train controlnets`.")
        refuse_pickle(path, "ControlNet")
        local = path.exists()
        try:
            net = cls.from_pretrained(source, dtype=self.dtype, use_safetensors=True,
                                      local_files_only=self.hub.offline and not local)
        except Exception as e:  # offline, not a ControlNet, wrong layout
            first = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
            if not local and isinstance(e, (OSError, ValueError)) and _hub_failure(e):
                raise self.hub.explain(e, f"ControlNet {source}", source) from None
            raise UserError(f"Could not load ControlNet {source}: {first}. Is it a {cls.__name__} in diffusers "
                            "format with .safetensors weights?") from None
        self._check_fits(net, source, family, loaded)
        net.to(self.device)
        self.nets[source] = net
        log.info("loaded ControlNet %s", source)
        return net

    @staticmethod
    def _check_fits(net, source: str, family: str, loaded) -> None:
        """Refuse a ControlNet made for another model before it meets the pipeline's tensors."""
        base = getattr(loaded.pipe, "unet", None) or getattr(loaded.pipe, "transformer", None)
        for key in ("cross_attention_dim", "joint_attention_dim", "in_channels"):
            want, have = base.config.get(key), net.config.get(key)
            if want is not None and have is not None and want != have:
                raise UserError(f"ControlNet {Path(source).name} does not fit this {family} model ({key} {have} vs "
                                f"{want}): it was made for another model family. Pick a {family} ControlNet.")

    # --------------------------------------------------------------------------------- maps
    @staticmethod
    def _preprocessor_name(unit: ControlUnit) -> str:
        """The unit's preprocessor by name (check_request has refused unknown and mismatched names)."""
        pre = unit.preprocessor or "auto"
        return DEFAULT_PREPROCESSOR[unit.kind] if pre == "auto" else pre

    def make_map(self, unit: ControlUnit, width: int, height: int, pre: str):
        from .images.loading import fit_to, load_image

        image = load_image(unit.image, f"The {unit.kind} control image", background="black")
        if pre == "none":
            return fit_to(image, width, height)
        if pre == "canny":  # detect at the generation size so line widths match what the ControlNet saw
            side = max(64, min(width, height))  # controlnet_aux works in multiples of 64
            edges = self._detector("canny")(fit_to(image, width, height), low_threshold=unit.low,
                                            high_threshold=unit.high, detect_resolution=side,
                                            image_resolution=side, output_type="pil")
            return fit_to(edges.convert("RGB"), width, height)
        detected = self._detector(pre)(fit_to(image, 512, 512 * height // width))
        return fit_to(detected.convert("RGB"), width, height)

    def _detector(self, name: str):
        if name in self.detectors:
            return self.detectors[name]
        spec = PREPROCESSORS[name]
        try:
            if name == "canny":
                from controlnet_aux import CannyDetector

                det = CannyDetector()
            elif name == "depth-anything":
                det = _DepthAnything(spec["weights"])
            else:
                import controlnet_aux

                cls = {"lineart": "LineartDetector", "midas": "MidasDetector", "openpose": "OpenposeDetector"}[name]
                det = getattr(controlnet_aux, cls).from_pretrained(spec["weights"])
        except UserError:
            raise
        except Exception as e:  # offline with no cached weights raises several types
            raise UserError(f"The {name} preprocessor needs weights from {spec['weights']}, which are not on this "
                            "machine, and the Hub cannot be reached. Connect once to download them, or upload a "
                            f"ready {spec['kind']} map and choose preprocessor 'none'. ({type(e).__name__})") from None
        self.detectors[name] = det
        return det


def _hub_failure(e: Exception) -> bool:
    """Did `from_pretrained` fail in huggingface_hub (offline, not found, gated), not in the weights?"""
    return type(e).__module__.startswith("huggingface_hub") or "LocalEntryNotFound" in type(e).__name__


class _DepthAnything:
    """Depth-Anything through transformers' depth-estimation pipeline (near = bright, as MiDaS draws it)."""

    def __init__(self, repo: str):
        from transformers import pipeline

        self.pipe = pipeline("depth-estimation", model=repo)

    def __call__(self, image):
        return self.pipe(image)["depth"]
