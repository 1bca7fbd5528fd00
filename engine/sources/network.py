"""Is the Hugging Face Hub reachable? Decided once per process, before huggingface_hub is imported.

With no network and HF_HUB_OFFLINE unset, huggingface_hub retries each request five times with back-off (about 25 s,
printing "Retrying in 8s" lines) before it falls back to its cache. A short TCP probe of the Hub's host avoids that:
when the probe fails, this process runs with HF_HUB_OFFLINE=1, so cached models load at once and a missing one gets
its message at once. A process started offline stays offline; restart it once the network is back.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from urllib.parse import urlsplit

log = logging.getLogger(__name__)
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def offline_unless_hub_reachable(timeout: float = 2.0) -> bool:
    """True when this process runs offline (set by the user, or because the Hub did not answer within `timeout`)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return True
    if "huggingface_hub" in sys.modules or any(os.environ.get(v) for v in _PROXY_VARS):
        return False  # too late to change (read at import), or a proxy a direct probe cannot judge
    url = urlsplit(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout).close()
        return False
    except OSError as e:
        os.environ["HF_HUB_OFFLINE"] = "1"
        log.info("The Hugging Face Hub (%s) is not reachable (%s): running offline, cached models only. Restart "
                 "with a network connection to download.", url.geturl(), e)
        return True
