"""What all sessions share: the `Studio` (engine and default model), the default model's background load, and
per-model data for the panel (family defaults, the model list, plugin rows).

Nothing here builds components: these functions ask the engine and return plain values that ui/panel_handlers.py
and ui/handlers.py hand on. Which models a user may name is the engine's rule (`EngineConfig.local_paths`, set in
app.py); its UserError is the reply. No gradio, no torch.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from engine.request import DEFAULTS, Request, UserError, valid_schedulers
from ui.line import Line
from ui.marks import PROBLEM
from ui.previews import PreviewCosts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Studio:
    """The one engine and the server's default model, shared by every session."""

    engine: Any  # engine.engine.Engine
    default_model: str = "builtin"
    gpu: Callable[[Request], Any] | None = None  # ZeroGPU: request -> Result, run in a GPU worker (no live preview)
    line: Any = None  # ui.line.Line: the generations waiting for the engine (default: 16 may wait)
    library: Any = None  # store.library.Library: kept images and conversations (None: nothing is kept)
    previews: PreviewCosts = field(default_factory=PreviewCosts)  # what a live preview costs, per model

    def __post_init__(self):
        if self.line is None:  # one generation at a time on the local engine, one per Ray Serve replica
            object.__setattr__(self, "line", Line(16, getattr(self.engine, "replicas", 1)))
        # the page offers the server's own model even where users may not name files (the operator chose it)
        self.engine.allow_path(self.default_model)

    @property
    def local_paths(self) -> bool:
        """May users name files and folders on the server as models? app.py decides it, the engine enforces it."""
        return self.engine.config.local_paths


class ModelStatus:
    """The status line: the default model loading in the background, then ready or the error."""

    def __init__(self, model: str):
        self.model, self.text, self.done = model, f"Loading **{model}** in the background…", False

    def load(self, engine) -> None:
        started = time.perf_counter()
        try:
            engine.warm(self.model)  # under the engine's own lock: never beside a generation
            self.text = f"**{self.model}** ready (loaded in {time.perf_counter() - started:.1f}s)"
        except UserError as e:
            self.text = f"{PROBLEM} {e}"
        except Exception as e:
            log.exception("loading %s failed", self.model)
            self.text = (f"{PROBLEM} Loading {self.model} failed ({type(e).__name__}); see the server log. Pick "
                         "another model.")
        self.done = True

    def start(self, engine) -> None:
        threading.Thread(target=self.load, args=(engine,), name="load-model", daemon=True).start()


def model_family(studio: Studio, model: str) -> str:
    """The family of a model without loading it; UserError when it can't be used."""
    return studio.engine.defaults(model)["family"]


def panel_defaults(studio: Studio, model: str) -> dict:
    """Steps, guidance, size and scheduler for a model family, plus the scheduler choices and the size limits
    (`multiple`, `max_size`: the width/height sliders' step and maximum), for the panel.

    UserError when the model can't be used here (the engine's words: missing, or a path on a shared server)."""
    d = dict(studio.engine.defaults(model))
    d["schedulers"] = ["default"] + valid_schedulers(d["family"])
    d["multiple"], d["max_size"] = DEFAULTS[d["family"]].multiple, DEFAULTS[d["family"]].max_size
    return d


def builtin_defaults() -> dict:
    """`panel_defaults` of the built-in family, for a page whose default model can't be used."""
    d = DEFAULTS["builtin"]
    return {"family": "builtin", "steps": d.steps, "guidance": d.guidance, "width": d.size, "height": d.size,
            "scheduler": d.scheduler, "multiple": d.multiple, "max_size": d.max_size,
            "schedulers": ["default"] + valid_schedulers("builtin")}


def model_choices(default_model: str) -> list[tuple[str, str]]:
    """(label, value) for the model picker: built-in, the known Hub models, cached ones, the server's default."""
    from engine.sources.hub import cached_hub_models
    from engine.sources.resolve import KNOWN_MODELS

    cached = dict(cached_hub_models())
    choices = [("builtin (offline, small and fast)", "builtin")]
    for repo, family in KNOWN_MODELS.items():
        if repo != "builtin":
            choices.append((f"{repo} ({family}{', cached' if repo in cached else ', downloads on first use'})", repo))
    choices += [(f"{repo} ({family}, cached)", repo) for repo, family in cached.items() if repo not in KNOWN_MODELS]
    if default_model not in [value for _, value in choices]:
        choices.insert(0, (f"{default_model} (server default)", default_model))
    return choices


def plugin_rows(engine, model: str) -> list[dict]:
    """LoRA plugins for the panel: name, family, weight, status, compatible, why, description, trigger.

    Asks the engine's plugin manager (judged against the model's family); no plugin system, or a failing one,
    means no rows, never a broken page.
    """
    try:
        listing = engine.plugin_listing(model)
    except (ImportError, AttributeError, UserError) as e:
        log.info("no plugin list for %s: %s", model, e)
        return []
    except Exception:
        log.exception("listing plugins failed")
        return []
    rows = []
    for item in listing:
        if item.get("kind", "lora") != "lora":
            continue
        status = str(item.get("status", "ready"))
        why = item.get("why") or (status[len("error: "):] if status.startswith("error") else "")
        trigger = f" Trigger: {item['trigger']}." if item.get("trigger") else ""  # the MCP tool lists it so
        rows.append({"name": item["name"], "family": item.get("family"), "weight": float(item.get("weight", 1.0)),
                     "status": status, "compatible": bool(item.get("compatible", not why)), "why": why,
                     "description": (item.get("description") or "") + trigger, "trigger": item.get("trigger") or ""})
    rows.sort(key=lambda r: not r["compatible"])
    return rows
