"""An X/Y/Z plot in the chat (`--xyz steps=4,10,20 cfg=1,2,4`): each cell a generation through the studio's line,
then one labelled grid in the chat, and every cell kept (the library, the gallery) with its own settings."""

from __future__ import annotations

import time
from typing import Iterator

from engine.request import Request
from studio import grid
from studio.jobs import keep
from studio.quota import library_owner
from studio.service import Studio
from studio.stream import stream
from ui.runner import Update, error_message
from ui.state import Session, Shot


def run_plot(studio: Studio, session: Session, requests: list[Request], axes: list) -> Iterator[Update]:
    """Generate `requests` (the plot's cells, x fastest) one after another, then show the grid."""
    session.cancel.clear()
    n = len(requests)
    pending = session.say("assistant", f"X/Y/Z plot: {n} images, one after another…")
    yield Update(status=f"**{requests[0].model}** is working on your plot…")
    results, shown = [], 0.0
    for k, request in enumerate(requests, 1):
        steps = stream(studio, request, session.cancel, owner=session.owner)
        try:
            while True:
                try:
                    what, step, total, _ = next(steps)
                except StopIteration as done:
                    results.append(done.value)
                    break
                if time.perf_counter() - shown >= studio.timing.redraw_s:
                    shown = time.perf_counter()
                    where = f"step {step}/{total}" if what == "step" and step >= 0 else what
                    session.history[pending] = {"role": "assistant", "content":
                                                f"X/Y/Z plot: image {k} of {n} · {where} · Stop (■) cancels"}
                    yield Update()
        except Exception as e:  # Busy, Cancelled, a UserError: said, with where the plot stopped
            del session.history[pending:]
            session.say("assistant", error_message(e, studio.local_paths) + f" (at image {k} of {n} of the plot)")
            yield Update(status=None, status_back=True)
            return
        finally:
            steps.close()
    del session.history[pending:]
    sheet = grid.draw([r.images[0] for r in results], axes)
    first = len(session.shots) + 1
    path = session.workdir / f"xyz-{first:04d}.png"
    sheet.save(path)
    index = session.say("assistant", {"path": str(path), "alt_text": "X/Y/Z plot: " + " × ".join(
        a.name for a in axes)})
    refused = None
    for result in results:
        number = len(session.shots) + 1
        cell = session.workdir / f"studio-{number:04d}-seed{result.seeds[0]}.png"
        result.save_png(0, cell)
        session.shots.append(Shot(number, str(cell), result.image_request(0), result.request, result.model_name,
                                  index))
        entry, refused = keep(studio.library, result, 0, "chat", conversation=session.conversation,
                              owner=library_owner(session.owner))
        if entry is not None:
            session.kept[str(cell)] = entry.path
    kept = "" if studio.library is None or not studio.library.enabled else " · each image kept in the Library"
    axes_text = "; ".join(f"{a.name} {', '.join(str(v) for v in a.values)}" for a in axes)
    session.say("assistant", f"#{first}–#{len(session.shots)} · X/Y/Z plot of {axes_text} · seed "
                             f"{requests[0].seed}{kept}" + (f"\n\n{refused}" if refused else ""))
    session.selected = None
    yield Update(status=f"**{requests[0].model}** ready (it made the last image)")
