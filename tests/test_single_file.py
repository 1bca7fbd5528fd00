"""Single `.safetensors` checkpoints in the original LDM / BFL layout: detection, loading, generation, CLI.

The files are the tiny pipelines written back into the layout A1111/ComfyUI checkpoints use
(tests/ldm_export.py), so loading them runs diffusers' real single-file conversion. Beside each file
sits a config folder named like it; for SD1.5/SDXL it holds configs only, so the weights must come
from the file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.request import Request, UserError
from engine.sources.resolve import Resolver
from engine.sources.single_file import load_single_file
from tests import ldm_export

ROOT = Path(__file__).resolve().parent.parent


def sdxl_with_distinct_encoders(src: Path, out: Path) -> Path:
    """The tiny SDXL with a second text encoder wider than the first, as in the real model (768 vs 1280).

    diffusers tells SDXL's two text encoders apart in a single file by their width; with equal widths it
    loads CLIP-L's weights into both and leaves the projection empty.
    """
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    from tests.tiny_models import _clip_text

    pipe = StableDiffusionXLPipeline.from_pretrained(src)
    torch.manual_seed(1)
    wide = _clip_text(len(pipe.tokenizer), hidden=48, projection=True, proj_dim=32)
    unet = UNet2DConditionModel.from_config(pipe.unet.config, cross_attention_dim=32 + 48)
    StableDiffusionXLPipeline(**{**pipe.components, "text_encoder_2": wide, "unet": unet}).save_pretrained(out)
    return out


def configs_beside(folder: Path, file: Path, keep_weights_of: tuple[str, ...] = ()) -> None:
    """Copy `folder` next to `file` as `<file stem>/`, without weights except those of `keep_weights_of`."""
    def ignore(directory, names):
        if Path(directory).name in keep_weights_of:
            return []
        return [n for n in names if n.endswith(".safetensors")]

    shutil.copytree(folder, file.with_suffix(""), ignore=ignore)


@pytest.fixture(scope="module")
def files(tiny_model, tmp_path_factory):
    """name -> (family, single file, diffusers folder with the same weights)."""
    root = tmp_path_factory.mktemp("single")
    sdxl = sdxl_with_distinct_encoders(tiny_model("sdxl"), root / "sdxl_reference")
    made = {
        "sd15": ("sd15", root / "sd15" / "dreamshaper_8.safetensors", tiny_model("sd15")),
        "sdxl": ("sdxl", root / "sdxl" / "sd15_model.safetensors", sdxl),  # the name must not matter
        "flux": ("flux", root / "flux" / "flux1-custom.safetensors", tiny_model("flux")),
    }
    for family, file, folder in made.values():
        layout = {"layout": "diffusers"} if family == "flux" else {}  # BFL layout needs 3072 wide (see below)
        ldm_export.export(family, folder, file, **layout)
        # Flux files hold only the transformer: the VAE and text encoders come from the config folder
        keep = ("vae", "text_encoder", "text_encoder_2") if family == "flux" else ()
        configs_beside(folder, file, keep_weights_of=keep)
    bfl = ldm_export.export("flux", tiny_model("flux"), root / "bfl" / "sdxl_lightning.safetensors")
    made["flux-bfl"] = ("flux", bfl, tiny_model("flux"))
    return made


def assert_same_weights(pipe, reference) -> None:
    for name, module in reference.components.items():
        if isinstance(module, torch.nn.Module):
            ours, theirs = getattr(pipe, name).state_dict(), module.state_dict()
            assert ours.keys() == theirs.keys(), name
            for key, value in theirs.items():
                assert torch.equal(ours[key], value), f"{name}.{key}"


def small(model, **kw) -> Request:
    return Request(**{**dict(prompt="a big red circle on the left", model=str(model), steps=2, width=32,
                             height=32, seed=1), **kw})


# ------------------------------------------------------------------------------------- export

def test_flux_export_is_the_inverse_of_diffusers_conversion():
    """diffusers' Flux conversion assumes the real 3072 width, so check the BFL export at that width on
    tensors that keep only dim 0 (the one the conversion splits and swaps)."""
    from diffusers import FluxTransformer2DModel
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    with torch.device("meta"):
        shapes = FluxTransformer2DModel(num_layers=2, num_single_layers=2, guidance_embeds=True).state_dict()
    state = {k: torch.randn(v.shape[0]) for k, v in shapes.items()}
    back = convert_flux_transformer_checkpoint_to_diffusers(ldm_export.flux_to_bfl(state))
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)


# ---------------------------------------------------------------------------------- detection

@pytest.mark.parametrize("name", ["sd15", "sdxl", "flux", "flux-bfl"])
def test_family_detected_from_tensor_names(files, name):
    family, file, _ = files[name]
    source = Resolver().resolve(str(file))
    assert (source.kind, source.family) == ("file", family)


# ------------------------------------------------------------------------------------ loading

@pytest.mark.parametrize("name", ["sd15", "sdxl", "flux"])
def test_single_file_loads_the_same_weights(files, name):
    import diffusers

    family, file, folder = files[name]
    pipe = load_single_file(family, str(file), torch.float32)
    assert_same_weights(pipe, diffusers.DiffusionPipeline.from_pretrained(folder))
    if family == "sd15":
        assert pipe.safety_checker is None


def test_dtype_is_applied(files):
    family, file, _ = files["sd15"]
    pipe = load_single_file(family, str(file), torch.bfloat16)
    assert pipe.unet.dtype == torch.bfloat16 and pipe.text_encoder.dtype == torch.bfloat16


@pytest.mark.parametrize("name, repo", [("sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5"),
                                        ("sdxl", "stabilityai/stable-diffusion-xl-base-1.0"),
                                        ("flux-bfl", "black-forest-labs/FLUX.1-schnell")])  # no guidance: schnell
def test_offline_without_config_says_which_and_how(files, name, repo, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    family, file, _ = files[name]
    alone = tmp_path / file.name
    shutil.copy(file, alone)
    with pytest.raises(UserError, match=rf"needs the configs of {repo}, which are not in the Hugging Face cache "
                                        rf"\(offline\)\. Run once online, or `hf download {repo} ") as e:
        load_single_file(family, str(alone), torch.float32)
    assert f"named {alone.stem}/" in str(e.value)


def test_config_of_another_shape_is_named(files, tmp_path):
    family, file, folder = files["sd15"]
    wrong = tmp_path / file.name
    shutil.copy(file, wrong)
    configs_beside(folder, wrong)
    unet_config = wrong.with_suffix("") / "unet" / "config.json"
    unet_config.write_text(unet_config.read_text().replace('"cross_attention_dim": 32', '"cross_attention_dim": 48'))
    with pytest.raises(UserError, match=r"does not fit the config .*attn2\.to_k\.weight has shape \(16, 32\) in "
                                        r"the file, the config expects \(16, 48\)"):
        load_single_file(family, str(wrong), torch.float32)


def test_config_with_more_layers_than_the_file_is_refused(files, tmp_path):
    family, file, folder = files["sd15"]
    wrong = tmp_path / file.name
    shutil.copy(file, wrong)
    configs_beside(folder, wrong)
    te_config = wrong.with_suffix("") / "text_encoder" / "config.json"
    te_config.write_text(te_config.read_text().replace('"num_hidden_layers": 2', '"num_hidden_layers": 3'))
    with pytest.raises(UserError, match=r"its text_encoder has no weights for \d+ tensor\(s\) such as "
                                        r"encoder\.layers\.2\."):
        load_single_file(family, str(wrong), torch.float32)


def test_pickle_is_never_loaded(tmp_path):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not read")
    with pytest.raises(UserError, match=r"model\.ckpt is not a \.safetensors file"):
        load_single_file("sd15", str(ckpt), torch.float32)


# --------------------------------------------------------------------- through the engine and CLI

@pytest.mark.parametrize("name", ["sd15", "sdxl", "flux"])
def test_single_file_generates_like_its_folder(engine, files, name):
    family, file, folder = files[name]
    from_file = engine.generate(small(file))
    from_folder = engine.generate(small(folder))
    assert from_file.family == family
    assert np.array_equal(np.asarray(from_file.images[0]), np.asarray(from_folder.images[0]))


def test_cli_generates_from_a_single_file(files, tmp_path):
    _, file, _ = files["sd15"]
    out = tmp_path / "out.png"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "app.py", "generate", "--model", str(file), "--prompt", "x", "--steps",
                          "2", "--width", "32", "--height", "32", "--out", str(out)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert Image.open(out).size == (32, 32)
