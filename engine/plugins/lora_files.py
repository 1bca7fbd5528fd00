"""LoRA file checks: what a .safetensors LoRA is, read before it touches a model.

The header is read without loading tensors; the family (engine.families, SD2, the built-in model) is told from
tensor names and widths; `check_lora_file` refuses pickles, non-LoRAs and LoRAs of another family, and
`match_layers` converts the keys the way diffusers will and compares every target layer with the model's own.
`check_lora` runs both; engine/plugins/manager.py loads what passes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..families import FAMILIES_BY_NAME, families_of_lora_keys
from ..request import UserError
from ..sources import resolve
from ..sources.checkpoint import family_of_keys, read_header, refuse_pickle

FAMILY_NAMES = {"sd2": "SD 2.x", **{f.name: f.label for f in FAMILIES_BY_NAME.values()},
                "builtin": "the built-in model", "sd15": "SD 1.5", "sdxl": "SDXL"}
# cross-attention width (the input of attn2.to_k) of each UNet family; the built-in model's is read from its config
CROSS_WIDTHS = {768: "sd15", 1024: "sd2", 2048: "sdxl"}
LORA_A = (".lora_A.", ".lora_down.", ".lora.down.", "_lora.down.", ".lora_linear_layer.down.")

def builtin_cross_width() -> int | None:
    """The built-in UNet's cross-attention width, from its config (None while the model is not there)."""
    try:
        return int(json.loads((resolve.BUILTIN_DIR / "unet" / "config.json").read_text())["cross_attention_dim"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def detect_lora_family(shapes: dict[str, list[int]]) -> str | None:
    """The family a LoRA was most likely made for (the first of `lora_families`); None if unsure."""
    fits = lora_families(shapes)
    return fits[0] if fits else None


def lora_families(shapes: dict[str, list[int]]) -> tuple[str, ...]:
    """The families a LoRA fits, from its tensor names and shapes (kohya or diffusers naming); () if unsure.

    Transformer LoRAs by their layers' names (engine.families `lora_keys`: Flux's double/single blocks, which
    Chroma shares; Qwen-Image's img_mod/txt_mlp; FLUX.2's fused single-block projection; SD3's joint blocks); a
    `transformer.` LoRA of none of them (SD3 and Flux double blocks are named alike) is left to the layer check.
    UNet LoRAs are told apart by the width of the cross-attention key/value input: 768 SD1.5, 1024 SD2, 2048 SDXL,
    the built-in's own.
    """
    keys = list(shapes)
    fits = families_of_lora_keys(keys)
    if fits:
        return fits
    if any(k.startswith("transformer.") for k in keys):
        return ()
    found = _unet_family(shapes)
    return (found,) if found else ()


def _unet_family(shapes: dict[str, list[int]]) -> str | None:
    keys = list(shapes)
    widths = dict(CROSS_WIDTHS)
    builtin = builtin_cross_width()
    if builtin:
        widths[builtin] = "builtin"
    for k, shape in shapes.items():
        if re.search(r"attn2[._](?:processor[._])?to_[kv]", k) and any(s in k for s in LORA_A) and len(shape) == 2:
            return widths.get(shape[1])
    if any(k.startswith(("text_encoder_2.", "lora_te2_")) for k in keys):
        return "sdxl"
    for k, shape in shapes.items():  # text-encoder-only LoRA (768 wide fits SD1.5 and SDXL's first encoder alike)
        if re.search(r"(?:self_attn|mlp)[._]", k) and any(s in k for s in LORA_A) and len(shape) == 2:
            return {1024: "sd2"}.get(shape[1]) or ("builtin" if shape[1] == builtin else None)
    return None


@dataclass
class LoraCheck:
    """What the checks found: the LoRA layers per pipeline component, and layers that match nothing (ignored)."""

    layers: dict[str, int]
    ignored: list[str]



def check_lora_file(path: Path, family: str, declared: str, label: str) -> None:
    """What the file alone tells (format, LoRA layers, family) against the current model's `family` and the
    manifest's `declared` one. Raises UserError naming `label` (the plugin and its file) and the reason."""
    refuse_pickle(path, "plugin", label)
    if path.suffix.lower() != ".safetensors":
        raise UserError(f"{label}: LoRAs are loaded only from .safetensors files.")
    if not Path(path).is_file():  # a FIFO would make the header read wait forever, a device read without end
        raise UserError(f"{label}: not a regular file (a FIFO, a device or a folder). A LoRA is a .safetensors "
                        "file; put the file itself there.")
    shapes = read_header(path, label)
    if not any("lora" in k.lower() for k in shapes):
        kind = family_of_keys(shapes)
        hint = f" It looks like a full {FAMILY_NAMES.get(kind, kind)} checkpoint: use it with --model." if kind else ""
        raise UserError(f"{label}: this is not a LoRA (none of its {len(shapes)} tensors is a LoRA layer).{hint}")
    fits = lora_families(shapes)
    if fits and declared not in ("unknown", *fits):
        raise UserError(f"{label}: the manifest says it is for {FAMILY_NAMES[declared]}, but its tensors are those of "
                        f"a {_names(fits)} LoRA. Fix the manifest's 'family'.")
    made_for = (declared,) if declared in fits else fits or ((declared,) if declared != "unknown" else ())
    if made_for and family not in made_for:
        raise UserError(f"{label}: made for {_names(made_for)}, but the current model is {FAMILY_NAMES[family]}. "
                        f"Pick a {_names(made_for)} model, or a LoRA made for {FAMILY_NAMES[family]}.")


def _names(families: tuple[str, ...]) -> str:
    names = [FAMILY_NAMES.get(f, f) for f in families]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def match_layers(path: Path, pipe, label: str) -> LoraCheck:
    """Convert the file's keys the way diffusers will (kohya and older formats included) and compare every target
    layer with the model's own modules: missing layers and shape mismatches are found here, not inside diffusers."""
    import diffusers
    import torch
    from diffusers.utils.state_dict_utils import (
        convert_state_dict_to_diffusers,
        convert_state_dict_to_peft,
        convert_unet_state_dict_to_peft,
    )

    kwargs = {"use_safetensors": True, "return_lora_metadata": True}
    if getattr(pipe, "unet", None) is not None:
        kwargs["unet_config"] = pipe.unet.config  # SDXL kohya files name blocks the SGM way
    try:
        state = type(pipe).lora_state_dict(str(path), **kwargs)
    except Exception as e:  # any failure of diffusers' converters
        raise UserError(f"{label}: diffusers {diffusers.__version__} cannot read this LoRA's format "
                        f"({first_line(e)}). Kohya/Civitai LoRAs load as far as diffusers converts them; LyCORIS "
                        "(LoHa/LoKr) and some trainer-specific layouts do not. Try a diffusers or kohya LoRA "
                        "export.") from None
    state = state[0] if isinstance(state, tuple) else state
    layers, ignored, total = {}, [], 0
    claimed: set[str] = set()
    for name in pipe._lora_loadable_modules:
        model = getattr(pipe, name, None)
        part = {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")}
        claimed |= {f"{name}.{k}" for k in part}
        if model is None or not part:
            continue
        try:
            if isinstance(model, diffusers.ModelMixin):
                if "lora_A" not in next(iter(part)):
                    part = convert_unet_state_dict_to_peft(part)
            else:  # a transformers text encoder
                part = convert_state_dict_to_peft(convert_state_dict_to_diffusers(part))
                if not hasattr(model, "text_model"):  # CLIP is flattened in transformers 5
                    part = {k.removeprefix("text_model."): v for k, v in part.items()}
        except Exception as e:
            raise UserError(f"{label}: diffusers {diffusers.__version__} cannot convert this LoRA's {name} layers "
                            f"({first_line(e)}). Re-export it in diffusers or kohya format.") from None
        modules = dict(model.named_modules())
        matched = 0
        for key, tensor in part.items():
            if ".lora_A." not in key:
                continue
            total += 1
            module_name = key.split(".lora_A.")[0]
            module = modules.get(module_name)
            if module is None:
                ignored.append(f"{name}.{module_name}")
                continue
            base = getattr(module, "base_layer", module)
            b = part.get(key.replace(".lora_A.", ".lora_B."))
            want = None
            if isinstance(base, torch.nn.Linear):
                want = (base.in_features, base.out_features)
            elif isinstance(base, torch.nn.Conv2d):
                want = (base.in_channels, base.out_channels)
            got = (tensor.shape[1] if tensor.ndim > 1 else None, b.shape[0] if b is not None else None)
            if want is not None and got != want:
                raise UserError(f"{label}: its layer {name}.{module_name} is {got[0]}->{got[1]} wide, the model's is "
                                f"{want[0]}->{want[1]}. The LoRA was made for a different model (another family or "
                                "size).")
            matched += 1
        if matched:
            layers[name] = matched
    stray = [k for k in state if k not in claimed]
    if not layers:
        example = (ignored or stray or ["?"])[0]
        raise UserError(f"{label}: none of its {total or len(state)} LoRA layers match anything in this model (e.g. "
                        f"{example!r}), so it would do nothing. It was made for another model.")
    ignored += sorted({k.rsplit(".lora", 1)[0] for k in stray})
    return LoraCheck(layers, ignored)


def check_lora(path: Path, pipe, family: str, declared: str, label: str) -> LoraCheck:
    """Everything we can know before touching `pipe`: format, family, and that every target layer exists with the
    LoRA's shapes. Raises UserError naming `label` (the plugin and its file) and the reason."""
    check_lora_file(path, family, declared, label)
    return match_layers(path, pipe, label)


def first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
