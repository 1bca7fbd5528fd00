"""Per-browser-session state and the panel's settings, as plain dataclasses (no gradio, no torch).

A `Session` lives in one `gr.State`, so two people on one server never share history or images. It owns a
temporary folder with this session's PNGs (deleted when the session ends). `Settings` is what the side panel
holds (and the API endpoint's values); `Settings.request(prompt)` is the one function that turns them into the
engine's `Request`.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from engine.request import ControlUnit, ImagePrompt, LoraSpec, Request, clean_text
from studio.accounts import account_key
from studio.requests import make_request

log = logging.getLogger(__name__)

RANDOM_SEED = -1  # the panel's "random" seed
MAX_MESSAGE = 4000  # characters in one chat message: the page's box stops there and the server refuses more


UNKEPT = ("controls", "loras", "image_prompts")  # images and plugin choices: not kept in the browser


@dataclass
class Settings:
    """The form's values: the side panel's, or the API endpoint's. A value asks for the model family's default
    when it is None or below its smallest real value (steps/width/height 0, guidance -1, seed -1 = random,
    scheduler "default"; count 0 = one image): `request` is the one place that reads them so."""

    model: str = "builtin"
    negative: str = ""
    steps: int | None = None
    guidance: float | None = None
    seed: int = RANDOM_SEED
    width: int | None = None
    height: int | None = None
    scheduler: str = "default"
    count: int = 1
    refine: bool = False  # the next message refines the selected image (image-to-image)
    strength: float = 0.5  # refine strength
    vary_strength: float = 0.35
    controls: list[ControlUnit] = field(default_factory=list)
    loras: list[LoraSpec] = field(default_factory=list)
    image_prompts: list[ImagePrompt] = field(default_factory=list)

    def request(self, prompt: str) -> Request:
        """The engine request for `prompt` with these values (studio.requests.make_request, as every door)."""
        return make_request(prompt, self.model, form=True, negative=self.negative, steps=self.steps,
                            guidance=self.guidance, seed=self.seed, width=self.width, height=self.height,
                            scheduler=self.scheduler, count=self.count, controls=self.controls, loras=self.loras,
                            image_prompts=list(self.image_prompts))

    def to_browser(self) -> dict:
        """The plain values kept in the browser between visits (no images, no plugin choices)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in UNKEPT}

    @classmethod
    def from_browser(cls, data: dict | None) -> Settings | None:
        """Settings saved by `to_browser`, or None when there are none (or they are from another version)."""
        if not isinstance(data, dict):
            return None
        known = {f.name for f in dataclasses.fields(cls)} - set(UNKEPT)
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError:
            return None

    @classmethod
    def from_request(cls, request: Request, base: Settings) -> Settings:
        """`base` with the settings of `request` (a restored PNG or an earlier image) laid over it."""
        return dataclasses.replace(
            base, model=request.model or base.model, negative=request.negative or "",
            steps=request.steps if request.steps is not None else base.steps,
            guidance=request.guidance if request.guidance is not None else base.guidance,
            seed=request.seed if request.seed is not None else RANDOM_SEED,
            width=request.width or base.width, height=request.height or base.height,
            scheduler=request.scheduler or "default", loras=list(request.loras))


@dataclass
class Shot:
    """One image of this session: its PNG (with metadata) and the settings that made it."""

    number: int  # 1, 2, ... as shown to the user ("#3")
    path: str
    request: Request  # this image's own settings (its seed, count 1)
    turn: Request  # the whole turn's settings (first seed, count N): what reroll repeats
    model_name: str
    message_index: int  # index in Session.history of the chat message showing it


@dataclass
class Session:
    """Everything one browser session has: chat history, images, which image is selected, a stop switch."""

    workdir: Path
    history: list[dict] = field(default_factory=list)  # gr.Chatbot messages: {"role", "content"}
    shots: list[Shot] = field(default_factory=list)
    selected: int | None = None  # index into shots; None = the latest
    cancel: threading.Event = field(default_factory=threading.Event)
    browser: str = ""  # this browser's random id (ui/history.py), "" until the page has loaded
    conversation: str = ""  # the id this chat is stored under in the library
    kept: dict[str, str] = field(default_factory=dict)  # the chat's copy of an image -> its kept file
    closed: bool = False  # the tab moved on (New chat, Clear, another conversation) or went away
    delete_armed: str | None = None  # the conversation a first click on Delete chat asked to delete
    pending: object = None  # ui.runner.Update: a turn's settings or prompt for the panel, shown after the turn
    page_had: dict | None = None  # the gallery and selection the page showed when a turn began (None: unknown)
    good_model: str | None = None  # the last model that made an image in this session
    user: str = ""  # the signed-in account (--auth, --auth-file, a Space's sign-in); "" when nobody signs in

    @property
    def account_key(self) -> str:
        """The id a signed-in account's chats are stored under (in place of a browser's): the same on every
        browser, of the form the library's browser ids have."""
        return account_key(self.user)

    @property
    def owner(self) -> str | None:
        """Whose generations these are, for the line's turns: the account, else this browser, else None."""
        return f"user:{self.user}" if self.user else (f"browser:{self.browser}" if self.browser else None)

    @classmethod
    def new(cls) -> Session:
        return cls(workdir=Path(tempfile.mkdtemp(prefix="studio-session-")))

    def say(self, role: str, content) -> int:
        """Append a chat message and return its index. Text is cleaned (a lone surrogate would break the
        serialisation of the whole history, so every later reply of this session)."""
        if isinstance(content, str):
            content = clean_text(content)
        elif isinstance(content, dict) and isinstance(content.get("alt_text"), str):
            content = {**content, "alt_text": clean_text(content["alt_text"])}
        self.history.append({"role": role, "content": content})
        return len(self.history) - 1

    def selected_shot(self) -> Shot | None:
        if not self.shots:
            return None
        if self.selected is None or not 0 <= self.selected < len(self.shots):
            return self.shots[-1]
        return self.shots[self.selected]

    def select_message(self, message_index: int) -> Shot | None:
        """Select the image shown by chat message `message_index` (a click in the chat); None if it has none."""
        for i, shot in enumerate(self.shots):
            if shot.message_index == message_index:
                self.selected = i
                return shot
        return None

    def gallery(self) -> list[tuple[str, str]]:
        return [(s.path, f"#{s.number} · seed {s.request.seed}") for s in self.shots]

    def close(self) -> None:
        """Stop any running generation and delete this session's files."""
        self.closed = True
        self.cancel.set()
        shutil.rmtree(self.workdir, ignore_errors=True)


class OpenPages:
    """The Session of each open page, by gradio's session hash. Two events of one page that start before either has
    put a Session into the page's gr.State (its load event and a first message typed while the page loads) share
    one Session here instead of making two, of which the later answer would overwrite the other's chat."""

    def __init__(self):
        self._by_page: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # gone with the Session
        self._lock = threading.Lock()

    def ensure(self, session: Session | None, request=None) -> Session:
        """`session` when the page's gr.State has one, else this page's (made on its first event)."""
        if isinstance(session, Session):
            found = session
        else:
            key = getattr(request, "session_hash", None)
            with self._lock:
                found = self._by_page.get(key) if key else None
                if found is None or found.closed:
                    found = Session.new()
                    if key:
                        self._by_page[key] = found
        user = signed_in_name(request)
        if user and not found.user:  # signed in (--auth, a Space's sign-in): the account owns the chat, on any browser
            found.user = user
        return found


def signed_in_name(request) -> str | None:
    """Who this event's page is signed in as: the --auth / --auth-file user, else the Hugging Face account of a
    Space's sign-in ('hf:NAME', from gradio's OAuth session while it has not expired), else None."""
    name = getattr(request, "username", None)
    if name:
        return name
    # gradio's OAuth keeps it in its signed session cookie, which its middleware puts in the request's scope (no
    # middleware, no sign-in on this server; `.session` would assert)
    underlying = getattr(request, "request", None) or request
    scope = getattr(underlying, "scope", None)
    session = scope.get("session") if isinstance(scope, dict) else None
    info = session.get("oauth_info") if isinstance(session, dict) else None
    if not isinstance(info, dict) or (info.get("expires_at") or float("inf")) < time.time():
        return None
    hf_name = (info.get("userinfo") or {}).get("preferred_username")
    return f"hf:{hf_name}" if isinstance(hf_name, str) and hf_name else None


def ensure(session: Session | None) -> Session:
    """The session of this browser tab, created on its first event (gr.State starts as None)."""
    return session if isinstance(session, Session) else Session.new()


def close_session(session: Session | None) -> None:
    """gr.State's delete_callback: the tab closed or the session expired."""
    if isinstance(session, Session):
        log.info("closing session %s (%d images)", session.workdir.name, len(session.shots))
        session.close()
