"""Network pieces shared by every algorithm in the suite (LOMPO/LMBRL, Offline SLAC, CQL, BC).

Nothing here knows about a particular method; each algorithm composes these pieces in its own
module. Sizes follow the paper's Appendix C and the authors' Dreamer-style code.

Images
    `preprocess_images(uint8 (..., H, W, 3)) -> float (..., 3, H, W)` in [-0.5, 0.5].
    `ConvEncoder(image_size, depth=32)`: stride-2, kernel-4 convolutions without padding; 64 px
    gets 4 layers [32, 64, 128, 256] (64 -> 31 -> 14 -> 6 -> 2), 128 px gets 5 layers
    [32, 64, 128, 256, 256] (128 -> 63 -> 30 -> 14 -> 6 -> 2). Other sizes >= 32 get layers
    added while the feature map stays at least 2x2. `.out_dim` is the flattened feature size.
    `ConvDecoder(feature_dim, image_size, depth=32)`: Dreamer's decoder, a dense projection to a
    1x1 map followed by stride-2 transposed convolutions, returning the *mean* image (the
    likelihood is a unit-variance Gaussian, so the log-likelihood is -0.5 * squared error).
    See `ConvDecoder` for the exact kernel arithmetic per size.
    `ObservationEncoder(image_shape, proprio_dim)`: conv features of the image, concatenated with
    an MLP embedding of proprioception where the task has it.

Vectors
    `mlp(in_dim, out_dim, hidden, layers, act)`: `layers` hidden layers of width `hidden`.
    `EnsembleLinear(members, in_dim, out_dim)`: K independent linear layers applied in one
    batched matmul (used by the twin critic and by the latent model's K forward heads).
    `TanhGaussianActor`: SAC's squashed Gaussian policy (`sample`, `log_prob`, `mode`).
    `TwinQ`: two Q networks evaluated together in one batched matmul.

SAC
    `SAC(feature_dim, action_dim, config)`: actor, twin critic, target critic, entropy
    temperature and their optimizers. `SAC.update(SACBatch, ...)` does one critic step, one actor
    step, one temperature step and a soft target update on *any* feature vectors, so the three
    model-based/model-free methods share one implementation:
      - LOMPO trains it on latent features (real and imagined), everything detached;
      - CQL passes its image encoder's parameters as `critic_extra_params` (the critic loss
        backpropagates into the encoder) and adds its conservative term via `extra_critic_loss`;
      - SLAC feeds latent samples to the critic (`obs`/`next_obs`) and history features to the
        actor (`actor_obs`/`next_actor_obs`).
    Metrics come back as detached tensors (no device sync per update); call `float()` to log.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch
from torch import nn
from torch.nn import functional as F

ACTIVATIONS = {"relu": nn.ReLU, "elu": nn.ELU, "silu": nn.SiLU, "tanh": nn.Tanh, "leaky_relu": nn.LeakyReLU}


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        from lompo_bench.errors import choice_error

        raise choice_error("activation", name, ACTIVATIONS)
    return ACTIVATIONS[name]()


# --------------------------------------------------------------------------------------------
# Images


def preprocess_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float32 (..., 3, H, W) scaled to [-0.5, 0.5] (the authors' scaling).

    Float input is taken as already in [0, 255] pixel units (e.g. a float copy of the frames)."""
    x = images.float() / 255.0 - 0.5
    return x.movedim(-1, -3)


def _check_image_size(image_size: int) -> int:
    if not isinstance(image_size, int) or image_size < 32:
        from lompo_bench.errors import UserError

        raise UserError(f"image size {image_size!r} is not supported; accepted: an integer >= 32 (the paper uses 64 and 128)")
    return image_size


def encoder_layer_count(image_size: int) -> int:
    """Stride-2 kernel-4 layers (no padding) while the feature map stays at least 2x2:
    32 -> 3, 64 -> 4 (the paper's Walker encoder), 128 -> 5 (D'Claw/Adroit/Door)."""
    size, layers = _check_image_size(image_size), 0
    while (size - 4) // 2 + 1 >= 2:
        size = (size - 4) // 2 + 1
        layers += 1
    return layers


class ConvEncoder(nn.Module):
    """Image -> flat features. Channels depth * [1, 2, 4, 8, 8, ...], kernel 4, stride 2.

    Input: uint8 (..., H, W, 3) with any leading batch dims (pass `preprocess=False` to feed
    already-preprocessed float (..., 3, H, W)). Output: (..., out_dim)."""

    def __init__(self, image_size: int, depth: int = 32, act: str = "relu"):
        super().__init__()
        self.image_size = image_size
        n = encoder_layer_count(image_size)
        channels = [depth * min(2**i, 8) for i in range(n)]
        layers, in_ch, size = [], 3, image_size
        for ch in channels:
            layers += [nn.Conv2d(in_ch, ch, kernel_size=4, stride=2), activation(act)]
            in_ch, size = ch, (size - 4) // 2 + 1
        self.net = nn.Sequential(*layers)
        self.out_dim = in_ch * size * size
        self.channels = channels

    def forward(self, images: torch.Tensor, preprocess: bool = True) -> torch.Tensor:
        x = preprocess_images(images) if preprocess else images
        batch_shape = x.shape[:-3]
        x = self.net(x.reshape(-1, *x.shape[-3:]))
        return x.reshape(*batch_shape, self.out_dim)


def decoder_layout(image_size: int, depth: int = 32) -> list[tuple[int, int, int]]:
    """(out_channels, kernel, padding) per transposed-conv layer, all stride 2, from a 1x1 map.

    32 px:  kernels [5, 6, 6]            1 -> 5 -> 14 -> 32
    64 px:  kernels [5, 5, 6, 6]         1 -> 5 -> 13 -> 30 -> 64    (Dreamer, paper Appendix C)
    128 px: kernels [5, 5, 6, 6, 4 (p1)] 1 -> 5 -> 13 -> 30 -> 64 -> 128
    The paper lists kernels [5, 5, 5, 4, 4] for 128 px, which from a 1x1 map gives
    1 -> 5 -> 13 -> 29 -> 60 -> 122, not 128, for any stride-2 padding; we keep the paper's
    five layers and channels [128, 64, 32, 32, 3] and use Dreamer's exact 64 px arithmetic
    followed by one exact doubling layer (kernel 4, padding 1). Larger powers of two add more
    doubling layers; other sizes decode to the next power of two down and are resized
    bilinearly to the exact size (see `ConvDecoder`)."""
    size = 2 ** int(math.floor(math.log2(_check_image_size(image_size))))
    n = int(math.log2(size)) - 2  # 32 -> 3, 64 -> 4, 128 -> 5
    if size == 32:
        kernels = [(5, 0), (6, 0), (6, 0)]
    else:
        kernels = [(5, 0), (5, 0), (6, 0), (6, 0)] + [(4, 1)] * (n - 4)
    hidden = [4 * depth, 2 * depth, depth] + [depth] * max(0, n - 4)
    channels = hidden[: n - 1] + [3]
    return [(ch, k, p) for ch, (k, p) in zip(channels, kernels)]


class ConvDecoder(nn.Module):
    """Features (..., feature_dim) -> mean image (..., 3, H, W) in the preprocessed scale.

    Dense projection to a (32 * depth, 1, 1) map, then the transposed convolutions of
    `decoder_layout`. Training uses a unit-variance Gaussian likelihood around this mean,
    compared against `preprocess_images(target)`; `to_uint8` turns a mean into a frame."""

    def __init__(self, feature_dim: int, image_size: int, depth: int = 32, act: str = "relu"):
        super().__init__()
        self.image_size = image_size
        self.embed_channels = 32 * depth
        self.project = nn.Linear(feature_dim, self.embed_channels)
        layers, in_ch, size = [], self.embed_channels, 1
        layout = decoder_layout(image_size, depth)
        for i, (ch, k, p) in enumerate(layout):
            layers.append(nn.ConvTranspose2d(in_ch, ch, kernel_size=k, stride=2, padding=p))
            if i < len(layout) - 1:
                layers.append(activation(act))
            in_ch, size = ch, (size - 1) * 2 - 2 * p + k
        self.net = nn.Sequential(*layers)
        self.decoded_size = size  # equals image_size for powers of two

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        batch_shape = features.shape[:-1]
        x = self.project(features).reshape(-1, self.embed_channels, 1, 1)
        x = self.net(x)
        if self.decoded_size != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return x.reshape(*batch_shape, 3, self.image_size, self.image_size)

    @staticmethod
    def to_uint8(mean: torch.Tensor) -> torch.Tensor:
        """(..., 3, H, W) mean in [-0.5, 0.5] -> uint8 (..., H, W, 3)."""
        return ((mean.float().clamp(-0.5, 0.5) + 0.5) * 255.0).round().to(torch.uint8).movedim(-3, -1)


def image_log_likelihood(mean: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Unit-variance Gaussian log-likelihood per image (summed over pixels, constants dropped).

    mean: (..., 3, H, W) decoder output; images: uint8 (..., H, W, 3). Returns (...)."""
    target = preprocess_images(images)
    return -0.5 * (mean.float() - target).pow(2).flatten(-3).sum(-1)


class ObservationEncoder(nn.Module):
    """Observation dict -> features: conv features of `image`, plus an MLP embedding of
    `proprio` concatenated to them where the task has proprioception (proprio_dim > 0).

    Inputs are tensors with any leading batch dims: `image` uint8 (..., H, W, 3), `proprio`
    float (..., P). `.out_dim` = conv features + proprio embedding size."""

    def __init__(self, image_shape, proprio_dim: int = 0, depth: int = 32, proprio_hidden: int = 256,
                 proprio_layers: int = 2, proprio_out: int = 128, act: str = "relu"):
        super().__init__()
        image_size = int(image_shape[0])
        if tuple(image_shape) != (image_size, image_size, 3):
            from lompo_bench.errors import UserError

            raise UserError(f"image shape {tuple(image_shape)} is not supported; accepted: square RGB (S, S, 3)")
        self.conv = ConvEncoder(image_size, depth, act=act)
        self.proprio_dim = int(proprio_dim)
        self.proprio = (mlp(self.proprio_dim, proprio_out, proprio_hidden, proprio_layers, act="elu")
                        if self.proprio_dim else None)
        self.out_dim = self.conv.out_dim + (proprio_out if self.proprio_dim else 0)

    def forward(self, obs: dict) -> torch.Tensor:
        features = self.conv(obs["image"])
        if self.proprio is not None:
            features = torch.cat([features, self.proprio(obs["proprio"].float())], -1)
        return features


# --------------------------------------------------------------------------------------------
# Vectors


def mlp(in_dim: int, out_dim: int, hidden: int = 256, layers: int = 2, act: str = "elu",
        out_act: Optional[str] = None) -> nn.Sequential:
    """`layers` hidden layers of width `hidden` with `act`, then a linear output layer.

    "Critic 3 x 256" in the paper is `mlp(in, 1, 256, 3)`; `layers=0` is a single linear map."""
    dims = [in_dim] + [hidden] * layers
    modules: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        modules += [nn.Linear(a, b), activation(act)]
    modules.append(nn.Linear(dims[-1], out_dim))
    if out_act is not None:
        modules.append(activation(out_act))
    return nn.Sequential(*modules)


class EnsembleLinear(nn.Module):
    """K independent linear layers evaluated as one batched matmul.

    Input (K, N, in_dim) -> (K, N, out_dim). Each member is initialised like `nn.Linear`."""

    def __init__(self, members: int, in_dim: int, out_dim: int):
        super().__init__()
        self.members, self.in_dim, self.out_dim = members, in_dim, out_dim
        bound = 1.0 / math.sqrt(in_dim)
        self.weight = nn.Parameter(torch.empty(members, in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(members, 1, out_dim).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias.to(x.dtype), x, self.weight.to(x.dtype))

    def extra_repr(self) -> str:
        return f"members={self.members}, in_dim={self.in_dim}, out_dim={self.out_dim}"


def ensemble_mlp(members: int, in_dim: int, out_dim: int, hidden: int, layers: int, act: str = "elu") -> nn.Sequential:
    """`mlp` with K independent members: (K, N, in_dim) -> (K, N, out_dim)."""
    dims = [in_dim] + [hidden] * layers
    modules: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        modules += [EnsembleLinear(members, a, b), activation(act)]
    modules.append(EnsembleLinear(members, dims[-1], out_dim))
    return nn.Sequential(*modules)


class TanhGaussianActor(nn.Module):
    """SAC's squashed Gaussian policy over actions in [-1, 1] (authors: 4 x 256).

    - `sample(features) -> (action, log_prob)`: reparameterised, with the tanh correction;
    - `log_prob(features, action)`: log-density of given actions (clipped inside (-1, 1));
    - `mode(features)`: the deterministic action tanh(mean), for evaluation."""

    LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0

    def __init__(self, in_dim: int, action_dim: int, hidden: int = 256, layers: int = 4, act: str = "relu"):
        super().__init__()
        self.net = mlp(in_dim, 2 * action_dim, hidden, layers, act)
        self.action_dim = action_dim

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.net(features).chunk(2, -1)
        # A smooth squash of log_std into its range keeps gradients alive at the bounds.
        log_std = self.LOG_STD_MIN + 0.5 * (self.LOG_STD_MAX - self.LOG_STD_MIN) * (torch.tanh(log_std) + 1)
        return mean, log_std

    @staticmethod
    def _squashed_log_prob(pre_tanh: torch.Tensor, mean, log_std) -> torch.Tensor:
        normal = torch.distributions.Normal(mean, log_std.exp())
        # log|d tanh(u)/du| = 2 * (log 2 - u - softplus(-2u)), numerically stable form.
        correction = 2.0 * (math.log(2.0) - pre_tanh - F.softplus(-2.0 * pre_tanh))
        return (normal.log_prob(pre_tanh) - correction).sum(-1)

    def sample(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self(features)
        pre_tanh = mean + log_std.exp() * torch.randn_like(mean)
        return torch.tanh(pre_tanh), self._squashed_log_prob(pre_tanh, mean, log_std)

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
        self.net = ensemble_mlp(2, in_dim + action_dim, 1, hidden, layers, act)

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


# --------------------------------------------------------------------------------------------
# SAC


@dataclass
class SACConfig:
    """SAC hyperparameters (authors' LOMPO agent: lr 3e-4, tau 5e-3, grad clip 100)."""

    gamma: float = 0.99
    tau: float = 5e-3
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4
    init_alpha: float = 0.1
    target_entropy: Optional[float] = None  # None: -action_dim
    grad_clip: float = 100.0
    actor_hidden: int = 256
    actor_layers: int = 4
    critic_hidden: int = 256
    critic_layers: int = 3
    act: str = "relu"

    @classmethod
    def from_config(cls, config) -> "SACConfig":
        """The SAC settings of an algorithm's config: its fields that share SACConfig's names
        (every algorithm spells them the same way), defaults for the rest."""
        return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(cls) if hasattr(config, f.name)})


@dataclass
class SACBatch:
    """One SAC batch of feature vectors (float tensors on the agent's device).

    obs/next_obs: what the critic sees (N, F); action (N, A); reward (N,); not_done (N,) is
    1 - terminal (timeouts are not terminal). actor_obs/next_actor_obs: what the actor sees
    (SLAC: history features), defaulting to obs/next_obs. `obs` may carry gradients into a
    shared encoder (CQL); actor inputs and all next-step inputs are used detached."""

    obs: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    next_obs: torch.Tensor
    not_done: torch.Tensor
    actor_obs: Optional[torch.Tensor] = None
    next_actor_obs: Optional[torch.Tensor] = None


# extra_critic_loss(sac, batch, q1, q2) -> (loss term added to the critic loss, metrics)
ExtraCriticLoss = Callable[["SAC", SACBatch, torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict]]


class SAC(nn.Module):
    """Soft actor-critic on feature vectors, with automatic entropy tuning.

    Holds `actor`, `critic`, `critic_target`, `log_alpha` and three Adam optimizers. Pass
    `critic_extra_params` (e.g. a shared image encoder) to train them with the critic loss, and
    `actor_in_dim` when the actor sees different features than the critic (SLAC)."""

    def __init__(self, feature_dim: int, action_dim: int, config: SACConfig = SACConfig(),
                 actor_in_dim: Optional[int] = None, critic_extra_params: Iterable[nn.Parameter] = ()):
        super().__init__()
        self.config = config
        self.actor = TanhGaussianActor(actor_in_dim or feature_dim, action_dim, config.actor_hidden,
                                       config.actor_layers, config.act)
        self.critic = TwinQ(feature_dim, action_dim, config.critic_hidden, config.critic_layers, config.act)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(config.init_alpha)))
        self.target_entropy = float(config.target_entropy if config.target_entropy is not None else -action_dim)
        self._critic_extra = list(critic_extra_params)
        self.actor_optim = torch.optim.Adam(self.actor.parameters(), lr=config.actor_lr)
        self.critic_optim = torch.optim.Adam(list(self.critic.parameters()) + self._critic_extra, lr=config.critic_lr)
        self.alpha_optim = torch.optim.Adam([self.log_alpha], lr=config.alpha_lr)

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.exp().detach()

    def critic_loss(self, batch: SACBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """Clipped double-Q TD loss. Returns (loss, q1, q2, metrics)."""
        with torch.no_grad():
            next_actor_obs = batch.next_actor_obs if batch.next_actor_obs is not None else batch.next_obs
            next_action, next_log_prob = self.actor.sample(next_actor_obs.detach())
            tq1, tq2 = self.critic_target(batch.next_obs.detach(), next_action)
            next_v = torch.min(tq1, tq2) - self.alpha * next_log_prob
            target = batch.reward + self.config.gamma * batch.not_done * next_v
        q1, q2 = self.critic(batch.obs, batch.action)
        loss = 0.5 * ((q1 - target).pow(2).mean() + (q2 - target).pow(2).mean())
        return loss, q1, q2, {"critic_loss": loss.detach(), "q": q1.detach().mean(), "target_q": target.mean()}

    def actor_loss(self, batch: SACBatch) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """max E[min Q(s, a) - alpha log pi(a|s)], a ~ pi. Returns (loss, log_prob, metrics)."""
        actor_obs = (batch.actor_obs if batch.actor_obs is not None else batch.obs).detach()
        action, log_prob = self.actor.sample(actor_obs)
        q1, q2 = self.critic(batch.obs.detach(), action)
        loss = (self.alpha * log_prob - torch.min(q1, q2)).mean()
        return loss, log_prob, {"actor_loss": loss.detach(), "entropy": -log_prob.detach().mean()}

    def _step(self, optim: torch.optim.Optimizer, loss: torch.Tensor, params: list) -> torch.Tensor:
        optim.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)
        optim.step()
        return norm.detach()

    def update(self, batch: SACBatch, extra_critic_loss: Optional[ExtraCriticLoss] = None,
               update_actor: bool = True) -> dict[str, torch.Tensor]:
        """One SAC iteration: critic (+ extra term), actor, temperature, soft target update."""
        loss, q1, q2, metrics = self.critic_loss(batch)
        if extra_critic_loss is not None:
            extra, extra_metrics = extra_critic_loss(self, batch, q1, q2)
            loss = loss + extra
            metrics.update(extra_metrics)
        critic_params = list(self.critic.parameters()) + self._critic_extra
        metrics["critic_grad_norm"] = self._step(self.critic_optim, loss, critic_params)
        if update_actor:
            # The critic is frozen while the actor's loss backpropagates through it.
            self.critic.requires_grad_(False)
            try:
                actor_loss, log_prob, actor_metrics = self.actor_loss(batch)
                metrics.update(actor_metrics)
                metrics["actor_grad_norm"] = self._step(self.actor_optim, actor_loss, list(self.actor.parameters()))
            finally:
                self.critic.requires_grad_(True)
            alpha_loss = -(self.log_alpha * (log_prob.detach() + self.target_entropy)).mean()
            self.alpha_optim.zero_grad(set_to_none=True)
            alpha_loss.backward()
            self.alpha_optim.step()
            metrics["alpha"] = self.alpha
        soft_update(self.critic_target, self.critic, self.config.tau)
        return metrics

    def optim_state_dict(self) -> dict:
        return {"actor": self.actor_optim.state_dict(), "critic": self.critic_optim.state_dict(),
                "alpha": self.alpha_optim.state_dict()}

    def load_optim_state_dict(self, state: dict) -> None:
        self.actor_optim.load_state_dict(state["actor"])
        self.critic_optim.load_state_dict(state["critic"])
        self.alpha_optim.load_state_dict(state["alpha"])
