"""Engine overhead: Engine.generate vs the same diffusers pipeline called directly, and app.py vs a plain script.

    python benchmarks/bench_engine.py --model builtin               # (a) in-process and (b) whole-process
    python benchmarks/bench_engine.py --model builtin --builtin-variants   # + (c) fp32/bf16/channels_last/compile
    python benchmarks/bench_engine.py --model /tmp/tiny-sd15 --size 64 --steps 10 --runs 3 --no-write   # a trial

(a) The engine's pipeline is called directly with the engine's own settings (seed, steps, guidance, size, the same
scheduler class and config); both sides alternate in one process and their images must be identical.
(b) `python app.py generate` and a plain diffusers script (written to a temp file) run as alternating subprocesses.
(c) Latency of one image at the model's defaults with variants of the UNet/precision, each checked against fp32.
"""

from __future__ import annotations

import contextlib
import copy
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import common
from common import med, ms, table, timed

PROMPT = "a big red circle on the left, blue background"
SEED = 1234

PLAIN_SCRIPT = '''import sys
import diffusers
import torch

torch.set_num_threads({threads})
pipe = diffusers.StableDiffusionPipeline.from_pretrained({folder!r}, use_safetensors=True)
pipe.scheduler = diffusers.{scheduler}.from_config(pipe.scheduler.config, **{extra!r})
pipe.set_progress_bar_config(disable=True)
image = pipe({prompt!r}, num_inference_steps={steps}, guidance_scale={guidance}, width={width}, height={height},
             generator=torch.Generator("cpu").manual_seed({seed})).images[0]
image.save(sys.argv[1])
'''


def checked_request(engine, args, **kw):
    from engine.request import Request, check_request

    loaded = engine.load(args.model)
    req = Request(prompt=PROMPT, model=args.model, seed=SEED, **kw)
    return loaded, check_request(req, loaded.source.family, loaded.source.name)


def engine_vs_pipeline(args) -> str:
    import torch

    from engine.engine import Engine
    from engine.sources.loading import make_scheduler

    engine = Engine(device="cpu", local_paths=True)
    load_s, _ = timed(lambda: engine.load(args.model))
    loaded, req = checked_request(engine, args, steps=args.steps, width=args.size, height=args.size)
    pipe, scheduler = loaded.pipe, make_scheduler(req.scheduler, loaded.scheduler_config)

    def direct():
        pipe.scheduler = scheduler
        return pipe(prompt=req.prompt, negative_prompt=None, num_inference_steps=req.steps,
                    guidance_scale=req.guidance, width=req.width, height=req.height,
                    generator=[torch.Generator("cpu").manual_seed(SEED)]).images[0]

    def via_engine():
        return engine.generate(req).images[0]

    same = common.mean_abs_diff(direct(), via_engine())  # also the warm-up of both sides
    times = common.alternate({"pipe": direct, "engine": via_engine}, args.runs)
    paired = med([e / p for e, p in zip(times["engine"], times["pipe"])])
    over = med([e - p for e, p in zip(times["engine"], times["pipe"])])
    rows = [["diffusers pipeline called directly", ms(med(times["pipe"])), common.spread(times["pipe"]), "1.00x"],
            ["`Engine.generate`", ms(med(times["engine"])), common.spread(times["engine"]), f"{paired:.3f}x"]]
    return (f"### (a) Engine.generate vs the pipeline, in one process\n\n"
            f"{req.width}x{req.height}, {req.steps} steps, guidance {req.guidance:g}, {req.scheduler}, seed {SEED}; "
            f"model loaded once in {load_s:.2f} s; mean abs pixel difference of the two images: {same:.3f}\n\n"
            + table(["side", "median ms", "range ms", "ratio (paired median)"], rows)
            + f"\n\nEngine overhead {ms(over)} ms per image; ratio {paired:.3f}x: {common.verdict(paired, 1.03)}\n")


def _run(cmd: list[str], args) -> None:
    done = subprocess.run(cmd, cwd=common.ROOT, env=common.child_env(args.threads), capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")


def import_tree(cmd: list[str], args) -> list[tuple[int, str, int]]:
    """(depth, module, cumulative us) of each import in one run, from `python -X importtime` (children first)."""
    done = subprocess.run([sys.executable, "-X", "importtime", *cmd[1:]], cwd=common.ROOT,
                          env=common.child_env(args.threads), capture_output=True, text=True)
    out = []
    for line in done.stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( +)(\S+)$", line)
        if m:
            out.append(((len(m.group(2)) - 1) // 2, m.group(3), int(m.group(1))))
    return out


def extra_imports(app_cmd: list[str], plain_cmd: list[str], args, n: int = 12) -> list[list]:
    """Imports of `app.py generate` that the plain script never makes: the roots of those subtrees, costliest first."""
    entries, plain = import_tree(app_cmd, args), {name for _, name, _ in import_tree(plain_cmd, args)}
    parent, waiting = {}, {}
    for i, (depth, _, _) in enumerate(entries):  # a module is printed after its children, one level deeper
        for child in waiting.pop(depth + 1, []):
            parent[child] = i
        waiting.setdefault(depth, []).append(i)
    extra = {i for i, (_, name, _) in enumerate(entries) if name not in plain}
    roots = [entries[i] for i in extra if parent.get(i) not in extra]
    return [[name, f"{us / 1e3:.0f}"] for _, name, us in sorted(roots, key=lambda e: -e[2])[:n]]


def whole_process(args) -> str:
    from engine.engine import Engine
    from engine.request import SCHEDULERS

    engine = Engine(device="cpu", local_paths=True)
    _, req = checked_request(engine, args, steps=args.steps, width=args.size, height=args.size)
    folder = common.model_folder(args.model)
    cls, extra, _, _ = SCHEDULERS[req.scheduler]
    tmp = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    plain = tmp / "plain.py"
    plain.write_text(PLAIN_SCRIPT.format(threads=args.threads, folder=str(folder), scheduler=cls, extra=extra,
                                         prompt=req.prompt, steps=req.steps, guidance=req.guidance, width=req.width,
                                         height=req.height, seed=SEED))
    py = sys.executable
    app_cmd = [py, "app.py", "generate", "--model", args.model, "--prompt", PROMPT, "--seed", str(SEED), "--steps",
               str(req.steps), "--width", str(req.width), "--height", str(req.height), "--threads", str(args.threads),
               "--out", str(tmp / "app.png")]
    plain_cmd = [py, str(plain), str(tmp / "plain.png")]
    sides = {"plain": lambda: _run(plain_cmd, args), "app": lambda: _run(app_cmd, args)}
    times = common.alternate(sides, args.runs)
    from PIL import Image

    same = common.mean_abs_diff(Image.open(tmp / "app.png").convert("RGB"), Image.open(tmp / "plain.png"))
    paired = med([a / p for a, p in zip(times["app"], times["plain"])])
    starts = common.alternate({"python -c pass": lambda: _run([py, "-c", "pass"], args),
                               "app.py --help": lambda: _run([py, "app.py", "--help"], args),
                               "app.py models": lambda: _run([py, "app.py", "models"], args)}, args.runs)
    rows = [["plain diffusers script", ms(med(times["plain"])), common.spread(times["plain"]), "1.00x"],
            ["`app.py generate`", ms(med(times["app"])), common.spread(times["app"]), f"{paired:.3f}x"]]
    rows += [[f"`{k}` (start-up only)", ms(med(v)), common.spread(v), ""] for k, v in starts.items()]
    out = (f"### (b) Whole process: `app.py generate` vs a plain diffusers script\n\n"
           f"Both load `{folder}` and save one {req.width}x{req.height} PNG ({req.steps} steps, {req.scheduler}); "
           f"mean abs pixel difference of their images: {same:.3f}\n\n"
           + table(["process", "median ms", "range ms", "ratio (paired median)"], rows)
           + f"\n\nratio {paired:.3f}x: {common.verdict(paired, 1.15)}\n")
    if paired > 1.15 or args.importtime:
        out += ("\nWhat `app.py generate` imports that the plain script does not (roots of those imports, by "
                "cumulative time in one `python -X importtime` run of each):\n\n"
                + table(["module", "cumulative ms"], extra_imports(app_cmd, plain_cmd, args)) + "\n")
    return out


def variants(args) -> str:
    import torch

    from engine.engine import Engine
    from engine.sources.loading import make_scheduler

    engine = Engine(device="cpu", local_paths=True)
    loaded, req = checked_request(engine, args, steps=args.steps, width=args.size, height=args.size)
    pipe, base = loaded.pipe, loaded.pipe.unet

    def run(unet=base, steps=req.steps, scheduler=req.scheduler, bf16=False):
        pipe.unet = unet
        pipe.scheduler = make_scheduler(scheduler, loaded.scheduler_config)
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        try:
            with ctx:
                return pipe(prompt=req.prompt, num_inference_steps=steps, guidance_scale=req.guidance,
                            width=req.width, height=req.height,
                            generator=[torch.Generator("cpu").manual_seed(SEED)]).images[0]
        finally:
            pipe.unet = base

    channels_last = copy.deepcopy(base).to(memory_format=torch.channels_last)
    few = args.few_steps
    sides = {"fp32 (engine default)": run, "bf16 autocast": lambda: run(bf16=True),
             "channels_last UNet": lambda: run(unet=channels_last),
             f"{few} steps, {req.scheduler}": lambda: run(steps=few),
             f"{few} steps, unipc": lambda: run(steps=few, scheduler="unipc")}
    warm = {}
    if not args.skip_compile:
        compiled = torch.compile(copy.deepcopy(base))
        sides["torch.compile UNet"] = lambda: run(unet=compiled)
    for name, fn in sides.items():  # warm-up (compile happens here) and the image to compare
        warm[name] = timed(fn)
    reference = warm["fp32 (engine default)"][1]
    times = common.alternate(sides, args.runs)
    base_med = med(times["fp32 (engine default)"])
    rows = [[name, ms(med(t)), common.spread(t), f"{base_med / med(t):.2f}x", f"{warm[name][0]:.2f}",
             f"{common.mean_abs_diff(warm[name][1], reference):.2f}"] for name, t in times.items()]
    return (f"### (c) One image at the defaults of `{args.model}`: variants\n\n"
            f"{req.width}x{req.height}, {req.steps} steps, guidance {req.guidance:g}, {req.scheduler}; speed-up = "
            f"fp32 median / variant median (above 1 is faster); diff = mean abs pixel difference from the fp32 image "
            f"(0-255), same seed\n\n"
            + table(["variant", "median ms", "range ms", "speed-up", "first call s (warm-up)", "diff vs fp32"], rows)
            + f"\n\nfp32 default {ms(base_med)} ms per image: {common.verdict(base_med, 0.5)} s. Fewer steps change "
            "the image by design; judge them by adherence (`benchmarks/eval_builtin.py --sweep`), not by the diff.\n")


def main() -> None:
    p = common.parser(__doc__, parts=("engine", "process"))
    p.add_argument("--importtime", action="store_true", help="(b): list import costs even when the goal is met")
    p.add_argument("--builtin-variants", action="store_true", help="(c): fp32/bf16/channels_last/compile/fewer steps")
    p.add_argument("--few-steps", type=int, default=8, help="(c): the 'fewer steps' variant")
    p.add_argument("--skip-compile", action="store_true", help="(c): leave out torch.compile (slow warm-up)")
    args = p.parse_args()
    common.setup(args)
    sections = [("engine", lambda: engine_vs_pipeline(args)), ("process", lambda: whole_process(args))]
    if args.builtin_variants:
        sections.append(("variants", lambda: variants(args)))
    common.run_sections("Engine overhead (bench_engine.py)", args, sections)


if __name__ == "__main__":
    main()
