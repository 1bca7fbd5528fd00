"""The doors other programs already know: AUTOMATIC1111's /sdapi/v1 (a1111.py), OpenAI's /v1/images
(openai_images.py) and MCP tools for agents (mcp_tools.py), all on the page's own server and its queue
(`mount`, mount.py)."""

from apis.mcp_tools import add_tools
from apis.mount import mount

__all__ = ["add_tools", "mount"]
