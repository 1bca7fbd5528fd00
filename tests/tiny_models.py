"""Tiny random-weight pipelines of every family but the built-in one, built from configs, for offline tests.

The real diffusers classes at toy size (the way diffusers' own tests build `get_dummy_components()`),
saved with `save_pretrained` so tests drive them through the app's real `--model` loading path.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from engine.train.tokenizer import build_tokenizer


def clip_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    build_tokenizer(folder, max_length=16)
    return CLIPTokenizer.from_pretrained(folder)


def t5_tokenizer(folder: Path):
    """A small T5 tokenizer trained in a second with `tokenizers`' Unigram trainer (no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import T5TokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=120, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    text = ["a big red circle on the left", "a small blue square at the top", "a cat wearing a top hat",
            "oil painting of a house", "green background with yellow triangle"] * 20
    tok.train_from_iterator(text, trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    t5 = T5TokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), pad_token="<pad>", eos_token="</s>",
                         unk_token="<unk>", extra_ids=0, model_max_length=16)
    return t5


def _clip_text(vocab: int, hidden: int = 32, projection: bool = False, proj_dim: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1, hidden_size=hidden,
                         intermediate_size=37, layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=2,
                         vocab_size=vocab, max_position_embeddings=16, projection_dim=proj_dim, hidden_act="gelu")
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg)


def _vae(latent: int = 4, **kw):
    from diffusers import AutoencoderKL

    args = dict(block_out_channels=[8, 16], in_channels=3, out_channels=3, latent_channels=latent, sample_size=32,
                down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                norm_num_groups=4)
    args.update(kw)
    return AutoencoderKL(**args)


def _flow_vae(latent: int):
    """The VAE of the flow-matching families (Flux's shift and scale; no quant convs)."""
    return _vae(latent=latent, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609,
                scaling_factor=1.5035)


def _t5(vocab: int):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=vocab, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                                   relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0,
                                   eos_token_id=1))


def sd15(folder: Path, seed: int = 0) -> Path:
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    tok = clip_tokenizer(folder / "_tok")
    unet = UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=16, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                norm_num_groups=4, attention_head_dim=2)
    pipe = StableDiffusionPipeline(vae=_vae(), text_encoder=_clip_text(len(tok)), tokenizer=tok, unet=unet,
                                   scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                                           beta_end=0.012, clip_sample=False, steps_offset=1),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def sdxl(folder: Path, seed: int = 0) -> Path:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    tok = clip_tokenizer(folder / "_tok")
    unet = UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=16, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
                                use_linear_projection=True, addition_embed_type="text_time",
                                addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
                                projection_class_embeddings_input_dim=80, cross_attention_dim=64, norm_num_groups=4)
    pipe = StableDiffusionXLPipeline(
        vae=_vae(), text_encoder=_clip_text(len(tok)), text_encoder_2=_clip_text(len(tok), projection=True),
        tokenizer=tok, tokenizer_2=tok, unet=unet,
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                         timestep_spacing="leading", steps_offset=1))
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def flux(folder: Path, seed: int = 0) -> Path:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    torch.manual_seed(seed)
    tok = clip_tokenizer(folder / "_tok")
    tok2 = t5_tokenizer(folder / "_t5")
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, axes_dims_rope=[4, 4, 8])
    t5 = _t5(len(tok2))
    vae = _flow_vae(latent=4)
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=_clip_text(len(tok)),
                        tokenizer=tok, text_encoder_2=t5, tokenizer_2=tok2, transformer=transformer)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def sd3(folder: Path, seed: int = 0) -> Path:
    """SD3/3.5's parts at toy size: an MMDiT transformer, CLIP L and G with projections, a T5, flow matching."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    torch.manual_seed(seed)
    tok = clip_tokenizer(folder / "_tok")
    tok3 = t5_tokenizer(folder / "_t5")
    # 16 latent channels, as SD3's VAE has (its inpaint pipeline checks the transformer for 16); two blocks: the
    # last one reads no ControlNet ("context pre only")
    transformer = SD3Transformer2DModel(sample_size=32, patch_size=1, in_channels=16, num_layers=2,
                                        attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
                                        joint_attention_dim=32, pooled_projection_dim=64, out_channels=16)
    t5 = _t5(len(tok3))
    vae = _flow_vae(latent=16)
    pipe = StableDiffusion3Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, transformer=transformer,
        text_encoder=_clip_text(len(tok), projection=True), tokenizer=tok,
        text_encoder_2=_clip_text(len(tok), projection=True), tokenizer_2=tok,
        text_encoder_3=t5, tokenizer_3=tok3)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def chroma(folder: Path, seed: int = 0) -> Path:
    """Chroma's parts at toy size: a Flux-like transformer whose modulations come from one small approximator,
    a T5 alone (no CLIP), flow matching with a real negative prompt."""
    from diffusers import ChromaPipeline, ChromaTransformer2DModel, FlowMatchEulerDiscreteScheduler
    torch.manual_seed(seed)
    tok = t5_tokenizer(folder / "_t5")
    transformer = ChromaTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                           attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                           axes_dims_rope=[4, 4, 8], approximator_hidden_dim=32,
                                           approximator_layers=1, approximator_num_channels=16)
    t5 = _t5(len(tok))
    vae = _flow_vae(latent=4)
    pipe = ChromaPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=t5, tokenizer=tok,
                          transformer=transformer)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def chat_tokenizer(folder: Path):
    """A small tokenizer with a chat template, as the LLM text encoders' (Qwen3 for Z-Image) are used: the
    pipeline wraps each prompt in the template before tokenizing."""
    from transformers import PreTrainedTokenizerFast

    t5_tokenizer(folder)  # trains the Unigram vocabulary into folder/tokenizer.json
    tok = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), pad_token="<pad>",
                                  eos_token="</s>", unk_token="<unk>", model_max_length=64)
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    return tok


def zimage(folder: Path, seed: int = 0) -> Path:
    """Z-Image's parts at toy size: a single-stream DiT, a Qwen3 text encoder (its second-to-last hidden
    states), flow matching."""
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(seed)
    tok = chat_tokenizer(folder / "_chat")
    text = Qwen3Model(Qwen3Config(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, num_key_value_heads=2, head_dim=8,
                                  max_position_embeddings=1024))
    transformer = ZImageTransformer2DModel(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=32,
                                           n_layers=1, n_refiner_layers=1, n_heads=2, n_kv_heads=2,
                                           cap_feat_dim=16, axes_dims=[8, 4, 4], axes_lens=[1024, 64, 64])
    vae = _vae(latent=16, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1159,
               scaling_factor=0.3611)
    pipe = ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text, tokenizer=tok,
                          transformer=transformer)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def _qwen_parts(folder: Path, seed: int, vision: bool = False) -> dict:
    """Qwen-Image's parts at toy size: its MMDiT, its own 3D-conv VAE, a Qwen2.5-VL text encoder (the pipeline
    wraps the prompt in its template and drops the template's tokens); `vision`: the editors' parts, the processor
    their encoder reads the images with and a VAE 8x down as the real one (they encode each image at 1024x1024's
    area: 2x down would be 65536 tokens a step)."""
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    tok = chat_tokenizer(folder / "_chat")
    special = ["<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|video_pad|>"]
    tok.add_special_tokens({"additional_special_tokens": special})
    ids = dict(zip(special, tok.convert_tokens_to_ids(special)))
    z = 4
    levels = dict(dim_mult=[1, 2, 2, 2], temperal_downsample=[False, True, True]) if vision else dict(
        dim_mult=[1, 2], temperal_downsample=[False])
    vae = AutoencoderKLQwenImage(base_dim=8, z_dim=z, num_res_blocks=1, latents_mean=[0.0] * z,
                                 latents_std=[1.0] * z, **levels)
    text_config = dict(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096, bos_token_id=1,
                       eos_token_id=1, rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]})
    vision_config = dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=16,
                         fullatt_block_indexes=[0])
    text = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
        text_config=text_config, vision_config=vision_config, vocab_size=len(tok), hidden_size=16, bos_token_id=1,
        eos_token_id=1, image_token_id=ids["<|image_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"]))
    transformer = QwenImageTransformer2DModel(patch_size=2, in_channels=z * 4, out_channels=z, num_layers=1,
                                              attention_head_dim=16, num_attention_heads=2, joint_attention_dim=16,
                                              axes_dims_rope=(4, 6, 6))
    parts = dict(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text, tokenizer=tok,
                 transformer=transformer)
    if vision:
        from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

        # at most 64 merged patches of the image for the text encoder (the real one reads 384x384's area)
        parts["processor"] = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(min_pixels=56 * 56,
                                                                                    max_pixels=28 * 28 * 64),
                                              tokenizer=tok, video_processor=Qwen2VLVideoProcessor())
    return parts


def qwenimage(folder: Path, seed: int = 0) -> Path:
    """Qwen-Image at toy size (`_qwen_parts`)."""
    from diffusers import QwenImagePipeline

    QwenImagePipeline(**_qwen_parts(folder, seed)).save_pretrained(folder, safe_serialization=True)
    return folder


def qwenimage_edit(folder: Path, seed: int = 0, plus: bool = False) -> Path:
    """Qwen-Image-Edit (`plus`: Edit Plus, 2509 on, several images) at toy size: Qwen-Image's parts and the
    processor its text encoder reads the image with."""
    from diffusers import QwenImageEditPipeline, QwenImageEditPlusPipeline

    cls = QwenImageEditPlusPipeline if plus else QwenImageEditPipeline
    cls(**_qwen_parts(folder, seed, vision=True)).save_pretrained(folder, safe_serialization=True)
    return folder


def _flux2_parts(seed: int, joint: int, guidance: bool) -> dict:
    """FLUX.2's transformer and VAE at toy size (the text encoder is each model's own)."""
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2Transformer2DModel

    torch.manual_seed(seed)
    transformer = Flux2Transformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                          attention_head_dim=16, num_attention_heads=2, joint_attention_dim=joint,
                                          timestep_guidance_channels=32, axes_dims_rope=(4, 4, 4, 4),
                                          guidance_embeds=guidance)
    vae = AutoencoderKLFlux2(block_out_channels=(8, 16), latent_channels=4, norm_num_groups=4, layers_per_block=1,
                             down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                             sample_size=32)
    return dict(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, transformer=transformer)


def flux2klein(folder: Path, seed: int = 0, distilled: bool = True) -> Path:
    """FLUX.2 [klein] at toy size: its transformer without a guidance embedding, a Qwen3 causal LM whose hidden
    states at layers 9, 18 and 27 the pipeline stacks (so 28 layers, each tiny)."""
    from diffusers import Flux2KleinPipeline
    from transformers import Qwen3Config, Qwen3ForCausalLM

    parts = _flux2_parts(seed, joint=48, guidance=False)
    tok = chat_tokenizer(folder / "_chat")
    text = Qwen3ForCausalLM(Qwen3Config(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                                        num_hidden_layers=28, num_attention_heads=2, num_key_value_heads=2, head_dim=8,
                                        max_position_embeddings=1024))
    Flux2KleinPipeline(**parts, text_encoder=text, tokenizer=tok, is_distilled=distilled).save_pretrained(
        folder, safe_serialization=True)
    return folder


def flux2(folder: Path, seed: int = 0) -> Path:
    """FLUX.2 [dev] at toy size: its transformer with a guidance embedding and a Mistral 3 (Pixtral vision, 31
    layers: the pipeline stacks the hidden states at layers 10, 20 and 30) read through its processor."""
    from diffusers import Flux2Pipeline
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration, PixtralImageProcessor, PixtralProcessor

    parts = _flux2_parts(seed, joint=48, guidance=True)
    tok = chat_tokenizer(folder / "_chat")
    tok.add_special_tokens({"additional_special_tokens": ["[IMG]", "[IMG_BREAK]", "[IMG_END]"]})
    # the processor's template: messages whose content is a list of text (and image) parts
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{% if m['content'] is string %}{{ m['content'] }}"
                         "{% else %}{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% else %}"
                         "[IMG]{% endif %}{% endfor %}{% endif %}</s>{% endfor %}")
    config = Mistral3Config(
        text_config=dict(model_type="mistral", vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                         num_hidden_layers=31, num_attention_heads=2, num_key_value_heads=2, head_dim=8,
                         max_position_embeddings=1024),
        vision_config=dict(model_type="pixtral", hidden_size=16, intermediate_size=16, num_hidden_layers=1,
                           num_attention_heads=2, head_dim=8, patch_size=14, image_size=224),
        image_token_index=tok.convert_tokens_to_ids("[IMG]"), spatial_merge_size=2)
    processor = PixtralProcessor(image_processor=PixtralImageProcessor(patch_size=14, size={"longest_edge": 224}),
                                 tokenizer=tok, patch_size=14, spatial_merge_size=2, chat_template=tok.chat_template)
    Flux2Pipeline(**parts, text_encoder=Mistral3ForConditionalGeneration(config), tokenizer=processor).save_pretrained(
        folder, safe_serialization=True)
    return folder


BUILDERS = {"sd15": sd15, "sdxl": sdxl, "flux": flux, "sd3": sd3, "chroma": chroma, "zimage": zimage,
            "qwenimage": qwenimage, "flux2": flux2, "flux2klein": flux2klein,
            "qwenimage-edit": qwenimage_edit, "qwenimage-edit-plus": lambda folder, seed=0: qwenimage_edit(
                folder, seed, plus=True)}


def family_in_index(folder: Path) -> str:
    return json.loads((folder / "model_index.json").read_text())["_class_name"]
