"""Write tiny diffusers pipelines as single-file checkpoints in the original (LDM / BFL) key layout.

This is the inverse of diffusers' own single-file conversion (`diffusers.loaders.single_file_utils`), so
tests that load these files drive diffusers' real conversion path, the one users' A1111/ComfyUI
checkpoints take. The fixed-name tables come from diffusers itself (`DIFFUSERS_TO_LDM_MAPPING`); the
block layout is written as index rules, valid for any block count and layers per block.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING
from safetensors.torch import load_file, save_file

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD15_CLIP_PREFIX = "cond_stage_model.transformer."
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."
SDXL_OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."

# inside a UNet resnet: diffusers name -> LDM name
UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
               "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
# VAE mid-block attention: diffusers name -> LDM name (LDM stores q/k/v/proj_out as 1x1 convs)
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _component(folder: Path, name: str) -> dict[str, torch.Tensor]:
    files = sorted((folder / name).glob("*.safetensors"))
    if len(files) != 1:
        raise FileNotFoundError(f"expected one .safetensors file in {folder / name}, found {len(files)}")
    return load_file(str(files[0]))


def _config(folder: Path, name: str) -> dict:
    return json.loads((folder / name / "config.json").read_text())


def _resnet(rest: str, table: dict[str, str]) -> str:
    head, _, tail = rest.partition(".")
    return f"{table.get(head, head)}.{tail}"


# ------------------------------------------------------------------------------------------ UNet

def unet_to_ldm(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """diffusers UNet2DConditionModel weights -> `model.diffusion_model.*` (SD1.5 / SDXL layout)."""
    per_block = config["layers_per_block"] + 1  # LDM input/output blocks per diffusers block (incl. resampler)
    fixed = {d: ldm for d, ldm in DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"].items()}
    if config.get("addition_embed_type") == "text_time":
        fixed.update(DIFFUSERS_TO_LDM_MAPPING["unet"]["addition_embed_type"])
    up_has_attention = {int(k.split(".")[1]) for k in state if k.startswith("up_blocks.") and ".attentions." in k}
    out = {}
    for key, value in state.items():
        if key in fixed:
            new = fixed[key]
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
            b, kind, i, rest = int(m[1]), m[2], int(m[3]), m[4]
            index = 1 + b * per_block + i
            new = (f"input_blocks.{index}.0.{_resnet(rest, UNET_RESNET)}" if kind == "resnets"
                   else f"input_blocks.{index}.1.{rest}")
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            new = f"input_blocks.{1 + int(m[1]) * per_block + per_block - 1}.0.op.{m[2]}"
        elif m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
            new = f"middle_block.{2 * int(m[1])}.{_resnet(m[2], UNET_RESNET)}"
        elif m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
            new = f"middle_block.1.{m[1]}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
            b, kind, i, rest = int(m[1]), m[2], int(m[3]), m[4]
            index = b * per_block + i
            new = (f"output_blocks.{index}.0.{_resnet(rest, UNET_RESNET)}" if kind == "resnets"
                   else f"output_blocks.{index}.1.{rest}")
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
            b = int(m[1])
            slot = 2 if b in up_has_attention else 1  # the upsampler follows the attention when there is one
            new = f"output_blocks.{b * per_block + per_block - 1}.{slot}.conv.{m[2]}"
        else:
            raise KeyError(f"no LDM name for UNet weight {key}")
        out[UNET_PREFIX + new] = value
    return out


# ------------------------------------------------------------------------------------------- VAE

def vae_to_ldm(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKL weights -> `first_stage_model.*`."""
    fixed = DIFFUSERS_TO_LDM_MAPPING["vae"]
    n_up = len(config["up_block_types"])
    vae_resnet = {"conv_shortcut": "nin_shortcut"}
    out = {}
    for key, value in state.items():
        if key in fixed:
            new = fixed[key]
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            new = f"encoder.down.{m[1]}.block.{m[2]}.{_resnet(m[3], vae_resnet)}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            new = f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):  # LDM counts up blocks
            new = f"decoder.up.{n_up - 1 - int(m[1])}.block.{m[2]}.{_resnet(m[3], vae_resnet)}"  # from the bottom
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
            new = f"decoder.up.{n_up - 1 - int(m[1])}.upsample.conv.{m[2]}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
            new = f"{m[1]}.mid.block_{int(m[2]) + 1}.{_resnet(m[3], vae_resnet)}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", key):
            new = f"{m[1]}.mid.attn_1.{VAE_ATTENTION[m[2]]}.{m[3]}"
            if m[3] == "weight" and m[2] != "group_norm":
                value = value[:, :, None, None]
        else:
            raise KeyError(f"no LDM name for VAE weight {key}")
        out[VAE_PREFIX + new] = value
    return out


# --------------------------------------------------------------------------------- text encoders

def clip_to_ldm(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """transformers CLIPTextModel weights -> `<prefix>text_model.*` (the HF layout the LDM files embed)."""
    return {prefix + (k if k.startswith("text_model.") else "text_model." + k): v for k, v in state.items()}


def open_clip_to_ldm(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """transformers CLIPTextModelWithProjection weights -> OpenCLIP names (SDXL's second text encoder)."""
    fixed = {d: ldm for d, ldm in DIFFUSERS_TO_LDM_MAPPING["openclip"]["layers"].items()}
    layer = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
             "self_attn.out_proj": "attn.out_proj"}
    out = {}
    for key, value in state.items():
        if key in fixed:
            out[prefix + fixed[key]] = value.T.contiguous() if key == "text_projection.weight" else value
        elif m := re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key):
            i, name, kind = m[1], m[2], m[3]
            if name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                continue  # packed below into one in_proj tensor
            out[f"{prefix}transformer.resblocks.{i}.{layer[name]}.{kind}"] = value
        elif key != "text_model.embeddings.position_ids":
            raise KeyError(f"no OpenCLIP name for text encoder weight {key}")
    layers = {int(k.split(".")[3]) for k in state if k.startswith("text_model.encoder.layers.")}
    for i in sorted(layers):
        for kind in ("weight", "bias"):
            qkv = [state[f"text_model.encoder.layers.{i}.self_attn.{p}_proj.{kind}"] for p in "qkv"]
            out[f"{prefix}transformer.resblocks.{i}.attn.in_proj_{kind}"] = torch.cat(qkv)
    return out


# ------------------------------------------------------------------------------------------ Flux

def _flux_block(rest: str) -> str | None:
    names = {"norm1.linear": "img_mod.lin", "norm1_context.linear": "txt_mod.lin",
             "attn.norm_q.weight": "img_attn.norm.query_norm.scale",
             "attn.norm_k.weight": "img_attn.norm.key_norm.scale",
             "attn.norm_added_q.weight": "txt_attn.norm.query_norm.scale",
             "attn.norm_added_k.weight": "txt_attn.norm.key_norm.scale",
             "ff.net.0.proj": "img_mlp.0", "ff.net.2": "img_mlp.2", "ff_context.net.0.proj": "txt_mlp.0",
             "ff_context.net.2": "txt_mlp.2", "attn.to_out.0": "img_attn.proj", "attn.to_add_out": "txt_attn.proj"}
    for d, bfl in names.items():
        if rest == d or rest.startswith(d + "."):
            return bfl + rest[len(d):]
    return None


def flux_to_bfl(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers FluxTransformer2DModel weights -> Black Forest Labs' original names (transformer-only file)."""
    embed = {"time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
             "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
             "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
             "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
             "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
             "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
             "context_embedder": "txt_in", "x_embedder": "img_in", "proj_out": "final_layer.linear",
             "norm_out.linear": "final_layer.adaLN_modulation.1"}
    single = {"norm.linear": "modulation.lin", "attn.norm_q.weight": "norm.query_norm.scale",
              "attn.norm_k.weight": "norm.key_norm.scale", "proj_out": "linear2"}
    out = {}
    for key, value in state.items():
        module, _, kind = key.rpartition(".")
        if module in embed:
            if module == "norm_out.linear":  # diffusers keeps (scale, shift), BFL (shift, scale)
                scale, shift = value.chunk(2, dim=0)
                value = torch.cat([shift, scale])
            out[f"{embed[module]}.{kind}"] = value
        elif m := re.fullmatch(r"transformer_blocks\.(\d+)\.(.+)", key):
            if re.fullmatch(r"attn\.(to_[qkv]|add_[qkv]_proj)\.(weight|bias)", m[2]):
                continue  # packed below
            new = _flux_block(m[2])
            if new is None:
                raise KeyError(f"no BFL name for Flux weight {key}")
            out[f"double_blocks.{m[1]}.{new}"] = value
        elif m := re.fullmatch(r"single_transformer_blocks\.(\d+)\.(.+)", key):
            if re.fullmatch(r"(attn\.to_[qkv]|proj_mlp)\.(weight|bias)", m[2]):
                continue  # packed below
            head = next((d for d in single if m[2] == d or m[2].startswith(d + ".")), None)
            if head is None:
                raise KeyError(f"no BFL name for Flux weight {key}")
            out[f"single_blocks.{m[1]}.{single[head]}{m[2][len(head):]}"] = value
        else:
            raise KeyError(f"no BFL name for Flux weight {key}")
    doubles = {int(k.split(".")[1]) for k in state if k.startswith("transformer_blocks.")}
    singles = {int(k.split(".")[1]) for k in state if k.startswith("single_transformer_blocks.")}
    for kind in ("weight", "bias"):
        for i in doubles:
            p = f"transformer_blocks.{i}.attn"
            out[f"double_blocks.{i}.img_attn.qkv.{kind}"] = torch.cat([state[f"{p}.to_{x}.{kind}"] for x in "qkv"])
            out[f"double_blocks.{i}.txt_attn.qkv.{kind}"] = torch.cat(
                [state[f"{p}.add_{x}_proj.{kind}"] for x in "qkv"])
        for i in singles:
            p = f"single_transformer_blocks.{i}"
            parts = [state[f"{p}.attn.to_{x}.{kind}"] for x in "qkv"] + [state[f"{p}.proj_mlp.{kind}"]]
            out[f"single_blocks.{i}.linear1.{kind}"] = torch.cat(parts)
    return out


# ------------------------------------------------------------------------------------ whole files

def sd15_checkpoint(folder: Path) -> dict[str, torch.Tensor]:
    """A saved SD1.5 diffusers folder as one LDM state dict (UNet, VAE, CLIP text encoder)."""
    return {**unet_to_ldm(_component(folder, "unet"), _config(folder, "unet")),
            **vae_to_ldm(_component(folder, "vae"), _config(folder, "vae")),
            **clip_to_ldm(_component(folder, "text_encoder"), SD15_CLIP_PREFIX)}


def sdxl_checkpoint(folder: Path) -> dict[str, torch.Tensor]:
    """A saved SDXL diffusers folder as one SGM state dict (UNet, VAE, CLIP-L and OpenCLIP-G encoders)."""
    return {**unet_to_ldm(_component(folder, "unet"), _config(folder, "unet")),
            **vae_to_ldm(_component(folder, "vae"), _config(folder, "vae")),
            **clip_to_ldm(_component(folder, "text_encoder"), SDXL_CLIP_PREFIX),
            **open_clip_to_ldm(_component(folder, "text_encoder_2"), SDXL_OPEN_CLIP_PREFIX)}


def flux_checkpoint(folder: Path, layout: str = "bfl") -> dict[str, torch.Tensor]:
    """A saved Flux folder's transformer as one state dict: BFL names ("bfl") or diffusers names ("diffusers")."""
    state = _component(folder, "transformer")
    return flux_to_bfl(state) if layout == "bfl" else state


CHECKPOINTS = {"sd15": sd15_checkpoint, "sdxl": sdxl_checkpoint, "flux": flux_checkpoint}


def export(family: str, folder: Path, out: Path, **kwargs) -> Path:
    """Write the tiny pipeline in `folder` as the single file `out` (original key layout)."""
    state = {k: v.contiguous() for k, v in CHECKPOINTS[family](Path(folder), **kwargs).items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out))
    return out
