"""The line is fair between users (studio/line.py): waiting generations are taken round-robin by owner, one owner's
waiting ones can be capped, and the engine's real runs come out in that order."""

from __future__ import annotations

import threading

import pytest

from studio.line import Busy, Line


def order(line: Line) -> list:
    return list(line._turns)


def test_one_image_of_b_waits_behind_at_most_one_of_each_other_user():
    line = Line(max_waiting=16, slots=1)
    a = [line.join(owner="user:a") for _ in range(6)]
    assert line.wait(a[0], 0) == 0  # a's first runs
    b = line.join(owner="user:b")
    assert line.wait(b, 0) == 1  # behind a's running one only: a's second is a later round
    assert order(line)[:3] == [a[0], b, a[1]]
    c = [line.join(owner="user:c") for _ in range(2)]
    assert order(line).index(c[0]) == 2  # b and c's first share a round: before a's second
    assert order(line).index(c[1]) == order(line).index(a[1]) + 1  # c's second and a's second: one round
    line.leave(a[0])
    assert line.wait(b, 0) == 0
    line.leave(b)
    assert line.wait(c[0], 0) == 0 and line.wait(a[1], 0) == 1


def test_generations_without_an_owner_keep_first_come_first_served():
    line = Line(max_waiting=8, slots=1)
    tickets = [line.join() for _ in range(4)]
    assert order(line) == tickets


def test_one_owner_may_have_at_most_max_per_owner_waiting():
    line = Line(max_waiting=16, slots=1, max_per_owner=2)
    first, second = line.join(owner="user:a"), line.join(owner="user:a")
    with pytest.raises(Busy, match="You have 2 generations waiting already \\(at most 2 each"):
        line.join(owner="user:a")
    line.join(owner="user:b")  # others still get in
    assert line.wait(first, 0) == 0  # a's first runs: it no longer counts as waiting
    line.join(owner="user:a")
    assert second in order(line)


def test_the_engine_serves_two_users_fairly(engine):
    """Six images of user a sent just before one of user b: b's finishes before a's third. The engine is held
    (its lock, taken here) until all seven are in line, so the order is the line's, not the threads' timing."""
    from engine.request import Request
    from studio.jobs import Jobs
    from studio.service import Studio

    studio = Studio(engine, "builtin", line=Line(16))
    jobs = Jobs(studio)
    done: list[str] = []
    lock = threading.Lock()

    def send(owner: str, k: int):
        jobs.run(Request(prompt="a big red circle", steps=2, seed=k), owner=owner)
        with lock:
            done.append(f"{owner}#{k}")

    with engine._lock:  # a's first takes its turn and waits here for the engine
        threads = [threading.Thread(target=send, args=("user:a", k)) for k in range(6)]
        for t in threads:
            t.start()
            while len(studio.line._turns) < threads.index(t) + 1:  # each in line before the next is sent
                threading.Event().wait(0.01)
        b = threading.Thread(target=send, args=("user:b", 0))
        b.start()
        while len(studio.line._turns) < 7:
            threading.Event().wait(0.01)
    for t in [*threads, b]:
        t.join(timeout=300)
    assert done.index("user:b#0") < done.index("user:a#2")
    assert [x for x in done if x.startswith("user:a")] == [f"user:a#{k}" for k in range(6)]


def test_an_admin_sees_the_line_and_stops_everything_others_may_not(engine):
    from studio.service import Studio
    from ui import handlers
    from ui.state import Session, Settings

    studio = Studio(engine, "builtin", line=Line(16), admins=frozenset({"user:root"}))
    switches = [threading.Event() for _ in range(3)]
    tickets = [studio.line.join(s, owner=o) for s, o in zip(switches, ("user:a", "user:a", "user:b"))]
    admin, visitor = Session.new(), Session.new()
    admin.user, visitor.user = "root", "a"
    try:
        list(handlers.send(studio, visitor, "/stop-all", Settings()))
        assert "is for the server's admin" in visitor.history[-1]["content"]
        assert not any(s.is_set() for s in switches)
        list(handlers.send(studio, admin, "/line", Settings()))
        shown = admin.history[-1]["content"]
        assert "3 waiting" in shown and "| user:a | 2 |" in shown and "| user:b | 1 |" in shown
        list(handlers.send(studio, admin, "/stop-all", Settings()))
        assert "Stopped 3 generation(s)" in admin.history[-1]["content"]
        assert all(s.is_set() for s in switches)
    finally:
        for t in tickets:
            studio.line.leave(t)
        admin.close()
        visitor.close()


def test_a_full_line_gives_a_user_with_nothing_waiting_the_place_of_the_busiest_users_newest():
    """Full, the line does not refuse a user with nothing waiting while another has two or more: the busiest
    user's newest waiting one gives its place, and its `wait` says why. With nobody at two, the newcomer is told
    the server is busy; a user who already waits is told so too."""
    line = Line(max_waiting=3, slots=1)
    running = line.join(owner="user:a")
    assert line.wait(running, 0) == 0
    a = [line.join(owner="user:a") for _ in range(2)]
    c = line.join(owner="user:c")
    b = line.join(owner="user:b")  # full (3 waiting): a's newest gives its place
    assert line.wait(b, 0) > 0 and line.owners_waiting() == {"user:a": 1, "user:b": 1, "user:c": 1}
    with pytest.raises(Busy, match="you had 2 generations waiting: your newest one gave its place"):
        line.wait(a[1], 0)
    assert line.wait(a[0], 0) > 0 and line.wait(c, 0) > 0
    with pytest.raises(Busy, match="The server is busy"):
        line.join(owner="user:d")  # nobody has two waiting now
    with pytest.raises(Busy, match="The server is busy"):
        line.join(owner="user:b")  # b waits already: no bump for a second one
