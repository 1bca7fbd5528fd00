"""Midjourney-style inline parameters: `a red fox --seed 42 --ar 3:2 --no blurry text <lora:pastel:0.8>`.

`parse_message` splits a chat message into the prompt and the settings it overrides for that one turn.
Every flag is declared once in `FLAGS` (name, aliases, value, help); an unknown or malformed flag raises
`UserError` with the fix, so nothing a user types is silently ignored. Range checks stay in the engine's
`check_request`, which words every out-of-range message.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

from engine.images.infotext import take_lora_tags
from engine.request import LoraSpec, UserError
from studio.parse import lora_spec

FLAG_RE = re.compile(r"(?<!\S)--([A-Za-z][\w-]*)")
DASH_RE = re.compile(r"(?<!\S)[\u2014\u2013](?=[A-Za-z])")  # phones turn "--" into an em or en dash
RATIO_RE = re.compile(r"(\d+(?:\.\d+)?)\s*[:/x]\s*(\d+(?:\.\d+)?)")
SIZE_RE = re.compile(r"(\d+)(?:\s*[x×*]\s*(\d+))?")
DEFAULT_REFINE = 0.5
MAX_RATIO = 4.0
ASPECTS = ["1:1", "3:2", "2:3", "4:3", "3:4", "16:9", "9:16"]  # the panel's presets
CUSTOM = "custom"  # the Aspect box for a width and height that match no preset


@dataclass(frozen=True)
class Flag:
    name: str
    aliases: tuple[str, ...]
    value: str  # what follows the flag, for help and error messages
    help: str


FLAGS = (
    Flag("seed", (), "N", "seed for the first image (0 to 4294967295); the others use N+1, N+2, ..."),
    Flag("steps", (), "N", "sampling steps"),
    Flag("cfg", ("guidance",), "X", "guidance scale (how closely to follow the prompt)"),
    Flag("ar", ("aspect",), "W:H", "aspect ratio at the model's native size, e.g. 3:2, 16:9, 1:1"),
    Flag("size", (), "WxH", "exact size in pixels, e.g. 768x512 (or one number for a square)"),
    Flag("no", (), "WORDS", "things to keep out of the image (added to the negative prompt)"),
    Flag("n", ("count",), "N", "number of images"),
    Flag("scheduler", ("sampler",), "NAME", "scheduler, e.g. euler, euler-a, dpm++2m, unipc (the panel lists the ones "
                                            "that fit the model)"),
    Flag("refine", (), "[S]", f"image-to-image from the selected (or last) image at strength S "
                              f"(default {DEFAULT_REFINE}; low keeps more of it)"),
    Flag("lora", (), "NAME=W", "turn on a LoRA plugin at weight W (repeatable; also `<lora:NAME:W>` in the text)"),
    Flag("images", ("with",), "N,M", "editing models (Qwen-Image-Edit, FLUX.2, Kontext): edit chat images #N, #M "
                                    "together, as image 1, image 2 of the instruction"),
    Flag("new", (), "", "editing models: draw a new image from the text instead of editing the selected one"),
    Flag("xyz", (), "AXIS=V1,V2 ...", "an X/Y/Z plot: one image per combination (up to 3 axes of steps, cfg, seed, "
                                      "scheduler, model, style, negative), one labelled grid, e.g. --xyz steps=4,10 "
                                      "cfg=1,2,4"),
    Flag("sref", (), "NAME", "a saved style reference as the image prompt (save one with /save-style NAME on the "
                             "selected image)"),
    Flag("style", (), "NAME", "a saved style around the prompt (plugins/styles/; repeatable); `__name__` in the text "
                              "picks a line of plugins/wildcards/name.txt by the seed"),
)
_BY_NAME = {alias: f for f in FLAGS for alias in (f.name, *f.aliases)}


@dataclass
class Inline:
    """What one message asks for: the prompt and the settings it overrides for this turn only."""

    prompt: str
    overrides: dict = field(default_factory=dict)  # Settings field -> value (seed, steps, guidance, ...)
    aspect: tuple[float, float] | None = None  # resolved to a size once the model's native size is known
    negative: str = ""  # from --no, added to the panel's negative prompt
    loras: list[LoraSpec] = field(default_factory=list)
    refine: float | None = None  # image-to-image strength when --refine was given
    images: list[int] = field(default_factory=list)  # --images 2,5: the chat's image numbers an edit takes
    new: bool = False  # --new: an editing model draws anew instead of editing the selected image
    styles: list[str] = field(default_factory=list)  # --style NAME (repeatable)
    srefs: list[str] = field(default_factory=list)  # --sref NAME (repeatable)
    xyz: list = field(default_factory=list)  # --xyz: the plot's axes (studio.grid.Axis)
    command: str | None = None  # "help" for /help, "save-style" for /save-style NAME (the name in `prompt`),
    # "forget-oldest" for /forget-oldest N (N in `prompt`)


def parse_message(text: str) -> Inline:
    """Split `text` into prompt and flags; raise `UserError` naming a bad flag and how to write it."""
    text = (text or "").strip()
    if text.lower() in ("/help", "/?", "help", "--help"):
        return Inline(prompt="", command="help")
    if text.lower() in ("/line", "/stop-all"):
        return Inline(prompt="", command=text.lower()[1:])
    if text.lower().split()[:1] in (["/save-style"], ["/sref"]):
        name = text.split(maxsplit=1)[1].strip() if len(text.split()) > 1 else ""
        if not name or len(name.split()) > 1:
            raise UserError("Write /save-style NAME (one word): the selected image is kept as the style reference "
                            "NAME, for --sref NAME in any later chat.")
        return Inline(prompt=name, command="save-style")
    if text.lower().split()[:1] == ["/forget-oldest"]:
        words = text.split()
        if len(words) != 2 or not words[1].isdigit() or not 1 <= int(words[1]) <= 10_000:
            raise UserError("Write /forget-oldest N (1 to 10000): your N oldest kept images are deleted, files too.")
        return Inline(prompt=words[1], command="forget-oldest")
    if text.startswith("/"):
        raise UserError(f"Unknown command {text.split()[0]!r}. The commands are /help, /save-style NAME and "
                        "/forget-oldest N (an admin's: /line, /stop-all); anything else is a prompt.")
    out = Inline(prompt="")
    text = DASH_RE.sub("--", text)
    text, out.loras = take_lora_tags(text)
    matches = FLAG_RE.finditer(text)  # one at a time: a bad flag stops the reading (no list of 100k matches)
    match = next(matches, None)
    out.prompt = " ".join(text[: match.start() if match else len(text)].split())
    while match is not None:
        following = next(matches, None)
        end = following.start() if following else len(text)
        _apply(out, match.group(1).lower(), text[match.end():end].strip())
        match = following
    if "width" in out.overrides and out.aspect:
        raise UserError("Use either --ar W:H or --size WxH in one message, not both.")
    return out


def _apply(out: Inline, name: str, value: str) -> None:
    flag = _BY_NAME.get(name)
    if flag is None:
        close = difflib.get_close_matches(name, list(_BY_NAME), n=1)
        hint = f" Did you mean --{close[0]}?" if close else ""
        raise UserError(f"I don't know the flag --{name}.{hint} Flags: "
                        f"{', '.join('--' + f.name for f in FLAGS)}. Type /help for what each does.")
    flag_text = f"--{name} {value}".strip()
    if flag.name == "no":
        if not value:
            raise UserError("--no needs the things to avoid, e.g. --no blurry text")
        out.negative = ", ".join(x for x in (out.negative, value) if x)
        return
    if flag.name == "new":
        if value:
            raise UserError(f"{flag_text!r}: --new takes no value. Put the prompt first, e.g. 'a red fox --new'.")
        out.new = True
        return
    if flag.name == "images":
        numbers = [x for x in re.split(r"[\s,]+", value.replace("#", " ")) if x]
        if not numbers or not all(x.isdigit() and 0 < int(x) < 1_000_000 for x in numbers):
            raise UserError(f"{flag_text!r}: give the chat's image numbers, e.g. --images 2,5 (image 1 is #2, "
                            "image 2 is #5).")
        out.images = [int(x) for x in numbers]
        return
    if flag.name == "refine":
        out.refine = DEFAULT_REFINE if not value else _float(value, flag_text, "a strength from 0.01 to 1, e.g. 0.5")
        return
    if not value:
        raise UserError(f"--{name} needs a value: --{flag.name} {flag.value} ({flag.help}).")
    if flag.name == "xyz":
        from studio.grid import axes

        out.xyz = axes(value)
        return
    if len(value.split()) > 1 and flag.name not in ("ar", "size", "images"):
        raise UserError(f"{flag_text!r}: --{name} takes one value. Put the prompt first and the flags after it, "
                        f"e.g. 'a red fox in snow --{flag.name} {flag.value}'.")
    if flag.name == "seed":
        out.overrides["seed"] = _int(value, flag_text, "a whole number from 0 to 4294967295")
    elif flag.name == "steps":
        out.overrides["steps"] = _int(value, flag_text, "a whole number such as 20")
    elif flag.name == "cfg":
        out.overrides["guidance"] = _float(value, flag_text, "a number such as 6 or 7.5")
    elif flag.name == "n":
        out.overrides["count"] = _int(value, flag_text, "a whole number such as 4")
    elif flag.name == "scheduler":
        out.overrides["scheduler"] = value
    elif flag.name == "ar":
        out.aspect = parse_ratio(value)
    elif flag.name == "size":
        match = SIZE_RE.fullmatch(value)
        if not match:
            raise UserError(f"{flag_text!r}: write the size as WIDTHxHEIGHT, e.g. --size 768x512, or one number "
                            "for a square.")
        out.overrides["width"] = int(match[1])
        out.overrides["height"] = int(match[2] or match[1])
    elif flag.name == "lora":
        out.loras.append(lora_spec(value, "--lora NAME=WEIGHT, e.g. --lora pastel=0.8"))
    elif flag.name == "style":
        out.styles.append(value)
    elif flag.name == "sref":
        out.srefs.append(value)


def parse_ratio(value: str) -> tuple[float, float]:
    match = RATIO_RE.fullmatch(value.strip())
    if not match or float(match[1]) <= 0 or float(match[2]) <= 0:
        raise UserError(f"--ar {value}: write the aspect ratio as W:H, e.g. --ar 3:2 or --ar 16:9.")
    w, h = float(match[1]), float(match[2])
    if max(w / h, h / w) > MAX_RATIO:
        raise UserError(f"--ar {value} is too extreme; use ratios from 1:4 to 4:1.")
    return w, h


def size_for_ratio(ratio: tuple[float, float], native: int, multiple: int) -> tuple[int, int]:
    """Width and height with about the native area, each a multiple of `multiple`."""
    w, h = ratio
    width = (native * native * w / h) ** 0.5
    height = native * native / width
    return (max(multiple, round(width / multiple) * multiple), max(multiple, round(height / multiple) * multiple))


def _int(value: str, flag_text: str, expected: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise UserError(f"{flag_text!r}: expected {expected}.") from None


def _float(value: str, flag_text: str, expected: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise UserError(f"{flag_text!r}: expected {expected}.") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise UserError(f"{flag_text!r}: expected {expected}.")
    return number


def help_text(styles: list[str] = (), wildcards: list[str] = ()) -> str:
    """The /help reply: how to talk to the studio (with the server's saved styles and wildcards)."""
    rows = "\n".join(f"| `--{f.name} {f.value}`{''.join(f' / `--{a}`' for a in f.aliases)} | {f.help} |"
                     for f in FLAGS)
    return ("**How to use the studio.** Each message is a prompt and gets a picture back. Settings come from the "
            "panel on the right; flags at the end of a message change them for that message only:\n\n"
            "| flag | what it does |\n|---|---|\n" + rows + "\n\n"
            "Example: `a lighthouse at dusk, oil painting --ar 3:2 --steps 25 --seed 42 --no people`\n\n"
            "Prompt weights as in AUTOMATIC1111: `(red:1.3)`, `((red))`, `[red]`, `[cat:dog:0.5]` (cat, then dog from "
            "half the steps), `[red|blue]` (in turn), `BREAK`.\n\n"
            f"Styles (`--style NAME`): {', '.join(f'`{x}`' for x in styles) or 'none (add plugins/styles/NAME.toml)'}."
            f" Wildcards: {', '.join(f'`__{x}__`' for x in wildcards) or 'none (add plugins/wildcards/NAME.txt)'}."
            "\n\n"
            "Under the chat: **Reroll** (same settings, new seed), **Vary** (a close variation), **Reuse settings** "
            "(load them into the panel), **Use as control** (ControlNet unit 1), **Use as image prompt** act on the "
            "selected image: click one in the chat or the gallery, or the latest is used. Drop a PNG into the "
            "message box (or the 'Restore settings' box) to restore the settings it was made with. Every image "
            "downloads as a PNG "
            "that keeps its settings.\n\n"
            "Commands: `/save-style NAME` (the selected image as a style reference, for `--sref NAME`), "
            "`/forget-oldest N` (delete your N oldest kept images, e.g. when the server's quota is reached); "
            "for the server's admin: `/line`, `/stop-all`.")
