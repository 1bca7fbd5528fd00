"""Single `.safetensors` files of the new families: the family is read from the tensor names (never the file name),
and a transformer-only file (as Qwen-Image's and Z-Image's are shared) loads through diffusers' own single-file
conversion with the VAE and text encoders of the config folder beside it, giving the folder's pixels.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.request import Request, UserError
from engine.sources.checkpoint import checkpoint_family, family_of_keys
from engine.sources.resolve import Resolver


def zimage_original(state: dict) -> dict:
    """Z-Image's transformer in its original layout (fused qkv, `out`, `q_norm`, `x_embedder`, `final_layer`), the
    inverse of diffusers' converter."""
    out = {}
    for key, value in state.items():
        if ".attention.to_k." in key or ".attention.to_v." in key:
            continue
        if ".attention.to_q." in key:
            parts = [state[key.replace("to_q", x)] for x in ("to_q", "to_k", "to_v")]
            out[key.replace(".attention.to_q.", ".attention.qkv.")] = torch.cat(parts)
            continue
        for new, old in (("all_final_layer.2-1.", "final_layer."), ("all_x_embedder.2-1.", "x_embedder."),
                         (".attention.to_out.0.", ".attention.out."), (".attention.norm_k.", ".attention.k_norm."),
                         (".attention.norm_q.", ".attention.q_norm.")):
            key = key.replace(new, old)
        out[key] = value
    return out


def transformer_file(folder: Path, out: Path, convert=None) -> Path:
    """The folder's transformer alone as one file (`convert`: to the original layout), its config folder beside it
    with every other part's weights and the transformer's config only."""
    state = {}
    for part in sorted((folder / "transformer").glob("*.safetensors")):
        state.update(load_file(str(part)))
    save_file(convert(state) if convert else state, str(out))
    beside = out.with_suffix("")
    shutil.copytree(folder, beside, ignore=lambda d, names: [n for n in names if Path(d).name == "transformer"
                                                              and n.endswith(".safetensors")])
    return out


@pytest.mark.parametrize("family,convert", [("qwenimage", None), ("zimage", zimage_original)])
def test_a_transformer_file_loads_and_draws_as_its_folder(engine, tiny_model, tmp_path, family, convert):
    folder = tiny_model(family)
    file = transformer_file(folder, tmp_path / "my-model.safetensors", convert)
    assert checkpoint_family(file) == family
    source = Resolver().resolve(str(file))
    assert (source.kind, source.family) == ("file", family)
    ask = dict(prompt="a red circle", steps=2, width=32, height=32, seed=4)
    from_file = engine.generate(Request(model=str(file), **ask)).images[0]
    from_folder = engine.generate(Request(model=str(folder), **ask)).images[0]
    assert np.array_equal(np.asarray(from_file), np.asarray(from_folder))


@pytest.mark.parametrize("keys,family", [
    ({"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": [3, 3]}, "sd3"),
    ({"transformer_blocks.0.norm1_context.linear.weight": [1], "pos_embed.proj.weight": [1]}, "sd3"),
    ({"double_blocks.0.img_attn.qkv.weight": [1], "distilled_guidance_layer.in_proj.weight": [1]}, "chroma"),
    ({"double_blocks.0.img_attn.qkv.weight": [1], "guidance_in.in_layer.weight": [1]}, "flux"),
    ({"double_blocks.0.img_attn.qkv.weight": [1], "double_stream_modulation_img.lin.weight": [1],
      "guidance_in.in_layer.weight": [1]}, "flux2"),
    ({"double_blocks.0.img_attn.qkv.weight": [1], "double_stream_modulation_img.lin.weight": [1]}, "flux2klein"),
    ({"transformer_blocks.0.img_mod.1.weight": [1], "transformer_blocks.0.attn.add_q_proj.weight": [1]}, "qwenimage"),
    ({"noise_refiner.0.attention.qkv.weight": [1], "layers.0.attention.qkv.weight": [1]}, "zimage"),
    ({"model.diffusion_model.input_blocks.0.0.weight": [1], "conditioner.embedders.1.model.ln_final.weight": [1]},
     "sdxl"),
])
def test_the_family_of_a_file_is_read_from_its_tensor_names(keys, family):
    assert family_of_keys(keys) == family


def test_a_file_of_no_known_family_names_the_families(tmp_path):
    odd = tmp_path / "flux2-but-not.safetensors"  # the name says nothing: the tensors do
    save_file({"something.else": torch.zeros(2)}, str(odd))
    with pytest.raises(UserError, match="not a checkpoint of a family this app runs.*Qwen-Image.*FLUX.2"):
        checkpoint_family(odd)
