"""The optimizer step every trainer takes: mixed precision, gradient scaling, clipping and accumulation.

Mixed precision runs on GPU only (bf16, or fp16 with a grad scaler); on CPU autocast would only slow
training, so CPU runs are float32 whatever the config says.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
from timm.optim import param_groups_weight_decay
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def autocast(device: torch.device, amp: str) -> AbstractContextManager:
    """Mixed precision on GPU (bf16 or fp16); float32 on CPU."""
    if device.type != "cuda" or amp == "none":
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def precision(device: torch.device, amp: str) -> str:
    """What :func:`autocast` does, in words."""
    if device.type != "cuda" or amp == "none":
        return "float32"
    return "bf16 autocast" if amp == "bf16" else "fp16 autocast + grad scaler"


def adamw(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with no weight decay on 1-D parameters (norms, biases) nor on what the model lists in
    ``no_weight_decay()`` (PVTv1's position embeddings and class token): timm's groups, as DeiT and the
    official configs' ``paramwise_cfg``."""
    no_decay = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    groups = param_groups_weight_decay(model, weight_decay, no_weight_decay_list=no_decay)
    return torch.optim.AdamW(groups, lr=lr)


def adamw_by_name(model: nn.Module, lr: float, weight_decay: float, no_decay: Sequence[str] = ()) -> torch.optim.AdamW:
    """AdamW with weight decay on every parameter but those whose name contains one of ``no_decay``: MMCV's
    ``paramwise_cfg=dict(custom_keys={key: dict(decay_mult=0.)})``, as the official detection configs set it
    (``"norm"`` in the 3x ones, nothing in the 1x ones)."""
    if not no_decay:
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    decayed, exempt = [], []
    for name, parameter in model.named_parameters():
        (exempt if any(key in name for key in no_decay) else decayed).append(parameter)
    return torch.optim.AdamW([{"params": decayed}, {"params": exempt, "weight_decay": 0.0}], lr=lr,
                             weight_decay=weight_decay)


class OptimizerStep:
    """Backward and optimizer step for a loss: ``step(loss)`` scales it for fp16, accumulates gradients over
    ``accumulate_steps`` calls, then unscales, clips and steps, and says whether the weights moved."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        amp: str,
        *,
        clip_grad: float | None = None,
        accumulate_steps: int = 1,
    ) -> None:
        self.model, self.optimizer, self.device, self.amp = model, optimizer, device, amp
        self.clip_grad, self.accumulate_steps = clip_grad, accumulate_steps
        self.scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and amp == "fp16")
        self._pending = 0  # backward passes since the last optimizer step

    def autocast(self) -> AbstractContextManager:
        return autocast(self.device, self.amp)

    @property
    def precision(self) -> str:
        return precision(self.device, self.amp)

    @property
    def lr(self) -> float:
        """The lr of the next step (first parameter group)."""
        return self.optimizer.param_groups[0]["lr"]

    @contextmanager
    def accumulating(self) -> Iterator[None]:
        """Around forward and backward: DistributedDataParallel skips its gradient all-reduce on every
        batch but the last of an accumulation (it must see the forward pass too)."""
        last = self._pending + 1 == self.accumulate_steps
        if isinstance(self.model, DistributedDataParallel) and not last:
            with self.model.no_sync():
                yield
        else:
            yield

    def step(self, loss: torch.Tensor) -> bool:
        """Backward of ``loss``; every ``accumulate_steps``-th call also the optimizer step (True then)."""
        if self._pending == 0:
            self.optimizer.zero_grad(set_to_none=True)
        # Gradients are summed over the accumulated batches, so each contributes its share of the mean.
        scaled = loss / self.accumulate_steps if self.accumulate_steps > 1 else loss
        self.scaler.scale(scaled).backward()
        self._pending += 1
        if self._pending < self.accumulate_steps:
            return False
        self._pending = 0
        if self.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the fp16-scaled ones
            nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return True

    def state_dict(self) -> dict[str, Any]:
        return self.scaler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scaler.load_state_dict(state)
