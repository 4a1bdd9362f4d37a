"""Numeric precision of training: the CPU/GPU fast path (bf16 autocast) and its off switch.

Every algorithm config has a ``precision`` field, ``"bf16"`` (default) or ``"fp32"``;
``--set precision=fp32`` turns the fast path off for one run. What runs in bf16 and what stays
fp32 is decided here and in the networks, never per call site:

- conv encoders/decoders and MLP bodies run under ``torch.autocast(dtype=bfloat16)``;
- output layers that produce values a loss compares at full scale (Q values, means and stds,
  rewards) are :class:`Fp32Linear`: they run in fp32 even inside autocast, because bf16's
  8-bit mantissa puts Q ~ 50 off by up to ~0.1;
- losses are computed in fp32 (callers cast what they reduce).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn import functional as F
from torch.optim.optimizer import register_optimizer_step_post_hook

PRECISIONS = ("bf16", "fp32")
DEFAULT_PRECISION = "bf16"


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        from lompo_bench.errors import choice_error

        raise choice_error("precision", precision, PRECISIONS)
    return precision


def autocast(precision: str, device: torch.device | str = "cpu"):
    """The context a training or acting step runs in: bf16 autocast, or nothing for fp32."""
    if check_precision(precision) == "fp32":
        return contextlib.nullcontext()
    device_type = torch.device(device).type
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16)


def _clear_autocast_cache(optimizer, args, kwargs) -> None:
    torch.clear_autocast_cache()


# Autocast caches a parameter's bf16 copy until the context exits, so an optimizer step inside
# one context (an update loop; an actor used after its critic's step) would leave later ops
# reading the stale copy. Clearing the cache after every optimizer step keeps them exact; the
# cache itself is worth keeping (CQL's update measured 2.7x slower without it).
register_optimizer_step_post_hook(_clear_autocast_cache)


def acting_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """The precision a policy acts in, one observation at a time: the training precision on a
    GPU, fp32 on CPU (at batch 1 the casts cost more than bf16 saves: LOMPO's policy step
    measured 1.4x slower in bf16 on CPU)."""
    return check_precision(precision) if torch.device(device).type == "cuda" else "fp32"


class Fp32Linear(nn.Linear):
    """A Linear layer that always computes in fp32, also inside bf16 autocast.

    Same parameters and state-dict keys as ``nn.Linear``, so it is a drop-in output layer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return F.linear(x.float(), self.weight, self.bias)
