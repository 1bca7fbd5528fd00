"""`python app.py generate|models` as a user runs them: real processes, real files, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def app(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "app.py"), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def test_generate_writes_png_with_metadata_and_reproduces(tiny_model, tmp_path):
    folder = str(tiny_model("sdxl"))
    common = ["generate", "--model", folder, "--prompt", "a cat wearing a top hat, oil painting", "--steps", "2",
              "--width", "32", "--height", "32", "--seed", "42", "--negative", "blurry", "--scheduler", "euler-a"]
    a = app(*common, "--out", str(tmp_path / "a.png"))
    assert a.returncode == 0, a.stderr
    b = app(*common, "--out", str(tmp_path / "b.png"))
    assert b.returncode == 0, b.stderr
    image = Image.open(tmp_path / "a.png")
    params = image.text["parameters"]
    assert params.startswith("a cat wearing a top hat, oil painting\nNegative prompt: blurry\n")
    assert "Steps: 2, Sampler: Euler a" in params and "Seed: 42" in params and "Size: 32x32" in params
    assert json.loads(image.text["studio"])["request"]["seed"] == 42
    assert np.array_equal(np.asarray(image), np.asarray(Image.open(tmp_path / "b.png")))
    assert "seed 42" in a.stdout


def test_prompt_file_batch(tiny_model, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n\na blue square\na green triangle\n")
    out = tmp_path / "batch"
    r = app("generate", "--model", str(tiny_model("sd15")), "--prompt-file", str(prompts), "--out", str(out),
            "--seed", "10", "--steps", "2", "--width", "32", "--height", "32")
    assert r.returncode == 0, r.stderr
    files = sorted(p.name for p in out.iterdir())
    assert files == ["0000.png", "0001.png", "0002.png"]
    texts = [Image.open(out / f).text["parameters"] for f in files]
    assert texts[1].startswith("a blue square") and "Seed: 11" in texts[1] and "Seed: 12" in texts[2]


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "steps = 0 is out of range"),
    (["--guidance", "-2"], "guidance = -2.0 is out of range"),
    (["--width", "33"], "width = 33 is not a multiple of 8"),
    (["--scheduler", "nope"], "Unknown scheduler 'nope'"),
    (["--model", "/does/not/exist"], "No such file or folder"),
    (["--model", "someone/uncached-model"], "not in the local Hugging Face cache"),
    (["--control", "edge"], "expected KIND=IMAGE"),
    (["--init", "/missing.png"], "no such file"),
])
def test_bad_input_one_line_no_traceback(tiny_model, args, message):
    base = ["generate", "--model", str(tiny_model("sd15")), "--prompt", "x", "--steps", "2", "--width", "32",
            "--height", "32"]
    r = app(*base, *args)
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("error: ")


def test_pickle_checkpoint_refused(tmp_path):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not really a pickle")
    r = app("generate", "--model", str(ckpt), "--prompt", "x")
    assert r.returncode == 2 and "pickle file" in r.stderr and "safetensors" in r.stderr


def test_models_lists_families():
    r = app("models", "--json")
    assert r.returncode == 0, r.stderr
    rows = {row["model"]: row for row in json.loads(r.stdout)}
    assert rows["stabilityai/stable-diffusion-xl-base-1.0"]["family"] == "sdxl"
    assert rows["black-forest-labs/FLUX.1-schnell"]["family"] == "flux"
    assert rows["builtin"]["family"] == "builtin"


def test_generate_does_not_import_gradio_or_controlnet_aux(tiny_model):
    code = ("import sys, app; app.main(['generate', '--model', sys.argv[1], '--prompt', 'x', '--steps', '1', "
            "'--width', '32', '--height', '32', '--out', sys.argv[2]]); "
            "print(sorted(m for m in ('gradio', 'controlnet_aux') if m in sys.modules))")  # (diffusers imports peft)
    import tempfile

    out = Path(tempfile.mkdtemp()) / "x.png"
    r = subprocess.run([sys.executable, "-c", code, str(tiny_model("sd15")), str(out)], capture_output=True,
                       text=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"


def test_unreachable_hub_gives_the_message_at_once_without_retries(tmp_path):
    # HF_HUB_OFFLINE unset and the Hub's address refusing connections: a laptop that lost its network
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE" and "proxy" not in k.lower()}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, str(ROOT / "app.py"), "generate", "--model", "someone/some-model",
                        "--prompt", "x", "--out", str(tmp_path / "x.png")], capture_output=True, text=True,
                       timeout=120, env=env, cwd=ROOT)
    assert r.returncode == 2
    assert "someone/some-model" in r.stderr and "cannot be reached" in r.stderr
    assert "Retrying" not in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("flag, module", [("--ray", "ray"), ("--mcp", "mcp")])
def test_a_flag_whose_extra_is_not_installed_is_refused_at_start_with_its_install(flag, module):
    """`--ray` without ray ended in a ModuleNotFoundError traceback and `--mcp` without mcp served no tools: each
    now stops at start with one line naming the install (run as if the package were not installed)."""
    code = ("import importlib.util, sys\n"
            "_find = importlib.util.find_spec\n"
            f"importlib.util.find_spec = lambda name, *a: None if name.split('.')[0] == {module!r} else _find(name)\n"
            "import app\n"
            f"sys.exit(app.main([{flag!r}, '--port', '0']))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2, r.stderr
    assert f"{flag} needs the {module!r} package" in r.stderr and "pip install" in r.stderr
    assert "Traceback" not in r.stderr


def test_inputs_that_need_no_model_are_refused_before_any_work(tiny_model, tmp_path):
    """`--init` that is not an image, `--upscaler` that does not exist: answered before torch and the model load
    (they used to come after 30-90 s of generating): the one-line error, and no image written."""
    fake = tmp_path / "fake.png"
    fake.write_text("<html>not an image</html>")
    base = ["generate", "--model", str(tiny_model("sd15")), "--prompt", "x", "--steps", "2", "--width", "32",
            "--height", "32", "--out", str(tmp_path / "o.png")]
    for extra, message in ((["--init", str(fake)], "fake.png"), (["--upscale", "2", "--upscaler", "nosuch"],
                                                                 "no upscaler plugin named 'nosuch'")):
        r = app(*base, *extra)
        assert r.returncode == 2 and message in r.stderr and r.stderr.startswith("error: "), r.stderr
        assert not (tmp_path / "o.png").exists()


def test_torch_threads_default_to_the_cores_free_now():
    from engine.threads import choose_threads, free_cores

    cores, free, load = free_cores()
    assert 1 <= free <= cores and load >= 0
    assert choose_threads(None)[0] == free and choose_threads(3) == (3, "3 torch thread(s) (--threads)")
