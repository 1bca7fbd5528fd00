"""The command-line subcommands of app.py: generate, models, plugins, train, and serving the UI."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from engine.request import ControlUnit, ImagePrompt, Request, UserError
from studio.jobs import keep_all
from studio.parse import image_prompt_spec, lora_spec, pan_borders, zoom_borders
from studio.requests import make_request


def _quiet_loading(quiet: bool = True) -> None:
    """No "Loading pipeline components" bars for local loads (Hub downloads keep theirs), unless --verbose."""
    if quiet:
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()


def _engine(config):
    from engine.engine import Engine

    _quiet_loading(config.quiet_loading)
    return Engine(config)


def parse_control(text: str) -> ControlUnit:
    """`KIND=IMAGE[,pre=NAME][,scale=S][,start=A][,end=B][,low=L][,high=H]` -> ControlUnit."""
    head, *opts = text.split(",")
    if "=" not in head:
        raise UserError(f"--control {text!r}: expected KIND=IMAGE, e.g. --control edge=photo.jpg,scale=0.8")
    kind, image = head.split("=", 1)
    unit = ControlUnit(kind=kind.strip(), image=image.strip())
    names = {"pre": "preprocessor", "preprocessor": "preprocessor", "scale": "scale", "start": "start", "end": "end",
             "low": "low", "high": "high"}
    for opt in opts:
        key, _, value = opt.partition("=")
        key = key.strip()
        if key not in names or not value:
            raise UserError(f"--control option {opt!r} is not understood; use pre=NAME, scale=S, start=A, end=B, "
                            "low=L, high=H.")
        field = names[key]
        try:
            setattr(unit, field, value.strip() if field == "preprocessor" else
                    (int(value) if field in ("low", "high") else float(value)))
        except ValueError:
            raise UserError(f"--control {key}={value!r} must be a number.") from None
    return unit


def outpaint_borders(args) -> tuple[int, int, int, int] | None:
    """--outpaint left=64,top=32 / --zoom-out 1.5 / --pan left as (left, top, right, bottom) pixels."""
    given = [x for x in ("outpaint", "zoom_out", "pan") if getattr(args, x) is not None]
    if len(given) > 1:
        flags = ", ".join("--" + x.replace("_", "-") for x in given)
        raise UserError(f"Give one of --outpaint, --zoom-out and --pan (got {flags}).")
    if not given:
        return None
    if args.outpaint is not None:
        sides = {"left": 0, "top": 0, "right": 0, "bottom": 0}
        for part in args.outpaint.split(","):
            key, _, value = part.partition("=")
            if key.strip() not in sides or not value.strip().isdigit():
                raise UserError(f"--outpaint {args.outpaint!r}: write sides as left=64,top=32 (pixels; sides are "
                                "left, top, right, bottom).")
            sides[key.strip()] = int(value)
        return tuple(sides.values())
    if not args.init:
        raise UserError("--zoom-out and --pan extend an image: give it with --init IMG.")
    from engine.images.loading import open_image

    size = open_image(args.init, "The init image").size
    if args.zoom_out is not None:
        return zoom_borders(size, args.zoom_out)
    return pan_borders(size, args.pan)


def cmd_generate(args, config) -> int:
    library = library_for(args)
    if bool(args.prompt) == bool(args.prompt_file):
        raise UserError("Give either --prompt \"...\" or --prompt-file FILE (one prompt per line).")
    if args.init and not Path(args.init).is_file():
        raise UserError(f"--init {args.init}: no such file.")
    if args.mask and not Path(args.mask).is_file():
        raise UserError(f"--mask {args.mask}: no such file.")
    for ref in args.ref:
        if not Path(ref).is_file():
            raise UserError(f"--ref {ref}: no such file.")
    image_prompts = [image_prompt_spec(x) for x in args.image_prompt]
    for name in args.sref:  # style references saved in the chat, kept in the library of this machine
        path = library.style_ref(None, name)
        if path is None:
            have = ", ".join(library.style_refs(None)) or "none yet"
            where = library.root or "the library"
            raise UserError(f"--sref {name}: there is no style reference of that name in {where} (save one in the "
                            f"chat with /save-style {name}). Saved: {have}.")
        image_prompts.append(ImagePrompt(path))
    for spec in image_prompts:
        if not Path(spec.image).is_file():
            raise UserError(f"--image-prompt {spec.image}: no such file.")
    base = make_request(args.prompt or "", args.model, negative=args.negative, steps=args.steps,
                        guidance=args.guidance, seed=args.seed, width=args.width, height=args.height,
                        scheduler=args.scheduler, count=args.count, init_image=args.init, strength=args.strength,
                        controls=[parse_control(c) for c in args.control], loras=[lora_spec(x) for x in args.lora],
                        mask=args.mask, mask_blur=args.mask_blur, inpaint_padding=args.masked_only,
                        outpaint=outpaint_borders(args), upscale=args.upscale, hires_strength=args.hires_strength,
                        upscaler=args.upscaler, references=list(args.ref), image_prompts=image_prompts,
                        styles=list(args.style))
    jobs: list[tuple[Request, Path]] = []
    if args.prompt_file:
        pf = Path(args.prompt_file)
        if not pf.is_file():
            raise UserError(f"--prompt-file {pf}: no such file.")
        lines = [ln.strip() for ln in pf.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        if not lines:
            raise UserError(f"{pf} has no prompts (one per line).")
        out_dir = Path(args.out if args.out != "out.png" else "out")
        if out_dir.suffix:
            raise UserError(f"With --prompt-file, --out is a folder (got {out_dir}). Try --out images/")
        out_dir.mkdir(parents=True, exist_ok=True)
        seed = args.seed if args.seed is not None else int.from_bytes(__import__("os").urandom(4), "little")
        for i, line in enumerate(lines):
            r = Request(**{**base.__dict__, "prompt": line, "seed": (seed + i) % 2**32})
            jobs.append((r, out_dir / f"{i:04d}.png"))
    else:
        jobs.append((base, Path(args.out)))
    _check_early(config, jobs[0][0], [out for _, out in jobs])
    engine = _engine(config)
    for request, out in jobs:
        t0 = time.perf_counter()
        result = engine.generate(request)
        paths = _output_paths(out, len(result.images))
        for i, path in enumerate(paths):
            result.save_png(i, path)
        for i, cmap in enumerate(result.control_maps):
            cmap.save(out.with_name(f"{out.stem}.control{i}.png"))
        print(f"{', '.join(map(str, paths))}  ({result.settings_line()}, total {time.perf_counter() - t0:.1f}s)")
        for note in result.notes + _keep(library, result, request):
            print(f"note: {note.for_operator() if hasattr(note, 'for_operator') else note}")
    return 0


def _keep(library, result, request) -> list[str]:
    """Keep the images in the library too (the --out files are the user's; these are the studio's record)."""
    if library is None or not library.enabled:
        return []
    kept, refused = keep_all(library, result, "cli", init_image=_init_image(request.init_image))
    if refused:
        return [refused]
    return [f"kept in the library as {kept[0].path}" + (f" (+{len(kept) - 1} more)" if len(kept) > 1 else "")]


def _init_image(path):
    if path is None:
        return None
    from engine.images.loading import load_image

    return load_image(path, "The init image")


def library_for(args):
    """The library of kept images: --outputs DIR, none to keep nothing (the default on a hosted Space)."""
    import os

    from store.library import open_library

    return open_library(getattr(args, "outputs", None), on_space=bool(os.environ.get("SPACE_ID")))


def cmd_library(args, config) -> int:
    """`app.py library`: search the kept images, import a folder of other tools' PNGs, or re-index outputs."""
    library = library_for(args)
    if not library.enabled:
        raise UserError("--outputs none keeps no library. Give --outputs DIR (default: outputs/).")
    words = list(args.words)
    action = words.pop(0) if words and words[0] in ("search", "import", "sync") else "search"
    args.text = " ".join(words)
    if action == "import":
        if not args.text:
            raise UserError("library import needs a folder, e.g. `python app.py library import ~/webui/outputs`.")
        done = library.import_folder(Path(args.text))
        print(f"indexed {done.added} image(s) from {args.text}"
              + (f" ({done.unreadable} without readable settings)" if done.unreadable else "")
              + (f"; left out {done.not_images} file(s) that are not images" if done.not_images else ""))
        return 0
    if action == "sync":
        print(f"indexed {library.sync()} kept image(s) that were not in the library")
        return 0
    t0 = time.perf_counter()
    entries, total = library.search(args.text or "", model=args.model_filter or "", lora=args.lora_filter or "",
                                    limit=args.limit)
    if args.json:
        print(json.dumps([e.__dict__ for e in entries], indent=2))
        return 0
    for e in entries:
        print(f"{e.when}  {e.path}  seed {e.seed}  {e.model}  {e.prompt[:80]!r}")
    print(f"{total} match(es), {len(entries)} shown ({(time.perf_counter() - t0) * 1000:.0f} ms)")
    return 0


def _check_early(config, base: Request, outs: list[Path]) -> None:
    """Every mistake that needs no model answers at once, before torch loads and the model with it (seconds)."""
    from engine.plugins.manifests import find_lora, load_manifests
    from engine.request import check_request
    from engine.sources.hub import Hub
    from engine.sources.resolve import Resolver

    source = Resolver(Hub(config.offline, config.offline_reason), config.local_paths).resolve(base.model)
    check_request(base, source.family, source.variant)
    from engine.images.loading import open_image

    for flag, path in (("--init", base.init_image), ("--mask", base.mask), *(("--ref", r) for r in base.references),
                       *(("--image-prompt", p.image) for p in base.image_prompts)):
        if path is not None:  # not an image, or too large: from its header, before any work
            open_image(path, f"{flag} {Path(path).name}")
    if base.upscaler:
        from engine.upscalers import Upscalers

        Upscalers("cpu").find(base.upscaler, load_manifests(list(config.plugin_dirs)))
    for i, unit in enumerate(base.controls, 1):
        if not Path(unit.image).is_file():
            raise UserError(f"--control {unit.kind}={unit.image}: no such file (control unit {i}).")
    if base.loras:
        catalog = {m.name: m for m in load_manifests(list(config.plugin_dirs))}
        for spec in base.loras:
            find_lora(spec.name, catalog, source.family, config.local_paths)
    for out in outs:
        folder = out.parent if out.suffix else out
        if out.suffix and not folder.is_dir():
            raise UserError(f"--out {out}: the folder {folder} does not exist. Create it first, or pick another "
                            "path.")


def _output_paths(out: Path, n: int) -> list[Path]:
    if n == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i}{out.suffix or '.png'}") for i in range(n)]


def cmd_models(args, config) -> int:
    from engine.sources.hub import Hub, cached_hub_models
    from engine.sources.resolve import KNOWN_MODELS, Resolver

    hub = Hub(config.offline, config.offline_reason)
    if args.download:
        path = hub.download(args.download)
        print(f"{args.download} is cached at {path}")
        return 0
    from engine.families import FAMILIES_BY_NAME

    def row(model: str, family: str, variant: str, status: str, where: str) -> dict:
        kin = FAMILIES_BY_NAME[family]
        return {"model": model, "family": family, "label": kin.label, "variant": variant, "status": status,
                "where": where, "can": kin.abilities(variant)}

    rows = []
    try:
        builtin = Resolver(hub).resolve("builtin")
        rows.append(row("builtin", "builtin", "", "ready", builtin.location))
    except UserError as e:
        rows.append(row("builtin", "builtin", "", "missing", str(e)))
    cached = dict(cached_hub_models())
    for repo, family in KNOWN_MODELS.items():
        if repo != "builtin":
            rows.append(row(repo, family, FAMILIES_BY_NAME[family].hub_ids[repo],
                            "cached" if repo in cached else "download on use", "hub"))
    for repo, family in cached.items():
        if repo not in KNOWN_MODELS:
            rows.append(row(repo, family, "", "cached", "hub"))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    wide = max(len(r["label"]) for r in rows) + 1
    print(f"{'model':44} {'family':{wide}} {'status':16} can")
    for r in rows:
        print(f"{r['model']:44} {r['label']:{wide}} {r['status']:16} {abilities_text(r['can'])}")
    print("\nAlso: any Hub id, a diffusers folder, or a .safetensors checkpoint via --model. `models --json` lists "
          "the same as JSON.")
    return 0


def abilities_text(can: dict) -> str:
    """'text, image, inpaint, control, LoRA' or 'edit (3 images), inpaint, LoRA' for the models table."""
    words = [w for w, key in (("text", "txt2img"), ("image", "img2img")) if can[key]]
    if can["edit_images"]:
        n = can["edit_images"]
        words.append(f"edit ({n} image{'s' if n > 1 else ''})")
    words += [w for w, key in (("inpaint", "inpaint"), ("control", "controlnet"), ("LoRA", "lora")) if can[key]]
    return ", ".join(words)


def cmd_users(args, config=None) -> int:
    """`app.py users add NAME`: write the account into the auth file, its password hashed. `users token NAME`: a
    new API token for that user (printed once; the file keeps its hash)."""
    import getpass

    from studio.accounts import add_token, add_user

    if args.action == "token":
        token = add_token(args.file, args.name)
        print(f"API token for {args.name} (shown only now; {args.file} keeps its hash):\n\n  {token}\n\n"
              f"Programs send it as 'Authorization: Bearer {token[:6]}...' (the OpenAI client: api_key=...) and "
              f"are {args.name} on every API door. Revoke it by deleting its line in {args.file}.")
        return 0
    password = args.password
    if password is None:
        password = getpass.getpass(f"Password for {args.name}: ")
        if getpass.getpass("Again: ") != password:
            raise UserError("The two passwords differ; nothing was written.")
    replaced = add_user(args.file, args.name, password)
    print(f"{'Changed the password of' if replaced else 'Added'} {args.name} in {args.file}. Serve with "
          f"`python app.py --auth-file {args.file}`.")
    return 0


def cmd_plugins(args, config) -> int:
    from engine.plugins.manager import PluginManager

    rows = PluginManager(list(config.plugin_dirs)).listing()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':24} {'kind':11} {'family':8} {'weight':>6}  status")
    for r in rows:
        print(f"{r['name']:24} {r['kind']:11} {r['family']:8} {r['weight']:>6}  {r['status']}")
    return 0


def cmd_train(args, config=None) -> int:
    import logging

    _quiet_loading()
    logging.getLogger().setLevel(logging.INFO)
    from engine.train import run

    return run.main(args)


def cmd_train_lora(args, config=None) -> int:
    import logging

    logging.getLogger().setLevel(logging.INFO)
    from engine.train import lora

    path = lora.train_lora_from_folder(Path(args.folder), args.name, args.model, args.steps, args.rank, args.trigger,
                                       Path(args.out))
    print(f"LoRA plugin written: {path}")
    return 0


HANDLERS = {"users": cmd_users,
            "generate": cmd_generate, "library": cmd_library, "models": cmd_models, "plugins": cmd_plugins,
            "train": cmd_train, "train-lora": cmd_train_lora}  # serving is the composer's (serving.py)

if __name__ == "__main__":  # pragma: no cover
    sys.exit("run through app.py")
