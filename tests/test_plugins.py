"""LoRA plugins on tiny SD1.5 / SDXL / Flux pipelines: manifests, stacking, caching, fusing and every refusal.

LoRAs are made here with peft (`init_lora_weights=False`, so they change the output) and saved with the pipeline
class's `save_lora_weights`; generations go through `Engine.generate`, and refusals are checked by their message
and by the pixels of the next generation, which must equal those from before the refusal.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer

from engine.engine import Engine
from engine.images import metadata
from engine.plugins.lora_files import detect_lora_family
from engine.plugins.manager import PluginManager
from engine.plugins.manifests import fetch_lora_file, load_manifests
from engine.request import LoraSpec, Request, UserError
from engine.sources import resolve

ROOT = Path(__file__).resolve().parent.parent
PIPELINES = {"sd15": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline", "flux": "FluxPipeline",
             "sd3": "StableDiffusion3Pipeline", "chroma": "ChromaPipeline", "zimage": "ZImagePipeline",
             "qwenimage": "QwenImagePipeline", "flux2klein": "Flux2KleinPipeline", "flux2": "Flux2Pipeline",
             "qwenimage-edit-plus": "QwenImageEditPlusPipeline"}
NEW_FAMILIES = ["sd3", "chroma", "zimage", "qwenimage", "flux2klein", "flux2"]
ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
FLUX_LAYERS = ATTENTION + ("proj_mlp", "proj_out", "ff.net.2")  # attention alone barely moves the tiny Flux


# ------------------------------------------------------------------------------------------------ helpers

@pytest.fixture(scope="session")
def lora_store(tmp_path_factory, tiny_model):
    """lora_store(family, seed=0, text_encoder=False, targets=ATTENTION) -> a LoRA file made with peft (cached)."""
    import diffusers

    store = tmp_path_factory.mktemp("loras")
    made: dict[tuple, Path] = {}
    pipes: dict[str, object] = {}  # one scratch pipeline per family; each LoRA is a new peft adapter on it

    def get(family: str, seed: int = 0, text_encoder: bool = False, targets=None) -> Path:
        targets = targets or (FLUX_LAYERS if family == "flux" else ATTENTION + ("proj_out",) if family in NEW_FAMILIES
                              else ATTENTION)
        key = (family, seed, text_encoder, tuple(targets))
        if key not in made:
            if family not in pipes:
                pipes[family] = getattr(diffusers, PIPELINES[family]).from_pretrained(tiny_model(family))
            made[key] = make_lora(pipes[family], store / f"{family}-{len(made)}.safetensors", seed, text_encoder,
                                  targets, adapter=f"new{len(made)}")
        return made[key]

    return get


def make_lora(pipe, out: Path, seed: int, text_encoder: bool, targets, adapter: str) -> Path:
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    warnings.filterwarnings("ignore", message="Already found a `peft_config`")  # several adapters: on purpose
    torch.manual_seed(seed)
    name = "transformer" if getattr(pipe, "transformer", None) is not None else "unet"
    denoiser = getattr(pipe, name)
    denoiser.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=list(targets), init_lora_weights=False),
                         adapter_name=adapter)
    layers = {f"{name}_lora_layers": get_peft_model_state_dict(denoiser, adapter_name=adapter)}
    if text_encoder:  # transformers' own add_adapter wants a newer peft; peft injects directly
        config = LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "k_proj", "v_proj", "out_proj"],
                            init_lora_weights=False)
        inject_adapter_in_model(config, pipe.text_encoder, adapter_name=adapter)
        layers["text_encoder_lora_layers"] = get_peft_model_state_dict(pipe.text_encoder, adapter_name=adapter)
    type(pipe).save_lora_weights(out.parent, weight_name=out.name, **layers)
    return out


def put(src: Path, folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(src, folder / f"{name}.safetensors"))


def manifest(folder: Path, file_name: str, **fields) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / file_name
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in fields.items()))
    return path


def studio(plugin_dir: Path, **kw) -> Engine:
    engine = Engine(device="cpu", local_paths=True)
    engine.plugins = PluginManager([plugin_dir], hub=engine.hub, **kw)
    return engine


def pixels(engine: Engine, model: Path, *loras: tuple[str, float], prompt: str = "a red circle"):
    result = engine.generate(Request(prompt=prompt, model=str(model), steps=2, width=32, height=32, seed=1,
                                     loras=[LoraSpec(n, w) for n, w in loras]))
    return np.asarray(result.images[0], dtype=np.int16), result


def adapters(engine: Engine, model: Path) -> tuple:
    pipe = engine.load(str(model)).pipe
    return tuple(sorted((k, tuple(v)) for k, v in pipe.get_list_adapters().items())), tuple(pipe.get_active_adapters())


# ------------------------------------------------------------------------------------- effect and stacking

@pytest.mark.parametrize("family", ["sd15", "sdxl", "flux"])
def test_weight_zero_is_base_one_differs_off_is_base_again(tmp_path, tiny_model, lora_store, family):
    model = tiny_model(family)
    put(lora_store(family, text_encoder=family == "sd15"), tmp_path, "style")
    engine = studio(tmp_path)
    base, _ = pixels(engine, model)
    zero, _ = pixels(engine, model, ("style", 0.0))
    full, result = pixels(engine, model, ("style", 1.0))
    off, _ = pixels(engine, model)
    assert np.array_equal(zero, base)
    assert np.abs(full - base).mean() > 1.0
    assert np.array_equal(off, base)
    digest = metadata.model_hash(tmp_path / "style.safetensors", length=12)
    assert "<lora:style:1>" in result.infotexts[0]
    assert f"Lora hashes: \"style: {digest}\"" in result.infotexts[0]


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_a_lora_works_on_each_new_family_through_its_manifest(tmp_path, tiny_model, lora_store, family):
    """A LoRA plugin with `family = "<name>"` in its manifest, made with peft on that family's tiny transformer."""
    model = tiny_model(family)
    put(lora_store(family), tmp_path, "look")
    manifest(tmp_path, "look.toml", name="look", kind="lora", family=family, source="look.safetensors")
    engine = studio(tmp_path)
    base, _ = pixels(engine, model)
    full, result = pixels(engine, model, ("look", 1.0))
    off, _ = pixels(engine, model)
    assert np.abs(full - base).mean() > 0.5 and np.array_equal(off, base)
    assert "<lora:look:1>" in result.infotexts[0]


def test_a_lora_of_one_new_family_is_refused_on_another(tmp_path, tiny_model, lora_store):
    put(lora_store("qwenimage"), tmp_path, "qwen-look")
    engine = studio(tmp_path)
    with pytest.raises(UserError, match="none of its 5 LoRA layers match anything in this model"):
        pixels(engine, tiny_model("zimage"), ("qwen-look", 1.0))  # attention only: its names alone can't tell
    put(lora_store("qwenimage", targets=("img_mod.1", "txt_mlp.net.2")), tmp_path, "qwen-mod")
    with pytest.raises(UserError, match="made for Qwen-Image, but the current model is Z-Image"):
        pixels(studio(tmp_path), tiny_model("zimage"), ("qwen-mod", 1.0))
    model = tiny_model("chroma")  # Flux LoRAs name Chroma's layers too: the layer check decides
    put(lora_store("flux"), tmp_path, "flux-look")
    with pytest.raises(UserError, match="flux-look"):
        pixels(studio(tmp_path), model, ("flux-look", 1.0))


def test_two_loras_combine_and_weights_grade(tmp_path, tiny_model, lora_store):
    model = tiny_model("sd15")
    put(lora_store("sd15", seed=1), tmp_path, "a")
    put(lora_store("sd15", seed=2, targets=("to_k", "to_v", "proj_in")), tmp_path, "b")
    engine = studio(tmp_path)
    base, _ = pixels(engine, model)
    a, _ = pixels(engine, model, ("a", 1.0))
    b, _ = pixels(engine, model, ("b", 1.0))
    ab, _ = pixels(engine, model, ("a", 1.0), ("b", 1.0))
    half, _ = pixels(engine, model, ("a", 0.5))
    a_with_b_at_zero, _ = pixels(engine, model, ("a", 1.0), ("b", 0.0))
    for x, y in [(a, b), (ab, a), (ab, b), (half, a), (half, base)]:
        assert np.abs(x - y).mean() > 0.5
    assert np.array_equal(a_with_b_at_zero, a)
    assert engine.plugins.loads == 2


def test_the_fast_switch_sets_the_layers_as_diffusers_set_adapters_does(tmp_path, tiny_model, lora_store):
    # the engine re-weights cached adapters on its own list of peft layers; diffusers' own call must agree
    model = tiny_model("sd15")
    put(lora_store("sd15", seed=1, text_encoder=True), tmp_path, "a")
    put(lora_store("sd15", seed=2), tmp_path, "b")
    engine = studio(tmp_path)
    pixels(engine, model, ("a", 1.0))
    pixels(engine, model, ("b", 1.0))
    ours, _ = pixels(engine, model, ("a", 0.5), ("b", 0.7))  # a cached switch: no file read
    assert engine.plugins.loads == 2
    pipe = engine.load(str(model)).pipe
    names = pipe.get_active_adapters()
    assert len(names) == 2
    pipe.enable_lora()
    pipe.set_adapters(names, [0.5, 0.7])
    theirs, _ = pixels(engine, model, ("a", 0.5), ("b", 0.7))  # same set: the engine leaves the layers alone
    assert np.array_equal(ours, theirs)


def test_switching_back_uses_the_cached_adapter_without_reading_the_file(tmp_path, tiny_model, lora_store):
    model = tiny_model("sd15")
    put(lora_store("sd15", seed=1), tmp_path / "a", "weights")
    manifest(tmp_path / "a", "a.toml", name="a", kind="lora", family="sd15", source="weights.safetensors")
    put(lora_store("sd15", seed=2), tmp_path, "b")
    engine = studio(tmp_path)
    a, _ = pixels(engine, model, ("a", 1.0))
    (tmp_path / "a" / "weights.safetensors").unlink()  # from now on only the loaded weights can give a's output
    b, _ = pixels(engine, model, ("b", 0.8))
    again, result = pixels(engine, model, ("a", 1.0))
    assert np.array_equal(again, a) and not np.array_equal(a, b)
    assert engine.plugins.loads == 2
    assert "Lora hashes" in result.infotexts[0]  # the hash was taken at load time


def test_changed_file_is_loaded_again(tmp_path, tiny_model, lora_store):
    model = tiny_model("sd15")
    put(lora_store("sd15", seed=1), tmp_path, "a")
    engine = studio(tmp_path)
    first, _ = pixels(engine, model, ("a", 1.0))
    put(lora_store("sd15", seed=2), tmp_path, "a")  # retrained under the same name
    second, _ = pixels(engine, model, ("a", 1.0))
    assert not np.array_equal(first, second) and engine.plugins.loads == 2
    assert len(engine.load(str(model)).pipe.get_list_adapters()["unet"]) == 1  # the old version is gone


def test_trigger_words_join_the_prompt_once(tmp_path, tiny_model, lora_store):
    model = tiny_model("sd15")
    put(lora_store("sd15"), tmp_path, "zebra-file")
    manifest(tmp_path, "zebra.toml", name="zebra", kind="lora", family="sd15", source="zebra-file.safetensors",
             weight=0.7, trigger="zebra stripes", description="Stripes everywhere.")
    engine = studio(tmp_path)
    loaded = engine.load(str(model))
    info = engine.plugins.apply(loaded, Request(prompt="a red circle", loras=[LoraSpec("zebra", 0.7)]))
    assert info.prompt == "a red circle, zebra stripes" and info.triggers == ["zebra stripes"]
    info = engine.plugins.apply(loaded, Request(prompt="Zebra Stripes, a circle", loras=[LoraSpec("zebra", 1.0)]))
    assert info.prompt == "Zebra Stripes, a circle"
    info = engine.plugins.apply(loaded, Request(prompt="a red circle", loras=[LoraSpec("zebra", 0.0)]))
    assert info.prompt == "a red circle"  # a plugin at weight 0 is off
    # the trigger changes what is sampled: the same as typing it
    typed, _ = pixels(engine, model, ("zebra", 0.7), prompt="a red circle, zebra stripes")
    added, result = pixels(engine, model, ("zebra", 0.7))
    assert np.array_equal(typed, added)
    assert "<lora:zebra:0.7>" in result.infotexts[0]
    row = next(r for r in engine.plugins.listing("sd15") if r["name"] == "zebra")
    assert row["trigger"] == "zebra stripes" and row["weight"] == 0.7 and row["compatible"]


def test_kohya_format_loads_like_the_diffusers_file(tmp_path, tiny_model, lora_store):
    from safetensors.torch import load_file, save_file

    model = tiny_model("sd15")
    diffusers_file = put(lora_store("sd15", text_encoder=True), tmp_path, "dif")
    save_file(to_kohya(load_file(diffusers_file)), tmp_path / "koh.safetensors")
    engine = studio(tmp_path)
    d, _ = pixels(engine, model, ("dif", 1.0))
    k, _ = pixels(engine, model, ("koh", 1.0))
    assert np.abs(d - k).max() <= 1


def to_kohya(state: dict) -> dict:
    """diffusers/peft LoRA keys -> kohya's (`lora_unet_...`, `lora_te_text_model_...`, lora_down/up, alpha)."""
    out = {}
    for key, value in state.items():
        component, rest = key.split(".", 1)
        module, part = rest.rsplit(".lora_", 1)
        prefix = "lora_unet_" if component == "unet" else "lora_te_text_model_"
        name = prefix + module.replace(".", "_")
        out[f"{name}.{'lora_down' if part.startswith('A') else 'lora_up'}.weight"] = value.contiguous()
        if part.startswith("A"):
            out[f"{name}.alpha"] = torch.tensor(float(value.shape[0]))
    return out


# ---------------------------------------------------------------------------------------------- fusing

def test_fusing_after_a_stable_streak_keeps_the_image_and_unfuses_to_exact_base(tmp_path, tiny_model, lora_store):
    model = tiny_model("sd15")
    put(lora_store("sd15", seed=3), tmp_path, "a")
    engine = studio(tmp_path, fuse_after=2)
    base, _ = pixels(engine, model)
    unet = engine.load(str(model)).pipe.unet
    before = {k: v.clone() for k, v in unet.state_dict().items() if "lora" not in k}
    first, _ = pixels(engine, model, ("a", 0.7))
    fused, result = pixels(engine, model, ("a", 0.7))  # second identical request: fused before sampling
    assert engine.plugins._pipes[engine.load(str(model)).pipe].fused
    assert np.abs(fused - first).max() <= 1
    assert not any(isinstance(m, BaseTunerLayer) for m in unet.modules())  # bypassed while fused
    off, _ = pixels(engine, model)
    assert np.array_equal(off, base)
    assert sum(isinstance(m, BaseTunerLayer) for m in unet.modules()) > 0  # back for the next change
    assert np.array_equal(pixels(engine, model, ("a", 0.7))[0], first)  # unfused again: the adapter still works
    after = {k.replace(".base_layer", ""): v for k, v in unet.state_dict().items() if "lora" not in k}
    assert all(torch.equal(before[k], after[k]) for k in before)  # bit for bit, not W + d - d


def test_hotswap_reuses_an_idle_adapter_and_gives_the_same_image(tmp_path, tiny_model, lora_store):
    model = tiny_model("sd15")
    for i in range(3):
        put(lora_store("sd15", seed=20 + i), tmp_path, f"h{i}")
    plain = studio(tmp_path)
    base, expected = pixels(plain, model)[0], pixels(plain, model, ("h2", 0.8))[0]
    engine = studio(tmp_path, hotswap=True, max_cached=1, hotswap_rank=8)
    got = [pixels(engine, model, (f"h{i}", 0.8))[0] for i in range(3)]  # h2 is swapped into h0's adapter
    state = engine.plugins._pipes[engine.load(str(model)).pipe]
    assert state.adapters["h2"].adapter.startswith("h0_")  # h0's modules, h2's weights
    assert set(state.adapters) == {"h1", "h2"} and len(engine.load(str(model)).pipe.get_list_adapters()["unet"]) == 2
    assert np.abs(got[2] - expected).max() <= 1 and not np.array_equal(got[0], got[2])
    assert engine.plugins.loads == 3
    assert np.array_equal(pixels(engine, model)[0], base)


# ----------------------------------------------------------------------------------------------- refusals

def evil_pickle(marker: Path) -> bytes:
    class Payload:  # unpickling it opens (creates) `marker`: what a malicious .ckpt would do, harmlessly
        def __reduce__(self):
            return (open, (str(marker), "w"))

    return pickle.dumps({"state_dict": Payload()})


@pytest.fixture
def sdxl_studio(tmp_path, tiny_model, lora_store):
    """An SDXL studio with LoRA 'good' active, its pixels, and a folder of bad plugins next to it."""
    model = tiny_model("sdxl")
    plugins = tmp_path / "plugins"
    put(lora_store("sdxl", seed=4), plugins, "good")
    engine = studio(plugins)
    before, _ = pixels(engine, model, ("good", 0.9))
    return engine, model, plugins, before


def assert_unchanged(engine, model, before, state):
    assert adapters(engine, model) == state
    now, _ = pixels(engine, model, ("good", 0.9))
    assert np.array_equal(now, before)


def test_sd15_lora_on_sdxl_is_refused_by_manifest_and_by_shape(sdxl_studio, lora_store):
    engine, model, plugins, before = sdxl_studio
    state = adapters(engine, model)
    put(lora_store("sd15"), plugins, "sd15-bare")
    put(lora_store("sd15"), plugins / "sub", "sd15-style")
    manifest(plugins / "sub", "sd15-style.toml", name="sd15-style", kind="lora", family="sd15",
             source="sd15-style.safetensors")
    with pytest.raises(UserError, match=r"sd15-style.*made for SD 1.5, but the current model is SDXL"):
        pixels(engine, model, ("good", 0.9), ("sd15-style", 1.0))
    assert_unchanged(engine, model, before, state)
    with pytest.raises(UserError, match=r"sd15-bare.*is 32->\d+ wide, the model's is 64->\d+.*different model"):
        pixels(engine, model, ("sd15-bare", 1.0))
    assert_unchanged(engine, model, before, state)
    rows = {r["name"]: r for r in engine.plugins.listing("sdxl")}
    assert not rows["sd15-style"]["compatible"] and "made for SD 1.5" in rows["sd15-style"]["why"]


def test_flux_lora_on_a_unet_model_is_refused(tmp_path, tiny_model, lora_store):
    model = tiny_model("sd15")
    put(lora_store("flux"), tmp_path, "fluxy")
    engine = studio(tmp_path)
    base, _ = pixels(engine, model)
    with pytest.raises(UserError, match=r"'fluxy'.*made for FLUX.1, but the current model is SD 1.5"):
        pixels(engine, model, ("fluxy", 1.0))
    assert np.array_equal(pixels(engine, model)[0], base) and engine.plugins.loads == 0


def test_lora_whose_keys_match_nothing_is_refused(sdxl_studio):
    from safetensors.torch import save_file

    engine, model, plugins, before = sdxl_studio
    state = adapters(engine, model)
    g = torch.Generator().manual_seed(0)
    save_file({f"unet.nowhere.block_{i}.proj.lora_{ab}.weight": torch.randn(4, 4, generator=g)
               for i in range(3) for ab in "AB"}, plugins / "random.safetensors")
    with pytest.raises(UserError, match=r"'random'.*none of its 3 LoRA layers match anything in this model"):
        pixels(engine, model, ("good", 0.9), ("random", 1.0))
    assert_unchanged(engine, model, before, state)


def test_pickle_files_are_refused_without_being_opened(sdxl_studio, tmp_path):
    engine, model, plugins, before = sdxl_studio
    state = adapters(engine, model)
    control = tmp_path / "control-marker"
    pickle.loads(evil_pickle(control)).get("state_dict").close()  # the payload works when unpickled...
    assert control.exists()
    marker = tmp_path / "marker"
    (plugins / "evil.ckpt").write_bytes(evil_pickle(marker))
    (plugins / "sneaky.safetensors").write_bytes(evil_pickle(marker))  # a pickle renamed
    (tmp_path / "cli.bin").write_bytes(evil_pickle(marker))
    loaded = engine.load(str(model))
    with pytest.raises(UserError, match=r"evil.ckpt is a pickle file.*only .safetensors"):
        pixels(engine, model, ("evil", 1.0))
    with pytest.raises(UserError, match=r"sneaky.*not a valid .safetensors file"):
        pixels(engine, model, ("sneaky", 1.0))
    with pytest.raises(UserError, match=r"cli.bin is a pickle file"):
        engine.plugins.apply(loaded, Request(prompt="x", loras=[LoraSpec(str(tmp_path / "cli.bin"))]),
                             allow_paths=True)
    assert not marker.exists()  # ...and was never unpickled here
    assert_unchanged(engine, model, before, state)
    row = next(r for r in engine.plugins.listing() if r["name"] == "evil")
    assert row["status"].startswith("error: evil.ckpt is a pickle file")


def test_truncated_and_empty_files_are_refused(sdxl_studio):
    engine, model, plugins, before = sdxl_studio
    state = adapters(engine, model)
    data = (plugins / "good.safetensors").read_bytes()
    (plugins / "cut.safetensors").write_bytes(data[: len(data) - 100])
    (plugins / "empty.safetensors").write_bytes(b"")
    (plugins / "huge-header.safetensors").write_bytes((2**40).to_bytes(8, "little") + b"{}")
    with pytest.raises(UserError, match=r"'cut'.*not a valid .safetensors file.*truncated or corrupt"):
        pixels(engine, model, ("good", 0.9), ("cut", 1.0))
    with pytest.raises(UserError, match=r"'empty'.*empty \(0 bytes\)"):
        pixels(engine, model, ("empty", 1.0))
    with pytest.raises(UserError, match=r"'huge-header'.*not a valid .safetensors"):
        pixels(engine, model, ("huge-header", 1.0))
    assert_unchanged(engine, model, before, state)


def test_bad_manifests_are_listed_with_the_field_and_refused(sdxl_studio, tmp_path):
    engine, model, plugins, before = sdxl_studio
    state = adapters(engine, model)
    (tmp_path / "outside.safetensors").write_bytes((plugins / "good.safetensors").read_bytes())
    manifest(plugins, "nosource.toml", name="nosource", kind="lora", family="sdxl")
    manifest(plugins, "typo.toml", name="typo", kind="lora", family="sdxl", source="good.safetensors", wieght=1)
    manifest(plugins, "escape.toml", name="escape", kind="lora", family="sdxl", source="../outside.safetensors")
    (plugins / "link.safetensors").symlink_to(tmp_path / "outside.safetensors")
    (plugins / "broken.toml").write_text("name = 'broken\n")
    manifest(plugins, "dup.toml", name="good", kind="lora", family="sdxl", source="good.safetensors")
    rows = {r["name"]: r for r in engine.plugins.listing("sdxl")}
    assert rows["nosource"]["status"].startswith("error: missing field 'source'")
    assert "unknown field 'wieght' (did you mean 'weight'?)" in rows["typo"]["status"]
    assert "field 'source' leads outside the plugin folder" in rows["escape"]["status"]
    assert "leads outside the plugin folder" in rows["link"]["status"]
    assert "not valid TOML" in rows["broken"]["status"]
    assert [r["status"] for r in engine.plugins.listing() if r["name"] == "good"][0] == "ready"
    assert not rows["escape"]["compatible"] and rows["escape"]["why"]
    for name, message in [("nosource", "missing field 'source'"), ("typo", "unknown field 'wieght'"),
                          ("escape", "leads outside"), ("link", "leads outside")]:
        with pytest.raises(UserError, match=rf"Plugin '{name}'.*{message}"):
            pixels(engine, model, ("good", 0.9), (name, 1.0))
    assert_unchanged(engine, model, before, state)


def test_remote_users_cannot_name_server_paths(sdxl_studio, lora_store, tiny_model):
    engine, model, plugins, before = sdxl_studio
    state = adapters(engine, model)
    path = str(lora_store("sdxl", seed=5))
    served = Engine(device="cpu", local_paths=False)  # what app.py gives a shared or non-loopback server
    served.sources.allow_path(str(model))  # the server's own --model may be a folder
    served.plugins = PluginManager([plugins], hub=served.hub)
    with pytest.raises(UserError, match=r"only the command line may load a file by its path"):
        pixels(served, model, ("good", 0.9), (path, 1.0))
    with pytest.raises(UserError, match=r"on this server models are chosen by Hub id"):
        pixels(served, tiny_model("sd15"), ("good", 0.9))
    with pytest.raises(UserError, match=r"no LoRA plugin named 'godo'. Did you mean 'good'"):
        pixels(engine, model, ("godo", 1.0))
    assert_unchanged(engine, model, before, state)
    loaded = engine.load(str(model))
    info = engine.plugins.apply(loaded, Request(prompt="x", loras=[LoraSpec(path, 1.0)]), allow_paths=True)
    assert info.infotext["Lora hashes"] == f"{path}: {metadata.model_hash(path, 12)}"


def test_a_format_diffusers_cannot_convert_is_refused_before_loading(tmp_path, tiny_model, lora_store):
    from safetensors.torch import load_file, save_file

    model = tiny_model("sd15")
    full = to_kohya(load_file(lora_store("sd15", text_encoder=True)))
    # kohya text-encoder layers without out_proj: diffusers 0.42 cannot tell their format (it would fail half-way,
    # after the UNet part was already loaded)
    save_file({k: v for k, v in full.items() if "out_proj" not in k or "lora_unet" in k}, tmp_path / "odd.safetensors")
    put(lora_store("sd15", seed=1), tmp_path, "ok")
    engine = studio(tmp_path)
    before, _ = pixels(engine, model, ("ok", 1.0))
    state = adapters(engine, model)
    with pytest.raises(UserError, match=r"'odd'.*cannot convert this LoRA's text_encoder layers"):
        pixels(engine, model, ("ok", 1.0), ("odd", 1.0))
    assert adapters(engine, model) == state
    assert np.array_equal(pixels(engine, model, ("ok", 1.0))[0], before)


def test_a_failure_inside_diffusers_is_rolled_back(tmp_path, tiny_model, lora_store, monkeypatch):
    """The checks pass, then diffusers fails half-way (UNet loaded, text encoder not): nothing may remain."""
    import engine.plugins.lora_files as plugins_module

    model = tiny_model("sd15")
    put(lora_store("sd15", seed=1), tmp_path, "ok")
    from safetensors.torch import load_file, save_file

    full = to_kohya(load_file(lora_store("sd15", text_encoder=True)))
    save_file({k: v for k, v in full.items() if "out_proj" not in k or "lora_unet" in k}, tmp_path / "odd.safetensors")
    engine = studio(tmp_path)
    before, _ = pixels(engine, model, ("ok", 1.0))
    state = adapters(engine, model)
    # only the pre-check is skipped, so that diffusers' real load runs into its real failure
    monkeypatch.setattr(plugins_module, "match_layers", lambda path, pipe, label: plugins_module.LoraCheck({}, []))
    with pytest.raises(UserError, match=r"'odd' could not be loaded by diffusers.*Nothing was changed"):
        pixels(engine, model, ("ok", 1.0), ("odd", 1.0))
    assert adapters(engine, model) == state
    assert np.array_equal(pixels(engine, model, ("ok", 1.0))[0], before)


# --------------------------------------------------------------------------------------- memory, discovery

def rss_mb() -> float:
    """This process's resident memory, after glibc hands its free pages back (malloc_trim): what is still held,
    not what earlier tests in the same process left in the allocator's pools."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


LOAD_CYCLES = """
import gc, json, sys, warnings
sys.path.insert(0, {root!r})
import torch
torch.set_num_threads(1)
from engine.engine import Engine
from engine.plugins.manager import PluginManager
from engine.request import LoraSpec, Request
from tests.test_plugins import rss_mb

engine = Engine(device="cpu", local_paths=True)
engine.plugins = PluginManager([{plugins!r}], hub=engine.hub, max_cached=2)
loaded = engine.load({model!r})
request = [Request(prompt="x", loras=[LoraSpec(f"l{{i}}", 1.0)]) for i in range(3)]


def tensors():
    gc.collect()
    with warnings.catch_warnings():  # isinstance on some torch module objects warns about deprecations
        warnings.simplefilter("ignore")
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


for i in range(6):  # warm-up: caches, allocator pools
    engine.plugins.apply(loaded, request[i % 3])
engine.plugins.unload(loaded)
start_rss, start_tensors = rss_mb(), tensors()
for i in range(14):  # three LoRAs through two cache slots: every call loads one and drops one
    engine.plugins.apply(loaded, request[i % 3])
    if i % 7 == 6:
        engine.plugins.unload(loaded)
engine.plugins.unload(loaded)
print(json.dumps({{"loads": engine.plugins.loads, "tensors": tensors() - start_tensors,
                  "rss": rss_mb() - start_rss, "adapters": loaded.pipe.get_list_adapters()}}))
"""


def test_loading_and_unloading_repeatedly_does_not_grow_memory(tmp_path, tiny_model, lora_store):
    """14 load/drop cycles (each costs peft ~0.3 s) in a fresh process, so the heap that earlier tests left
    behind does not count; benchmarks/lora_plugins.py runs 50 and prints RSS."""
    model = tiny_model("sd15")
    for i in range(3):
        put(lora_store("sd15", seed=10 + i), tmp_path, f"l{i}")
    code = LOAD_CYCLES.format(root=str(ROOT), plugins=str(tmp_path), model=str(model))
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1"))
    assert out.returncode == 0, out.stderr[-2000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["loads"] >= 20
    assert found["tensors"] < 50
    assert found["rss"] < 40, found
    assert found["adapters"] == {}


def test_family_detection_from_tensor_names_and_widths(tmp_path, monkeypatch):
    cross = {"unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": [4, 768]}
    kohya_xl = {"lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight": [8, 2048],
                "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": [8, 1280]}
    assert detect_lora_family(cross) == "sd15"
    assert detect_lora_family(kohya_xl) == "sdxl"
    assert detect_lora_family({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": [16, 3072]}) == "flux"
    assert detect_lora_family({"transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": [4, 32]}) == "flux"
    te_only = {"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": [4, 768]}
    assert detect_lora_family(te_only) is None  # SD1.5's and SDXL's first text encoders are both 768 wide
    builtin_like = {"unet.up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v.lora_A.weight": [4, 128]}
    monkeypatch.setattr(resolve, "BUILTIN_DIR", tmp_path / "no-builtin-model-here")
    assert detect_lora_family(builtin_like) is None  # the width alone names no family without the built-in model
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"cross_attention_dim": 128}))
    monkeypatch.setattr(resolve, "BUILTIN_DIR", tmp_path)
    assert detect_lora_family(builtin_like) == "builtin"


def test_manifests_hub_sources_and_bare_files_are_listed(tmp_path, lora_store):
    put(lora_store("flux"), tmp_path, "bare-flux")
    manifest(tmp_path, "pixel.toml", name="pixel-xl", kind="lora", family="sdxl", source="nerijs/pixel-art-xl",
             weight_name="pixel-art-xl.safetensors", weight=1.2, trigger=["pixel art", "8-bit"])
    manifest(tmp_path, "nofile.toml", name="nofile", kind="lora", family="sdxl", source="nerijs/pixel-art-xl")
    manifest(tmp_path, "pose.toml", name="pose-xl", kind="controlnet", family="sdxl",
             source="xinsir/controlnet-union-sdxl-1.0", control="pose", mode=0)
    manifest(tmp_path, "lora-mode.toml", name="lora-mode", kind="lora", family="sdxl", source="x.safetensors", mode=1)
    rows = {r["name"]: r for r in PluginManager(dirs=[tmp_path]).listing("sdxl")}
    assert rows["bare-flux"]["family"] == "flux" and rows["bare-flux"]["status"] == "ready"
    assert not rows["bare-flux"]["compatible"] and "made for FLUX.1" in rows["bare-flux"]["why"]
    assert rows["pixel-xl"]["status"] == "download on use" and rows["pixel-xl"]["trigger"] == "pixel art, 8-bit"
    assert rows["pixel-xl"]["weight"] == 1.2 and rows["pixel-xl"]["compatible"]
    assert "missing field 'weight_name'" in rows["nofile"]["status"]
    assert "field 'mode' is only for controlnet" in rows["lora-mode"]["status"]
    pose = next(m for m in load_manifests([tmp_path]) if m.name == "pose-xl")
    assert (pose.kind, pose.control, pose.mode, pose.hub, pose.error) == ("controlnet", "pose", 0, True, None)
    engine = studio(tmp_path)
    with pytest.raises(UserError, match=r"'pixel-xl'.*not in the local Hugging Face cache.*offline"):
        fetch_lora_file(next(m for m in engine.plugins.manifests() if m.name == "pixel-xl"), engine.hub)


def test_plugins_added_changed_or_removed_while_the_app_runs_show_up(tmp_path, lora_store):
    """The manager reads the manifests again only when the folders' files change, and then always: each step
    below would see the previous step's plugins from a stale cache."""
    folder = tmp_path / "plugins"
    manager = PluginManager(dirs=[folder])
    assert manager.manifests() == []
    put(lora_store("sd15"), folder, "ink")
    assert [(m.name, m.weight, m.path.suffix) for m in manager.manifests()] == [("ink", 1.0, ".safetensors")]
    toml = manifest(folder, "ink.toml", name="ink", kind="lora", family="sd15", source="ink.safetensors", weight=0.5)
    assert [(m.name, m.weight, m.path.suffix) for m in manager.manifests()] == [("ink", 0.5, ".toml")]
    time.sleep(0.02)  # past the kernel's timestamp tick since the file was written, as any edit by hand is
    toml.write_text(toml.read_text().replace("0.5", "0.7"))  # the same size: its change time tells
    assert manager.manifests()[0].weight == 0.7
    toml.unlink()
    assert [(m.name, m.weight, m.path.suffix) for m in manager.manifests()] == [("ink", 1.0, ".safetensors")]
    (folder / "ink.safetensors").unlink()
    assert manager.manifests() == []


def test_the_repo_manifests_parse():
    for m in load_manifests([ROOT / "plugins"]):
        assert m.error is None, (m.path, m.error)


def test_cli_lists_plugins_as_json(tmp_path, lora_store):
    put(lora_store("sd15"), tmp_path, "mine")
    manifest(tmp_path, "bad.toml", name="bad", kind="lora")
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "app.py", "plugins", "--json", "--plugins", str(tmp_path)], cwd=ROOT,
                         env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert set(rows) == {"mine", "bad"}
    for row in rows.values():
        assert {"name", "kind", "family", "weight", "status"} <= set(row)
    assert rows["mine"]["status"] == "ready" and rows["mine"]["kind"] == "lora"
    assert rows["bad"]["status"].startswith("error: missing field")


def test_a_loras_own_sampling_is_used_only_where_the_user_left_it_unset(tmp_path, tiny_model, lora_store):
    """A distilled few-step LoRA (the built-in `fast`) names its steps, guidance and scheduler in its manifest."""
    model = tiny_model("sd15")
    put(lora_store("sd15"), tmp_path, "quick")
    manifest(tmp_path, "quick.toml", name="quick", kind="lora", family="sd15", source="quick.safetensors", steps=3,
             guidance=1.0, scheduler="ddim")
    manifest(tmp_path, "bad.toml", name="bad", kind="lora", family="sd15", source="quick.safetensors", steps=0,
             scheduler="fastest")
    engine = studio(tmp_path)
    rows = {r["name"]: r for r in engine.plugins.listing("sd15")}
    assert (rows["quick"]["steps"], rows["quick"]["guidance"], rows["quick"]["scheduler"]) == (3, 1.0, "ddim")
    assert "field 'steps' = 0: use 1 to 200" in rows["bad"]["status"]
    own = engine.generate(Request(prompt="a red circle", model=str(model), width=32, height=32, seed=1,
                                  loras=[LoraSpec("quick", 1.0)]))
    assert (own.request.steps, own.request.guidance, own.request.scheduler) == (3, 1.0, "ddim")
    assert "Steps: 3," in own.infotexts[0] and "Sampler: DDIM" in own.infotexts[0]
    assert any("LoRA quick set its own steps 3, guidance 1, scheduler ddim" in n for n in own.notes)
    mine = engine.generate(Request(prompt="a red circle", model=str(model), width=32, height=32, seed=1, steps=2,
                                   guidance=5.0, scheduler="euler", loras=[LoraSpec("quick", 1.0)]))
    assert (mine.request.steps, mine.request.guidance, mine.request.scheduler) == (2, 5.0, "euler") and not [
        n for n in mine.notes if "set its own" in n]
    off = engine.generate(Request(prompt="a red circle", model=str(model), width=32, height=32, seed=1,
                                  loras=[LoraSpec("quick", 0.0)]))
    assert off.request.steps == 30  # weight 0: the LoRA is off, so are its settings (SD1.5's default)
