"""Agents that learn on feature vectors: SAC (and, beside it, the other actor-critics).

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

from .networks import TanhGaussianActor, TwinQ, soft_update



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
