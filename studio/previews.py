"""When the chat shows a live preview: from the first step, as many as fit in a tenth of the generation's time.

A preview is a full VAE decode of the in-progress latents. For the built-in model on a busy CPU it costs more
than a sampling step (75 ms against 60), so four fixed previews a run (the old rule: at every quarter, the first
at 25%) made a 0.6 s chat generation ~40% slower than the same request through the API, and the first one came
late. Now each run plans its previews at its first step, when the step's time is known: the number that fits in
SHARE of the expected sampling time at this model's last measured decode cost (a decode is assumed to cost one
step until measured), at most MOST, spread evenly from step 1. A short run gets none: its image is about to
arrive anyway, and the step counter shows progress; so does any run expected to take under MIN_RUN_S (a
preview is also a redraw of the whole chat, and on a busy 2-core machine redraws made a 64x64 chat reply take
2.2x the API's time at p90, 1.6x without them). No gradio, no torch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

SHARE = 0.1  # previews may add at most this share to a generation's sampling time
MOST = 4  # previews in one run, at most
MIN_RUN_S = 1.5  # shorter runs get none: the image is about to arrive, and each preview is a redraw of the chat


@dataclass
class PreviewCosts:
    """The last measured preview decode, in seconds, per model; shared by every session of the studio."""

    seconds: dict[str, float] = field(default_factory=dict)
    step_s: dict[str, float] = field(default_factory=dict)  # the last run's time per sampling step, per model
    min_run_s: float = MIN_RUN_S  # runs expected to sample faster than this get no previews

    def plan(self, model: str) -> Plan:
        """A plan for one run of `model` whose sampling starts now."""
        return Plan(self, model)


@dataclass
class Plan:
    """One run's previews: `due(step, total)` at each step; `measured(seconds)` after each decode."""

    costs: PreviewCosts
    model: str
    started: float = field(default_factory=time.perf_counter)
    steps: frozenset[int] | None = None  # decided at the first step
    first: tuple[int, float] | None = None  # (step, time) of the first step seen

    def due(self, step: int, total: int) -> bool:
        now = time.perf_counter()
        if self.steps is None:
            # the first step's time includes encoding the prompt: the last run's steps tell better when known
            per_step = self.costs.step_s.get(self.model, (now - self.started) / max(1, step))
            self.steps, self.first = self.decide(step, total, per_step), (step, now)
        elif step > self.first[0]:
            self.costs.step_s[self.model] = (now - self.first[1]) / (step - self.first[0])
        return step in self.steps

    def decide(self, first: int, total: int, per_step: float) -> frozenset[int]:
        if per_step * total < self.costs.min_run_s:
            return frozenset()
        cost = self.costs.seconds.get(self.model, per_step)
        left = total - first  # steps whose latents are still in progress (the last is the image)
        n = min(MOST, left, int(SHARE * per_step * total / cost) if cost > 0 else MOST)
        if n <= 0:
            return frozenset()
        gap = left / n
        return frozenset(first + int(i * gap) for i in range(n))

    def measured(self, seconds: float) -> None:
        self.costs.seconds[self.model] = seconds
