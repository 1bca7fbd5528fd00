"""The HTTP server's front (front.py): one ASGI layer before every route of the page, gradio and the APIs. No
gradio here; the composer (serving.py) installs it after launch."""
