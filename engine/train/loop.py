"""What every training stage shares: the training loop (`train_loop`), checkpoints, the learning-rate schedule,
step budgets, batches, EMA.

A stage runs a fixed number of steps, or as many as fit in a time budget (`--minutes`): the rate is
measured over the first 50 steps, the total is then fixed (and recorded), and the cosine schedule follows
it. The batch for step `s` depends only on the seed and `s`, so it can be made in worker processes
(`--workers`) while the GPU trains, and a resumed run sees the same data as an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import time
from functools import partial
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

log = logging.getLogger(__name__)


def save_ckpt(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_ckpt(path: Path) -> dict | None:
    # our own checkpoint, written by save_ckpt above: the only pickle this project ever reads
    return torch.load(path, weights_only=False, map_location="cpu") if path.exists() else None


def cosine_lr(step: int, total: int, peak: float, warmup: int = 200) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))))


class Budget:
    """The number of steps of a stage: `steps`, or when `minutes` is set, what fits in that time.

    The rate is measured over steps start+10 .. start+40 (after the first steps' one-off costs: CUDA and cuDNN
    warm-up, worker start-up, which made an earlier probe from step 0 guess 8x too few steps), inside every
    stage's warm-up, so the learning rate of the steps before it does not depend on the total."""

    SKIP, PROBE = 10, 30

    def __init__(self, steps: int, minutes: float | None, start: int, spent_before: float = 0.0):
        self.total, self.minutes, self.start, self.t0 = steps, minutes, start, time.time()
        self.spent_before = spent_before  # minutes of the runs this one resumes
        self.t_skip = self.t0

    def after(self, step: int) -> None:
        """Call after finishing step `step` (0-based)."""
        done = step + 1 - self.start
        if not self.minutes:
            return
        if done == self.SKIP:
            self.t_skip = time.time()
        elif done == self.SKIP + self.PROBE:
            rate = self.PROBE / (time.time() - self.t_skip)
            left = self.minutes * 60 - (time.time() - self.t0)
            self.total = max(step + 1, (step + 1 + int(rate * left)) // 100 * 100)
            log.info("budget: %.2f steps/s -> %d steps in %.1f min", rate, self.total, self.minutes)

    def minutes_spent(self) -> float:
        return round(self.spent_before + (time.time() - self.t0) / 60, 1)


class _Steps(torch.utils.data.Dataset):
    def __init__(self, make: Callable[[int], object], start: int):
        self.make, self.start = make, start

    def __len__(self) -> int:
        return 10**9

    def __getitem__(self, i: int):
        return self.make(self.start + i)


def batches(make: Callable[[int], object], start: int, workers: int = 0) -> Iterator:
    """make(start), make(start + 1), ...: in this process, or prefetched by `workers` processes."""
    if workers <= 0:
        step = start
        while True:
            yield make(step)
            step += 1
    loader = torch.utils.data.DataLoader(_Steps(make, start), batch_size=None, num_workers=workers,
                                         prefetch_factor=4)
    yield from loader


def step_fn(fn: Callable, *args) -> Callable[[int], object]:
    """A picklable `make(step)` for `batches`: fn(*args, step)."""
    return partial(fn, *args)


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, step: int, top: float = 0.999) -> None:
    decay = min(top, (1 + step) / (10 + step))
    with torch.no_grad():
        torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - decay)


def optimizer(params, lr: float, device: str, weight_decay: float = 0.0) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=device.startswith("cuda"))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


def finished(path: Path | None) -> dict | None:
    """The `info` of a stage whose checkpoint is marked done, else None (a stage with costly set-up asks first)."""
    ck = load_ckpt(path) if path is not None else None
    return ck["info"] if ck is not None and ck.get("done") else None


def train_loop(name: str, modules: dict[str, torch.nn.Module], opt: torch.optim.Optimizer,
               make: Callable[[int], object], loss_fn: Callable[[int, object], torch.Tensor], *, steps: int,
               lr: float, warmup: int = 200, minutes: float | None = None, ckpt: Path | None = None,
               workers: int = 0, clip: float | None = None, ema: Sequence[tuple[torch.nn.Module, torch.nn.Module]] = (),
               log_every: int = 100, save_every: int = 500,
               finish: Callable[[Budget], dict] | None = None) -> dict:
    """The one training loop of every stage; returns the stage's `info` (what `finish(budget)` reports).

    Resumes from `ckpt` (the `modules`' states under their keys, the optimizer, the step); a checkpoint marked
    done loads its weights into `modules` and returns its info without training. Each step: the cosine learning
    rate, `loss_fn(step, make(step))`, backward, optional gradient clipping, the optimizer, the `(ema, model)`
    updates; then the `Budget`, logging every `log_every` and saving every `save_every` steps. At the end
    `finish(budget)` (the stage's own measurements) and a checkpoint marked `done`. `ckpt=None`: no resume, no
    saving (LoRAs)."""
    ck = load_ckpt(ckpt) if ckpt is not None else None
    if ck is not None:
        for key, module in modules.items():
            module.load_state_dict(ck[key])
        if ck.get("done"):
            log.info("%s: finished before (%s)", name, ckpt)
            return ck["info"]
        opt.load_state_dict(ck["opt"])
        log.info("%s: resumed at step %d", name, ck["step"])
    start = ck["step"] if ck is not None else 0
    timed = bool(minutes) or (ck is not None and "total" in ck)
    if ck is not None and "total" in ck:  # a time budget fixed the step count before the interruption: keep it
        steps, minutes = ck["total"], None

    def save(step: int, **extra) -> None:
        if ckpt is not None:
            save_ckpt(ckpt, {**{k: m.state_dict() for k, m in modules.items()}, "opt": opt.state_dict(),
                             "step": step, "minutes": budget.minutes_spent(),
                             **({"total": budget.total} if timed else {}), **extra})

    params = [p for g in opt.param_groups for p in g["params"]]
    budget = Budget(steps, minutes, start, ck.get("minutes", 0.0) if ck is not None else 0.0)
    step = start
    for batch in batches(make, start, workers):
        if step >= budget.total:
            break
        set_lr(opt, cosine_lr(step, budget.total, lr, warmup))
        loss = loss_fn(step, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        for average, model in ema:
            ema_update(average, model, step)
        budget.after(step)
        step += 1
        if step % log_every == 0:
            log.info("%s step %d/%d loss %.5f (%.2f steps/s)", name, step, budget.total, loss.item(),
                     (step - start) / max(1e-9, time.time() - budget.t0))
        if step % save_every == 0:
            save(step)
    info = finish(budget) if finish is not None else {}
    save(budget.total, done=True, info=info)
    return info


def setup_device(device: str) -> str:
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest convolutions
    return device
