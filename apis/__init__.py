"""The doors other programs already know: AUTOMATIC1111's /sdapi/v1 (a1111.py), OpenAI's /v1/images
(openai_images.py), both on the page's own server and its queue (`mount`, mount.py)."""

from apis.mount import mount

__all__ = ["mount"]
