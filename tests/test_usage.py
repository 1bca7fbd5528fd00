"""A host's limits (#30): --rate caps one user's generations a minute through every door (the chat says so, the APIs
answer 429), and the log's summary counts users, generations, waits and refusals."""

from __future__ import annotations

import logging

import pytest

from engine.request import Request
from studio.jobs import Jobs
from studio.service import Studio
from studio.usage import RateLimited, Usage


def test_a_users_rate_is_capped_and_others_are_not(engine):
    studio = Studio(engine, "builtin", usage=Usage(rate=2))
    jobs = Jobs(studio)
    ask = Request(prompt="a red circle", steps=2, seed=1)
    jobs.run(ask, owner="user:a")
    jobs.run(ask, owner="user:a")
    with pytest.raises(RateLimited, match="You sent 2 generations in the last minute.*2 a minute per user"):
        jobs.run(ask, owner="user:a")
    assert jobs.run(ask, owner="user:b").images  # another user is not held back


def test_the_chat_says_a_rate_limit_in_words(engine):
    from ui import handlers
    from ui.state import Session, Settings

    studio, session = Studio(engine, "builtin", usage=Usage(rate=1)), Session.new()
    session.browser = "b" * 32
    try:
        list(handlers.send(studio, session, "a red circle --steps 2", Settings()))
        list(handlers.send(studio, session, "a blue circle --steps 2", Settings()))
        assert "this server allows 1 a minute per user" in session.history[-1]["content"]
        assert len(session.shots) == 1
    finally:
        session.close()


def test_the_summary_counts_users_generations_waits_and_refusals(engine, caplog):
    usage = Usage(rate=1, summary_every_s=3600)
    studio = Studio(engine, "builtin", usage=usage)
    jobs = Jobs(studio)
    for owner in ("user:a", "user:b", "user:a"):
        try:
            jobs.run(Request(prompt="a red circle", steps=2, seed=1), owner=owner)
        except RateLimited:
            pass
    with caplog.at_level(logging.WARNING, logger="studio.usage"):
        line = usage.maybe_summarize(force=True)
    assert "2 users, 2 generations" in line and "refused: rate 1" in line and "wait p50" in line
    assert "usage last 0 min" in caplog.text


def test_a_waiting_place_comes_with_an_estimate_from_the_recent_runs():
    usage = Usage()
    assert usage.estimate(3) is None  # nothing ran yet: no guess
    for seconds in (2.0, 2.5, 9.0):
        usage.ran(seconds)
    assert usage.estimate(3) == 7.5  # three places at the recent median run
