"""Learning-rate factors per optimizer step, for ``torch.optim.lr_scheduler.LambdaLR``: MMDetection's step
policy and MMSegmentation's poly policy, each with a linear warm-up. (Classification uses timm's cosine
schedule, :mod:`pvtv2.classification.recipe`.)"""

from __future__ import annotations


class StepWithWarmup:
    """lr factor of iteration t: a linear warm-up from ``warmup_ratio`` over ``warmup_iters``, times
    ``gamma`` for each step iteration passed (MMDetection's ``step`` policy with linear warm-up)."""

    def __init__(self, steps: list[int], gamma: float, warmup_iters: int, warmup_ratio: float) -> None:
        self.steps, self.gamma, self.warmup_iters, self.warmup_ratio = steps, gamma, warmup_iters, warmup_ratio

    def __call__(self, t: int) -> float:
        decay = self.gamma ** sum(t >= s for s in self.steps)
        if t >= self.warmup_iters:
            return decay
        return decay * (self.warmup_ratio + (1 - self.warmup_ratio) * t / self.warmup_iters)


class PolySchedule:
    """lr factor of iteration t: (1 - t / total) ** power, times a linear ramp over the first ``warmup`` iterations."""

    def __init__(self, total: int, power: float, warmup: int = 0) -> None:
        self.total, self.power, self.warmup = total, power, warmup

    def __call__(self, t: int) -> float:
        factor = (1 - min(t, self.total) / self.total) ** self.power
        return factor * min(1.0, (t + 1) / self.warmup) if self.warmup > 0 else factor
