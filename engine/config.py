"""`EngineConfig`: how this process runs its models, built once in `app.py` from the command line.

Nothing else reads the project's own settings from the environment: the engine, the plugin finder and the UI get
them from here. (Hugging Face's variables, HF_HOME, HF_TOKEN, HF_HUB_OFFLINE, stay the user's to set.)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PLUGIN_DIRS = (ROOT / "plugins", ROOT / "assets" / "plugins")


def offline_by_user() -> bool:
    """The user asked for offline mode with Hugging Face's own HF_HUB_OFFLINE."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class EngineConfig:
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto | fp32 | fp16 | bf16
    offload: str = "auto"  # auto | on | off | sequential: model CPU offload when the GPU is too small
    compile: str = "off"  # on | off: torch.compile the denoiser
    channels_last: str = "auto"  # auto (on for CPU) | on | off
    memory_budget_gb: float | None = None  # model cache budget; None: by device
    plugin_dirs: tuple[Path, ...] = DEFAULT_PLUGIN_DIRS  # where plugin manifests are found
    # the Hub is not asked, cached models only: the user's HF_HUB_OFFLINE, or app.py's start-up probe
    offline: bool = field(default_factory=offline_by_user)
    offline_reason: str = ""  # why, for messages ("HF_HUB_OFFLINE is set", "the Hub did not answer ...")
    local_paths: bool = False  # may requests name files and folders on this machine (models, LoRA files)?
    quiet_loading: bool = False  # hide diffusers' per-component loading bars (the CLI without -v)
    threads: int | None = None  # torch's CPU threads, set when the Engine starts (engine/threads.py); None: torch's

    def __post_init__(self):
        for name, allowed in (("offload", ("auto", "on", "off", "sequential")), ("compile", ("on", "off")),
                              ("channels_last", ("auto", "on", "off"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"EngineConfig.{name} = {getattr(self, name)!r}; use one of {', '.join(allowed)}.")
        object.__setattr__(self, "plugin_dirs", tuple(Path(d).expanduser() for d in self.plugin_dirs))
        if self.offline and not self.offline_reason:
            object.__setattr__(self, "offline_reason", "HF_HUB_OFFLINE is set" if offline_by_user() else "offline")
