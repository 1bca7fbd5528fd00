"""Per-user storage quota (#30, --quota): a user at their quota is told before anything runs, with their oldest
images offered for deletion; /forget-oldest N deletes them (files too); other users are not affected; every
door counts against the same user; libraries made before owners were recorded open and gain the columns."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from engine.request import Request, UserError
from store.library import Library, new_id
from studio.accounts import account_key
from studio.line import Line
from studio.quota import Quota, QuotaFull, library_owner
from studio.service import Studio

PROMPT = "a big red circle on the left, blue background"


def test_quota_reads_a_count_or_a_size_and_refuses_anything_else():
    assert Quota.parse("500") == Quota(images=500) and Quota.parse("2GB") == Quota(bytes=2 * 10**9)
    assert Quota.parse("1.5 mb") == Quota(bytes=1_500_000) and not Quota.parse("") and not Quota.parse("0")
    with pytest.raises(UserError, match="--quota 500"):
        Quota.parse("lots")
    assert library_owner("user:alice") == account_key("alice") and library_owner("browser:abc") == "abc"
    assert library_owner("127.0.0.1 token") == "127.0.0.1 token" and library_owner(None) == ""


def test_a_full_user_is_told_before_anything_runs_and_forget_oldest_frees_room(engine, tmp_path):
    from ui import handlers
    from ui.state import Session, Settings

    library = Library(tmp_path / "outputs")
    studio = Studio(engine, "builtin", line=Line(16), library=library, quota=Quota(images=2))
    alice, bob = Session.new(), Session.new()
    alice.browser, alice.conversation = new_id(), new_id()
    bob.user = "bob"
    bob.browser, bob.conversation = bob.account_key, new_id()
    settings = Settings(steps=2)
    try:
        for seed in (1, 2):
            list(handlers.send(studio, alice, f"{PROMPT} --seed {seed}", settings))
        assert library.usage(alice.browser)[0] == 2 and len(alice.shots) == 2
        kept = [e.path for e in library.oldest(alice.browser, 2)]
        assert all(Path(p).exists() for p in kept)

        list(handlers.send(studio, alice, f"{PROMPT} --seed 3", settings))
        reply = alice.history[-1]["content"]
        assert "Your library is full: 2 images kept, of the 2" in reply and "/forget-oldest 2" in reply, reply
        assert len(alice.shots) == 2  # nothing was generated

        list(handlers.send(studio, bob, f"{PROMPT} --seed 4", settings))  # another user: not affected
        assert len(bob.shots) == 1 and library.usage(account_key("bob"))[0] == 1

        list(handlers.send(studio, alice, "/forget-oldest 1", settings))
        assert "Deleted your 1 oldest kept image(s). You keep 1 now" in alice.history[-1]["content"]
        assert not Path(kept[0]).exists() and Path(kept[1]).exists()
        list(handlers.send(studio, alice, f"{PROMPT} --seed 3", settings))
        assert len(alice.shots) == 3 and library.usage(alice.browser)[0] == 2
        list(handlers.send(studio, alice, "/forget-oldest lots", settings))
        assert "Write /forget-oldest N" in alice.history[-1]["content"]
    finally:
        alice.close()
        bob.close()


def test_the_api_doors_count_against_the_same_signed_in_user(engine, tmp_path):
    """bob's A1111/OpenAI/MCP jobs (owner 'user:bob') are kept as bob's, the chat's owner for him: at the quota
    the next one is refused with the same message."""
    library = Library(tmp_path / "outputs")
    studio = Studio(engine, "builtin", line=Line(16), library=library, quota=Quota(images=1))
    studio.jobs.run(Request(prompt=PROMPT, steps=2, seed=1), owner="user:bob")
    assert library.usage(account_key("bob"))[0] == 1
    with pytest.raises(QuotaFull, match="Your library is full"):
        studio.jobs.run(Request(prompt=PROMPT, steps=2, seed=2), owner="user:bob")
    studio.jobs.run(Request(prompt=PROMPT, steps=2, seed=3), owner="127.0.0.1")  # someone else
    assert library.usage("127.0.0.1")[0] == 1


def test_a_library_made_before_owners_opens_and_gains_them(tmp_path):
    root = tmp_path / "outputs"
    root.mkdir()
    db = sqlite3.connect(root / "library.sqlite")
    db.execute("CREATE TABLE images (id INTEGER PRIMARY KEY, path TEXT UNIQUE NOT NULL, created REAL NOT NULL, "
               "source TEXT NOT NULL, prompt TEXT NOT NULL DEFAULT '', negative TEXT NOT NULL DEFAULT '', model TEXT "
               "NOT NULL DEFAULT '', loras TEXT NOT NULL DEFAULT '', seed INTEGER, width INTEGER, height INTEGER, "
               "settings TEXT NOT NULL DEFAULT '{}', conversation TEXT, extras TEXT NOT NULL DEFAULT '[]')")
    db.execute("INSERT INTO images(path, created, source, prompt) VALUES ('/x/old.png', 1.0, 'chat', 'old one')")
    db.commit()
    db.close()
    library = Library(root)
    assert library.get(1).prompt == "old one" and library.usage("someone") == (0, 0)
    entry = library.add(root / "new.png", {"prompt": "new one"}, "chat", owner="abc", size=123)
    assert library.usage("abc") == (1, 123) and library.oldest("abc", 5)[0].id == entry.id
