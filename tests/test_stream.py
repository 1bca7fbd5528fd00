"""What a chat turn sends to the page, yield by yield (issue #15: the chat under load).

Every value gradio is given for the chat or the gallery costs a pass over each of their files (~1 ms an image on
the server, a render in the browser), beside the sampling. So a turn sends the chat when something in it changed
(the message, a step counter, a preview, the image), and a yield that is there only so a closed tab's event ends
sends nothing at all. The gallery is no output of the event (each output a yield leaves out costs gradio a rebuild):
the quick event after the turn sends it, only when it changed. The tests run the page's own Enter event (and the
one after it) on a tiny model.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import pytest

from ui.app import build
from ui.state import Session


@pytest.fixture(scope="module")
def demo(engine, tiny_model):
    return build(engine, str(tiny_model("sd15")))


def by_elem(demo, elem_id: str):
    return next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == elem_id)


def enter(demo, text: str, state=None) -> list[dict]:
    """Run the message box's Enter event as gradio would, with the page's initial values; its yields."""
    box = by_elem(demo, "prompt")
    fn = next(f for f in demo.fns.values() if (box._id, "submit") in [tuple(t) for t in f.targets])
    values = {c: c.value for c in fn.inputs}
    values[box] = {"text": text, "files": []}
    values[next(c for c in fn.inputs if isinstance(c, gr.State) and c.value is None)] = state
    # each as it was sent (a later yield changes the session's lists in place)
    return [{c: list(v) if isinstance(v, list) else v for c, v in out.items()} if out != gr.skip() else out
            for out in fn.fn(values)]


def after(demo, state) -> dict:
    """The quick event the page runs when the Enter event has ended: the gallery, selection and chat list."""
    box = by_elem(demo, "prompt")
    submit = next(i for i, f in demo.fns.items() if (box._id, "submit") in [tuple(t) for t in f.targets])
    then = next(f for f in demo.fns.values() if getattr(f, "trigger_after", None) == submit)
    return then.fn(state)


def state_of(yields: list) -> Session:
    return next(v for out in yields if isinstance(out, dict) for v in out.values() if isinstance(v, Session))


def carries(out, component) -> bool:
    return isinstance(out, dict) and component in out


@pytest.fixture
def slow_quiet_run(demo, monkeypatch):
    """A run with no step counter (its first redraw would be 60 s in), no previews, and a quiet yield at every
    chance."""
    monkeypatch.setattr(demo.studio.timing, "first_redraw_s", 60.0)
    monkeypatch.setattr(demo.studio.previews, "min_run_s", float("inf"))
    monkeypatch.setattr(demo.studio.timing, "idle_yield_s", 0.0)


def test_a_turn_sends_the_chat_for_the_message_and_the_image_and_nothing_in_between(demo, slow_quiet_run):
    chat, gallery, box = by_elem(demo, "chat"), by_elem(demo, "gallery"), by_elem(demo, "prompt")
    yields = enter(demo, "a red circle --steps 12 --size 32x32", Session.new())  # a session the page shows
    with_chat = [out for out in yields if carries(out, chat)]
    assert len(with_chat) == 2, f"the chat was sent {len(with_chat)} times"
    message, image = with_chat
    assert message is yields[0] and "Starting" in str(message[chat][-1]["content"])
    assert isinstance(image[chat][-2]["content"], dict) and "steps" in image[chat][-1]["content"]
    quiet = [out for out in yields[1:] if out == gr.skip()]  # gradio's single skip(): every output as it is
    assert len(quiet) >= 2, "expected yields with nothing new between the steps"
    # the gallery is no output of the event (every yield would cost gradio its rebuild): the quick event after
    # the turn sends it, with the new image
    assert not any(carries(out, gallery) for out in yields)
    assert len(after(demo, state_of(yields))[gallery]) == 1
    # the event's end: the Send button back, the session into the page's State (a page load that ran meanwhile
    # must not leave its own there) and the ids its chat is kept under; never the chat again
    assert box in yields[-1] and all(isinstance(c, (gr.State, gr.BrowserState)) for c in set(yields[-1]) - {box})


def test_a_later_turn_sends_the_gallery_once_and_only_when_it_grew(demo, slow_quiet_run):
    chat, gallery, selected = by_elem(demo, "chat"), by_elem(demo, "gallery"), by_elem(demo, "selected")
    state = state_of(enter(demo, "a blue square --steps 2 --size 32x32"))
    after(demo, state)
    again = enter(demo, "a green square --steps 2 --size 32x32", state)
    end = after(demo, state)
    assert len(end[gallery]) == 2 and "#2" in end[selected]  # the new image, selected
    assert sum(carries(out, chat) for out in again) == 2
    help_turn = enter(demo, "/help", state)  # no new image: the page's gallery and selection are already right
    end = after(demo, state)
    assert not carries(end, gallery) and not carries(end, selected)
    assert "--seed" in str([out[chat] for out in help_turn if carries(out, chat)][-1][-1]["content"])


def test_the_latest_preview_stays_in_the_chat_until_a_newer_one_or_the_image(demo, monkeypatch):
    """Step counters redraw the chat between previews; each used to drop the preview it had just shown."""
    chat = by_elem(demo, "chat")
    monkeypatch.setattr(demo.studio.timing, "first_redraw_s", 0.0)  # a step counter at every step
    monkeypatch.setattr(demo.studio.timing, "redraw_s", 0.0)
    monkeypatch.setattr(demo.studio.previews, "min_run_s", 0.0)  # the tiny model's 40 steps get previews
    sent = [out[chat] for out in enter(demo, "a red circle --steps 40 --size 32x32") if carries(out, chat)]
    previews = [next((m["content"]["path"] for m in h if isinstance(m["content"], dict)
                      and m["content"]["path"].endswith(".jpg")), None) for h in sent]
    first = next(i for i, p in enumerate(previews) if p)
    counters = [h for h in sent[first:-1] if "Step " in str(h[-2:])]
    assert len(counters) >= 3 and all(previews[first:-1]), "a step counter redraw dropped the preview"
    assert previews[-1] is None and isinstance(sent[-1][-2]["content"], dict), "the image replaces the preview"


def test_a_turn_on_a_session_the_server_lost_redraws_everything(demo, slow_quiet_run):
    """The tab still shows its old chat, gallery and selection when the server has forgotten its session
    (expired, restarted): the next turn, even /help, sends the new session's whole view (the gallery and selection
    when it ends)."""
    gallery, selected = by_elem(demo, "gallery"), by_elem(demo, "selected")
    yields = enter(demo, "/help")  # gr.State is None: the page holds nothing the server knows
    end = after(demo, state_of(yields))
    assert carries(end, gallery) and end[gallery] == [] and carries(end, selected)


def test_a_run_closed_midway_leaves_no_broken_preview_in_the_chat(demo, monkeypatch):
    """The tab gone mid-run: gradio closes the event's generator, and the run deletes its preview files; their
    messages go too (the chat is stored, and comes back on the next visit)."""
    chat = by_elem(demo, "chat")
    monkeypatch.setattr(demo.studio.timing, "first_redraw_s", 0.0)
    monkeypatch.setattr(demo.studio.previews, "min_run_s", 0.0)
    box = by_elem(demo, "prompt")
    fn = next(f for f in demo.fns.values() if (box._id, "submit") in [tuple(t) for t in f.targets])
    values = {c: c.value for c in fn.inputs}
    values[box] = {"text": "a red circle --steps 40 --size 32x32", "files": []}
    events, session, preview = fn.fn(values), None, None
    for out in events:
        session = session or next((v for v in out.values() if hasattr(v, "history")), None)
        preview = next((m["content"]["path"] for m in out.get(chat, []) if isinstance(m["content"], dict)), None)
        if preview:
            break
    assert session is not None and preview, "expected a live preview before the run ends"
    events.close()  # what gradio does when the client is gone
    assert not Path(preview).exists()
    assert not any(isinstance(m["content"], dict) and m["content"]["path"] == preview for m in session.history)


def test_a_turn_whose_chat_was_left_midway_no_longer_draws_on_the_page(demo, slow_quiet_run):
    """New chat, Clear or another conversation while a turn runs: the old session is closed (its run stops),
    and the rest of its event must not put the old chat back over the new one."""
    chat, gallery, box = by_elem(demo, "chat"), by_elem(demo, "gallery"), by_elem(demo, "prompt")
    fn = next(f for f in demo.fns.values() if (box._id, "submit") in [tuple(t) for t in f.targets])
    values = {c: c.value for c in fn.inputs}
    session = Session.new()
    values[box] = {"text": "a red circle --steps 40 --size 32x32", "files": []}
    values[next(c for c in fn.inputs if isinstance(c, gr.State) and c.value is None)] = session
    events = fn.fn(values)
    assert carries(next(events), chat)
    session.close()  # what the New chat event does to the old session
    rest = list(events)
    assert rest, "the event still ends (and gives the Send button back)"
    assert not any(carries(out, chat) or carries(out, gallery) or any(isinstance(c, gr.State) for c in out)
                   for out in rest if out != gr.skip())
    assert carries(rest[-1], box)
