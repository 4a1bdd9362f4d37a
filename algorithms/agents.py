"""Agents that learn on feature vectors: SAC and the LOMPO authors' deterministic actor-critic.

Both hold a twin critic with a target copy and share what is really the same (`TwinCriticAgent`):
the critic and its target, the Polyak target update, the optimizer step with gradient-norm
clipping, the batch type (`SACBatch`) and the optimizer state dicts.

`SAC(feature_dim, action_dim, config)`: actor, twin critic, target critic, entropy
temperature and their optimizers. `SAC.update(SACBatch, ...)` does one critic step, one actor
step, one temperature step and a soft target update on *any* feature vectors, so the three
model-based/model-free methods share one implementation:
  - LOMPO trains it on latent features (real and imagined), everything detached (`agent=sac`);
  - CQL passes its image encoder's parameters as `critic_extra_params` (the critic loss
    backpropagates into the encoder) and adds its conservative term via `extra_critic_loss`;
  - SLAC feeds latent samples to the critic (`obs`/`next_obs`) and history features to the
    actor (`actor_obs`/`next_actor_obs`).

`DeterministicActorCritic(feature_dim, action_dim, config)`: the agent of the authors' LOMPO
code (rmrafailov/LOMPO): a deterministic tanh actor (4 x 256 ELU), twin Q (3 x 256 ELU) with
target copies updated every step (tau 5e-3), no target actor and no entropy term:
  critic: sum_i E[(Q_i(s, a) - y)^2],  y = r + gamma * not_done * min_i Q_i'(s', actor(s'));
  actor:  -E[min_i Q_i(s, actor(s))].
As in the authors' code both losses are taken at the same parameters (the actor's loss sees the
critic before this iteration's critic step, the critic's target the actor before its step).
Same `update` signature as SAC's.

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

from .networks import TanhGaussianActor, TwinQ, adam, mlp, soft_update
from .precision import Fp32Linear


@dataclass
class AgentConfig:
    """What every actor-critic here is configured by (authors' LOMPO agent: lr 3e-4, tau 5e-3,
    grad clip 100, actor 4 x 256, critic 3 x 256)."""

    gamma: float = 0.99
    tau: float = 5e-3
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    grad_clip: float = 100.0
    actor_hidden: int = 256
    actor_layers: int = 4
    critic_hidden: int = 256
    critic_layers: int = 3
    act: str = "elu"

    @classmethod
    def from_config(cls, config):
        """The agent settings of an algorithm's config: its fields that share this config's names
        (every algorithm spells them the same way), defaults for the rest."""
        return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(cls) if hasattr(config, f.name)})


@dataclass
class SACConfig(AgentConfig):
    """SAC hyperparameters: AgentConfig's plus the entropy temperature's."""

    alpha_lr: float = 3e-4
    init_alpha: float = 0.1
    target_entropy: Optional[float] = None  # None: -action_dim
    act: str = "relu"


DeterministicConfig = AgentConfig  # the deterministic actor-critic needs nothing beyond the shared settings


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


# extra_critic_loss(agent, batch, q1, q2) -> (loss term added to the critic loss, metrics)
ExtraCriticLoss = Callable[[nn.Module, SACBatch, torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict]]


class TwinCriticAgent(nn.Module):
    """What SAC and the deterministic actor-critic share: `critic` (TwinQ) and its frozen copy
    `critic_target`, the critic's Adam optimizer (over `critic_extra_params` too, e.g. a shared
    image encoder), the optimizer step with gradient-norm clipping, the Polyak target update and
    the optimizer state dicts (subclasses name their optimizers in `_optimizers`)."""

    def _init_critic(self, feature_dim: int, action_dim: int, critic_extra_params: Iterable[nn.Parameter] = ()):
        """Called by subclasses after building their actor (so a seed initialises the actor first)."""
        config = self.config
        self.critic = TwinQ(feature_dim, action_dim, config.critic_hidden, config.critic_layers, config.act)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self._critic_extra = list(critic_extra_params)
        self.critic_optim = adam(self._critic_params(), lr=config.critic_lr)

    def _critic_params(self) -> list:
        return list(self.critic.parameters()) + self._critic_extra

    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"critic": self.critic_optim}

    def _clip_and_step(self, optim: torch.optim.Optimizer, params: list) -> torch.Tensor:
        norm = torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)
        optim.step()
        return norm.detach()

    def _step(self, optim: torch.optim.Optimizer, loss: torch.Tensor, params: list) -> torch.Tensor:
        optim.zero_grad(set_to_none=True)
        loss.backward()
        return self._clip_and_step(optim, params)

    def _critic_loss_with_extra(self, batch: SACBatch, extra_critic_loss: Optional[ExtraCriticLoss]):
        loss, q1, q2, metrics = self.critic_loss(batch)
        if extra_critic_loss is not None:
            extra, extra_metrics = extra_critic_loss(self, batch, q1, q2)
            loss = loss + extra
            metrics.update(extra_metrics)
        return loss, metrics

    def update_target(self) -> None:
        soft_update(self.critic_target, self.critic, self.config.tau)

    def optim_state_dict(self) -> dict:
        return {name: optim.state_dict() for name, optim in self._optimizers().items()}

    def load_optim_state_dict(self, state: dict) -> None:
        for name, optim in self._optimizers().items():
            optim.load_state_dict(state[name])


class SAC(TwinCriticAgent):
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
        self._init_critic(feature_dim, action_dim, critic_extra_params)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(config.init_alpha)))
        self.target_entropy = float(config.target_entropy if config.target_entropy is not None else -action_dim)
        self.actor_optim = adam(self.actor.parameters(), lr=config.actor_lr)
        self.alpha_optim = adam([self.log_alpha], lr=config.alpha_lr)

    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"actor": self.actor_optim, "critic": self.critic_optim, "alpha": self.alpha_optim}

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.exp().detach()

    @torch.no_grad()
    def explore(self, features: torch.Tensor, noise: float = 0.0) -> torch.Tensor:
        """An action to act with while collecting data: a policy sample (`noise` is unused: SAC's
        policy is its own exploration)."""
        return self.actor.sample(features)[0]

    def critic_loss(self, batch: SACBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """Clipped double-Q TD loss. Returns (loss, q1, q2, metrics)."""
        with torch.no_grad():
            next_actor_obs = batch.next_actor_obs if batch.next_actor_obs is not None else batch.next_obs
            next_action, next_log_prob = self.actor.sample(next_actor_obs.detach())
            tq1, tq2 = self.critic_target(batch.next_obs.detach(), next_action)
            next_v = torch.min(tq1, tq2).float() - self.alpha * next_log_prob.float()
            target = batch.reward + self.config.gamma * batch.not_done * next_v
        q1, q2 = self.critic(batch.obs, batch.action)
        q1, q2 = q1.float(), q2.float()
        loss = 0.5 * ((q1 - target).pow(2).mean() + (q2 - target).pow(2).mean())
        return loss, q1, q2, {"critic_loss": loss.detach(), "q": q1.detach().mean(), "target_q": target.mean()}

    def actor_loss(self, batch: SACBatch) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """max E[min Q(s, a) - alpha log pi(a|s)], a ~ pi. Returns (loss, log_prob, metrics)."""
        actor_obs = (batch.actor_obs if batch.actor_obs is not None else batch.obs).detach()
        action, log_prob = self.actor.sample(actor_obs)
        q1, q2 = self.critic(batch.obs.detach(), action)
        loss = (self.alpha * log_prob.float() - torch.min(q1, q2).float()).mean()
        return loss, log_prob, {"actor_loss": loss.detach(), "entropy": -log_prob.detach().float().mean()}

    def update(self, batch: SACBatch, extra_critic_loss: Optional[ExtraCriticLoss] = None,
               update_actor: bool = True) -> dict[str, torch.Tensor]:
        """One SAC iteration: critic (+ extra term), actor, temperature, soft target update."""
        loss, metrics = self._critic_loss_with_extra(batch, extra_critic_loss)
        metrics["critic_grad_norm"] = self._step(self.critic_optim, loss, self._critic_params())
        if update_actor:
            # The critic is frozen while the actor's loss backpropagates through it.
            self.critic.requires_grad_(False)
            try:
                actor_loss, log_prob, actor_metrics = self.actor_loss(batch)
                metrics.update(actor_metrics)
                metrics["actor_grad_norm"] = self._step(self.actor_optim, actor_loss, list(self.actor.parameters()))
            finally:
                self.critic.requires_grad_(True)
            alpha_loss = -(self.log_alpha * (log_prob.detach().float() + self.target_entropy)).mean()
            self.alpha_optim.zero_grad(set_to_none=True)
            alpha_loss.backward()
            self.alpha_optim.step()
            metrics["alpha"] = self.alpha
        self.update_target()
        return metrics


class DeterministicActor(nn.Module):
    """a = tanh(mlp(features)): `layers` hidden layers of `act`, an fp32 output layer (authors: 4 x 256 ELU).

    `mode(features)` is the action itself (the same name as the stochastic actor's, for callers
    that act with either)."""

    def __init__(self, in_dim: int, action_dim: int, hidden: int = 256, layers: int = 4, act: str = "elu"):
        super().__init__()
        if layers < 1:
            raise ValueError(f"actor_layers must be >= 1 for the deterministic actor, got {layers}")
        self.net = nn.Sequential(mlp(in_dim, hidden, hidden, layers - 1, act, out_act=act), Fp32Linear(hidden, action_dim))
        self.action_dim = action_dim

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(features))

    def mode(self, features: torch.Tensor) -> torch.Tensor:
        return self(features)


class DeterministicActorCritic(TwinCriticAgent):
    """The authors' LOMPO agent: deterministic actor, twin Q with targets (see the module doc)."""

    def __init__(self, feature_dim: int, action_dim: int, config: AgentConfig = DeterministicConfig(),
                 actor_in_dim: Optional[int] = None, critic_extra_params: Iterable[nn.Parameter] = ()):
        super().__init__()
        self.config = config
        self.actor = DeterministicActor(actor_in_dim or feature_dim, action_dim, config.actor_hidden,
                                        config.actor_layers, config.act)
        self._init_critic(feature_dim, action_dim, critic_extra_params)
        self.actor_optim = adam(self.actor.parameters(), lr=config.actor_lr)

    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"actor": self.actor_optim, "critic": self.critic_optim}

    @torch.no_grad()
    def explore(self, features: torch.Tensor, noise: float = 0.0) -> torch.Tensor:
        """The actor's action plus N(0, noise^2) per dimension, clipped to [-1, 1] (authors:
        `additive_gaussian`, 0.2)."""
        action = self.actor(features)
        if noise > 0:
            action = (action + noise * torch.randn_like(action)).clamp(-1.0, 1.0)
        return action

    def critic_loss(self, batch: SACBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """sum_i mean (Q_i(s, a) - y)^2, y = r + gamma * not_done * min_i Q_i'(s', actor(s')).
        Returns (loss, q1, q2, metrics)."""
        with torch.no_grad():
            next_actor_obs = batch.next_actor_obs if batch.next_actor_obs is not None else batch.next_obs
            next_action = self.actor(next_actor_obs.detach())
            tq1, tq2 = self.critic_target(batch.next_obs.detach(), next_action)
            target = batch.reward + self.config.gamma * batch.not_done * torch.min(tq1, tq2).float()
        q1, q2 = self.critic(batch.obs, batch.action)
        q1, q2 = q1.float(), q2.float()
        loss = (q1 - target).pow(2).mean() + (q2 - target).pow(2).mean()
        return loss, q1, q2, {"critic_loss": loss.detach(), "q": q1.detach().mean(), "target_q": target.mean()}

    def actor_loss(self, batch: SACBatch) -> tuple[torch.Tensor, dict]:
        """-E[min_i Q_i(s, actor(s))]. Returns (loss, metrics)."""
        actor_obs = (batch.actor_obs if batch.actor_obs is not None else batch.obs).detach()
        q1, q2 = self.critic(batch.obs.detach(), self.actor(actor_obs))
        loss = -torch.min(q1, q2).float().mean()
        return loss, {"actor_loss": loss.detach()}

    def update(self, batch: SACBatch, extra_critic_loss: Optional[ExtraCriticLoss] = None,
               update_actor: bool = True) -> dict[str, torch.Tensor]:
        """One iteration: both losses at the current parameters, then the critic step, the actor
        step and the soft target update."""
        loss, metrics = self._critic_loss_with_extra(batch, extra_critic_loss)
        self.critic_optim.zero_grad(set_to_none=True)
        loss.backward()
        if update_actor:
            # The critic is frozen while the actor's loss backpropagates through it, and the
            # actor's gradient is taken before the critic's step changes the critic.
            self.critic.requires_grad_(False)
            try:
                actor_loss, actor_metrics = self.actor_loss(batch)
                metrics.update(actor_metrics)
                metrics["actor_grad_norm"] = self._step(self.actor_optim, actor_loss, list(self.actor.parameters()))
            finally:
                self.critic.requires_grad_(True)
        metrics["critic_grad_norm"] = self._clip_and_step(self.critic_optim, self._critic_params())
        self.update_target()
        return metrics


AGENTS = {"deterministic": (DeterministicActorCritic, DeterministicConfig), "sac": (SAC, SACConfig)}
