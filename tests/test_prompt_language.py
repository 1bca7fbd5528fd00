"""The prompt language A1111 users type: weights and emphasis, escapes, prompt editing, alternation, BREAK; parsed
once (engine/prompt_syntax.py, fuzzed) and applied to the CLIP families' conditioning (engine/prompt_weights.py);
`(red:1.0)` is the plain prompt's pixels, a weight changes them; T5/LLM families say they read the marks as words.
"""

from __future__ import annotations

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
