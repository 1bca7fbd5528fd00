"""How much work one request asks of the engine, and the server's cap on it (`--max-work`): pixels x steps x
images, in megapixel-steps, counted before the request waits in line. The CLI is the operator's and has no cap;
every served door (chat, APIs, MCP) goes through `studio.stream`, which checks it. No gradio, no torch."""

from __future__ import annotations

from engine.request import Request, SettingsError

MAX_WORK = 256.0  # megapixel-steps a request may ask for by default: 1024x1024 x 50 steps x 4 images is 210


def work(request: Request, defaults: dict) -> float:
    """Megapixel-steps `request` asks for, its unset size and steps read from the model's `defaults`
    (engine.Engine.defaults); an upscale's refining pass counts at its larger size."""
    width, height = request.width or defaults["width"], request.height or defaults["height"]
    steps = request.steps or defaults["steps"]
    per_image = width * height * steps
    if request.upscale:
        per_image += width * height * request.upscale ** 2 * steps * request.hires_strength
    return per_image * max(1, request.count) / 1e6


def check_work(request: Request, defaults: dict, cap: float | None) -> None:
    """SettingsError naming what to lower when `request` asks for more than `cap` megapixel-steps (None or 0: no
    cap)."""
    if not cap:
        return
    asked = work(request, defaults)
    if asked <= cap:
        return
    width, height = request.width or defaults["width"], request.height or defaults["height"]
    steps = request.steps or defaults["steps"]
    raise SettingsError(
        f"This request asks for {asked:.0f} megapixel-steps of work ({width}x{height} x {steps} steps x "
        f"{request.count} image(s){' with an upscale' if request.upscale else ''}); this server takes at most "
        f"{cap:.0f} per request. Ask for fewer images or steps, or a smaller size.",
        field="count" if request.count > 1 else "steps",
        operator="The cap is the server's --max-work (megapixel-steps per request; 0 lifts it).")
