"""Batching on a shared server (#30): waiting requests of different users with the same settings are sampled in one
pipeline call (engine/batch.py, the studio's line), each with its own seeds and prompt: pixels as if alone (up to
float rounding), its own metadata; one user's Stop leaves the others' images."""

from __future__ import annotations

import threading

import numpy as np

from engine.request import Request
from studio.jobs import Jobs
from studio.line import Line
from studio.service import Studio

PROMPTS = ["a big red circle on the left, blue background", "a small green square at the top, white background",
           "a big yellow triangle in the center, black background", "a small purple circle on the right, "
                                                                    "yellow background"]


def run_together(engine, requests, batch: int, cancel_index: int | None = None):
    """An occupier's request, then `requests` of other users, sent while the engine is held (its lock, taken here):
    the occupier's turn comes at once (alone), the others wait in line; when it is done, the first waiting one's run
    takes the others of its settings along (up to `batch`). Returns the results and errors of `requests`."""
    requests = [Request(prompt="a small white square, black background", seed=99, steps=2)] + list(requests)
    cancel_index = None if cancel_index is None else cancel_index + 1
    studio = Studio(engine, "builtin", line=Line(16), batch=batch)
    jobs = Jobs(studio)
    out, errors = {}, {}
    cancels = [threading.Event() for _ in requests]

    def send(i):
        try:
            out[i] = jobs.run(requests[i], cancel=cancels[i], owner=f"user:{i}")
        except Exception as e:  # noqa: BLE001 (what the user would be told)
            errors[i] = e

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(requests))]
    with engine._lock:
        for i, t in enumerate(threads):
            t.start()
            while len(studio.line._turns) < i + 1:
                threading.Event().wait(0.01)
        if cancel_index is not None:
            cancels[cancel_index].set()
    for t in threads:
        t.join(timeout=300)
    assert 0 in out and out[0].batch == 1
    return ({i - 1: r for i, r in out.items() if i}, {i - 1: e for i, e in errors.items() if i})


def test_four_users_share_one_call_and_each_gets_their_own_pixels(engine):
    requests = [Request(prompt=p, seed=10 + i, count=1 + (i == 2)) for i, p in enumerate(PROMPTS)]
    out, errors = run_together(engine, requests, batch=4)
    assert not errors and [out[i].batch for i in range(4)] == [4, 4, 4, 4]
    for i, request in enumerate(requests):
        alone = engine.generate(request)
        assert out[i].seeds == alone.seeds and out[i].infotexts == alone.infotexts
        for a, b in zip(alone.images, out[i].images):
            assert np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max() <= 2


def test_requests_that_differ_run_alone_and_batch_one_is_off(engine):
    mixed = [Request(prompt=PROMPTS[0], seed=1), Request(prompt=PROMPTS[1], seed=2, steps=4),
             Request(prompt="a (big:1.3) red circle", seed=3), Request(prompt=PROMPTS[3], seed=4)]
    out, errors = run_together(engine, mixed, batch=4)
    assert not errors
    assert out[1].batch == 1 and out[2].batch == 1  # other steps; prompt weights
    assert out[0].batch == 2 and out[3].batch == 2  # the two plain ones of the same settings
    off, _ = run_together(engine, [Request(prompt=p, seed=i) for i, p in enumerate(PROMPTS)], batch=1)
    assert {r.batch for r in off.values()} == {1}


def test_one_users_stop_leaves_the_others_images(engine):
    requests = [Request(prompt=p, seed=20 + i) for i, p in enumerate(PROMPTS)]
    out, errors = run_together(engine, requests, batch=4, cancel_index=2)
    assert set(out) == {0, 1, 3} and type(errors[2]).__name__ == "Cancelled"
    assert all(out[i].batch in (3, 4) for i in (0, 1, 3))
