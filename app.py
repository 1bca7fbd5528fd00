"""Diffusion Studio: `python app.py` serves the chat; subcommands generate, list models/plugins and train.

Configuration enters here once (flags and environment) and is passed explicitly to the engine and UI.
Imports are lazy so that `generate` never pays for gradio, controlnet_aux or peft it does not use.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


def add_engine_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=os.environ.get("STUDIO_MODEL", "builtin"),
                   help="builtin, a Hub id, a diffusers folder or a .safetensors file (default: builtin)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--dtype", default="auto", help="auto, fp32, fp16, bf16")
    p.add_argument("--offload", default="auto", choices=("auto", "on", "off", "sequential"),
                   help="model CPU offload: auto turns it on when the GPU is too small; sequential moves layer by "
                        "layer (least GPU memory, slowest: Qwen-Image or FLUX.2 [dev] on a 24 GB GPU)")
    p.add_argument("--compile", default="off", choices=("on", "off"),
                   help="torch.compile the denoiser (regional where supported); pays off in long sessions")
    p.add_argument("--channels-last", default="auto", choices=("auto", "on", "off"),
                   help="channels_last memory format for the UNet (auto: on for CPU)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: the cores free now, from the load average)")
    p.add_argument("--plugins", action="append", default=None, metavar="DIR",
                   help="a folder of plugin manifests (repeatable; default: plugins/ and assets/plugins/)")
    p.add_argument("-v", "--verbose", action="store_true", help="log loading and timing details")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="app.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")

    serve = parser  # `python app.py [flags]` serves the UI
    add_engine_flags(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=7860)
    serve.add_argument("--share", action="store_true", help="public Gradio share link (use --auth with it)")
    serve.add_argument("--auth", action="append", default=[], metavar="USER:PASS",
                       help="an account that may sign in (repeatable; each user's chats and turns are their own)")
    serve.add_argument("--admin", action="append", default=[], metavar="NAME",
                       help="an account that sees the line (/line) and may stop anything (/stop-all, A1111 interrupt)")
    serve.add_argument("--auth-file", default=None, metavar="FILE",
                       help="accounts, one user:password a line (or hashed, as `app.py users add` writes)")
    serve.add_argument("--max-queue", type=int, default=16, help="waiting generations before 'busy'")
    serve.add_argument("--batch", type=int, default=1, metavar="N",
                       help="sample up to N waiting requests of the same settings (different users', prompts, seeds) "
                            "in one pipeline call: more images a second on a shared server; 1: each alone")
    serve.add_argument("--rate", type=int, default=0, metavar="N",
                       help="at most N generations a minute per user, through every door (0: no limit)")
    serve.add_argument("--max-per-user", type=int, default=0, metavar="N",
                       help="at most N waiting generations of one user (an account, a browser, an API caller); "
                            "0: no cap. The line takes users in turn either way")
    serve.add_argument("--quota", default="", metavar="N|SIZE",
                       help="kept images per user: a count (--quota 500) or a size (--quota 2GB). A user at it is told "
                            "before anything runs, with their oldest offered for deletion (/forget-oldest N)")
    serve.add_argument("--mcp", action="store_true", help="also serve MCP tools for agents at /gradio_api/mcp/")
    serve.add_argument("--api-token", default=os.environ.get("STUDIO_API_TOKEN"), metavar="TOKEN",
                       help="the APIs (A1111, OpenAI, MCP) also take 'Authorization: Bearer TOKEN'")
    serve.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                       help="generate on Ray Serve replicas: a local Ray, or join the cluster at ADDRESS")
    serve.add_argument("--replicas", type=int, default=2, help="with --ray: engine replicas (default 2)")
    serve.add_argument("--gpus-per-replica", type=float, default=None,
                       help="with --ray: GPUs each replica takes (default: 1 where CUDA is seen, else 0)")
    serve.add_argument("--max-work", type=float, default=None, metavar="MP_STEPS",
                       help="most work one request may ask for: megapixels x steps x images (default 256; 0: none)")
    serve.add_argument("--max-sessions", type=int, default=None, metavar="N",
                       help="tabs whose page state stays in memory, ~0.4 MB each; the oldest go first (default 2000)")
    serve.add_argument("--trusted-proxy", action="append", default=None, metavar="IP",
                       help="a reverse proxy whose X-Forwarded-For is believed (repeatable; default: none)")
    serve.add_argument("--outputs", default=None, metavar="DIR",
                       help="keep every image and conversation here (default: outputs/; none on a hosted Space)")

    gen = sub.add_parser("generate", help="generate images from the command line")
    add_engine_flags(gen)
    gen.add_argument("--prompt", default=None)
    gen.add_argument("--prompt-file", default=None, help="one prompt per line; --out is then a folder")
    gen.add_argument("--negative", default="")
    gen.add_argument("--steps", type=int, default=None)
    gen.add_argument("--guidance", type=float, default=None)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--width", type=int, default=None)
    gen.add_argument("--height", type=int, default=None)
    gen.add_argument("--scheduler", default=None)
    gen.add_argument("--count", type=int, default=1)
    gen.add_argument("--init", default=None, help="image-to-image from this image (an editing model: the image "
                                                  "it edits, with --prompt the instruction)")
    gen.add_argument("--image-prompt", action="append", default=[], metavar="IMG[,scale=S]",
                     help="a reference image the model follows beside the prompt (an IP-Adapter image prompt: its "
                          "colours, shapes, look), at scale S, 0-2 (default: the adapter's); repeatable")
    gen.add_argument("--sref", action="append", default=[], metavar="NAME",
                     help="a style reference saved in the chat (/save-style NAME) as the image prompt; repeatable")
    gen.add_argument("--style", action="append", default=[], metavar="NAME",
                     help="a saved style (plugins/styles/NAME.toml) around the prompt; repeatable")
    gen.add_argument("--ref", action="append", default=[], metavar="IMG",
                     help="editing models that combine images (Qwen-Image-Edit-2509, FLUX.2): one more image after "
                          "--init's, as image 2, 3, ... of the instruction (repeatable)")
    gen.add_argument("--strength", type=float, default=None,
                     help="how much of --init to redraw, 0.01-1 (default: 0.6; 1 with --mask or an outpaint)")
    gen.add_argument("--mask", default=None, help="inpaint: white = repaint, black = keep (the --init image's size)")
    gen.add_argument("--mask-blur", type=int, default=4, help="feather the mask's edge (pixels)")
    gen.add_argument("--masked-only", type=int, default=None, metavar="PADDING",
                     help="repaint only a crop around the mask (with this margin) at the model's full size")
    gen.add_argument("--outpaint", default=None, metavar="SIDES",
                     help="extend --init: left=64,top=32,right=..,bottom=..")
    gen.add_argument("--zoom-out", type=float, default=None, help="extend --init on every side: 1.5 = 1.5x larger")
    gen.add_argument("--pan", choices=("left", "right", "up", "down"), default=None,
                     help="extend --init by half its size on one side")
    gen.add_argument("--upscale", type=float, default=None,
                     help="F times larger: --init that image, else the generated one (hires fix)")
    gen.add_argument("--hires-strength", type=float, default=0.35, help="the upscale's refining pass (0: resize)")
    gen.add_argument("--upscaler", default=None, help="an upscaler plugin for --upscale (default: Lanczos)")
    gen.add_argument("--control", action="append", default=[],
                     help="KIND=IMAGE[,pre=NAME][,scale=S][,start=A][,end=B] (repeatable)")
    gen.add_argument("--lora", action="append", default=[], help="NAME=WEIGHT (repeatable)")
    gen.add_argument("--out", default="out.png")
    gen.add_argument("--outputs", default=None, metavar="DIR",
                     help="also keep every image in this library folder (default: outputs/; none: keep nothing)")

    mod = sub.add_parser("models", help="list known, cached and loadable models")
    mod.add_argument("--json", action="store_true")
    mod.add_argument("--download", metavar="HUB_ID", help="fetch a Hub model's pipeline files into the cache")

    lib = sub.add_parser("library", help="search kept images, import a folder of PNGs, or re-index outputs/")
    lib.add_argument("words", nargs="*", help="[search] WORDS of the prompt | import FOLDER | sync")
    lib.add_argument("--model", dest="model_filter", default="", help="search: only this model (part of its name)")
    lib.add_argument("--lora", dest="lora_filter", default="", help="search: only images with this LoRA")
    lib.add_argument("--limit", type=int, default=20)
    lib.add_argument("--json", action="store_true")
    lib.add_argument("--outputs", default=None, metavar="DIR", help="the library folder (default: outputs/)")

    plug = sub.add_parser("plugins", help="list plugins with their family and status")
    plug.add_argument("--json", action="store_true")
    plug.add_argument("--plugins", action="append", default=None, metavar="DIR",
                      help="a folder of plugin manifests (repeatable; default: plugins/ and assets/plugins/)")

    train = sub.add_parser("train", help="train the built-in model (and its ControlNets/LoRAs)")
    train.add_argument("what", choices=("builtin", "controlnets", "loras", "fast", "image-prompt", "smoke"))
    train.add_argument("--out", default="assets/builtin")
    train.add_argument("--work", default="runs/builtin", help="checkpoints to resume from")
    train.add_argument("--vae-steps", type=int, default=None)
    train.add_argument("--decoder-steps", type=int, default=None)
    train.add_argument("--unet-steps", type=int, default=None)
    train.add_argument("--threads", type=int, default=1)
    train.add_argument("--stage", choices=("all", "vae", "decoder", "unet", "pipeline"), default="all",
                       help="builtin: one stage only (decoder and unet can run at once, each after vae)")
    train.add_argument("--kind", choices=("edge", "depth", "pose"), help="controlnets: only this one")
    train.add_argument("--device", default="cpu", help="cpu or cuda")
    train.add_argument("--minutes", type=float, default=None,
                       help="time budget instead of step counts (builtin: split over its stages)")
    train.add_argument("--batch", type=int, default=None, help="UNet / ControlNet batch size")
    train.add_argument("--vae-batch", type=int, default=None)
    train.add_argument("--pool", type=int, default=None, help="scenes pre-rendered for the UNet stage")
    train.add_argument("--init", default=None, help="builtin: continue the UNet stage from this pipeline folder; "
                       "controlnets: continue DIR/controlnet-KIND (e.g. assets); image-prompt: start from "
                       "this adapter checkpoint (runs/image_prompt/image_prompt.ckpt)")
    train.add_argument("--unet-lr", type=float, default=None, help="learning rate (UNet stage, or a ControlNet)")
    train.add_argument("--workers", type=int, default=0, help="processes rendering batches ahead of the trainer")
    train.add_argument("--sides", type=lambda v: tuple(int(x) for x in v.split(",")), default=None,
                       help="builtin unet / fast: canvas sides to train on, e.g. 48,64,96,128 (multi-aspect)")
    train.add_argument("--square-share", type=float, default=None, help="share of the batches kept at 64x64")
    train.add_argument("--pairs", type=int, default=None, help="fast: teacher images to distil from")

    users = sub.add_parser("users", help="add an account to an auth file (the password is stored hashed), or give a "
                                         "user an API token (`users token NAME`, shown once, stored hashed)")
    users.add_argument("action", choices=("add", "token"))
    users.add_argument("name")
    users.add_argument("--file", default="users.txt", help="the auth file (default users.txt); serve with "
                                                           "--auth-file FILE")
    users.add_argument("--password", default=None, help="the password (default: asked for, not echoed)")

    lora = sub.add_parser("train-lora", help="train a LoRA plugin from a folder of captioned images")
    lora.add_argument("folder", help="images with a .txt caption beside each (same name)")
    lora.add_argument("--name", required=True)
    lora.add_argument("--model", default="builtin")
    lora.add_argument("--steps", type=int, default=600)
    lora.add_argument("--rank", type=int, default=4)
    lora.add_argument("--trigger", default="")
    lora.add_argument("--out", default="plugins")
    return parser


def engine_config(args, local_paths: bool = True):
    """The one EngineConfig of this process, from the command line (and Hugging Face's own HF_HUB_OFFLINE)."""
    from engine.config import DEFAULT_PLUGIN_DIRS, EngineConfig
    from engine.sources.network import decide_offline
    from engine.threads import choose_threads

    offline, why = decide_offline()  # no network: fail fast with our message instead of 25 s of Hub retries
    if offline:  # for the libraries that ask the Hub themselves (controlnet_aux, transformers' pipelines)
        os.environ["HF_HUB_OFFLINE"] = "1"
    # may users name files and folders on this machine? Yes from the CLI; when serving, only on loopback, unshared
    threads, told = choose_threads(getattr(args, "threads", None))  # set when the engine starts, not before
    if args.command is None:  # the server says it at start; a CLI run keeps its output to results
        print(f"CPU work: {told}.", flush=True)
    logging.getLogger("app").info("CPU work: %s", told)
    flag = lambda name, default: getattr(args, name, None) or default  # noqa: E731 (models/plugins lack some)
    return EngineConfig(device=flag("device", "auto"), dtype=flag("dtype", "auto"), offload=flag("offload", "auto"),
                        compile=flag("compile", "off"), channels_last=flag("channels_last", "auto"),
                        plugin_dirs=tuple(flag("plugins", DEFAULT_PLUGIN_DIRS)), offline=offline,
                        offline_reason=why, local_paths=local_paths, quiet_loading=not flag("verbose", False),
                        threads=threads)


def main(argv: list[str] | None = None) -> int:
    from engine import malloc

    malloc.tune()  # two glibc arenas: a long-running server's memory stays flat (engine/malloc.py)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    if not getattr(args, "verbose", False):  # keep the terminal to results and errors (downloads still show)
        os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from engine.request import UserError

    try:
        from cli import commands

        command = args.command or "serve"
        if command == "serve":  # the composer: engine, service, page and APIs from one ServeConfig
            import serving

            serve_config = serving.ServeConfig.from_args(args)
            serving.check_extras(serve_config)  # before anything loads: a missing extra says its install
            from store.library import open_library

            library = open_library(serve_config.outputs, serve_config.on_space)
            if library.enabled:
                print(f"Keeping images and chats in {library.root} (--outputs none keeps nothing).", flush=True)
            return serving.serve(serve_config, engine_config(args, local_paths=serve_config.loopback), library)
        config = None if command.startswith("train") or command in ("library", "users") else engine_config(args)
        return commands.HANDLERS[command](args, config)
    except UserError as e:  # the CLI's user runs the app: the operator's advice too
        print(f"error: {e.for_operator()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
