"""Where models come from: path vs Hub id, offline messages with the README's own ids, the Flux variant read from
the model, the resolver's cache, and the local-paths rule."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine.request import UserError
from engine.sources.hub import Hub
from engine.sources.resolve import KNOWN_MODELS, Resolver, looks_like_path

ROOT = Path(__file__).resolve().parent.parent
README_IDS = [m for m in KNOWN_MODELS if m != "builtin"]


@pytest.mark.parametrize("model", README_IDS)
def test_the_readme_ids_are_hub_ids_and_offline_says_how_to_fetch_them(model):
    assert not looks_like_path(model)  # the dots in "-1.0" and "FLUX.1" are part of Hub names
    with pytest.raises(UserError) as e:
        Resolver(Hub(offline=True, why="HF_HUB_OFFLINE is set")).resolve(model)
    text = str(e.value)  # what a remote user reads: not a command to run on a machine that is not theirs
    assert "not in the local Hugging Face cache" in text and "models --download" not in text
    assert "No such file" not in text and "HF_HUB_OFFLINE is set" in text
    assert f"models --download {model}" in e.value.operator  # the operator's own advice (the CLI prints both)


@pytest.mark.parametrize("model", ["./nosuch.safetensors", "nosuch.safetensors", "~/nosuch", "/abs/nosuch",
                                   "models/nosuch.ckpt", "a/b/c"])
def test_a_missing_path_says_no_such_file_not_hub(model):
    with pytest.raises(UserError, match=r"No such file or folder"):
        Resolver(Hub(offline=True)).resolve(model)


@pytest.mark.parametrize("model", ["x" * 300, "org/" + "n" * 200])
def test_overlong_names_get_a_message_not_an_os_error(model):
    with pytest.raises(UserError, match=r"(No such file or folder: x{80}\.\.\. \(300 characters\)|not a valid Hub id)"):
        Resolver(Hub(offline=True)).resolve(model)


def test_the_cli_answers_the_readme_ids_offline_with_the_download_hint():
    for model in README_IDS[:2]:
        out = subprocess.run([sys.executable, "app.py", "generate", "--model", model, "--prompt", "x"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin",
                                                                              "HF_HUB_OFFLINE": "1",
                                                                              "HOME": str(ROOT / "runs")})
        assert out.returncode == 2 and f"models --download {model}" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr


def test_download_while_offline_names_the_real_reason():
    with pytest.raises(UserError, match=r"Unset HF_HUB_OFFLINE"):
        Hub(offline=True, why="HF_HUB_OFFLINE is set").download("org/model")
    with pytest.raises(UserError, match=r"Check the network") as e:
        Hub(offline=True, why="the Hub (huggingface.co) cannot be reached").download("org/model")
    assert "HF_HUB_OFFLINE" not in str(e.value)  # the app decided; the user has nothing to unset


def _flux_copy(tiny_model, folder: Path, guidance: bool) -> Path:
    shutil.copytree(tiny_model("flux"), folder)
    config = folder / "transformer" / "config.json"
    data = json.loads(config.read_text())
    data["guidance_embeds"] = guidance
    config.write_text(json.dumps(data))
    return folder


def test_flux_dev_or_schnell_comes_from_the_model_not_its_name(tmp_path, tiny_model):
    from engine.engine import Engine

    engine = Engine(device="cpu", local_paths=True)
    named_schnell = _flux_copy(tiny_model, tmp_path / "FLUX.1-schnell-copy", guidance=True)
    unnamed = _flux_copy(tiny_model, tmp_path / "my-flux", guidance=False)
    assert engine.resolve(str(named_schnell)).variant == "dev"
    assert engine.defaults(str(named_schnell))["steps"] == 28  # dev's defaults, whatever the folder is called
    assert engine.resolve(str(unnamed)).variant == "schnell"
    assert (engine.defaults(str(unnamed))["steps"], engine.defaults(str(unnamed))["guidance"]) == (4, 0.0)


class CountingHub(Hub):
    """A Hub that answers from a table and counts the questions (the Resolver is what is tested)."""

    def __init__(self):
        super().__init__()
        self.asked = 0

    def family(self, repo: str) -> tuple[str, str]:
        self.asked += 1
        return "sdxl", ""


def test_a_hub_id_is_asked_of_the_hub_once_per_process():
    hub = CountingHub()
    resolver = Resolver(hub)
    for _ in range(5):
        assert resolver.resolve("stabilityai/stable-diffusion-xl-base-1.0").family == "sdxl"
    assert hub.asked == 1


def test_a_changed_local_model_is_resolved_again(tmp_path, tiny_model):
    folder = shutil.copytree(tiny_model("sd15"), tmp_path / "m")
    resolver = Resolver(local_paths=True)
    assert resolver.resolve(str(folder)).family == "sd15"
    index = folder / "model_index.json"
    data = json.loads(index.read_text())
    data["_class_name"] = "StableDiffusionXLPipeline"
    index.write_text(json.dumps(data, indent=4))  # a different size: the stamp changes
    assert resolver.resolve(str(folder)).family == "sdxl"


def test_local_paths_are_refused_where_the_config_says_so_but_the_servers_own_model_is_not(tmp_path, tiny_model):
    resolver = Resolver(local_paths=False)
    with pytest.raises(UserError, match=r"on this server models are chosen by Hub id"):
        resolver.resolve(str(tiny_model("sd15")))
    with pytest.raises(UserError, match=r"on this server models are chosen by Hub id"):
        resolver.resolve("../../etc/passwd")
    resolver.allow_path(str(tiny_model("sd15")))
    assert resolver.resolve(str(tiny_model("sd15"))).family == "sd15"
    assert resolver.resolve("builtin").family == "builtin"
