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
    multi_controlnet_class: str | None = None  # where the pipeline does not wrap a list of ControlNets itself
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
    # instruction editors: variant ("" = every model of the family) -> how many images one edit takes. Their
    # image-to-image is an edit: the image(s) and the instruction as they are, no strength
    edit_images: dict[str, int] = field(default_factory=dict)
    index_variants: dict[str, str] = field(default_factory=dict)  # model_index.json `_class_name` -> variant
    # a variant read from a config value: (file in the model folder, key, value, variant); else `plain_variant`
    config_variants: tuple[tuple[str, str, object, str], ...] = ()
    plain_variant: str = ""
    unguided_variant: str = ""  # a single file of this family without guidance weights is this variant (schnell)
    variant_configs: dict[str, str] = field(default_factory=dict)  # variant -> the Hub config its single file uses
    variant_uses: dict[str, str] = field(default_factory=dict)  # a job-made variant -> what it is made for
    file_keys: tuple[str, ...] = ()  # tensor-name fragments that mark a single-file checkpoint as this family
    lora_keys: tuple[str, ...] = ()  # tensor-name fragments of this family's LoRAs (diffusers or original names)
    big: str = ""  # what a GPU needs for it (said at load when it does not fit), with the fix
    hub_ids: dict[str, str] = field(default_factory=dict)  # Hub models people know it by -> their variant

    def abilities(self, variant: str = "") -> dict:
        """What models of this family (and variant) can do, for `models --json` and the doors' model lists."""
        jobs = self.jobs(variant)
        edits = self.edit_limit(variant)
        return {"txt2img": "txt2img" in jobs, "img2img": "img2img" in jobs and not edits,
                "inpaint": "inpaint" in jobs, "edit_images": edits, "controlnet": "control" in jobs,
                "lora": True, "negative_prompt": self.negative_prompt}

    def defaults_for(self, variant: str = "") -> FamilyDefaults:
        return self.variants.get(variant, self.defaults)

    def edit_limit(self, variant: str = "") -> int:
        """How many images one instruction edit takes (0: not an editor; its image-to-image has a strength)."""
        return self.edit_images.get(variant, self.edit_images.get("", 0))

    def jobs(self, variant: str = "") -> dict[str, str]:
        """Kind of generation -> pipeline class, for models of `variant` (a job-made variant: its own only)."""
        return self.variant_pipelines.get(variant) or self.pipelines


_FLUX_LORA = ("double_blocks", "single_blocks", "single_transformer_blocks")  # diffusers and kohya names
FAMILIES_BY_NAME: dict[str, Family] = {f.name: f for f in (
    Family("builtin", "built-in", FamilyDefaults(10, 2.0, 64, 8, 512, "dpm++2m"), _SD_PIPELINES,
           load_extra=NO_SAFETY_CHECKER, caption_words=True, trained_sides=(48, 128), lora_training=True,
           # Karras sigmas on its near-zero terminal SNR repeat timesteps (7 distinct of 10), and the solver fails
           unfit_schedulers=("dpm++2m-karras",)),
    Family("sd15", "Stable Diffusion 1.5", FamilyDefaults(30, 7.5, 512, 8, 2048, "dpm++2m-karras"), _SD_PIPELINES,
           index_classes=("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline",
                          "StableDiffusionInpaintPipeline"),
           load_extra=NO_SAFETY_CHECKER, single_file_config="stable-diffusion-v1-5/stable-diffusion-v1-5",
           lora_training=True, file_keys=(("model.diffusion_model.input_blocks",), ("cond_stage_model.transformer",)),
           hub_ids={"stable-diffusion-v1-5/stable-diffusion-v1-5": ""}),
    Family("sdxl", "Stable Diffusion XL", FamilyDefaults(30, 7.0, 1024, 8, 2048, "euler"),
           {"txt2img": "StableDiffusionXLPipeline", "img2img": "StableDiffusionXLImg2ImgPipeline",
            "control": "StableDiffusionXLControlNetPipeline",
            "control_img2img": "StableDiffusionXLControlNetImg2ImgPipeline",
            "inpaint": "StableDiffusionXLInpaintPipeline"},
           index_classes=("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline",
                          "StableDiffusionXLInpaintPipeline"),
           single_file_config="stabilityai/stable-diffusion-xl-base-1.0",
           file_keys=(("conditioner.embedders.1",), ("label_emb.0.0.weight",), ("add_embedding.linear_1",)),
           hub_ids={"stabilityai/stable-diffusion-xl-base-1.0": ""}),
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
                                          "inpaint": "FluxKontextInpaintPipeline"}},
           index_variants={"FluxFillPipeline": "fill", "FluxKontextPipeline": "kontext",
                           "FluxKontextInpaintPipeline": "kontext"},
           config_variants=(("transformer/config.json", "guidance_embeds", False, "schnell"),), plain_variant="dev",
           unguided_variant="schnell", variant_configs={"schnell": "black-forest-labs/FLUX.1-schnell"},
           variant_uses={"fill": "inpainting and outpainting", "kontext": "editing an image"},
           edit_images={"kontext": 1},
           file_keys=(("double_blocks.0.",), ("transformer_blocks.0.attn.add_q_proj",)), lora_keys=_FLUX_LORA,
           hub_ids={"black-forest-labs/FLUX.1-schnell": "schnell", "black-forest-labs/FLUX.1-dev": "dev",
                    "black-forest-labs/FLUX.1-Kontext-dev": "kontext"}),
    # SD3 and SD3.5 (MMDiT, flow matching, CLIP L + G and T5): diffusers has no ControlNet image-to-image for it
    Family("sd3", "Stable Diffusion 3.5", FamilyDefaults(28, 4.5, 1024, 16, 2048, "flow-euler"),
           {"txt2img": "StableDiffusion3Pipeline", "img2img": "StableDiffusion3Img2ImgPipeline",
            "inpaint": "StableDiffusion3InpaintPipeline", "control": "StableDiffusion3ControlNetPipeline"},
           index_classes=("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline",
                          "StableDiffusion3InpaintPipeline"),
           flow=True, previews=False, controlnet_class="SD3ControlNetModel",
           single_file_config="stabilityai/stable-diffusion-3.5-medium",
           file_keys=(("joint_blocks.0.",), ("transformer_blocks.0.norm1_context.", "pos_embed.proj.")),
           lora_keys=("joint_blocks",),  # diffusers-named SD3 LoRAs are named as Flux's double blocks: left to
                                         # the layer check
           hub_ids={"stabilityai/stable-diffusion-3.5-medium": "", "stabilityai/stable-diffusion-3.5-large": ""}),
    # Chroma (Flux's architecture pruned, T5 only, trained to use a real negative prompt); no ControlNet in diffusers,
    # and diffusers 0.42.1's ChromaInpaintPipeline reads transformer.config.guidance_embeds, which Chroma's
    # transformer has not (AttributeError): no inpaint until it is fixed. Flux LoRAs fit its layers.
    Family("chroma", "Chroma", FamilyDefaults(40, 3.0, 1024, 16, 2048, "flow-euler"),
           {"txt2img": "ChromaPipeline", "img2img": "ChromaImg2ImgPipeline"},
           index_classes=("ChromaPipeline", "ChromaImg2ImgPipeline", "ChromaInpaintPipeline"),
           flow=True, previews=False, single_file_config="lodestones/Chroma1-HD",
           single_file_transformer="ChromaTransformer2DModel", file_keys=(("distilled_guidance_layer.",),),
           lora_keys=_FLUX_LORA,
           hub_ids={"lodestones/Chroma1-HD": ""}),
    # Z-Image (a single-stream DiT reading a Qwen3's hidden states); the defaults are Z-Image-Turbo's: 9 steps
    # (8 model evaluations), no guidance
    Family("zimage", "Z-Image", FamilyDefaults(9, 0.0, 1024, 16, 2048, "flow-euler"),
           {"txt2img": "ZImagePipeline", "img2img": "ZImageImg2ImgPipeline", "inpaint": "ZImageInpaintPipeline"},
           index_classes=("ZImagePipeline", "ZImageImg2ImgPipeline", "ZImageInpaintPipeline"),
           flow=True, previews=False, single_file_config="Tongyi-MAI/Z-Image-Turbo",
           single_file_transformer="ZImageTransformer2DModel",
           file_keys=(("noise_refiner.0.",), ("context_refiner.0.",)),
           lora_keys=("noise_refiner", "context_refiner", "transformer.layers.", "diffusion_model.layers."),
           hub_ids={"Tongyi-MAI/Z-Image-Turbo": ""}),
    # Qwen-Image (a 20B MMDiT reading Qwen2.5-VL's hidden states): true classifier-free guidance with a negative
    # prompt (`true_cfg_scale`), 50 steps at 4. Its editors (Qwen-Image-Edit, and Edit Plus, 2509 on, taking up
    # to three images) are the same transformer trained to edit: their own pipelines, no text-to-image
    Family("qwenimage", "Qwen-Image", FamilyDefaults(50, 4.0, 1328, 16, 2048, "flow-euler"),
           {"txt2img": "QwenImagePipeline", "img2img": "QwenImageImg2ImgPipeline",
            "inpaint": "QwenImageInpaintPipeline", "control": "QwenImageControlNetPipeline"},
           index_classes=("QwenImagePipeline", "QwenImageImg2ImgPipeline", "QwenImageInpaintPipeline",
                          "QwenImageEditPipeline", "QwenImageEditInpaintPipeline", "QwenImageEditPlusPipeline"),
           flow=True, previews=False, guidance_arg="true_cfg_scale", empty_negative=" ",
           controlnet_class="QwenImageControlNetModel", multi_controlnet_class="QwenImageMultiControlNetModel",
           variants={"edit": FamilyDefaults(50, 4.0, 1024, 16, 2048, "flow-euler"),
                     "edit-plus": FamilyDefaults(40, 4.0, 1024, 16, 2048, "flow-euler")},
           variant_pipelines={"edit": {"img2img": "QwenImageEditPipeline", "inpaint": "QwenImageEditInpaintPipeline"},
                              "edit-plus": {"img2img": "QwenImageEditPlusPipeline"}},
           index_variants={"QwenImageEditPipeline": "edit", "QwenImageEditInpaintPipeline": "edit",
                           "QwenImageEditPlusPipeline": "edit-plus"},
           variant_uses={"edit": "editing an image", "edit-plus": "editing one to three images together"},
           edit_images={"edit": 1, "edit-plus": 3},
           single_file_config="Qwen/Qwen-Image", single_file_transformer="QwenImageTransformer2DModel",
           file_keys=(("transformer_blocks.0.img_mod.1.",), ("txt_norm.weight", "img_in.weight")),
           lora_keys=("img_mod", "txt_mod", "img_mlp", "txt_mlp"),
           big="Qwen-Image's transformer has 20B parameters (41 GB in bf16): on a GPU under 48 GB start with "
               "--offload on (the parts take turns on the GPU) or --offload sequential (least memory, slowest).",
           hub_ids={"Qwen/Qwen-Image": "", "Qwen/Qwen-Image-Edit": "edit",
                    "Qwen/Qwen-Image-Edit-2509": "edit-plus"}),
    # FLUX.2 [dev] (a 32B transformer reading Mistral Small 3.1's hidden states; guidance distilled, no negative
    # prompt). Every FLUX.2 model edits: its image-to-image takes up to ten reference images and the instruction
    Family("flux2", "FLUX.2", FamilyDefaults(50, 4.0, 1024, 16, 2048, "flow-euler"),
           {"txt2img": "Flux2Pipeline", "img2img": "Flux2Pipeline"},
           index_classes=("Flux2Pipeline",), flow=True, negative_prompt=False, previews=False, edit_images={"": 10},
           single_file_config="black-forest-labs/FLUX.2-dev", single_file_transformer="Flux2Transformer2DModel",
           file_keys=(("double_stream_modulation_img", "guidance_in."),), lora_keys=("to_qkv_mlp_proj",),
           big="FLUX.2 [dev] is 32B parameters plus a 24B text encoder (over 100 GB in bf16): on a 24-80 GB GPU "
               "start with --offload sequential, or use FLUX.2 [klein] (black-forest-labs/FLUX.2-klein-4B).",
           hub_ids={"black-forest-labs/FLUX.2-dev": ""}),
    # FLUX.2 [klein] (4B/9B, a Qwen3 text encoder): the distilled models sample in 4 steps without guidance, the
    # base ones (is_distilled false) in 50 with guidance 4; both edit with up to four references, and inpaint
    Family("flux2klein", "FLUX.2 [klein]", FamilyDefaults(4, 1.0, 1024, 16, 2048, "flow-euler"),
           {"txt2img": "Flux2KleinPipeline", "img2img": "Flux2KleinPipeline", "inpaint": "Flux2KleinInpaintPipeline"},
           index_classes=("Flux2KleinPipeline", "Flux2KleinInpaintPipeline", "Flux2KleinKVPipeline"),
           flow=True, negative_prompt=False, previews=False, edit_images={"": 4},
           variants={"base": FamilyDefaults(50, 4.0, 1024, 16, 2048, "flow-euler")},
           config_variants=(("model_index.json", "is_distilled", False, "base"),),
           single_file_config="black-forest-labs/FLUX.2-klein-4B", single_file_transformer="Flux2Transformer2DModel",
           file_keys=(("double_stream_modulation_img",),), lora_keys=("to_qkv_mlp_proj",),
           hub_ids={"black-forest-labs/FLUX.2-klein-4B": "", "black-forest-labs/FLUX.2-klein-9B": ""}),
)}
FAMILIES = tuple(FAMILIES_BY_NAME)


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
    return bool(f.index_variants or f.config_variants)


def family_of_file_keys(keys) -> Family | None:
    """The family whose single-file tensor names `keys` has: the family of the most specific matching group of
    `file_keys` (a later family on a tie: SDXL files hold SD1.5's names too, Chroma's Flux's)."""
    best, size = None, 0
    for f in FAMILIES_BY_NAME.values():
        for group in f.file_keys:
            if len(group) >= size and all(any(part in k for k in keys) for part in group):
                best, size = f, len(group)
    return best


def families_of_lora_keys(keys) -> tuple[str, ...]:
    """The transformer families whose LoRA layer names `keys` has (Flux's fit Chroma's too); () for none."""
    return tuple(f.name for f in FAMILIES_BY_NAME.values()
                 if f.lora_keys and any(part in k for k in keys for part in f.lora_keys))
