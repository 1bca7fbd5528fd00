"""What every door shares: the `Studio` (engine, default model, line, library, previews) and per-model data any
door shows (family defaults, the model list, plugin rows).

These functions ask the engine and return plain values that the doors word in their own terms. Which models a
user may name is the engine's rule (`EngineConfig.local_paths`, set in app.py); its UserError is the reply. No
gradio, no torch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from engine.families import family as family_of
from engine.request import Request, UserError, valid_schedulers
from studio.jobs import Jobs
from studio.line import Line
from studio.previews import PreviewCosts
from studio.quota import Quota
from studio.stops import Stops
from studio.stream import Timing
from studio.usage import Usage
from studio.work import MAX_WORK

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Studio:
    """The one engine and the server's default model, shared by every session."""

    engine: Any  # engine.engine.Engine
    default_model: str = "builtin"
    gpu: Callable[[Request], Any] | None = None  # ZeroGPU: request -> Result, run in a GPU worker (no live preview)
    line: Any = None  # studio.line.Line: the generations waiting for the engine (default: 16 may wait)
    library: Any = None  # store.library.Library: kept images and conversations (None: nothing is kept)
    previews: PreviewCosts = field(default_factory=PreviewCosts)  # what a live preview costs, per model
    timing: Timing = field(default_factory=Timing)  # how often runs report in and the chat redraws
    jobs: Any = None  # studio.jobs.Jobs: the programmatic doors' generations (A1111 /progress and /interrupt)
    max_work: float | None = MAX_WORK  # megapixel-steps one served request may ask for (studio/work.py)
    stops: Stops = field(default_factory=Stops)  # page sessions' stop switches, for cancels gradio can't deliver
    batch: int = 1  # requests one pipeline call may sample: waiting ones of the same settings join a run (--batch)
    usage: Usage = field(default_factory=Usage)  # per-user rates (--rate) and the host's summary in the log
    admins: frozenset = frozenset()  # accounts that see the line and may stop anything (--admin)
    quota: Quota = field(default_factory=Quota)  # kept images (or bytes) per user (--quota)

    def stop_all(self) -> int:
        """An admin's stop: every generation in the line, waiting or running, through every door."""
        self.jobs.interrupt("", everyone=True)
        return self.line.stop_all()

    def __post_init__(self):
        if self.line is None:  # one generation at a time on the local engine, one per Ray Serve replica
            object.__setattr__(self, "line", Line(16, getattr(self.engine, "replicas", 1)))
        if self.jobs is None:
            object.__setattr__(self, "jobs", Jobs(self))
        # the page offers the server's own model even where users may not name files (the operator chose it)
        self.engine.allow_path(self.default_model)

    @property
    def local_paths(self) -> bool:
        """May users name files and folders on the server as models? app.py decides it, the engine enforces it."""
        return self.engine.config.local_paths


def model_family(studio: Studio, model: str) -> str:
    """The family of a model without loading it; UserError when it can't be used."""
    return studio.engine.defaults(model)["family"]


def panel_defaults(studio: Studio, model: str) -> dict:
    """A model's defaults and limits (engine.Engine.defaults), with "default" first among the schedulers: what the
    panel's sliders and the doors' model lists show.

    UserError when the model can't be used here (the engine's words: missing, or a path on a shared server)."""
    d = dict(studio.engine.defaults(model))
    d["schedulers"] = ["default"] + list(d["schedulers"])
    return d


def builtin_defaults() -> dict:
    """`panel_defaults` of the built-in family, for a page whose default model can't be used."""
    kin = family_of("builtin")
    d = kin.defaults
    return {"family": kin.name, "label": kin.label, "steps": d.steps, "guidance": d.guidance, "width": d.size,
            "height": d.size, "scheduler": d.scheduler, "multiple": d.multiple, "max_size": d.max_size,
            "schedulers": ["default"] + valid_schedulers(kin.name), "negative_prompt": kin.negative_prompt,
            "flow": kin.flow, "trained_sides": kin.trained_sides, "edit_images": 0, "text_to_image": True}


def model_choices(default_model: str) -> list[tuple[str, str]]:
    """(label, value) for the model picker: built-in, the known Hub models under their family's name (in the
    registry's order: the list reads as groups), cached ones, the server's default."""
    from engine.families import family as family_of
    from engine.sources.hub import cached_hub_models
    from engine.sources.resolve import KNOWN_MODELS

    cached = dict(cached_hub_models())
    choices = [("Built-in · builtin (offline, small and fast)", "builtin")]
    for repo, family in KNOWN_MODELS.items():
        if repo != "builtin":
            status = "cached" if repo in cached else "downloads on first use"
            choices.append((f"{family_of(family).label} · {repo} ({status})", repo))
    choices += [(f"{family_of(family).label} · {repo} (cached)", repo) for repo, family in cached.items()
                if repo not in KNOWN_MODELS]
    if default_model not in [value for _, value in choices]:
        choices.insert(0, (f"{default_model} (server default)", default_model))
    return choices


def prompt_texts(studio: Studio) -> tuple[list[str], list[str]]:
    """The saved styles' names and the wildcards (plugins/styles/, plugins/wildcards/) the studio's prompts use."""
    from engine.prompt_texts import styles, wildcard_names

    dirs = studio.engine.config.plugin_dirs
    return sorted(styles(dirs)), wildcard_names(dirs)


def model_names(studio: Studio, *current: str) -> list[str]:
    """The models the programmatic doors offer: built-in, the known Hub models, cached ones, the server's default
    and any the caller uses now."""
    from engine.sources.hub import cached_hub_models
    from engine.sources.resolve import KNOWN_MODELS

    names = ["builtin", *KNOWN_MODELS, *(repo for repo, _ in cached_hub_models()), studio.default_model, *current]
    return list(dict.fromkeys(names))


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
