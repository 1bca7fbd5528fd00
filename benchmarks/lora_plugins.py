"""LoRA plugins: a cached adapter switch against a fresh load, and memory over 50 load/unload cycles.

    python benchmarks/lora_plugins.py                      # a tiny random SDXL pipeline, built on the fly
    python benchmarks/lora_plugins.py --model builtin      # or any local diffusers folder

The LoRAs are random peft adapters (rank 4 on the attention projections) made for the model at hand. "Fresh"
is everything `PluginManager.apply` does for a LoRA not yet on the pipeline (header and family checks, layer
matching, `load_lora_weights`; the file hash is cached after the first run); "switch" is `apply` with another,
already loaded LoRA (a `set_adapters` call). Both are timed alternately in this one process; medians are printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def make_lora(pipe, out: Path, seed: int) -> Path:
    """A random LoRA for `pipe`'s denoiser, saved the way trainers save them (`save_lora_weights`)."""
    import torch
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    name = "transformer" if getattr(pipe, "transformer", None) is not None else "unet"
    denoiser = getattr(pipe, name)
    torch.manual_seed(seed)
    denoiser.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                    init_lora_weights=False), adapter_name="bench")
    layers = get_peft_model_state_dict(denoiser, adapter_name="bench")
    denoiser.delete_adapters("bench")
    type(pipe).save_lora_weights(out.parent, weight_name=out.name, **{f"{name}_lora_layers": layers})
    return out


def rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # peak, not current, where /proc is missing


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-sdxl", help="tiny-sdxl (default), builtin, or a diffusers folder")
    parser.add_argument("--runs", type=int, default=9, help="timed runs per side")
    parser.add_argument("--cycles", type=int, default=50, help="load/unload cycles for the memory check")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import torch
    from diffusers.utils import logging as diffusers_logging

    from engine.engine import Engine
    from engine.plugins.manager import PluginManager
    from engine.request import LoraSpec, Request

    torch.set_num_threads(args.threads)
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    work = Path(tempfile.mkdtemp(prefix="lora-bench-"))
    model = args.model
    if model == "tiny-sdxl":
        from tests import tiny_models

        model = str(tiny_models.sdxl(work / "tiny-sdxl"))
    engine = Engine(device=args.device, local_paths=True)
    loaded = engine.load(model)
    plugins = work / "plugins"
    plugins.mkdir()
    for i in range(3):
        make_lora(loaded.pipe, plugins / f"l{i}.safetensors", seed=i)
    requests = [Request(prompt="x", loras=[LoraSpec(f"l{i}", 1.0)]) for i in range(3)]
    manager = PluginManager(dirs=[plugins], fuse_after=0)

    def timed(fn) -> float:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    fresh, switch = [], []
    for _ in range(args.runs):
        manager.unload(loaded)
        fresh.append(timed(lambda: manager.apply(loaded, requests[0])))
        manager.apply(loaded, requests[1])  # now l0 and l1 are both loaded
        switch.append(timed(lambda: manager.apply(loaded, requests[0])))
    print(f"model {loaded.source.name} ({loaded.source.family}), device {args.device}, torch threads "
          f"{torch.get_num_threads()}, {args.runs} runs per side")
    print(f"fresh load   median {statistics.median(fresh) * 1e3:8.1f} ms  (min {min(fresh) * 1e3:.1f})")
    print(f"cached switch median {statistics.median(switch) * 1e3:7.1f} ms  (min {min(switch) * 1e3:.1f})")
    print(f"ratio {statistics.median(fresh) / statistics.median(switch):.0f}x")

    manager.unload(loaded)
    manager = PluginManager(dirs=[plugins], fuse_after=0, max_cached=2)
    for i in range(6):  # warm-up
        manager.apply(loaded, requests[i % 3])
    manager.unload(loaded)
    start = rss_mb()
    print(f"\nmemory: {args.cycles} cycles, three LoRAs through two cache slots (each apply loads one and drops "
          "one), all unloaded every 10 cycles")
    print(f"cycle   0: RSS {start:8.1f} MB")
    for i in range(args.cycles):
        manager.apply(loaded, requests[i % 3])
        if i % 10 == 9:
            manager.unload(loaded)
            print(f"cycle {i + 1:3d}: RSS {rss_mb():8.1f} MB  ({rss_mb() - start:+.1f}), loads so far {manager.loads}")
    growth = rss_mb() - start
    print(f"growth {growth:+.1f} MB over {args.cycles} cycles: {'bounded' if growth < 40 else 'GROWING'}")
    return 0 if growth < 40 else 1


if __name__ == "__main__":
    sys.exit(main())
