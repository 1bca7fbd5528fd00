"""Switches: model switch with a warm cache, LoRA switch (cached vs fresh), ControlNet on/off, and peak memory.

    python benchmarks/bench_switches.py --model builtin
    python benchmarks/bench_switches.py --model /tmp/tiny-sd15 --size 64 --steps 4 --runs 3 --no-write   # a trial

(a) A, B, A again: the switch back reads nothing from disk (calls to
    `engine.sources.loading.load_pipeline` are counted).
(b) `engine.plugins.apply` switching between two loaded LoRAs vs loading them from their files (the built-in demo
LoRAs when present, else two made with peft in a temp plugin folder). (c) a ControlNet unit added and removed: no base
reload. (d) peak RSS of txt2img + ControlNet + img2img in a fresh process vs the weights' size on disk.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import common
from common import med, ms, table, timed

PROMPT = "a big red circle on the left, blue background"
LAYERS = ["to_q", "to_k", "to_v", "to_out.0"]
ASSETS_LORAS = ["outline", "pastel"]  # the built-in model's demo LoRAs in assets/plugins/, used when present


def write_manifest(path: Path, **fields) -> None:  # TOML: a JSON string or number is a valid TOML value
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in fields.items()))


def make_loras(folder: Path, plugin_dir: Path, family: str) -> list[str]:
    """Two rank-4 LoRAs on the UNet's attention, with non-zero B so they change the output."""
    import diffusers
    import torch
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    names = []
    for i in range(2):
        name = f"bench-lora-{i}"
        torch.manual_seed(i)
        unet = diffusers.UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
        unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=LAYERS, init_lora_weights=False), name)
        diffusers.StableDiffusionPipeline.save_lora_weights(
            plugin_dir, weight_name=f"{name}.safetensors",
            unet_lora_layers=get_peft_model_state_dict(unet, adapter_name=name))
        write_manifest(plugin_dir / f"{name}.toml", name=name, kind="lora", family=family, source=f"{name}.safetensors")
        names.append(name)
    return names


def edge_controlnet(folder: Path, plugin_dir: Path, family: str) -> Path:
    """The family's local edge ControlNet, or one made from the model's UNet (its weights do not matter here)."""
    import diffusers

    from engine import control

    source = control.CONTROLNETS.get(family, {}).get("edge", ("", None))[0]
    if source and (Path(source) / "config.json").is_file():
        return Path(source)
    vae = diffusers.AutoencoderKL.load_config(folder, subfolder="vae")
    channels = tuple(4 * 2**i for i in range(len(vae["block_out_channels"])))  # matches the VAE's downsampling
    unet = diffusers.UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    net = diffusers.ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=channels)
    net.save_pretrained(plugin_dir / "bench-edge")
    write_manifest(plugin_dir / "bench-edge.toml", name="bench-edge", kind="controlnet", family=family,
                   source="bench-edge", control="edge")
    return plugin_dir / "bench-edge"


def edge_map(size: tuple[int, int]):
    from PIL import Image, ImageDraw

    w, h = size
    image = Image.new("RGB", size, "black")
    ImageDraw.Draw(image).rectangle([w // 4, h // 4, w * 3 // 4, h * 3 // 4], outline="white", width=max(1, w // 32))
    return image


def model_switch(args, engine, calls: list, request) -> str:
    from engine.request import Request
    from tests.tiny_models import sd15

    b = args.model_b or str(sd15(Path(tempfile.mkdtemp(prefix="bench-model-b-")) / "tiny-sd15", seed=1))
    req_a, req_b = request(), Request(prompt=PROMPT, model=b, seed=0, steps=2, width=64, height=64)
    for r in (req_a, req_b):
        engine.generate(r)  # both loaded once, warm
    before, entry = len(calls), engine.load(args.model)
    steady, switch_back = [], []
    for _ in range(args.runs):
        engine.generate(req_a)
        steady.append(timed(lambda: engine.generate(req_a))[0])
        engine.generate(req_b)
        switch_back.append(timed(lambda: engine.generate(req_a))[0])
    reads = len(calls) - before
    same = engine.load(args.model) is entry
    rows = [["A after A (no switch)", ms(med(steady)), common.spread(steady), "1.00x"],
            ["A after B (switch back)", ms(med(switch_back)), common.spread(switch_back),
             f"{med(switch_back) / med(steady):.3f}x"]]
    return (f"### (a) Model switch with the cache warm\n\nA = `{args.model}`, B = `{b}`; "
            f"`load_pipeline` calls during {args.runs} A-B-A rounds: **{reads}**; A's cache entry is the same object: "
            f"{same}: {'met' if reads == 0 and same else 'NOT met'} (goal: no disk read)\n\n"
            + table(["generation of A", "median ms", "range ms", "ratio"], rows) + "\n")


def lora_switch(args, engine, names: list[str], request) -> str:
    from engine.request import LoraSpec, check_request

    loaded = engine.load(args.model)
    reqs = [check_request(request(loras=[LoraSpec(n, 1.0)]), loaded.source.family, loaded.source.name) for n in names]
    engine.generate(reqs[0])  # makes engine.plugins and warms its code paths
    plugins = engine.plugins
    fresh, cached, cached_loads = [], [], 0
    for _ in range(args.runs):
        plugins.unload(loaded)
        for r in reqs:
            fresh.append(timed(lambda r=r: plugins.apply(loaded, r))[0])
        loads = plugins.loads
        for r in reqs:
            cached.append(timed(lambda r=r: plugins.apply(loaded, r))[0])
        cached_loads += plugins.loads - loads
    plugins.unload(loaded)
    ratio = med(cached) / med(fresh)
    rows = [["fresh: loaded from its file", ms(med(fresh)), common.spread(fresh), "1.000"],
            ["cached: switch between loaded adapters", f"{med(cached) * 1e3:.2f}", common.spread(cached),
             f"{ratio:.3f} (1/{1 / ratio:.0f})"]]
    return (f"### (b) LoRA switch: cached adapters vs a fresh load\n\nLoRAs {', '.join(names)}; time of "
            f"`engine.plugins.apply` (the switch itself, no sampling); files loaded during cached switches: "
            f"{cached_loads}\n\n" + table(["switch", "median ms", "range ms", "cached / fresh"], rows)
            + f"\n\ncached/fresh {ratio:.3f}: {common.verdict(ratio, 0.05)}\n")


def control_on_off(args, engine, calls: list, request) -> str:
    from engine.request import ControlUnit

    loaded, before = engine.load(args.model), len(calls)
    plain = request()
    controlled = request(controls=[ControlUnit("edge", edge_map((plain.width or 64, plain.height or 64)),
                                               preprocessor="none")])
    plain_s = timed(lambda: engine.generate(plain))[0]
    first_s = timed(lambda: engine.generate(controlled))[0]
    times = common.alternate({"plain": lambda: engine.generate(plain),
                              "controlled": lambda: engine.generate(controlled)}, args.runs)
    reads, same = len(calls) - before, engine.load(args.model) is loaded
    rows = [["plain (after a controlled one: unit removed)", ms(med(times["plain"])), common.spread(times["plain"]),
             "1.00x"],
            ["one edge unit (warm)", ms(med(times["controlled"])), common.spread(times["controlled"]),
             f"{med(times['controlled']) / med(times['plain']):.2f}x"],
            ["first controlled generation (loads the ControlNet)", ms(first_s), "", f"{first_s / plain_s:.2f}x "
             f"of the plain one before it ({ms(plain_s)} ms)"]]
    return (f"### (c) ControlNet unit added and removed\n\n`load_pipeline` calls: **{reads}**; base pipeline "
            f"unchanged: {same}: {'met' if reads == 0 and same else 'NOT met'} (goal: no base reload)\n\n"
            + table(["generation", "median ms", "range ms", "ratio"], rows) + "\n")


def rss_child(spec: dict) -> None:
    """Runs in a fresh process: RSS after imports, then peak RSS over txt2img + ControlNet + img2img."""
    import diffusers
    import torch

    torch.set_num_threads(spec["threads"])
    for name in ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionControlNetPipeline"):
        getattr(diffusers, name)  # diffusers imports lazily: pay for the classes before the baseline
    from engine.engine import Engine
    from engine.request import ControlUnit, Request
    from engine.sources import loading

    def status(key: str) -> int:  # VmRSS: now; VmHWM: the peak so far (kB in /proc/self/status)
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(key))
        return int(line.split()[1]) * 1024

    base = status("VmRSS")
    engine = Engine(device="cpu", plugin_dirs=spec["plugin_dirs"], local_paths=True)
    req = Request(prompt=PROMPT, model=spec["model"], seed=0, steps=spec["steps"], width=spec["size"],
                  height=spec["size"])
    image = engine.generate(req).images[0]
    engine.generate(Request(**{**req.__dict__, "controls": [ControlUnit("edge", edge_map(image.size),
                                                                        preprocessor="none")]}))
    engine.generate(Request(**{**req.__dict__, "init_image": image, "strength": 0.6}))
    params = loading.pipeline_bytes(engine.load(spec["model"]).pipe)
    print(json.dumps({"base": base, "peak": status("VmHWM"), "now": status("VmRSS"), "params": params}))


def peak_memory(args, plugin_dirs: list[str], cn_folder: Path) -> str:
    spec = dict(model=args.model, plugin_dirs=plugin_dirs, steps=args.steps, size=args.size, threads=args.threads)
    done = subprocess.run([sys.executable, __file__, "--rss-child", json.dumps(spec)], cwd=common.ROOT,
                          env=common.child_env(args.threads), capture_output=True, text=True)
    if done.returncode != 0:
        return f"### (d) Peak memory\n\nthe child process failed:\n\n```\n{done.stderr[-1500:]}\n```\n"
    m = json.loads(done.stdout.strip().splitlines()[-1])
    weights, cn = common.weights_bytes(common.model_folder(args.model)), common.weights_bytes(cn_folder)
    growth, ratio = m["peak"] - m["base"], (m["peak"] - m["base"]) / (weights + cn)
    mb = lambda x: f"{x / 2**20:.1f}"  # noqa: E731
    rows = [["RSS after imports (baseline)", mb(m["base"])], ["peak RSS (VmHWM)", mb(m["peak"])],
            ["peak growth over the baseline", mb(growth)], ["RSS at the end", mb(m["now"])],
            ["model weights on disk (*.safetensors)", mb(weights)], ["edge ControlNet weights on disk", mb(cn)],
            ["model parameters in memory", mb(m["params"])]]
    return ("### (d) Peak memory of text-to-image + ControlNet + image-to-image (fresh process)\n\n"
            + table(["what", "MiB"], rows)
            + f"\n\npeak growth / (model + ControlNet weights) = {ratio:.2f}x: {common.verdict(ratio, 1.1)}. "
            "On a tiny model the growth is mostly torch's allocator and activations, not weights.\n")


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--rss-child":
        return rss_child(json.loads(sys.argv[2]))
    p = common.parser(__doc__, parts=("model", "lora", "control", "memory"))
    p.add_argument("--model-b", default=None, help="(a): the other model (default: a tiny SD1.5 made in a temp folder)")
    args = p.parse_args()
    common.setup(args)

    from engine.config import DEFAULT_PLUGIN_DIRS as DEFAULT_DIRS
    from engine.engine import Engine
    from engine.request import Request
    from engine.sources import loading
    from engine.sources.resolve import Resolver

    calls: list = []
    load_pipeline = loading.load_pipeline

    def counted(*a, **kw):
        calls.append(a[0])
        return load_pipeline(*a, **kw)

    loading.load_pipeline = counted  # the benchmark's own probe: every disk load of a base model passes here

    def request(**kw) -> Request:
        return Request(prompt=PROMPT, model=args.model, seed=0, steps=args.steps, width=args.size,
                       height=args.size, **kw)

    folder, family = common.model_folder(args.model), Resolver(local_paths=True).resolve(args.model).family
    tmp = Path(tempfile.mkdtemp(prefix="bench-plugins-"))
    demo = ASSETS_LORAS if args.model == "builtin" and all((DEFAULT_DIRS[1] / f"{n}.toml").is_file()
                                                       for n in ASSETS_LORAS) else None
    names = demo or ([] if "lora" in args.skip.split(",") else make_loras(folder, tmp, family))
    cn_folder = edge_controlnet(folder, tmp, family)
    plugin_dirs = [str(d) for d in DEFAULT_DIRS] + [str(tmp)]
    engine = Engine(device="cpu", plugin_dirs=plugin_dirs, local_paths=True)
    common.run_sections("Switches and memory (bench_switches.py)", args, [
        ("model", lambda: model_switch(args, engine, calls, request)),
        ("lora", lambda: lora_switch(args, engine, names, request)),
        ("control", lambda: control_on_off(args, engine, calls, request)),
        ("memory", lambda: peak_memory(args, plugin_dirs, cn_folder))])


if __name__ == "__main__":
    main()
