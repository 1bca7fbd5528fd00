"""GPU benchmark: full-size SDXL and Flux.1-dev at 1024x1024, plain diffusers vs our optimizations.

Builds the real architectures from their published configs (written inline below) with random
weights -- compute does not depend on weight values and nothing can be downloaded -- then times,
in one process, the plain bf16 pipeline against channels_last, fused QKV, regional torch.compile,
fp8 dynamic quantization (torchao), VAE decode and LoRA fused vs unfused.

    python benchmarks/gpu_bench.py --out results.md           # both models, on CUDA
    python benchmarks/gpu_bench.py --device cpu --tiny        # shrunken configs: a smoke test
    python benchmarks/gpu_bench.py --only flux --skip lora    # one model, fewer stages

Compilation dominates the cost: on an H200 (torch 2.11) the regional compile took ~10 s of warm-up for
SDXL, ~200 s for Flux, and SDXL's fp8 + compile ~120 s, so both models with every stage need more than
one 10-minute device call; split them with --only and --skip.

Every stage is guarded: an error is recorded in its table row and the run goes on. Stages that
would not fit in --budget-s are skipped and listed as such. The Markdown file is rewritten after
each stage, so a run killed from outside still leaves the finished rows behind.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import os
import platform
import statistics
import subprocess
import time
import traceback
from dataclasses import dataclass, field

import numpy as np
import torch

# ----------------------------------------------------------------------------------------------
# 1. Published configurations (full size), and how --tiny shrinks them
# ----------------------------------------------------------------------------------------------

SDXL_UNET = {
    "sample_size": 128, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280), "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20), "cross_attention_dim": 2048, "use_linear_projection": True,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816, "norm_num_groups": 32,
}
SDXL_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2, "sample_size": 1024,
    "block_out_channels": (128, 256, 512, 512), "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4, "scaling_factor": 0.13025, "force_upcast": False,
}
CLIP_L = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
          "projection_dim": 768, "hidden_act": "quick_gelu", "vocab_size": 49408, "max_position_embeddings": 77}
CLIP_BIGG = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 20,
             "projection_dim": 1280, "hidden_act": "gelu", "vocab_size": 49408, "max_position_embeddings": 77}
FLUX_TRANSFORMER = {
    "patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128,
    "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768,
    "guidance_embeds": True, "axes_dims_rope": (16, 56, 56),
}
FLUX_VAE = dict(SDXL_VAE, latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159,
                use_quant_conv=False, use_post_quant_conv=False)
T5_XXL = {"vocab_size": 32128, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24, "num_heads": 64,
          "feed_forward_proj": "gated-gelu", "relative_attention_num_buckets": 32,
          "relative_attention_max_distance": 128, "layer_norm_epsilon": 1e-6, "tie_word_embeddings": False}
SDXL_SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                  "steps_offset": 1, "timestep_spacing": "leading", "prediction_type": "epsilon"}
FLUX_SCHEDULER = {"shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15,
                  "base_image_seq_len": 256, "max_image_seq_len": 4096}

# --tiny keeps every class and code path but few channels and layers (vocab sizes stay real).
TINY = {
    "SDXL_UNET": {"sample_size": 16, "block_out_channels": (32, 64), "transformer_layers_per_block": (1, 2),
                  "attention_head_dim": (2, 4), "cross_attention_dim": 64, "layers_per_block": 1,
                  "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
                  "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
                  "addition_time_embed_dim": 8, "projection_class_embeddings_input_dim": 80},
    "VAE": {"block_out_channels": (32, 64), "down_block_types": ("DownEncoderBlock2D",) * 2,
            "up_block_types": ("UpDecoderBlock2D",) * 2, "layers_per_block": 1, "sample_size": 64},
    "CLIP": {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
             "projection_dim": 32},
    "FLUX_TRANSFORMER": {"in_channels": 16, "num_layers": 1, "num_single_layers": 2, "attention_head_dim": 32,
                         "num_attention_heads": 2, "joint_attention_dim": 32, "pooled_projection_dim": 32,
                         "axes_dims_rope": (8, 12, 12)},
    "T5": {"d_model": 32, "d_kv": 8, "d_ff": 37, "num_layers": 2, "num_heads": 4},
}

# Warm-up seconds (compilation) for the compile and fp8+compile rows, as seen on an H200 with torch 2.11
# (2026-11-26; the Flux fp8 figure is a guess). Used only to decide whether a stage still fits the budget.
COMPILE_S = {"SDXL": (20.0, 130.0), "Flux-dev": (200.0, 200.0)}
STAGE_GROUPS = ("lora", "layout", "compile", "fp8")  # what --skip can name

ANCHORS = """Public anchors (H100, 1024x1024, batch 1): SDXL 30 steps 2.50 s plain diffusers, 1.47 s TensorRT;
Flux-dev 28 steps 6.57 s eager, 4.21 s compiled, 2.97 s fp8 + compile.
Our goals: SDXL <= 1.2 s, Flux-dev <= 2.8 s."""


@dataclass
class Setup:
    """What one benchmark run does: sizes, steps and the time budget."""

    device: str
    tiny: bool
    budget_s: float
    runs: int = 3
    size: int = 1024
    sdxl_steps: int = 30
    flux_steps: int = 28
    t5_tokens: int = 512
    skip: frozenset[str] = frozenset()
    started: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        if self.tiny:
            self.size, self.sdxl_steps, self.flux_steps, self.t5_tokens = 64, 2, 2, 32

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------------------------
# 2. Offline tokenizers (small vocabularies; the models keep the real embedding table sizes)
# ----------------------------------------------------------------------------------------------

def byte_alphabet() -> list[str]:
    """The 256 printable stand-ins that byte-level BPE uses for raw bytes."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


def clip_tokenizer():
    from transformers import CLIPTokenizer

    chars = byte_alphabet()
    pieces = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={p: i for i, p in enumerate(pieces)}, merges=[], model_max_length=77)


def t5_tokenizer(max_len: int):
    from transformers import T5Tokenizer

    words = ["a", "photo", "of", "the", "cat", "dog", "on", "in", "with", "at", "red", "blue", "green",
             "astronaut", "riding", "horse", "city", "night"]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + w, -3.0) for w in words]
    vocab += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789.,!?'-"]
    vocab += [(f"<extra_id_{i}>", 0.0) for i in range(99, -1, -1)]
    return T5Tokenizer(vocab=vocab, model_max_length=max_len)


# ----------------------------------------------------------------------------------------------
# 3. Building the pipelines directly on the device in bf16 (no fp32 copy, no CPU init)
# ----------------------------------------------------------------------------------------------

@contextlib.contextmanager
def build_on(device: str):
    """Create parameters on `device` in bf16: full-size fp32 init on the CPU takes minutes."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(old)


def sized(cfg: dict, tiny: bool, key: str) -> dict:
    return {**cfg, **TINY[key]} if tiny else dict(cfg)


def clip_config(cfg: dict, tok, tiny: bool):
    from transformers import CLIPTextConfig

    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    return CLIPTextConfig(**sized(cfg, tiny, "CLIP"), **ids)


def build_sdxl(s: Setup):
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tok = clip_tokenizer()
    with build_on(s.device):
        unet = UNet2DConditionModel(**sized(SDXL_UNET, s.tiny, "SDXL_UNET"))
        vae = AutoencoderKL(**sized(SDXL_VAE, s.tiny, "VAE"))
        te1 = CLIPTextModel(clip_config(CLIP_L, tok, s.tiny))
        te2 = CLIPTextModelWithProjection(clip_config(CLIP_BIGG, tok, s.tiny))
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tok,
                                     tokenizer_2=clip_tokenizer(), unet=unet,
                                     scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER))
    return pipe.to(s.device), pipe.unet


def build_flux(s: Setup):
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
    )
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    tok, tok2 = clip_tokenizer(), t5_tokenizer(s.t5_tokens)
    vae_cfg = sized(FLUX_VAE, s.tiny, "VAE")
    tr_cfg = sized(FLUX_TRANSFORMER, s.tiny, "FLUX_TRANSFORMER")
    vae_cfg["latent_channels"] = tr_cfg["in_channels"] // 4  # Flux packs 2x2 latent patches
    with build_on(s.device):
        transformer = FluxTransformer2DModel(**tr_cfg)
        vae = AutoencoderKL(**vae_cfg)
        te1 = CLIPTextModel(clip_config(CLIP_L, tok, s.tiny))
        te2 = T5EncoderModel(T5Config(**sized(T5_XXL, s.tiny, "T5"), pad_token_id=tok2.pad_token_id,
                                      eos_token_id=tok2.eos_token_id))
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER), vae=vae,
                        text_encoder=te1, tokenizer=tok, text_encoder_2=te2, tokenizer_2=tok2,
                        transformer=transformer)
    return pipe.to(s.device), pipe.transformer


def generate(pipe, s: Setup, steps: int) -> np.ndarray:
    prompt = "a photo of an astronaut riding a horse in the city at night"
    gen = torch.Generator(s.device).manual_seed(0)
    common = {"height": s.size, "width": s.size, "num_inference_steps": steps, "generator": gen, "output_type": "np"}
    if pipe.__class__.__name__ == "FluxPipeline":
        return pipe(prompt, guidance_scale=3.5, max_sequence_length=s.t5_tokens, **common).images
    return pipe(prompt, guidance_scale=7.0, **common).images


# ----------------------------------------------------------------------------------------------
# 4. Measuring: one row per stage, each guarded and budgeted
# ----------------------------------------------------------------------------------------------

@dataclass
class Row:
    model: str
    config: str
    median_s: float | None = None
    peak_gib: float | None = None
    note: str = ""


class Bench:
    def __init__(self, s: Setup, out: str | None):
        self.s, self.out, self.rows = s, out, []

    def sync(self) -> None:
        if self.s.device.startswith("cuda"):
            torch.cuda.synchronize()

    def stage(self, model: str, config: str, prepare, run, *, deadline: float, est_s: float,
              warmup=None) -> Row:
        """prepare() changes the pipeline (returns a note); warmup() then run() x N are timed."""
        row = Row(model, config)
        self.rows.append(row)
        if self.s.elapsed() + est_s > deadline:
            row.note = f"skipped: budget ({self.s.elapsed():.0f} s used, ~{est_s:.0f} s needed)"
            log(f"{model} | {config}: {row.note}")
            return row
        log(f"{model} | {config}: start")
        try:
            t0 = time.perf_counter()
            notes = [prepare() or ""] if prepare else []
            t1 = time.perf_counter()
            (warmup or run)()
            self.sync()
            notes.append(f"prep {t1 - t0:.1f} s, warm-up {time.perf_counter() - t1:.1f} s")
            if self.s.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            times, bad = [], False
            for _ in range(self.s.runs):
                t = time.perf_counter()
                result = run()
                self.sync()
                times.append(time.perf_counter() - t)
                bad = bad or not np.isfinite(np.asarray(result, dtype=np.float32)).all()
            row.median_s = statistics.median(times)
            if self.s.device.startswith("cuda"):
                row.peak_gib = torch.cuda.max_memory_allocated() / 2**30
            notes.append("NaN/inf in output!" if bad else "")
            row.note = "; ".join(n for n in notes if n)
            row.note += ("; " if row.note else "") + "runs " + "/".join(f"{t:.2f}" for t in times)
            log(f"{model} | {config}: median {row.median_s:.3f} s; {row.note}")
        except Exception as e:  # noqa: BLE001  record and go on: one failure must not lose the other numbers
            traceback.print_exc()
            row.note = "error: " + f"{type(e).__name__}: {e}".replace("\n", " ").replace("|", "/")[:300]
            log(f"{model} | {config}: {row.note}")
        self.write()
        return row

    def write(self) -> None:
        if self.out:
            with open(self.out, "w") as f:
                f.write(report(self.s, self.rows))


def lora_state_dict(model: torch.nn.Module, prefix: str, rank: int) -> dict[str, torch.Tensor]:
    """A random rank-`rank` LoRA on every attention projection, in diffusers' own key format."""
    targets = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
    sd = {}
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and name.endswith(targets):
            w = mod.weight
            sd[f"{prefix}.{name}.lora_A.weight"] = torch.randn(rank, w.shape[1], device=w.device, dtype=w.dtype) * 0.01
            sd[f"{prefix}.{name}.lora_B.weight"] = torch.randn(w.shape[0], rank, device=w.device, dtype=w.dtype) * 0.01
    return sd


def fp8_quantize(model: torch.nn.Module) -> str:
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        PerRow,
        quantize_,
    )

    # The lower bound keeps an all-zero activation row (SDXL's zeroed negative prompt under CFG) from
    # getting a zero scale, i.e. 0/0 = NaN; the first H200 run, without it, gave NaN for SDXL.
    quantize_(model, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), activation_value_lb=1e-12))
    return "torchao fp8 e4m3, per-row dynamic activations and weights"


def torchao_problem() -> str | None:
    """None if torchao imports here, else why not (absent, or built for another torch)."""
    try:
        import torchao
    except Exception as e:  # noqa: BLE001  ImportError, or a torchao that rejects this torch
        return f"{type(e).__name__}: {e}"[:200]
    log(f"torchao {torchao.__version__} importable")
    return None


def bench_model(b: Bench, name: str, deadline: float) -> None:
    """Build one model's pipeline, run its stages, then free the GPU for the next model."""
    s = b.s
    if s.elapsed() > deadline:
        b.rows.append(Row(name, "build", note=f"skipped: budget ({s.elapsed():.0f} s used)"))
        return
    log(f"{name}: building {'tiny' if s.tiny else 'full-size'} pipeline")
    t = time.perf_counter()
    try:
        pipe, denoiser = (build_sdxl if name == "SDXL" else build_flux)(s)
    except Exception as e:  # noqa: BLE001  recorded in the table
        traceback.print_exc()
        b.rows.append(Row(name, "build", note=f"error: {type(e).__name__}: {e}"[:300]))
        b.write()
        return
    pipe.set_progress_bar_config(disable=True)
    n_params = sum(p.numel() for p in denoiser.parameters()) / 1e9
    log(f"{name}: built in {time.perf_counter() - t:.1f} s, denoiser {n_params:.2f} B params")
    run_stages(b, name, pipe, denoiser, deadline)
    del pipe, denoiser
    gc.collect()
    torch._dynamo.reset()
    if s.device.startswith("cuda"):
        torch.cuda.empty_cache()


def run_stages(b: Bench, name: str, pipe, denoiser: torch.nn.Module, deadline: float) -> None:
    """All stages for one model; cumulative from channels_last on."""
    s = b.s
    steps = s.sdxl_steps if name == "SDXL" else s.flux_steps

    def run() -> np.ndarray:
        return generate(pipe, s, steps)

    def warm() -> np.ndarray:  # the same shapes as a full run (so compilation happens), fewer steps
        return generate(pipe, s, 2)

    # Static shapes: SDXL's blocks come in two sizes, which would otherwise turn on dynamic-shape kernels.
    # On the CPU smoke test, "eager" checks that dynamo traces the blocks without running the C++ compiler.
    compile_kw = {"fullgraph": True, "dynamic": False}
    if not s.device.startswith("cuda"):
        compile_kw["backend"] = "eager"
    side = s.size // pipe.vae_scale_factor
    latents_shape = (1, pipe.vae.config.latent_channels, side, side)

    @torch.inference_mode()
    def vae_decode():
        z = torch.randn(latents_shape, device=s.device, dtype=torch.bfloat16)
        return pipe.vae.decode(z, return_dict=False)[0].float().cpu()

    base = b.stage(name, "baseline: diffusers bf16, SDPA", None, run, warmup=warm, deadline=deadline, est_s=60)
    per_gen = base.median_s or 10.0

    def est(extra: float = 0.0) -> float:  # expected seconds for a stage: warm-up + timed runs + extra
        return (s.runs + 0.5) * per_gen + extra

    b.stage(name, "VAE decode only (baseline)", None, vae_decode, deadline=deadline, est_s=5)

    def lora_load():
        t0 = time.perf_counter()
        pipe.load_lora_weights(lora_state_dict(denoiser, "unet" if name == "SDXL" else "transformer", 64),
                                adapter_name="bench")
        return f"rank-64 LoRA on attention projections, load {time.perf_counter() - t0:.1f} s"

    def lora_fuse():
        pipe.fuse_lora(lora_scale=1.0)
        return "fuse_lora (adapter kept, merged)"

    def skipped(config: str, group: str) -> bool:
        if group in s.skip:
            b.rows.append(Row(name, config, note=f"skipped: --skip {group}"))
        return group in s.skip

    # LoRA rows run only if the compile and fp8 rows (the ones our goals hang on) still fit after them.
    compile_s, fp8_s = (5.0, 5.0) if s.tiny else COMPILE_S[name]
    reserve = ("layout" not in s.skip) * (2 if name == "SDXL" else 1) * est()
    reserve += ("compile" not in s.skip) * est(compile_s) + ("fp8" not in s.skip) * est(fp8_s)
    if not skipped("LoRA unfused / fused", "lora"):
        lora = b.stage(name, "LoRA unfused (peft)", lora_load, run, warmup=warm, deadline=deadline - reserve,
                       est_s=est(10))
        if lora.median_s is None:
            b.rows.append(Row(name, "LoRA fused", note="skipped: no LoRA loaded (row above)"))
        else:
            b.stage(name, "LoRA fused", lora_fuse, run, warmup=warm, deadline=deadline, est_s=est(5))
        with contextlib.suppress(Exception):  # back to the plain model for the stages below
            pipe.unfuse_lora()
        with contextlib.suppress(Exception):
            pipe.unload_lora_weights()

    def channels_last():
        pipe.vae.to(memory_format=torch.channels_last)
        if name == "SDXL":
            pipe.unet.to(memory_format=torch.channels_last)
            return "UNet + VAE"
        return "VAE only (the transformer has no convolutions)"

    def fuse_qkv():
        denoiser.fuse_qkv_projections()
        pipe.vae.fuse_qkv_projections()
        return "denoiser + VAE attention"

    if skipped("+ channels_last + fused QKV", "layout"):
        pass
    elif name == "SDXL":
        b.stage(name, "+ channels_last", channels_last, run, warmup=warm, deadline=deadline, est_s=est())
        b.stage(name, "+ fused QKV", fuse_qkv, run, warmup=warm, deadline=deadline, est_s=est())
    else:  # channels_last touches only Flux's VAE: one row for both saves a full stage of device time
        def both() -> str:
            return f"{channels_last()}; {fuse_qkv()}"

        b.stage(name, "+ channels_last + fused QKV", both, run, warmup=warm, deadline=deadline, est_s=est())

    def regional_compile():
        denoiser.compile_repeated_blocks(**compile_kw)
        return f"compile_repeated_blocks({', '.join(f'{k}={v}' for k, v in compile_kw.items())})"

    if not skipped("+ torch.compile (regional)", "compile"):
        b.stage(name, "+ torch.compile (regional)", regional_compile, run, warmup=warm, deadline=deadline,
                est_s=est(compile_s))

    def fp8_then_compile():
        note = fp8_quantize(denoiser)
        torch._dynamo.reset()  # weights changed type: start the compiled regions afresh
        denoiser.compile_repeated_blocks(**compile_kw)
        return note

    ao_problem = None if "fp8" in s.skip else torchao_problem()
    if skipped("+ fp8 dynamic quant (torchao) + compile", "fp8"):
        pass
    elif ao_problem is None:
        b.stage(name, "+ fp8 dynamic quant (torchao) + compile", fp8_then_compile, run, warmup=warm,
                deadline=deadline, est_s=est(fp8_s))
    else:
        b.rows.append(Row(name, "+ fp8 dynamic quant (torchao) + compile",
                          note=f"skipped: torchao not present ({ao_problem})"))
    if "layout" not in s.skip:
        b.stage(name, "VAE decode only (channels_last + fused QKV)", None, vae_decode, deadline=deadline, est_s=5)


# ----------------------------------------------------------------------------------------------
# 5. Report
# ----------------------------------------------------------------------------------------------

def git_commit() -> str:
    try:
        cmd = ["git", "rev-parse", "--short", "HEAD"]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False).stdout.strip() or "unknown"
    except Exception:  # noqa: BLE001  no git on the device machine is fine
        return "unknown"


def versions() -> str:
    import diffusers
    import transformers

    try:
        import torchao

        ao = torchao.__version__
    except Exception:  # noqa: BLE001
        ao = "not present"
    return (f"torch {torch.__version__}, diffusers {diffusers.__version__}, "
            f"transformers {transformers.__version__}, torchao {ao}")


def report(s: Setup, rows: list[Row]) -> str:
    """The Markdown section: header facts, one table row per stage, anchors and goals."""
    dev = torch.cuda.get_device_name() if s.device.startswith("cuda") else platform.processor() or "cpu"
    lines = [
        "## GPU (gpu_bench.py)",
        "",
        f"- date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}; device: {dev}; commit: {git_commit()}",
        f"- {versions()}" + ("; TINY configs (smoke test, numbers meaningless)" if s.tiny else ""),
        (f"- {s.size}x{s.size}, batch 1, SDXL {s.sdxl_steps} steps CFG 7; Flux-dev {s.flux_steps} steps "
         f"guidance 3.5, T5 {s.t5_tokens} tokens; full-size published configs, random bf16 weights"),
        (f"- median of {s.runs} timed runs after a warm-up; rows from channels_last on are cumulative; ratio = "
         "baseline median / this median (above 1 is faster; VAE rows against the baseline VAE row); "
         "peak = torch.cuda.max_memory_allocated during the timed runs"),
        "",
        "| model | configuration | median s | ratio vs baseline | peak GiB | notes |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        kind = "VAE decode only (baseline)" if r.config.startswith("VAE") else "baseline: diffusers bf16, SDPA"
        ref = next((x.median_s for x in rows if x.model == r.model and x.config == kind), None)
        med = f"{r.median_s:.3f}" if r.median_s is not None else "-"
        ratio = f"{ref / r.median_s:.2f}x" if ref and r.median_s else "-"
        peak = f"{r.peak_gib:.1f}" if r.peak_gib is not None else "-"
        lines.append(f"| {r.model} | {r.config} | {med} | {ratio} | {peak} | {r.note} |")
    lines += ["", ANCHORS, ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="shrink every config: a CPU smoke test")
    ap.add_argument("--only", choices=["sdxl", "flux"])
    ap.add_argument("--out", help="write the Markdown section here (rewritten after each stage)")
    ap.add_argument("--budget-s", type=float, default=480.0, help="skip stages that would end past this")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--skip", default="", help=f"comma-separated stage groups to leave out: {','.join(STAGE_GROUPS)}")
    args = ap.parse_args()
    skip = frozenset(x for x in args.skip.split(",") if x)
    if skip - set(STAGE_GROUPS):
        raise SystemExit(f"--skip: unknown {sorted(skip - set(STAGE_GROUPS))}; choose from {','.join(STAGE_GROUPS)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for but torch sees no GPU; use --device cpu --tiny")
    if args.runs < 1:
        raise SystemExit("--runs must be at least 1")
    s = Setup(device=args.device, tiny=args.tiny, budget_s=args.budget_s, runs=args.runs, skip=skip)
    b = Bench(s, args.out)
    models = ["SDXL", "Flux-dev"] if args.only is None else ["SDXL" if args.only == "sdxl" else "Flux-dev"]
    gpu = f" ({torch.cuda.get_device_name()})" if s.device.startswith("cuda") else ""
    log(f"{versions()}; device {s.device}{gpu}; models {models}; budget {s.budget_s:.0f} s")
    for name in models:
        # With both models, SDXL may use 40% of the budget so that Flux keeps the rest.
        share = 0.4 if (name == "SDXL" and len(models) == 2) else 1.0
        bench_model(b, name, deadline=share * s.budget_s)
    b.write()
    print(report(s, b.rows), flush=True)
    log(f"done in {s.elapsed():.0f} s")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
