"""Image prompts: reference images an IP-Adapter reads beside the text (Request.image_prompts).

The adapter is a plugin (`kind = "image-prompt"`: its folder or Hub repo, `weight_name`, the image encoder beside
it, the default scale as `weight`), the first one of the model's family unless one is named. diffusers' own
`load_ip_adapter` loads it onto the model when a request has image prompts and `unload_ip_adapter` takes it off
when one has none, so a generation without image prompts is the plain model's, pixel for pixel. Several images
share the adapter's one scale; the metadata records the adapter, the scale and each image's hash.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from .families import family as family_of
from .request import Request, UserError
from .sources.checkpoint import refuse_pickle

log = logging.getLogger(__name__)


@dataclass
class PreparedImagePrompts:
    kwargs: dict = field(default_factory=dict)
    infotext: dict = field(default_factory=dict)
    replaces_prompt: bool = False  # Flux Redux: the prompt's embeddings (text and image) stand for the prompt


def adapters_for(family: str, manifests: list) -> list:
    return [m for m in manifests if m.kind == "image-prompt" and m.family == family and m.error is None]


class ImagePrompts:
    """Keeps track of which adapter is on which loaded pipeline (by the pipeline's identity)."""

    def __init__(self, hub=None):
        self.hub = hub
        self.on: dict[int, str] = {}  # id(loaded.pipe) -> the adapter plugin's name on it
        self.priors: dict[tuple, object] = {}  # (id(loaded.pipe), plugin) -> its Flux Redux prior pipeline

    def prepare(self, loaded, pipe, req: Request, manifests: list, prompt: str = "") -> PreparedImagePrompts:
        """Put the family's adapter on (or take it off) `loaded`'s model for `req`; the arguments `pipe` (the job's
        pipeline, sharing the model's parts) is called with, and the metadata. `prompt`: the text as the model
        reads it (Flux Redux encodes it with the image)."""
        key = id(loaded.pipe)
        if not req.image_prompts:
            if key in self.on:
                loaded.pipe.unload_ip_adapter()
                del self.on[key]
                log.info("image-prompt adapter off %s", loaded.source.name)
            return PreparedImagePrompts()
        kin = family_of(loaded.source.family)
        import inspect

        redux = [m for m in adapters_for(kin.name, manifests) if m.weight_name is None]
        if redux and "prompt_embeds" in inspect.signature(type(pipe).__call__).parameters:
            return self._redux(loaded, req, redux[0], prompt)
        if "ip_adapter_image" not in inspect.signature(type(pipe).__call__).parameters:
            edits = " It edits with reference images instead: --ref IMG, or --images in the chat." \
                if kin.edit_limit(loaded.source.variant) else ""
            raise UserError(f"{kin.label} models take no image prompt here (diffusers has no IP-Adapter for this "
                            f"pipeline).{edits}", field="image_prompts")
        plugin = self._adapter(kin, manifests)
        if self.on.get(key) != plugin.name:
            if key in self.on:
                loaded.pipe.unload_ip_adapter()
            self._load(loaded, plugin)
            self.on[key] = plugin.name
        for part in ("image_encoder", "feature_extractor"):  # a job pipeline made before the adapter came on
            if getattr(pipe, part, None) is None and pipe is not loaded.pipe:
                pipe.register_modules(**{part: getattr(loaded.pipe, part)})
        from .edit import digest
        from .images.loading import load_image

        images = [load_image(p.image, f"Image prompt {i}") for i, p in enumerate(req.image_prompts, 1)]
        scale = next((p.scale for p in req.image_prompts if p.scale is not None), plugin.weight)
        loaded.pipe.set_ip_adapter_scale(scale)
        hashes = " ".join(digest(im) for im in images)
        return PreparedImagePrompts({"ip_adapter_image": [images]},
                                    {"Image prompt": f"{plugin.name} {scale:g} {hashes}"})

    def _redux(self, loaded, req: Request, plugin, prompt: str) -> PreparedImagePrompts:
        """Flux Redux: the image's SigLIP tokens joined to the prompt's T5 tokens (its own prior pipeline, given
        the model's text encoders); scale 0 is the prompt alone."""
        from .edit import digest
        from .images.loading import load_image

        if len(req.image_prompts) > 1:
            raise UserError("Flux Redux reads one image prompt at a time; give one.", field="image_prompts")
        scale = req.image_prompts[0].scale if req.image_prompts[0].scale is not None else plugin.weight
        image = load_image(req.image_prompts[0].image, "Image prompt 1")
        info = {"Image prompt": f"{plugin.name} {scale:g} {digest(image)}"}
        if scale == 0:
            return PreparedImagePrompts(infotext=info)
        import diffusers
        import torch

        key = (id(loaded.pipe), plugin.name)
        if key not in self.priors:
            source = str(plugin.file) if plugin.file is not None else plugin.source
            parts = {k: getattr(loaded.pipe, k) for k in ("text_encoder", "tokenizer", "text_encoder_2",
                                                          "tokenizer_2")}
            try:
                prior = diffusers.FluxPriorReduxPipeline.from_pretrained(
                    source, **parts, dtype=loaded.pipe.dtype, local_files_only=self.hub.offline if self.hub else False)
            except (OSError, ValueError) as e:
                raise UserError(f"Flux Redux {plugin.name} could not be loaded ({str(e).splitlines()[0][:160]}).",
                                field="image_prompts") from None
            prior.set_progress_bar_config(disable=True)
            self.priors[key] = prior.to(loaded.pipe.device)
        with torch.no_grad():
            out = self.priors[key](image=image, prompt=prompt, prompt_embeds_scale=scale,
                                   pooled_prompt_embeds_scale=scale)
        return PreparedImagePrompts({"prompt_embeds": out.prompt_embeds,
                                     "pooled_prompt_embeds": out.pooled_prompt_embeds}, info, replaces_prompt=True)

    @staticmethod
    def _adapter(kin, manifests: list):
        found = [m for m in adapters_for(kin.name, manifests) if m.weight_name is not None]
        if not found:
            raise UserError(f"There is no image-prompt adapter for {kin.label} models. Add one as a plugin "
                            "(plugins/README.md: kind = \"image-prompt\").", field="image_prompts")
        return found[0]

    def _load(self, loaded, plugin) -> None:
        weight = Path(plugin.weight_name)
        subfolder = weight.parent.as_posix() if weight.parent != Path(".") else ""
        source = str(plugin.file) if plugin.file is not None else plugin.source
        if plugin.file is not None:
            refuse_pickle(plugin.file / plugin.weight_name, "image-prompt adapter")
            if not (plugin.file / plugin.weight_name).is_file():
                raise UserError(f"Image-prompt adapter {plugin.name}: {plugin.weight_name} is missing from "
                                f"{plugin.file}.", field="image_prompts",
                                operator="Train the built-in one with `python app.py train image-prompt`.")
        try:
            loaded.pipe.load_ip_adapter(source, subfolder=subfolder, weight_name=weight.name,
                                        image_encoder_folder=plugin.encoder,
                                        local_files_only=self.hub.offline if self.hub else False)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            if self.hub is not None and plugin.hub:
                raise self.hub.explain(e, f"Image-prompt adapter {plugin.name}", plugin.source) from None
            raise UserError(f"Image-prompt adapter {plugin.name} could not be loaded "
                            f"({str(e).splitlines()[0][:160]}). Is it an IP-Adapter for {plugin.family} models?",
                            field="image_prompts") from None
        if not loaded.offload:  # the image encoder joins the model's device
            loaded.pipe.to(loaded.pipe.device)
        log.info("image-prompt adapter %s on %s", plugin.name, loaded.source.name)
