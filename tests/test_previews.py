"""Live previews: planned from the first step within a tenth of the run's time, on the real engine (tiny SD1.5)."""

from __future__ import annotations

import threading

import pytest

from engine.request import Request
from studio.previews import MIN_RUN_S, MOST, SHARE, PreviewCosts
from studio.stream import stream
from tests.ui_fixtures import *  # noqa: F403  (studio: the real engine on a tiny SD1.5 folder)


def preview_steps(studio, request: Request) -> list[int]:
    """The steps at which a real run of `request` through the chat's stream brought a preview image."""
    seen, steps = [], stream(studio, request, threading.Event())
    try:
        while True:
            what, step, total, preview = next(steps)
            if preview is not None:
                assert preview.size == (request.width, request.height)
                seen.append(step)
    except StopIteration:
        return seen


@pytest.fixture
def long_runs(studio):
    """The tiny model samples in milliseconds: count its runs as long enough for previews."""
    studio.previews.min_run_s = 0.0
    yield studio
    studio.previews.min_run_s = MIN_RUN_S


def test_a_new_models_first_preview_comes_at_the_first_step_then_evenly(long_runs):
    studio = long_runs
    studio.previews.seconds.clear()  # never measured: a decode is taken to cost a step
    studio.previews.step_s.clear()
    request = Request(prompt="a red circle", model=studio.default_model, steps=40, width=32, height=32, seed=1)
    steps = preview_steps(studio, request)
    assert steps == [1, 10, 20, 30], steps  # 4 fit in a tenth of 40 steps, the first at step 1
    assert studio.previews.seconds[studio.default_model] > 0  # measured for the next run


def test_a_run_too_short_for_its_previews_gets_none_and_a_cheap_one_gets_them_from_step_1(long_runs):
    studio = long_runs
    request = Request(prompt="a red circle", model=studio.default_model, steps=8, width=32, height=32, seed=1)
    studio.previews.seconds[studio.default_model] = 60.0  # a decode that would cost a minute
    assert preview_steps(studio, request) == []
    studio.previews.seconds[studio.default_model] = 1e-6
    assert preview_steps(studio, request)[0] == 1


def test_a_run_faster_than_min_run_s_gets_no_previews(studio):
    request = Request(prompt="a red circle", model=studio.default_model, steps=40, width=32, height=32, seed=1)
    studio.previews.seconds[studio.default_model] = 1e-6  # cheap, yet the whole run takes well under 1.5 s
    assert studio.previews.min_run_s == MIN_RUN_S and preview_steps(studio, request) == []


def test_the_plan_keeps_previews_within_their_share_of_the_time():
    costs = PreviewCosts({"m": 0.075}, min_run_s=0.0)
    plan = costs.plan("m")
    assert plan.decide(1, 10, per_step=0.060) == frozenset()  # 0.1 x 0.6 s leaves no room for a 75 ms decode
    assert plan.decide(1, 50, per_step=0.060) == frozenset({1, 13, 25, 37})  # 0.3 s: room for 4, from step 1
    many = plan.decide(1, 1000, per_step=0.060)
    assert len(many) == MOST and min(many) == 1
    assert len(many) * 0.075 <= SHARE * 1000 * 0.060
