"""check_request is pure (never changes what it is given) and complete (every settings mistake, before any load)."""

from __future__ import annotations

import copy
import time

import pytest

from engine.request import ControlUnit, LoraSpec, Request, UserError, check_request


def full_request() -> Request:
    return Request(prompt="  a red circle  ", negative=" blurry ", steps=12, guidance=3, seed=5, width=64,
                   height=64, init_image="x.png", strength=0.5,
                   controls=[ControlUnit("edge", "map.png", preprocessor="auto", scale=1, start=0, end=1, low=10,
                                         high=20)],
                   loras=[LoraSpec("pastel", 1)])


def test_check_request_returns_a_new_request_and_leaves_its_input_alone():
    req = full_request()
    before = copy.deepcopy(req)
    out = check_request(req, "builtin")
    assert req == before  # nothing changed, the units and LoRA specs included
    assert out is not req and out.controls[0] is not req.controls[0] and out.loras[0] is not req.loras[0]
    assert (out.prompt, out.negative, out.scheduler) == ("a red circle", "blurry", "dpm++2m")
    assert isinstance(out.guidance, float) and isinstance(out.controls[0].scale, float)
    assert isinstance(out.loras[0].weight, float)


@pytest.mark.parametrize("change, message", [
    (dict(controls=[ControlUnit("edge", "m.png", preprocessor="openpose")]), "makes pose maps, not edge"),
    (dict(controls=[ControlUnit("depth", "m.png", preprocessor="magic")]), "Unknown preprocessor 'magic'"),
    (dict(loras=[LoraSpec("pastel", 1), LoraSpec("pastel", 0.5)]), "'pastel' is asked for twice"),
    (dict(steps=2, strength=0.3), r"At strength 0.3, 2 steps leave no denoising step"),
    (dict(loras=[LoraSpec("pastel", float("nan"))]), "weight = nan is out of range"),
])
def test_every_settings_mistake_is_found_by_check_request(change, message):
    with pytest.raises(UserError, match=message):
        check_request(Request(**{**full_request().__dict__, **change}), "builtin")


def test_a_wrong_preprocessor_is_refused_before_the_model_loads(tmp_path, tiny_model):
    from engine.engine import Engine

    engine = Engine(device="cpu", local_paths=True)  # a fresh engine: nothing loaded yet
    request = Request(prompt="x", model=str(tiny_model("sdxl")), steps=2, width=32, height=32,
                      controls=[ControlUnit("edge", str(tmp_path / "map.png"), preprocessor="midas")])
    t0 = time.perf_counter()
    with pytest.raises(UserError, match="makes depth maps, not edge"):
        engine.generate(request)
    assert not engine.cache.models  # refused before anything was loaded
    assert time.perf_counter() - t0 < 30  # (a bound that only a hang could break; loading is what is checked)


def test_flux_schnell_defaults_follow_the_variant():
    assert check_request(Request(prompt="x"), "flux", "schnell").steps == 4
    assert check_request(Request(prompt="x"), "flux", "dev").steps == 28
    assert check_request(Request(prompt="x"), "flux").steps == 28
