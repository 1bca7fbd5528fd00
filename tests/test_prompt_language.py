"""The prompt language A1111 users type: weights and emphasis, escapes, prompt editing, alternation, BREAK; parsed
once (engine/prompt_syntax.py, fuzzed) and applied to the CLIP families' conditioning (engine/prompt_weights.py);
`(red:1.0)` is the plain prompt's pixels, a weight changes them; T5/LLM families say they read the marks as words.
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest

from engine import prompt_syntax as syntax
from engine.prompt_syntax import BREAK, Piece
from engine.request import Request


def test_weights_emphasis_and_escapes():
    assert syntax.weighted("a (red:1.3) circle") == [Piece("a "), Piece("red", 1.3), Piece(" circle")]
    double = syntax.weighted("((red))")[0]
    assert double.text == "red" and abs(double.weight - 1.21) < 1e-9
    assert abs(syntax.weighted("[blue]")[0].weight - 1 / 1.1) < 1e-9
    assert syntax.weighted("a \\(red\\) circle") == [Piece("a (red) circle")]
    nested = syntax.weighted("((a:1.5) b)")
    assert abs(nested[0].weight - 1.65) < 1e-9 and abs(nested[1].weight - 1.1) < 1e-9
    assert syntax.weighted("x BREAK y") == [Piece("x "), Piece(BREAK, -1.0), Piece(" y")]
    assert syntax.weighted("(unclosed red")[0].weight == pytest.approx(1.1)  # as A1111: to the end
    assert syntax.plain("a ((red)) [blue] (big:1.4) \\[x\\] BREAK one") == "a red blue big [x] one"


def test_editing_and_alternation_schedules():
    assert syntax.schedule("[cat:dog:0.5] on a mat", 10) == [(5, "cat on a mat"), (10, "dog on a mat")]
    assert syntax.schedule("[cat:dog:3] x", 10) == [(3, "cat x"), (10, "dog x")]  # a step number
    assert syntax.schedule("[:red:0.5]x", 4) == [(2, "x"), (4, "redx")]
    assert syntax.schedule("[red::0.5]x", 4) == [(2, "redx"), (4, "x")]
    assert syntax.schedule("a [red:blue] x", 4) == [(2, "a red x"), (4, "a blue x")]
    assert [t for _, t in syntax.schedule("[a|b|c] x", 4)] == ["a x", "b x", "c x", "a x"]
    assert syntax.schedule("[red] circle", 10) == [(10, "[red] circle")]  # emphasis is no editing
    assert syntax.uniform("a (red:1.0) circle") and not syntax.uniform("a (red:1.2) circle")
    assert not syntax.uniform("[a|b]")


def test_fuzzed_prompts_never_break_the_parser():
    rng = random.Random(5)
    alphabet = "()[]:|\\ ab1.5BREAK"
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 400)))
        for _, step_text in syntax.schedule(text, 12):
            pieces = syntax.weighted(step_text)
            assert all(p.weight == -1.0 or p.weight > 0 for p in pieces)
        assert isinstance(syntax.plain(text), str)
    deep = "(" * 5000 + "x" + ")" * 5000 + "[" * 5000 + "a:b:0.5" + "]" * 5000  # no recursion limit reached
    assert syntax.plain(deep).startswith("x")


@pytest.mark.parametrize("family", ["builtin", "sd15", "sdxl"])
def test_a_weight_of_one_is_the_plain_prompt_and_a_weight_changes_it(engine, tiny_model, family):
    model = "builtin" if family == "builtin" else str(tiny_model(family))
    size = {} if family == "builtin" else {"width": 32, "height": 32}

    def pixels(prompt: str, negative: str = ""):
        result = engine.generate(Request(prompt=prompt, negative=negative, model=model, steps=4, seed=3, **size))
        return np.asarray(result.images[0], dtype=np.int16), result

    plain, _ = pixels("a big red circle on the left, blue background")
    same, _ = pixels("a big (red:1.0) circle on the left, blue background")
    heavy, result = pixels("a big (red:1.6) circle on the left, blue background")
    edited, _ = pixels("a big [red:green:0.25] circle on the left, blue background")  # after step 1 of 4
    broken, _ = pixels("a big red circle BREAK on the left, blue background")
    negative, _ = pixels("a big red circle on the left, blue background", negative="(green:1.5)")
    assert np.array_equal(plain, same)
    for other in (heavy, edited, broken, negative):
        assert np.abs(other - plain).mean() > 0.5
    assert "(red:1.6)" in result.infotexts[0]  # the syntax is kept, so the PNG restores with its weights
    assert not any("symbols" in n for n in result.notes)  # the marks are no unknown words


def test_families_that_read_no_weights_say_so(engine, tiny_model):
    result = engine.generate(Request(prompt="a (red:1.5) circle", model=str(tiny_model("flux")), steps=2,
                                     width=32, height=32, seed=1))
    assert any("read no prompt weights" in n and "'a red circle'" in n for n in result.notes)
    plain = engine.generate(Request(prompt="a red circle", model=str(tiny_model("flux")), steps=2, width=32,
                                    height=32, seed=1))
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(plain.images[0]))


def test_an_a1111_png_with_weights_restores_them(tmp_path):
    from engine.images.metadata import read_png_settings
    from tests.ui_fixtures import a1111_png

    path = a1111_png(tmp_path / "a.png", "a (red:1.3) circle, [blue:green:0.4] background\nNegative prompt: "
                                         "(blurry:1.2)\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, "
                                         "Size: 512x512")
    request, _ = read_png_settings(path)
    assert request.prompt == "a (red:1.3) circle, [blue:green:0.4] background"
    assert request.negative == "(blurry:1.2)"


# ---------------------------------------------------------------------------------------- styles, wildcards

def texts_engine(tmp_path):
    from engine.engine import Engine

    (tmp_path / "styles").mkdir()
    (tmp_path / "wildcards").mkdir()
    (tmp_path / "styles" / "bold.toml").write_text('name = "bold"\nprompt = "a big {prompt}"\nnegative = "small"\n')
    (tmp_path / "styles" / "blue.toml").write_text('name = "blue"\nprompt = "blue background"\n')
    (tmp_path / "wildcards" / "colour.txt").write_text("# colours\nred\ngreen\n\nyellow\n__shade__\n")
    (tmp_path / "wildcards" / "shade.txt").write_text("purple\n")
    return Engine(device="cpu", local_paths=True, plugin_dirs=(tmp_path,))


def test_styles_wrap_the_prompt_and_the_metadata_names_them(tmp_path):
    engine = texts_engine(tmp_path)
    plan = engine.plan(Request(prompt="red circle on the left", styles=["bold", "blue"], seed=1))
    assert plan.request.prompt == "a big red circle on the left, blue background"
    assert plan.request.negative == "small" and plan.infotext["Styles"] == "bold, blue"
    with pytest.raises(Exception, match="There is no style 'nope'. Styles here: blue, bold"):
        engine.plan(Request(prompt="x", styles=["nope"]))


def test_wildcards_pick_by_the_seed_and_say_what_they_picked(tmp_path):
    engine = texts_engine(tmp_path)
    picks = {seed: engine.plan(Request(prompt="a big __colour__ circle", seed=seed)) for seed in range(12)}
    again = engine.plan(Request(prompt="a big __colour__ circle", seed=3))
    assert again.request.prompt == picks[3].request.prompt  # the same seed, the same pick
    words = {p.request.prompt.split()[2] for p in picks.values()}
    assert words <= {"red", "green", "yellow", "purple"} and len(words) >= 3  # nested __shade__ -> purple too
    assert picks[3].infotext["Wildcards"].startswith("colour=")
    with pytest.raises(Exception, match="no wildcard file for __size__.*__colour__, __shade__"):
        engine.plan(Request(prompt="a __size__ circle", seed=1))
    result = engine.generate(Request(prompt="a big __colour__ circle, white background", seed=4, steps=2))
    assert "Wildcards: " in result.infotexts[0] and "__colour__" not in result.infotexts[0].splitlines()[0]


def test_several_images_each_pick_their_own_wildcards_and_each_restores_alone(tmp_path):
    """`--n 4` with a wildcard: image i picks by its own seed (seed + i), as A1111's dynamic prompts do; its PNG
    keeps its own prompt and picks, and its settings alone draw its pixels again."""
    import io

    import numpy as np

    from engine.images.metadata import read_png_settings

    engine = texts_engine(tmp_path)
    ask = dict(prompt="a big __colour__ circle, white background", steps=2, seed=20)
    four = engine.generate(Request(**ask, count=4))
    assert four.seeds == [20, 21, 22, 23] and len(four.images) == 4
    alone = [engine.plan(Request(**{**ask, "seed": s})).request.prompt for s in four.seeds]
    assert [four.image_request(i).prompt for i in range(4)] == alone and len(set(alone)) > 1, alone
    buffer = io.BytesIO()
    four.save_png(2, buffer)
    restored, _ = read_png_settings(io.BytesIO(buffer.getvalue()))
    assert restored.prompt == alone[2] and restored.seed == 22
    again = engine.generate(dataclasses.replace(four.image_request(2)))
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(four.images[2]))


def test_the_shipped_styles_and_wildcards_work_from_the_cli(tmp_path):
    import subprocess
    import sys

    from engine.config import ROOT

    run = subprocess.run([sys.executable, "app.py", "generate", "--prompt", "a big __colour__ __shape__ __place__, "
                          "white background", "--style", "pixel-art", "--seed", "9", "--steps", "2", "--out",
                          str(tmp_path / "o.png"), "--outputs", "none"], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-1500:]
    from PIL import Image

    text = Image.open(tmp_path / "o.png").text["parameters"]
    assert text.startswith("pixel art of a big ") and "Styles: pixel-art" in text and "Wildcards: " in text


def test_the_chat_takes_styles_and_help_lists_them(engine):
    from studio.service import Studio
    from ui import handlers
    from ui.state import Session, Settings

    studio, session = Studio(engine, default_model="builtin"), Session.new()
    try:
        list(handlers.send(studio, session, "/help", Settings()))
        help_text = session.history[-1]["content"]
        assert "`cinematic`" in help_text and "`__colour__`" in help_text and "(red:1.3)" in help_text
        list(handlers.send(studio, session, "a big red circle --style oil-painting --seed 2", Settings(steps=2)))
        shot = session.shots[0]
        assert shot.request.prompt == "a big red circle, oil painting, thick brush strokes, canvas texture"
        list(handlers.send(studio, session, "a circle --style nope", Settings(steps=2)))
        assert "There is no style 'nope'" in session.history[-1]["content"]
    finally:
        session.close()


def test_an_xyz_plot_in_the_chat_makes_one_labelled_grid_and_keeps_each_cell(engine, tmp_path):
    from PIL import Image

    from store.library import Library
    from studio.service import Studio
    from ui import handlers
    from ui.state import Session, Settings

    library = Library(tmp_path / "outputs")
    studio, session = Studio(engine, default_model="builtin", library=library), Session.new()
    try:
        list(handlers.send(studio, session, "a big red circle on the left, blue background --seed 3 "
                                            "--xyz steps=2,6 cfg=1,2,4", Settings()))
        grid_message, summary = session.history[-2]["content"], session.history[-1]["content"]
        sheet = Image.open(grid_message["path"])
        assert sheet.width > 2 * 128 and sheet.height > 3 * 128  # 2 across, 3 down, 64-px images drawn at 128
        assert summary.startswith("#1–#6 · X/Y/Z plot of steps 2, 6; cfg 1.0, 2.0, 4.0 · seed 3")
        cells = [(s.request.steps, s.request.guidance, s.request.seed) for s in session.shots]
        assert cells == [(2, 1.0, 3), (6, 1.0, 3), (2, 2.0, 3), (6, 2.0, 3), (2, 4.0, 3), (6, 4.0, 3)]
        assert library.search()[1] == 6  # each cell kept with its own settings
        one = engine.generate(Request(prompt="a big red circle on the left, blue background", seed=3, steps=6,
                                      guidance=2.0))
        assert np.array_equal(np.asarray(one.images[0]), np.asarray(Image.open(session.shots[3].path).convert("RGB")))
        list(handlers.send(studio, session, "x --xyz steps=1,2,3,4,5,6,7 cfg=1,2,3,4,5,6", Settings()))
        assert "at most 36" in session.history[-1]["content"]
        list(handlers.send(studio, session, "x --xyz colour=red", Settings()))
        assert "Axes: steps, cfg, seed" in session.history[-1]["content"]
    finally:
        session.close()
        library.close()
