"""AUTOMATIC1111 "infotext": the `parameters` text that A1111, SD.Next, Fooocus, Civitai and image viewers read.

`infotext` writes it for one image (prompt with `<lora:name:weight>` tags, negative prompt, the `key: value` line);
`parse_infotext` reads it back from any of those tools (Fooocus' JSON scheme included) and `request_from_infotext`
maps it to a `Request`, A1111 sampler and schedule names to our schedulers. engine/images/metadata.py puts it in PNGs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from engine.request import SCHEDULERS, ControlUnit, LoraSpec, Request, UserError

VERSION = "studio"  # the `Version:` we write, so our own infotext is recognisable
# The reader rule shared by A1111-style tools: `key: value` pairs, values optionally JSON-quoted (see `param_pairs`).
KEY_RE = re.compile(r"\w[\w \-/]+")
# no leading-whitespace part: `[ \t]*<lora...` was quadratic on long runs of spaces (each start rescanned the run)
LORA_TAG_RE = re.compile(r"<lora:([^:<>]+)(?::([^:<>]*))?(?::[^<>]*)?>")
SIZE_RE = re.compile(r"\s*(\d+)\s*[x×*,]\s*(\d+)\s*")
# Canonical key order of the params line; other keys follow in insertion order, `Version` last.
KEY_ORDER = ("Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Model hash", "Model",
             "Denoising strength", "Lora hashes")

# Fooocus' JSON scheme uses k-diffusion names; mapped to A1111 names so one lookup serves both.
KDIFFUSION_SAMPLERS = {
    "euler": "Euler", "euler_ancestral": "Euler a", "heun": "Heun", "lms": "LMS", "ddim": "DDIM",
    "dpmpp_2m": "DPM++ 2M", "dpmpp_2m_sde": "DPM++ 2M SDE", "dpmpp_2m_sde_gpu": "DPM++ 2M SDE",
    "dpmpp_sde": "DPM++ SDE", "dpmpp_sde_gpu": "DPM++ SDE", "uni_pc": "UniPC", "uni_pc_bh2": "UniPC",
}
KDIFFUSION_SCHEDULES = {"karras": "Karras", "simple": "Simple", "normal": "Normal", "exponential": "Exponential",
                        "sgm_uniform": "SGM Uniform"}


# ---------------------------------------------------------------------------------------------- writing


def infotext(request: Request, seed: int, model_name: str, model_hash: str | None,
             extra: dict | None = None) -> str:
    """The A1111 `parameters` text for one image made from `request` with `seed`.

    `extra` adds keys or replaces ours (e.g. {"Precision": "bf16", "ControlNet 0": control_unit_text(...)});
    a value of None removes the key. "Lora hashes" may be a {name: hash} dict or a ready string.
    Settings left as None in `request` (not yet filled in by `check_request`) are left out.
    """
    params: dict[str, Any] = {}
    if request.steps is not None:
        params["Steps"] = request.steps
    if request.scheduler in SCHEDULERS:
        _, _, sampler, schedule = SCHEDULERS[request.scheduler]
        params["Sampler"], params["Schedule type"] = sampler, schedule
    if request.guidance is not None:
        params["CFG scale"] = _number(request.guidance)
    params["Seed"] = seed
    if request.width and request.height:
        params["Size"] = f"{request.width}x{request.height}"
    if model_hash:
        params["Model hash"] = model_hash
    params["Model"] = model_name
    if request.init_image is not None and request.strength is not None:  # an instruction edit has none
        params["Denoising strength"] = _number(request.strength)
    for i, unit in enumerate(request.controls):
        params[f"ControlNet {i}"] = control_unit_text(unit)
    params["Version"] = VERSION
    for key, value in (extra or {}).items():
        if not isinstance(key, str) or not KEY_RE.fullmatch(key):
            raise ValueError(f"infotext key {key!r} must be letters, digits, spaces, '-' or '/' (no ':' or ',').")
        if key == "Lora hashes" and isinstance(value, dict):
            value = ", ".join(f"{name}: {digest}" for name, digest in value.items())
        params[key] = value
    params = {k: v for k, v in params.items() if v is not None}
    order = [k for k in KEY_ORDER if k in params]
    order += [k for k in params if k not in KEY_ORDER and k != "Version"]
    order += ["Version"] if "Version" in params else []
    line = ", ".join(f"{key}: {_quote(params[key])}" for key in order)
    prompt = _prompt_with_lora_tags(request.prompt, request.loras)
    negative = f"\nNegative prompt: {request.negative}" if request.negative else ""
    return f"{prompt}{negative}\n{line}"


def control_unit_text(unit: ControlUnit, model: str | None = None, module: str | None = None) -> str:
    """One `ControlNet N` value in the A1111 ControlNet extension's style.

    `model` defaults to the unit's kind and `module` to its preprocessor ("auto" when the engine picks);
    the engine should pass the real ControlNet model and preprocessor names through `extra`.
    """
    parts = [f"Module: {module or unit.preprocessor}", f"Model: {model or unit.kind}",
             f"Weight: {float(unit.scale)}", f"Guidance Start: {float(unit.start)}",
             f"Guidance End: {float(unit.end)}"]
    if unit.kind == "edge" and (module or unit.preprocessor) in ("auto", "canny"):
        parts += [f"Threshold A: {unit.low}", f"Threshold B: {unit.high}"]
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------- reading


def parse_infotext(text: str) -> dict:
    """Parse A1111 / SD.Next / Fooocus `parameters` text.

    Returns {"prompt", "negative", **every key of the params line} with JSON-quoted values decoded (all
    values are strings). The last line counts as the params line only with at least 3 `key: value` pairs.
    Fooocus' JSON scheme is accepted too and mapped to the same A1111 keys.
    """
    text = text.replace("\r\n", "\n").strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: nested too deeply to be settings
            data = None
        if isinstance(data, dict):
            return _params_from_fooocus_json(data)
    lines = text.split("\n")
    params: dict[str, str] = {}
    pairs = param_pairs(lines[-1])
    if len(pairs) >= 3:
        lines.pop()
        params.update(pairs)
    prompt: list[str] = []
    negative: list[str] | None = None
    for line in lines:
        if negative is None and line.startswith("Negative prompt:"):
            negative = [line[len("Negative prompt:"):].lstrip()]
        elif negative is not None:
            negative.append(line)
        else:
            prompt.append(line)
    return {"prompt": "\n".join(prompt).strip(), "negative": "\n".join(negative or []).strip(), **params}


def param_pairs(line: str) -> list[tuple[str, str]]:
    """The `key: value` pairs of an A1111 params line, read in one pass: linear in the line's length whatever it
    holds (A1111's own regex backtracks quadratically on long texts without commas). A key is letters, digits,
    spaces, '-' and '/' before a ':'; the value is a JSON-quoted string or the text up to the next comma; a piece
    that is not a pair is skipped up to the next comma."""
    import json.decoder

    pairs, i, n = [], 0, len(line)
    unclosed_from = n + 1  # a quote opened at or after this index has no closing quote (see below)
    colon = -1
    while i < n:
        if colon < i:  # searched again only once passed: ", , , ... a: b" must not rescan to the far ':'
            colon = line.find(":", i)
        if colon == -1:
            break
        comma = line.find(",", i, colon)
        if comma != -1:  # no ':' before this comma: not a pair
            i = comma + 1
            continue
        key = line[i:colon].strip()
        j = colon + 1
        while j < n and line[j] in " \t":
            j += 1
        value, end = None, -1
        if j < n and line[j] == '"' and j < unclosed_from:
            try:
                value, end = json.decoder.scanstring(line, j + 1, False)
            except ValueError:
                # no closing quote from j; every later quote was escaped in that scan, so none closes either
                unclosed_from = j
        if value is not None and (end == n or line[end] == ","):
            i = end + 1
        else:  # unquoted (or a quote that does not end the value): up to the next comma
            stop = line.find(",", j)
            stop = n if stop == -1 else stop
            value, i = line[j:stop].strip(), stop + 1
        if KEY_RE.fullmatch(key):
            pairs.append((key, value))
    return pairs


def request_from_infotext(params: dict) -> Request:
    """Map parsed infotext (from `parse_infotext`) back to a `Request`.

    - `Model` becomes `request.model` as written (an A1111 checkpoint name may not exist here: the caller
      checks it against its models; `Model hash` stays in `params`).
    - Sampler + Schedule type become our scheduler name through `SCHEDULERS`; an old-style "DPM++ 2M Karras"
      sampler is split; a known sampler with an unknown schedule type takes the sampler's "Automatic" entry;
      an unknown sampler gives None (the model's default).
    - `<lora:name:weight>` tags are moved from the prompt to `request.loras` (Fooocus' `Lora weights` too).
    - Fooocus' `Raw prompt` / `Raw negative prompt` (before style expansion) win over the expanded prompt.
    - Not restored: count (always 1), init image and ControlNet units (their images are not in the PNG).
    """
    prompt = str(params.get("Raw prompt") or params.get("prompt") or "")
    negative = str(params.get("Raw negative prompt") or params.get("negative") or "")
    prompt, loras = take_lora_tags(prompt)
    if not loras and params.get("Lora weights"):
        loras = _parse_lora_weights(str(params["Lora weights"]))
    request = Request(prompt=prompt, negative=negative, loras=loras)
    if params.get("Model"):
        request.model = str(params["Model"])
    if "Steps" in params:
        request.steps = _parse_value(params, "Steps", int)
    if "CFG scale" in params:
        request.guidance = _parse_value(params, "CFG scale", float)
    if "Seed" in params:
        request.seed = _parse_value(params, "Seed", int)
    if "Size" in params:
        match = SIZE_RE.fullmatch(str(params["Size"]))
        if not match:
            raise UserError(f"The image's settings have an unreadable Size {params['Size']!r}; "
                            "expected width x height, e.g. 512x768.")
        request.width, request.height = int(match[1]), int(match[2])
    if "Denoising strength" in params:
        request.strength = _parse_value(params, "Denoising strength", float)
    request.scheduler = scheduler_from_a1111(params.get("Sampler"), params.get("Schedule type"))
    return request


def scheduler_from_a1111(sampler: str | None, schedule: str | None = None) -> str | None:
    """Our scheduler name for an A1111 sampler and schedule type, or None when we have no match."""
    if not sampler:
        return None
    sampler = sampler.strip()
    if not schedule and sampler.endswith(" Karras"):
        sampler, schedule = sampler[: -len(" Karras")], "Karras"
    schedule = (schedule or "Automatic").strip()
    for wanted in (schedule, "Automatic"):
        for name, (_, _, a1111_sampler, a1111_schedule) in SCHEDULERS.items():
            if a1111_sampler == sampler and a1111_schedule == wanted:
                return name
    return None


def describe_source(params: dict) -> str:
    """One line naming the tool that wrote `params`, e.g. "AUTOMATIC1111 parameters (model v1-5)"."""
    version, app = str(params.get("Version", "")), str(params.get("App", ""))
    if "sd.next" in app.lower():
        tool = "SD.Next parameters"
    elif version.lower().startswith("fooocus") or "Raw prompt" in params:
        tool = "Fooocus parameters"
    elif version == VERSION:
        tool = "our parameters text"
    else:
        tool = "AUTOMATIC1111 parameters"
    return f"{tool} (model {params['Model']})" if params.get("Model") else tool


# ---------------------------------------------------------------------------------------------- helpers


def _number(value: float) -> str:
    """7.0 -> "7", 0.75 -> "0.75" (how A1111 writes CFG scale and weights)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _quote(value: Any) -> str:
    text = str(value)
    if "," in text or ":" in text or "\n" in text or text.startswith('"'):
        return json.dumps(text, ensure_ascii=False)
    return text


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        try:
            value = json.loads(text)
        except ValueError:
            return text
        return value if isinstance(value, str) else text
    return text


def _prompt_with_lora_tags(prompt: str, loras: list[LoraSpec]) -> str:
    tags = []
    for lora in loras:
        name = lora.name if not any(c in lora.name for c in ":<>") else Path(lora.name).stem
        if f"<lora:{name}:" not in prompt and f"<lora:{name}>" not in prompt:
            tags.append(f"<lora:{name}:{_number(lora.weight)}>")
    return " ".join(part for part in [prompt, *tags] if part)


def take_lora_tags(prompt: str) -> tuple[str, list[LoraSpec]]:
    """Remove AUTOMATIC1111-style `<lora:name:weight>` tags from `prompt` (linear time) and return them as specs;
    the chat's inline tags and a PNG's prompt are read by this one function."""
    loras, kept, last = [], [], 0
    for match in LORA_TAG_RE.finditer(prompt):
        kept.append(prompt[last:match.start()].rstrip(" \t"))  # the tag and the blanks before it go
        last = match.end()
        weight = match[2]
        try:
            loras.append(LoraSpec(name=match[1].strip(), weight=float(weight) if weight else 1.0))
        except ValueError:
            raise UserError(f"The prompt has a LoRA tag with an unreadable weight: {match[0].strip()!r}. "
                            "Write it as <lora:name:0.8>.") from None
    if not loras:
        return prompt, []
    text = "".join(kept) + prompt[last:]
    text = re.sub(r",[ \t]*(?:,[ \t]*)+", ", ", text)  # "a, <lora:x:1>, b" leaves "a, , b"
    return text.strip(" \t\n,"), loras


def _parse_lora_weights(text: str) -> list[LoraSpec]:
    loras = []
    for item in text.split(", "):
        name, _, weight = item.rpartition(": ")
        try:
            loras.append(LoraSpec(name=name.strip(), weight=float(weight)))
        except ValueError:
            raise UserError(f"The image's settings have an unreadable Lora weights entry {item!r}.") from None
    return loras


def _parse_value(params: dict, key: str, kind: type) -> Any:
    text = str(params[key]).strip()
    try:
        return kind(text) if kind is float else int(text) if text.lstrip("-").isdigit() else int(float(text))
    except (ValueError, OverflowError):  # "1e999" is inf: no whole number
        raise UserError(f"The image's settings have an unreadable {key} value {text!r}; "
                        f"expected a {'whole ' if kind is int else ''}number.") from None


def _params_from_fooocus_json(data: dict) -> dict:
    params = {"prompt": str(data.get("prompt") or ""), "negative": str(data.get("negative_prompt") or "")}
    keys = {"steps": "Steps", "guidance_scale": "CFG scale", "seed": "Seed", "base_model": "Model",
            "base_model_hash": "Model hash", "version": "Version", "performance": "Performance",
            "sharpness": "Sharpness", "styles": "Styles"}
    for key, name in keys.items():
        if data.get(key) not in (None, "", "None"):
            params[name] = str(data[key])
    numbers = re.findall(r"\d+", str(data.get("resolution") or ""))
    if len(numbers) == 2:
        params["Size"] = f"{numbers[0]}x{numbers[1]}"
    if data.get("sampler"):
        params["Sampler"] = KDIFFUSION_SAMPLERS.get(str(data["sampler"]), str(data["sampler"]))
    if data.get("scheduler"):
        params["Schedule type"] = KDIFFUSION_SCHEDULES.get(str(data["scheduler"]), str(data["scheduler"]))
    loras = [x for x in data.get("loras") or [] if isinstance(x, (list, tuple)) and len(x) >= 2]
    if loras:
        params["Lora weights"] = ", ".join(f"{x[0]}: {x[1]}" for x in loras)
        if all(len(x) >= 3 for x in loras):
            params["Lora hashes"] = ", ".join(f"{x[0]}: {x[2]}" for x in loras)
    return params
