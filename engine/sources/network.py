"""Is the Hugging Face Hub reachable? Asked once, at start, by `app.py`, which puts the answer in the EngineConfig.

With no network and HF_HUB_OFFLINE unset, huggingface_hub retries each request five times with back-off (about
25 s, printing "Retrying in 8s" lines) before it falls back to its cache. A short TCP probe of the Hub's host
avoids that: when it fails, the process runs offline, so cached models load at once and a missing one gets its
message at once. A process started offline stays offline; restart it once the network is back.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

from ..config import offline_by_user

_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def probe_hub(timeout: float = 2.0) -> str:
    """"" when the Hub answers (or cannot be judged: behind a proxy), else why it is taken as unreachable."""
    if any(os.environ.get(v) for v in _PROXY_VARS):
        return ""  # a proxy that a direct probe cannot judge: leave it to huggingface_hub
    url = urlsplit(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout).close()
        return ""
    except OSError as e:
        return f"the Hub ({url.hostname}) cannot be reached: {e.__class__.__name__} at start-up"


def decide_offline(timeout: float = 2.0) -> tuple[bool, str]:
    """(offline, why) for this process: the user's HF_HUB_OFFLINE, else the probe."""
    if offline_by_user():
        return True, "HF_HUB_OFFLINE is set"
    why = probe_hub(timeout)
    return bool(why), why
