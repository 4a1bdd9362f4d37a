"""Vector network pieces shared by every algorithm in the suite (LOMPO/LMBRL, Offline SLAC, CQL, BC).

Nothing here knows about a particular method. Images live in `encoders.py`, agents (SAC and
the deterministic actor-critic) in `agents.py`.

`mlp(in_dim, out_dim, hidden, layers, act, fp32_out=False)`: `layers` hidden layers of width `hidden`.
`EnsembleLinear(members, in_dim, out_dim, fp32=False)`: K independent linear layers applied in
one batched matmul (used by the twin critic and by the latent model's K forward heads).
Under the bf16 fast path (`precision.py`) bodies run in bf16 and every output layer that feeds
a loss at full scale (Q values, the actor's mean/log_std) is built with `fp32_out=True`: it
computes in fp32 and returns fp32, whatever the autocast.
`TanhGaussianActor`: SAC's squashed Gaussian policy (`sample`, `log_prob`, `mode`).
`TwinQ`: two Q networks evaluated together in one batched matmul.
`adam(params, lr, ...)`: the Adam every algorithm here uses (fused kernel).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from .precision import Fp32Linear

ACTIVATIONS = {"relu": nn.ReLU, "elu": nn.ELU, "silu": nn.SiLU, "tanh": nn.Tanh, "leaky_relu": nn.LeakyReLU}


# The reference side of benchmarks/bench_fastpath.py builds its optimizers with this off.
FUSED_ADAM = True


def adam(params, lr: float, **kwargs) -> torch.optim.Adam:
    """torch's Adam with its fused kernel: the same update rule in one pass per parameter
    group instead of a dozen foreach passes; on the small networks of the latent agents the
    optimizer step is a sixth of an update, and fusing it makes the whole update ~1.2x faster on
    one CPU core (benchmarks/bench_fastpath.py). The fused kernel exists for CPU and CUDA floats."""
    params = list(params)
    fused = FUSED_ADAM and all(p.dtype.is_floating_point and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, lr=lr, fused=fused or None, **kwargs)


def activation(name: str, inplace: bool = False) -> nn.Module:
    """`inplace`: overwrite the input (where the activation has an in-place form). Safe after a
    layer whose backward never reads its own output (a convolution, a linear layer), and it
    saves one activation-sized allocation and pass per layer."""
    if name not in ACTIVATIONS:
        from lompo_bench.errors import choice_error

        raise choice_error("activation", name, ACTIVATIONS)
    cls = ACTIVATIONS[name]
    return cls(inplace=True) if inplace and name != "tanh" else cls()



# --------------------------------------------------------------------------------------------
# Vectors


def mlp(in_dim: int, out_dim: int, hidden: int = 256, layers: int = 2, act: str = "elu",
        out_act: Optional[str] = None, fp32_out: bool = False) -> nn.Sequential:
    """`layers` hidden layers of width `hidden` with `act`, then a linear output layer.

    "Critic 3 x 256" in the paper is `mlp(in, 1, 256, 3)`; `layers=0` is a single linear map.
    `fp32_out`: the output layer is an `Fp32Linear` (same parameters and state-dict keys)."""
    dims = [in_dim] + [hidden] * layers
    modules: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        modules += [nn.Linear(a, b), activation(act)]
    modules.append((Fp32Linear if fp32_out else nn.Linear)(dims[-1], out_dim))
    if out_act is not None:
        modules.append(activation(out_act))
    return nn.Sequential(*modules)


class EnsembleLinear(nn.Module):
    """K independent linear layers evaluated as one batched matmul.

    Input (K, N, in_dim) -> (K, N, out_dim). Each member is initialised like `nn.Linear`.
    `fp32=True` makes it an output layer of the fast path: fp32 compute and result inside bf16
    autocast (same parameters either way)."""

    def __init__(self, members: int, in_dim: int, out_dim: int, fp32: bool = False):
        super().__init__()
        self.members, self.in_dim, self.out_dim, self.fp32 = members, in_dim, out_dim, fp32
        bound = 1.0 / math.sqrt(in_dim)
        self.weight = nn.Parameter(torch.empty(members, in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(members, 1, out_dim).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fp32:
            with torch.autocast(device_type=x.device.type, enabled=False):
                return torch.baddbmm(self.bias, x.float(), self.weight)
        return torch.baddbmm(self.bias.to(x.dtype), x, self.weight.to(x.dtype))

    def extra_repr(self) -> str:
        return f"members={self.members}, in_dim={self.in_dim}, out_dim={self.out_dim}" + (", fp32" if self.fp32 else "")


def ensemble_mlp(members: int, in_dim: int, out_dim: int, hidden: int, layers: int, act: str = "elu",
                 fp32_out: bool = False) -> nn.Sequential:
    """`mlp` with K independent members: (K, N, in_dim) -> (K, N, out_dim)."""
    dims = [in_dim] + [hidden] * layers
    modules: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        modules += [EnsembleLinear(members, a, b), activation(act)]
    modules.append(EnsembleLinear(members, dims[-1], out_dim, fp32=fp32_out))
    return nn.Sequential(*modules)


class TanhGaussianActor(nn.Module):
    """SAC's squashed Gaussian policy over actions in [-1, 1] (authors: 4 x 256).

    - `sample(features) -> (action, log_prob)`: reparameterised, with the tanh correction;
    - `log_prob(features, action)`: log-density of given actions (clipped inside (-1, 1));
    - `mode(features)`: the deterministic action tanh(mean), for evaluation."""

    LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0

    def __init__(self, in_dim: int, action_dim: int, hidden: int = 256, layers: int = 4, act: str = "relu"):
        super().__init__()
        self.net = mlp(in_dim, 2 * action_dim, hidden, layers, act, fp32_out=True)  # mean, log_std in fp32
        self.action_dim = action_dim

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.net(features).chunk(2, -1)
        # A smooth squash of log_std into its range keeps gradients alive at the bounds.
        log_std = self.LOG_STD_MIN + 0.5 * (self.LOG_STD_MAX - self.LOG_STD_MIN) * (torch.tanh(log_std) + 1)
        return mean, log_std

    @staticmethod
    def _squashed_log_prob(pre_tanh: torch.Tensor, mean, log_std, std=None) -> torch.Tensor:
        # Gaussian log-density written out (torch.distributions.Normal's, without its argument
        # checks: they cost a host-side reduction per call, 4% of a latent SAC update).
        z = (pre_tanh - mean) / (log_std.exp() if std is None else std)
        log_normal = -0.5 * z.square() - log_std - 0.5 * math.log(2 * math.pi)
        # log|d tanh(u)/du| = 2 * (log 2 - u - softplus(-2u)), numerically stable form.
        correction = 2.0 * (math.log(2.0) - pre_tanh - F.softplus(-2.0 * pre_tanh))
        return (log_normal - correction).sum(-1)

    def sample(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self(features)
        std = log_std.exp()
        pre_tanh = mean + std * torch.randn_like(mean)
        return torch.tanh(pre_tanh), self._squashed_log_prob(pre_tanh, mean, log_std, std)

    def log_prob(self, features: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        mean, log_std = self(features)
        eps = 1e-6
        pre_tanh = torch.atanh(action.clamp(-1 + eps, 1 - eps))
        return self._squashed_log_prob(pre_tanh, mean, log_std)

    def mode(self, features: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self(features)[0])


class TwinQ(nn.Module):
    """Two Q networks Q(features, action) computed in one batched matmul (authors: 3 x 256).

    `forward(features (..., F), action (..., A)) -> (q1, q2)`, each (...)."""

    def __init__(self, in_dim: int, action_dim: int, hidden: int = 256, layers: int = 3, act: str = "relu"):
        super().__init__()
        self.net = ensemble_mlp(2, in_dim + action_dim, 1, hidden, layers, act, fp32_out=True)  # Q in fp32

    def forward(self, features: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([features, action.to(features.dtype)], -1)
        batch_shape = x.shape[:-1]
        q = self.net(x.reshape(1, -1, x.shape[-1]).expand(2, -1, -1)).squeeze(-1)
        return q[0].reshape(batch_shape), q[1].reshape(batch_shape)


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """target <- (1 - tau) * target + tau * source, parameter-wise (Polyak averaging)."""
    t_params, s_params = list(target.parameters()), list(source.parameters())
    torch._foreach_lerp_(t_params, s_params, tau)
