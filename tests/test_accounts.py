"""Accounts (#30): --auth repeatable, --auth-file with hashed passwords (`app.py users add`), the APIs' basic auth
per account; signed in, a user's chat follows them to a fresh browser and nobody else sees it (Chromium)."""

from __future__ import annotations

import base64
import subprocess
import sys

import httpx
import pytest

from engine.config import ROOT
from engine.request import UserError
from studio.accounts import Accounts, add_user, from_flags, hash_password, read_file
from tests.test_browser import IMAGE, browser, free_port  # noqa: F401  (browser is a fixture)


def test_passwords_are_stored_hashed_and_checked(tmp_path):
    stored = hash_password("correct-horse")
    assert stored.startswith("pbkdf2_sha256$") and "correct-horse" not in stored
    accounts = Accounts({"alice": stored, "bob": "plain-pass"})
    assert accounts.check("alice", "correct-horse") and not accounts.check("alice", "wrong")
    assert accounts.check("bob", "plain-pass") and not accounts.check("carol", "plain-pass")
    file = tmp_path / "users.txt"
    assert add_user(file, "alice", "first-pass1") is False
    assert add_user(file, "alice", "second-pass2") is True  # changed, not added twice
    add_user(file, "bob", "bobs-pass-3")
    users = read_file(file)
    assert set(users) == {"alice", "bob"} and all(v.startswith("pbkdf2_sha256$") for v in users.values())
    both = from_flags(["carol:carols-pass"], str(file))
    assert both.names == ["alice", "bob", "carol"] and both.check("alice", "second-pass2")
    with pytest.raises(UserError, match="at least 8"):
        add_user(file, "dan", "short")
    (tmp_path / "bad.txt").write_text("alice:ok\nno colon here\n")
    with pytest.raises(UserError, match="bad.txt, line 2"):
        read_file(tmp_path / "bad.txt")


def test_users_add_writes_the_file_the_server_reads(tmp_path):
    file = tmp_path / "u.txt"
    run = subprocess.run([sys.executable, "app.py", "users", "add", "alice", "--file", str(file), "--password",
                          "correct-horse"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "Added alice" in run.stdout, run.stderr
    assert read_file(file)["alice"].startswith("pbkdf2_sha256$")


def test_each_account_signs_in_to_the_page_and_the_apis(engine, tmp_path, browser):  # noqa: F811
    """Two accounts from a file on one server: each signs in to the page and calls the A1111 API with its own
    password; a chat made by alice is hers on a fresh browser, and bob does not see it."""
    from serving import ServeConfig, open_server
    from store.library import Library

    file = tmp_path / "users.txt"
    add_user(file, "alice", "alice-pass-1")
    add_user(file, "bob", "bobs-pass-22")
    port = free_port()
    library = Library(tmp_path / "outputs")
    demo = open_server(ServeConfig(port=port, auth=from_flags([], str(file))), engine, library=library)
    url = f"http://127.0.0.1:{port}"
    try:
        for user, password, ok in (("alice", "alice-pass-1", True), ("bob", "bobs-pass-22", True),
                                   ("bob", "alice-pass-1", False)):
            basic = base64.b64encode(f"{user}:{password}".encode()).decode()
            answer = httpx.get(url + "/sdapi/v1/samplers", headers={"Authorization": f"Basic {basic}"})
            assert (answer.status_code == 200) == ok, (user, answer.status_code)

        def signed_in(user: str, password: str):
            context = browser.new_context(viewport={"width": 1400, "height": 1000})  # a fresh browser each time
            page = context.new_page()
            page.goto(url + "/")
            page.fill("input[type=text]", user)
            page.fill("input[type=password]", password)
            page.keyboard.press("Enter")
            page.wait_for_selector("#prompt textarea", timeout=30_000)
            return context, page

        context, page = signed_in("alice", "alice-pass-1")
        page.fill("#prompt textarea", "a big red circle on the left, blue background")
        page.press("#prompt textarea", "Enter")
        page.wait_for_selector(IMAGE.format(1), timeout=90_000)
        for _ in range(200):  # stored by a background writer as the turn ends
            if library._db.execute("SELECT count(*) FROM conversations").fetchone()[0]:
                break
            page.wait_for_timeout(100)
        context.close()
        again, page = signed_in("alice", "alice-pass-1")
        page.wait_for_function("document.querySelector('#chat').innerText.includes('a big red circle')",
                               timeout=30_000)
        page.wait_for_selector("#chat img", timeout=30_000)  # the image came back too
        again.close()
        other, page = signed_in("bob", "bobs-pass-22")
        page.fill("#prompt textarea", "a small yellow square at the top, black background")
        page.press("#prompt textarea", "Enter")
        page.wait_for_selector(IMAGE.format(1), timeout=90_000)  # bob's own first image: his chat, not alice's
        assert "a big red circle" not in page.locator("#chat").inner_text()
        other.close()
    finally:
        demo.close()
        library.close()
