"""Model families as data: one frozen `Family` per family says what the rest of the engine asks of it, so adding
a family is an entry here (and its tiny test), not a tour of the loaders, the checks and the doors.

Outside this file no code compares family names: it asks `family(name).<field>`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class FamilyDefaults:
    steps: int
    guidance: float
    size: int  # native square size
    multiple: int  # width/height must be a multiple of this
    max_size: int
    scheduler: str


_SD_PIPELINES = {"txt2img": "StableDiffusionPipeline", "img2img": "StableDiffusionImg2ImgPipeline",
                 "control": "StableDiffusionControlNetPipeline",
                 "control_img2img": "StableDiffusionControlNetImg2ImgPipeline",
                 "inpaint": "StableDiffusionInpaintPipeline"}
NO_SAFETY_CHECKER = {"safety_checker": None, "requires_safety_checker": False}


@dataclass(frozen=True)
class Family:
    """What one family of models is and does."""

    name: str
    label: str  # how people call it
    defaults: FamilyDefaults
    pipelines: dict[str, str]  # kind of generation (txt2img, img2img, control, control_img2img, inpaint) -> class
    index_classes: tuple[str, ...] = ()  # model_index.json `_class_name`s that are this family (exact names)
    flow: bool = False  # samples flow matching: flow schedulers only
    negative_prompt: bool = True  # reads a negative prompt (Flux does not)
    previews: bool = True  # live previews by a full VAE decode of the latents (Flux's packed latents: no)
    controlnet_class: str = "ControlNetModel"
    load_extra: dict = field(default_factory=dict)  # from_pretrained / from_single_file keywords (no safety checker)
    single_file_config: str | None = None  # the Hub repo whose configs a single .safetensors file loads with
    single_file_transformer: str | None = None  # a single file holds only this denoiser (its other parts: the config)
    variants: dict[str, FamilyDefaults] = field(default_factory=dict)  # variant (read from the model) -> defaults
    variant_pipelines: dict[str, dict[str, str]] = field(default_factory=dict)  # a job-made variant's own classes
    caption_words: bool = False  # the built-in model: prompts are mapped to its captions' own words
    trained_sides: tuple[int, int] | None = None  # sides it learned; outside them a note warns
    lora_training: bool = False  # `app.py train-lora` trains LoRAs for it (a UNet with SD1.5's layout)
    unfit_schedulers: tuple[str, ...] = ()  # never offered: they fail on this family's noise schedule
    guidance_arg: str = "guidance_scale"  # the pipeline argument the guidance goes to (Qwen-Image: true_cfg_scale)
    empty_negative: str | None = None  # sent when no negative prompt is given (Qwen-Image: " ", else no true CFG)

    def defaults_for(self, variant: str = "") -> FamilyDefaults:
        return self.variants.get(variant, self.defaults)


FAMILIES_BY_NAME: dict[str, Family] = {f.name: f for f in (
    Family("builtin", "built-in", FamilyDefaults(10, 2.0, 64, 8, 512, "dpm++2m"), _SD_PIPELINES,
           load_extra=NO_SAFETY_CHECKER, caption_words=True, trained_sides=(48, 128), lora_training=True,
           # Karras sigmas on its near-zero terminal SNR repeat timesteps (7 distinct of 10), and the solver fails
           unfit_schedulers=("dpm++2m-karras",)),
    Family("sd15", "Stable Diffusion 1.5", FamilyDefaults(30, 7.5, 512, 8, 2048, "dpm++2m-karras"), _SD_PIPELINES,
           index_classes=("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline",
                          "StableDiffusionInpaintPipeline"),
           load_extra=NO_SAFETY_CHECKER, single_file_config="stable-diffusion-v1-5/stable-diffusion-v1-5",
           lora_training=True),
    Family("sdxl", "Stable Diffusion XL", FamilyDefaults(30, 7.0, 1024, 8, 2048, "euler"),
           {"txt2img": "StableDiffusionXLPipeline", "img2img": "StableDiffusionXLImg2ImgPipeline",
            "control": "StableDiffusionXLControlNetPipeline",
            "control_img2img": "StableDiffusionXLControlNetImg2ImgPipeline",
            "inpaint": "StableDiffusionXLInpaintPipeline"},
           index_classes=("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline",
                          "StableDiffusionXLInpaintPipeline"),
           single_file_config="stabilityai/stable-diffusion-xl-base-1.0"),
    Family("flux", "FLUX.1", FamilyDefaults(28, 3.5, 1024, 16, 2048, "flow-euler"),
           {"txt2img": "FluxPipeline", "img2img": "FluxImg2ImgPipeline", "control": "FluxControlNetPipeline",
            "control_img2img": "FluxControlNetImg2ImgPipeline", "inpaint": "FluxInpaintPipeline"},
           index_classes=("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline", "FluxFillPipeline",
                          "FluxKontextPipeline", "FluxKontextInpaintPipeline"),
           flow=True, negative_prompt=False, previews=False, controlnet_class="FluxControlNetModel",
           single_file_config="black-forest-labs/FLUX.1-dev", single_file_transformer="FluxTransformer2DModel",
           variants={"schnell": FamilyDefaults(4, 0.0, 1024, 16, 2048, "flow-euler")},
           # Flux models made for one job: their own pipeline class serves that job (and text-to-image where it can)
           variant_pipelines={"fill": {"txt2img": "FluxFillPipeline", "inpaint": "FluxFillPipeline"},
                              "kontext": {"txt2img": "FluxKontextPipeline", "img2img": "FluxKontextPipeline",
                                          "inpaint": "FluxKontextInpaintPipeline"}}),
    # SD3 and SD3.5 (MMDiT, flow matching, CLIP L + G and T5): diffusers has no ControlNet image-to-image for it
    Family("sd3", "Stable Diffusion 3.5", FamilyDefaults(28, 4.5, 1024, 16, 2048, "flow-euler"),
           {"txt2img": "StableDiffusion3Pipeline", "img2img": "StableDiffusion3Img2ImgPipeline",
            "inpaint": "StableDiffusion3InpaintPipeline", "control": "StableDiffusion3ControlNetPipeline"},
           index_classes=("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline",
                          "StableDiffusion3InpaintPipeline"),
           flow=True, previews=False, controlnet_class="SD3ControlNetModel"),
    # Chroma (Flux's architecture pruned, T5 only, trained to use a real negative prompt); no ControlNet in diffusers,
    # and diffusers 0.42.1's ChromaInpaintPipeline reads transformer.config.guidance_embeds, which Chroma's
    # transformer has not (AttributeError): no inpaint until it is fixed
    Family("chroma", "Chroma", FamilyDefaults(40, 3.0, 1024, 16, 2048, "flow-euler"),
           {"txt2img": "ChromaPipeline", "img2img": "ChromaImg2ImgPipeline"},
           index_classes=("ChromaPipeline", "ChromaImg2ImgPipeline", "ChromaInpaintPipeline"),
           flow=True, previews=False),
    # Z-Image (a single-stream DiT reading a Qwen3's hidden states); the defaults are Z-Image-Turbo's: 9 steps
    # (8 model evaluations), no guidance
    Family("zimage", "Z-Image", FamilyDefaults(9, 0.0, 1024, 16, 2048, "flow-euler"),
           {"txt2img": "ZImagePipeline", "img2img": "ZImageImg2ImgPipeline", "inpaint": "ZImageInpaintPipeline"},
           index_classes=("ZImagePipeline", "ZImageImg2ImgPipeline", "ZImageInpaintPipeline"),
           flow=True, previews=False),
    # Qwen-Image (a 20B MMDiT reading Qwen2.5-VL's hidden states): true classifier-free guidance with a negative
    # prompt (`true_cfg_scale`), 50 steps at 4
    Family("qwenimage", "Qwen-Image", FamilyDefaults(50, 4.0, 1328, 16, 2048, "flow-euler"),
           {"txt2img": "QwenImagePipeline", "img2img": "QwenImageImg2ImgPipeline",
            "inpaint": "QwenImageInpaintPipeline"},
           index_classes=("QwenImagePipeline", "QwenImageImg2ImgPipeline", "QwenImageInpaintPipeline"),
           flow=True, previews=False, guidance_arg="true_cfg_scale", empty_negative=" "),
)}
FAMILIES = tuple(FAMILIES_BY_NAME)
SCHNELL_CONFIG = "black-forest-labs/FLUX.1-schnell"  # a Flux file without guidance weights is schnell


def family(name: str) -> Family:
    """The Family called `name` (KeyError for a name no family has: a bug, not a user's mistake)."""
    return FAMILIES_BY_NAME[name]


def family_of_class(class_name: str) -> Family | None:
    """The family whose pipelines a model_index.json `_class_name` names, or None. A listed class, else the
    longest family stem followed by a new word ("StableDiffusionXL" + "PAGPipeline"), never by a digit: a
    StableDiffusion3Pipeline is not SD1.5, nor a Flux2Pipeline FLUX.1."""
    exact = next((f for f in FAMILIES_BY_NAME.values() if class_name in f.index_classes), None)
    if exact is not None or not isinstance(class_name, str):
        return exact
    stems = sorted(((f.pipelines["txt2img"].removesuffix("Pipeline"), f) for f in FAMILIES_BY_NAME.values()
                    if f.index_classes), key=lambda pair: len(pair[0]), reverse=True)
    for stem, f in stems:
        rest = class_name[len(stem):]
        if class_name.startswith(stem) and rest[:1].isupper():
            return f
    return None


def has_variants(name: str) -> bool:
    """Whether models of this family come in variants read from the model (Flux: dev, schnell, fill, kontext)."""
    f = family(name)
    return bool(f.variants or f.variant_pipelines)
