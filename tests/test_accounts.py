"""Accounts (#30): --auth repeatable, --auth-file with hashed passwords (`app.py users add`), the APIs' basic auth
per account; signed in, a user's chat follows them to a fresh browser and nobody else sees it (Chromium)."""

from __future__ import annotations

import base64
import subprocess
import sys
import time

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


def test_a_users_own_api_token_is_that_user_on_every_door_and_progress_shows_only_their_place(engine, tmp_path):
    """`app.py users token NAME` gives bob a token (the file keeps only its hash). With it, the OpenAI client and
    A1111 calls are bob's: his waiting job is 'user:bob' in the line (the chat's key for him), his /progress tells
    his own place while alice's job holds the engine, and alice's /progress shows her running job, not his."""
    import threading

    import openai

    from tests.test_threats import StepHold, engine_freed, start

    file = tmp_path / "users.txt"
    add_user(file, "alice", "alice-pass-1")
    add_user(file, "bob", "bobs-pass-22")
    run = subprocess.run([sys.executable, "app.py", "users", "token", "bob", "--file", str(file)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    token = next(w for w in run.stdout.split() if w.startswith("st-") and len(w) > 30)
    assert token not in file.read_text() and "@token bob sha256$" in file.read_text()
    refused = subprocess.run([sys.executable, "app.py", "users", "token", "carol", "--file", str(file)], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "is not a user" in refused.stderr + refused.stdout

    demo, url = start(engine, auth=from_flags([], str(file)))
    alice = httpx.Client(base_url=url, timeout=120, auth=("alice", "alice-pass-1"))
    bob = httpx.Client(base_url=url, timeout=120, headers={"Authorization": f"Bearer {token}"})
    hold, answers = None, {}
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key=token)
        made = client.images.generate(prompt="a big red circle on the left, blue background", size="64x64",
                                        response_format="b64_json")
        assert made.data[0].b64_json
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="st-" + "x" * 43).images.generate(prompt="a red circle")

        def send(name, http):
            answers[name] = http.post("/sdapi/v1/txt2img", json={
                "prompt": "a big red circle on the left, blue background", "steps": 20, "width": 64,
                "height": 64}).json()

        hold = StepHold(engine)  # alice's job holds the engine at its step 2 until it is stopped
        first = threading.Thread(target=send, args=("alice", alice))
        first.start()
        assert hold.entered.wait(120), "alice's job never reached the engine"
        second = threading.Thread(target=send, args=("bob", bob))
        second.start()
        line = demo.studio.line
        deadline = time.monotonic() + 60  # until bob's job is in line (a bound, not a speed test)
        while line.owners_waiting() != {"user:bob": 1} and time.monotonic() < deadline:
            threading.Event().wait(0.05)
        assert line.owners_waiting() == {"user:bob": 1}
        while "in line" not in str(bob.get("/sdapi/v1/progress").json()["textinfo"]) and \
                time.monotonic() < deadline:
            threading.Event().wait(0.05)
        mine = bob.get("/sdapi/v1/progress").json()
        assert mine["textinfo"].startswith("Waiting: 1 in line") and mine["state"]["job_count"] == 1, mine
        theirs = alice.get("/sdapi/v1/progress").json()
        assert theirs["state"]["sampling_steps"] == 20 and theirs["state"]["job_count"] == 1, theirs
        hold.restore()
        hold.switch.set()  # alice's job stops at its held step; bob's runs
        second.join(120)
        assert len(answers["bob"]["images"]) == 1
        assert bob.get("/sdapi/v1/progress").json()["state"]["job_count"] == 0
    finally:
        if hold is not None:
            hold.restore()
            if hold.switch is not None:
                hold.switch.set()
        alice.close()
        bob.close()
        demo.close()
    assert engine_freed(engine)


def test_an_mcp_caller_hears_its_own_place_in_line_then_its_steps(engine):
    """While another client's job holds the engine, an MCP `generate` that asks for progress (a progressToken, as
    the official SDK sends with a progress callback) hears 'waiting: 1 in line', then its sampling steps, then
    gets its image."""
    import threading

    import anyio
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    from tests.test_threats import StepHold, engine_freed, start

    demo, url = start(engine, mcp=True)
    hold, heard, answer = StepHold(engine), [], {}
    other = threading.Thread(target=lambda: httpx.post(url + "/sdapi/v1/txt2img", timeout=120, json={
        "prompt": "a big red circle on the left, blue background", "steps": 20, "width": 64, "height": 64}))

    async def main():
        async def progress(value, total, message):
            heard.append(message or "")
            if "in line" in (message or "") and hold.switch is not None:
                hold.restore()
                hold.switch.set()  # the other job stops: this one's turn

        async with streamable_http_client(url + "/gradio_api/mcp/") as (read, write, _):
            async with ClientSession(read, write) as session:
                await session.initialize()
                answer["result"] = await session.call_tool("generate", {
                    "prompt": "a big blue square at the top, white background", "steps": 4, "seed": 3},
                    progress_callback=progress)

    try:
        other.start()
        assert hold.entered.wait(120), "the other job never reached the engine"
        client = threading.Thread(target=anyio.run, args=(main,))  # its own thread: a browser test's loop may run
        client.start()
        client.join(300)
    finally:
        hold.restore()
        if hold.switch is not None:
            hold.switch.set()
        other.join(120)
        demo.close()
    assert any(m.startswith("waiting: 1 in line") for m in heard), heard
    assert "sampling: step 4 of 4" in heard, heard
    assert not answer["result"].isError and answer["result"].content, answer
    assert engine_freed(engine)


def test_a_space_with_hf_oauth_offers_hugging_face_sign_in_and_the_account_owns_the_chat(engine, monkeypatch):
    """On a Space with `hf_oauth: true` (SPACE_ID and OAUTH_CLIENT_ID set) the page has gradio's LoginButton;
    elsewhere it has none (gradio would mock the sign-in with the machine's own HF token). A page event whose
    session carries gradio's OAuth info is that Hugging Face user ('hf:NAME'): the same account key on any
    browser; expired or absent info is nobody."""
    import argparse

    import gradio as gr
    from starlette.requests import Request as StarletteRequest

    from serving import ServeConfig
    from ui.app import build
    from ui.state import OpenPages, signed_in_name

    args = argparse.Namespace(model="builtin", host="127.0.0.1", port=7860, share=False, auth=[], auth_file=None,
                              max_queue=16, mcp=False, api_token=None, ray=None, replicas=2,
                              gpus_per_replica=None, outputs=None, max_work=None, trusted_proxy=None,
                              max_sessions=None)
    space = {"SPACE_ID": "someone/studio", "OAUTH_CLIENT_ID": "abc"}
    assert ServeConfig.from_args(args, space).hf_login is True
    assert ServeConfig.from_args(args, {"SPACE_ID": "someone/studio"}).hf_login is False
    assert ServeConfig.from_args(args, {"OAUTH_CLIENT_ID": "abc"}).hf_login is False

    def login_buttons(demo) -> int:
        return sum(isinstance(b, gr.LoginButton) for b in demo.blocks.values())

    assert login_buttons(build(engine)) == 0
    # what a Space with hf_oauth sets (gradio reads the OAuth values once, at import): its real sign-in routes
    import gradio.oauth

    monkeypatch.setenv("SYSTEM", "spaces")
    monkeypatch.setenv("SPACE_ID", "someone/studio")
    for name, value in (("OAUTH_CLIENT_ID", "abc"), ("OAUTH_CLIENT_SECRET", "xyz"), ("OAUTH_SCOPES", "openid profile"),
                        ("OPENID_PROVIDER_URL", "https://huggingface.co")):
        monkeypatch.setattr(gradio.oauth, name, value)
    demo = build(engine, hf_login=True)
    assert login_buttons(demo) == 1
    assert {"/login/huggingface", "/login/callback", "/logout"} <= {getattr(r, "path", "") for r in demo.app.routes}

    def event(info) -> gr.Request:
        scope = {"type": "http", "method": "POST", "path": "/", "headers": [], "query_string": b""}
        if info is not None:
            scope["session"] = {"oauth_info": info}
        return gr.Request(request=StarletteRequest(scope))

    later = time.time() + 3600
    alice = {"userinfo": {"preferred_username": "alice"}, "expires_at": later}
    assert signed_in_name(event(alice)) == "hf:alice"
    assert signed_in_name(event({**alice, "expires_at": time.time() - 1})) is None
    assert signed_in_name(event(None)) is None and signed_in_name(None) is None
    sessions = OpenPages()
    first, second = sessions.ensure(None, event(alice)), sessions.ensure(None, event(alice))
    try:
        assert first.owner == "user:hf:alice" and first.account_key == second.account_key != ""
    finally:
        first.close()
        second.close()


def test_a_hugging_face_signed_in_page_stores_its_chat_under_the_account(engine, tmp_path, monkeypatch):
    """A Space's page with gradio's real OAuth middleware: a chat sent with the session cookie gradio sets after
    the Hugging Face sign-in (made here with the same signer and secret) is stored under the account 'hf:alice';
    the same chat without the cookie belongs to its browser only."""
    import hashlib
    import json
    from base64 import b64encode

    import gradio.oauth
    import itsdangerous

    from serving import ServeConfig, open_server
    from store.library import Library
    from studio.accounts import account_key
    from tests.test_browser import free_port
    from tests.test_threats import Tab

    monkeypatch.setenv("SYSTEM", "spaces")
    monkeypatch.setenv("SPACE_ID", "someone/studio")
    for name, value in (("OAUTH_CLIENT_ID", "abc"), ("OAUTH_CLIENT_SECRET", "xyz"), ("OAUTH_SCOPES", "openid profile"),
                        ("OPENID_PROVIDER_URL", "https://huggingface.co")):
        monkeypatch.setattr(gradio.oauth, name, value)
    info = {"userinfo": {"preferred_username": "alice"}, "expires_at": time.time() + 3600}
    signer = itsdangerous.TimestampSigner(hashlib.sha256(b"xyz-v4").hexdigest())
    cookie = signer.sign(b64encode(json.dumps({"oauth_info": info}).encode())).decode()
    library = Library(tmp_path / "outputs")
    port = free_port()
    demo = open_server(ServeConfig(port=port, hf_login=True), engine, library=library)
    url = f"http://127.0.0.1:{port}"
    try:
        signed = Tab(url, cookies={"session": cookie})
        signed.send("a big red circle on the left, blue background --steps 2")
        mine = library.conversations(account_key("hf:alice"))
        assert len(mine) == 1 and mine[0][1].startswith("a big red circle"), mine
        Tab(url).send("a small blue square at the top, white background --steps 2")
        assert len(library.conversations(account_key("hf:alice"))) == 1  # the anonymous one is not hers
    finally:
        demo.close()
