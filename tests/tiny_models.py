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
    # 16 latent channels, as SD3's VAE has (its inpaint pipeline checks the transformer for 16)
    transformer = SD3Transformer2DModel(sample_size=32, patch_size=1, in_channels=16, num_layers=1,
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


def qwenimage(folder: Path, seed: int = 0) -> Path:
    """Qwen-Image's parts at toy size: its MMDiT, its own 3D-conv VAE, a Qwen2.5-VL text encoder (the
    pipeline wraps the prompt in its template and drops the template's tokens), flow matching."""
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    tok = chat_tokenizer(folder / "_chat")
    z = 4
    vae = AutoencoderKLQwenImage(base_dim=8, z_dim=z, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[False],
                                 latents_mean=[0.0] * z, latents_std=[1.0] * z)
    text_config = dict(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512, bos_token_id=1,
                       eos_token_id=1, rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]})
    vision_config = dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=16)
    text = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(text_config=text_config, vision_config=vision_config,
                                                               vocab_size=len(tok), hidden_size=16,
                                                               bos_token_id=1, eos_token_id=1))
    transformer = QwenImageTransformer2DModel(patch_size=2, in_channels=z * 4, out_channels=z, num_layers=1,
                                              attention_head_dim=16, num_attention_heads=2, joint_attention_dim=16,
                                              axes_dims_rope=(4, 6, 6))
    pipe = QwenImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text, tokenizer=tok,
                             transformer=transformer)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


BUILDERS = {"sd15": sd15, "sdxl": sdxl, "flux": flux, "sd3": sd3, "chroma": chroma, "zimage": zimage,
            "qwenimage": qwenimage}


def family_in_index(folder: Path) -> str:
    return json.loads((folder / "model_index.json").read_text())["_class_name"]
