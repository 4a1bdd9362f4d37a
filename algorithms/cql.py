"""Conservative Q-learning from pixels (the paper's CQL baseline, Table I).

SAC-based CQL(H) (Kumar et al. 2020) trained end to end from images (plus proprio where the
task has it) on flat transitions of the offline dataset. The critic loss is SAC's TD loss plus
a conservative term that pushes Q down on actions the dataset does not contain and up on the
ones it does, for each of the twin critics Q_i:

    penalty_i = logsumexp_{a ~ mu} [Q_i(s, a) - log mu(a)]  -  E_(s, a) ~ D [Q_i(s, a)]

The logsumexp runs over `cql_num_actions` uniform random actions and as many actions of the
current policy at s and at s' (all evaluated at s), each corrected by its log-density
(importance sampling, the paper's CQL(H) estimator). The critic minimises
`0.5 * sum_i (TD_i + cql_alpha * penalty_i)` (the 0.5 is the shared SAC helper's scale of
the TD loss, applied to both so their ratio is the paper's). `cql_auto_alpha` turns on the
Lagrangian version: the term becomes `alpha' * (cql_alpha * penalty_i - cql_target_gap)` and
alpha' >= 0 is trained by gradient ascent, so the gap settles near the target.

Pixels: one conv encoder (`ObservationEncoder`) is shared by the twin critics and trained only
by the critic loss (TD + conservative term); the actor sees its features detached (as in
SAC-AE and DrQ), so the policy gradient never shapes the representation. The TD target uses a
Polyak-averaged copy of the encoder alongside the target critic. Images get an independent
random shift of up to `augment_pad` pixels at s and s' (DrQ); 0 turns augmentation off.
Terminal transitions stop bootstrapping; time-limit ends (`timeout`) do not.

SAC itself (actor, twin critic, target critic, automatic entropy tuning, optimizers) is the
shared `agents.SAC`; this module adds the encoder, the conservative term and Lagrangian.
Defaults are the CQL paper's (fixed alpha 5, 10 sampled actions, actor lr 1e-4, critic lr
3e-4, batch 256, gamma 0.99, tau 5e-3) with the LOMPO paper's encoder and 3 x 256 heads
(Appendix C). `config_for` scales them down for the `cpu` and `smoke` profiles.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import nn

from lompo_bench.registry import register

from .augment import random_shift
from .base import Algorithm, BatchPolicy, DataSpec, Policy
from .bc import to_tensors
from .agents import SAC, SACBatch, SACConfig
from .encoders import ObservationEncoder
from .networks import TwinQ, adam, soft_update
from .precision import DEFAULT_PRECISION, acting_precision, autocast, check_precision


@dataclass
class CQLConfig:
    steps: int = 1_000_000  # gradient steps (CQL paper)
    batch_size: int = 256
    gamma: float = 0.99
    tau: float = 5e-3  # Polyak rate of the target critic and target encoder
    actor_lr: float = 1e-4
    critic_lr: float = 3e-4  # critic and the shared encoder
    alpha_lr: float = 1e-4  # SAC entropy temperature
    init_alpha: float = 1.0
    target_entropy: Optional[float] = None  # None: -action_dim
    cql_alpha: float = 5.0  # weight of the conservative term
    cql_num_actions: int = 10  # sampled actions per source (uniform, pi(s), pi(s')) and state
    cql_temperature: float = 1.0
    cql_auto_alpha: bool = False  # Lagrangian: learn alpha' so the weighted gap tracks cql_target_gap
    cql_target_gap: float = 10.0
    cql_alpha_lr: float = 3e-4  # Lagrange multiplier's learning rate (the critic's, as in CQL)
    grad_clip: float = 100.0
    encoder_depth: int = 32  # conv channels depth * [1, 2, 4, 8(, 8)] (Appendix C)
    actor_hidden: int = 256
    actor_layers: int = 3
    critic_hidden: int = 256
    critic_layers: int = 3
    augment_pad: int = 4  # random shift of up to this many pixels; 0: no augmentation
    precision: str = DEFAULT_PRECISION  # "bf16": the fast path (precision.py); "fp32" turns it off

    def __post_init__(self):
        check_precision(self.precision)
        for name in ("steps", "batch_size", "cql_num_actions", "encoder_depth", "actor_hidden", "critic_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.cql_alpha < 0:
            raise ValueError(f"cql_alpha must be >= 0, got {self.cql_alpha}")
        if self.cql_temperature <= 0:
            raise ValueError(f"cql_temperature must be > 0, got {self.cql_temperature}")
        if not 0 < self.tau <= 1 or not 0 <= self.gamma <= 1:
            raise ValueError(f"tau must be in (0, 1] and gamma in [0, 1], got tau={self.tau}, gamma={self.gamma}")

    def sac_config(self) -> SACConfig:
        return SACConfig.from_config(self)


PROFILE_SCALING = {
    # cpu: 6,000 updates at batch 64, 64 px: 16-17 min a walker run on one core beside another job,
    # evaluations included (~50 min before the bf16 fast path); time an update with
    # benchmarks/bench_baselines.py --only cql --cql-batch 64
    "cpu": dict(steps=6_000, batch_size=64),
    "smoke": dict(steps=10, batch_size=8, encoder_depth=8, actor_hidden=32, actor_layers=2, critic_hidden=32,
                  critic_layers=2, cql_num_actions=2),
}


def q_for_actions(critic: TwinQ, features: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Twin Q of N actions per state: features (B, F), actions (B, N, A) -> q1, q2 (B, N).

    Equal to `critic(features[:, None].expand(B, N, F), actions)`, but the first layer's
    feature part (the bulk of it: F is ~1000 for pixel features, A a handful) is computed once
    per state instead of once per action. Relies on `TwinQ.net` being an `ensemble_mlp` over
    cat(features, action). (General enough to live next to `TwinQ` in networks.py.)"""
    b, n, a = actions.shape
    first, rest = critic.net[0], critic.net[1:]
    f = features.shape[-1]
    weight = first.weight.to(features.dtype)  # (2, F + A, H)
    per_state = torch.matmul(features, weight[:, :f])  # (2, B, H)
    per_action = torch.matmul(actions.reshape(1, b * n, a).to(features.dtype), weight[:, f:])  # (2, B*N, H)
    bias = first.bias.to(per_state.dtype)[:, :, None]
    hidden = (per_action.reshape(2, b, n, -1) + per_state[:, :, None] + bias).reshape(2, b * n, -1)
    q = rest(hidden).squeeze(-1).reshape(2, b, n)
    return q[0], q[1]


class CQLPolicy(BatchPolicy):
    def __init__(self, encoder: ObservationEncoder, actor, device, precision: str = DEFAULT_PRECISION):
        self.encoder, self.actor, self.device, self.precision = encoder, actor, device, precision

    @torch.no_grad()
    def act_batch(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        batch = to_tensors({k: v for k, v in obs.items() if k in ("image", "proprio")}, self.device)
        with autocast(acting_precision(self.precision, self.device), self.device):
            return self.actor.mode(self.encoder(batch)).float().cpu().numpy()


@register
class CQL(Algorithm):
    """Conservative Q-learning (SAC-based CQL(H)) from images with a critic-shared conv encoder."""

    name = "cql"
    Config = CQLConfig
    step_fields = ("steps",)

    @classmethod
    def config_for(cls, profile: str, spec: DataSpec) -> CQLConfig:
        return dataclasses.replace(cls.Config(), **PROFILE_SCALING.get(profile, {}))

    def __init__(self, config: CQLConfig, spec: DataSpec, device: str = "cpu", seed: int = 0):
        super().__init__(config, spec, device, seed)
        self.encoder = ObservationEncoder(spec.image_shape, spec.proprio_dim, depth=config.encoder_depth).to(device)
        self.encoder_target = ObservationEncoder(spec.image_shape, spec.proprio_dim,
                                                 depth=config.encoder_depth).to(device).requires_grad_(False)
        self.encoder_target.load_state_dict(self.encoder.state_dict())
        self.sac = SAC(self.encoder.out_dim, spec.action_dim, config.sac_config(),
                       critic_extra_params=self.encoder.parameters()).to(device)
        # Lagrange multiplier alpha' = exp(log_alpha_prime), used only with cql_auto_alpha.
        self.log_alpha_prime = nn.Parameter(torch.zeros((), device=device))
        self.alpha_prime_optim = adam([self.log_alpha_prime], lr=config.cql_alpha_lr)
        self.rng = np.random.default_rng(seed)  # which transitions each batch samples
        self.augment_gen = torch.Generator(device="cpu").manual_seed(seed)
        self._gradient_steps = 0

    def total_steps(self) -> int:
        return self.config.steps

    @property
    def alpha_prime(self) -> torch.Tensor:
        return self.log_alpha_prime.exp().clamp(0.0, 1e6).detach()

    def conservative_term(self, sac: SAC, batch: SACBatch, q1_data: torch.Tensor, q2_data: torch.Tensor):
        """The CQL(H) term for `SAC.update`'s `extra_critic_loss`: gradients reach the critic and
        the encoder through `batch.obs`; sampled actions and their log-densities are constants."""
        cfg = self.config
        b, n, a = batch.action.shape[0], cfg.cql_num_actions, batch.action.shape[-1]
        with torch.no_grad():
            uniform = torch.rand(b, n, a, device=batch.action.device) * 2 - 1
            both = torch.cat([batch.actor_obs, batch.next_actor_obs])  # one actor pass for s and s'
            policy_actions, policy_log_prob = sac.actor.sample(both[:, None].expand(-1, n, -1))
            actions = torch.cat([uniform, policy_actions[:b], policy_actions[b:]], 1)  # (B, 3N, A)
            log_density = torch.cat([torch.full((b, n), -a * math.log(2.0), device=uniform.device),
                                     policy_log_prob[:b], policy_log_prob[b:]], 1)
        q1, q2 = q_for_actions(sac.critic, batch.obs, actions)
        t = cfg.cql_temperature
        gaps = [t * torch.logsumexp((q - log_density) / t, 1).mean() - q_data.mean()
                for q, q_data in ((q1, q1_data), (q2, q2_data))]
        weighted = [cfg.cql_alpha * g for g in gaps]
        if cfg.cql_auto_alpha:
            loss = 0.5 * self.alpha_prime * sum(w - cfg.cql_target_gap for w in weighted)
        else:
            loss = 0.5 * sum(weighted)
        return loss, {"cql_loss": loss.detach(), "cql_gap": 0.5 * (gaps[0] + gaps[1]).detach(),
                      "cql_weighted_gap": 0.5 * (weighted[0] + weighted[1]).detach(), "q_sampled": q1.detach().mean()}

    def update(self, obs: dict[str, torch.Tensor], action: torch.Tensor, reward: torch.Tensor,
               next_obs: dict[str, torch.Tensor], terminal: torch.Tensor) -> dict[str, torch.Tensor]:
        """One CQL iteration on a batch already on the device, under the config's precision.
        Metrics stay on the device."""
        with autocast(self.config.precision, self.device):
            return self._update(obs, action, reward, next_obs, terminal)

    def _update(self, obs, action, reward, next_obs, terminal) -> dict[str, torch.Tensor]:
        cfg = self.config
        if cfg.augment_pad > 0:
            obs = {**obs, "image": random_shift(obs["image"], cfg.augment_pad, generator=self.augment_gen)}
            next_obs = {**next_obs, "image": random_shift(next_obs["image"], cfg.augment_pad, generator=self.augment_gen)}
        features = self.encoder(obs)  # carries the critic's gradients into the encoder
        with torch.no_grad():
            next_features = self.encoder(next_obs)  # what the actor sees at s'
            next_target_features = self.encoder_target(next_obs)  # what the target critic sees at s'
        batch = SACBatch(obs=features, action=action, reward=reward, next_obs=next_target_features,
                         not_done=1.0 - terminal, actor_obs=features.detach(), next_actor_obs=next_features)
        metrics = self.sac.update(batch, extra_critic_loss=self.conservative_term)
        if cfg.cql_auto_alpha:
            # Gradient ascent on alpha' * (gap - target): alpha' grows while the gap exceeds the target.
            alpha_prime_loss = -self.log_alpha_prime.exp().clamp(0.0, 1e6) * (metrics["cql_weighted_gap"] - cfg.cql_target_gap)
            self.alpha_prime_optim.zero_grad(set_to_none=True)
            alpha_prime_loss.backward()
            self.alpha_prime_optim.step()
            metrics["cql_alpha_prime"] = self.alpha_prime
        soft_update(self.encoder_target, self.encoder, cfg.tau)
        self._gradient_steps += 1
        return metrics

    def train_step(self, dataset, step: int) -> dict[str, float]:
        batch = dataset.sample_transitions(self.config.batch_size, self.rng)
        dev = self.device
        action = torch.as_tensor(batch["action"], dtype=torch.float32).to(dev, non_blocking=True)
        reward = torch.as_tensor(batch["reward"], dtype=torch.float32).to(dev, non_blocking=True)
        terminal = torch.as_tensor(batch["terminal"], dtype=torch.float32).to(dev, non_blocking=True)
        metrics = self.update(to_tensors(batch["obs"], dev), action, reward, to_tensors(batch["next_obs"], dev), terminal)
        return {k: float(v) for k, v in metrics.items()}

    @torch.no_grad()
    def q_values(self, obs: dict[str, np.ndarray], actions: np.ndarray) -> np.ndarray:
        """min(Q1, Q2) of `actions` (B, N, A) at observations `obs` (batch B), no augmentation. (B, N)."""
        with autocast(self.config.precision, self.device):
            features = self.encoder(to_tensors(obs, self.device))
            q1, q2 = q_for_actions(self.sac.critic, features,
                                   torch.as_tensor(actions, dtype=torch.float32, device=self.device))
        return torch.min(q1, q2).float().cpu().numpy()

    def policy(self) -> Policy:
        return CQLPolicy(self.encoder, self.sac.actor, self.device, self.config.precision)

    def state_dict(self) -> dict:
        return {"encoder": self.encoder.state_dict(), "encoder_target": self.encoder_target.state_dict(),
                "sac": self.sac.state_dict(), "sac_optim": self.sac.optim_state_dict(),
                "log_alpha_prime": self.log_alpha_prime.detach().clone(),
                "alpha_prime_optim": self.alpha_prime_optim.state_dict(), "rng": self.rng.bit_generator.state,
                "augment_gen": self.augment_gen.get_state(), "gradient_steps": self._gradient_steps}

    def load_state_dict(self, state: dict) -> None:
        self.encoder.load_state_dict(state["encoder"])
        self.encoder_target.load_state_dict(state["encoder_target"])
        self.sac.load_state_dict(state["sac"])
        self.sac.load_optim_state_dict(state["sac_optim"])
        with torch.no_grad():
            self.log_alpha_prime.copy_(state["log_alpha_prime"])
        self.alpha_prime_optim.load_state_dict(state["alpha_prime_optim"])
        self.rng.bit_generator.state = state["rng"]
        self.augment_gen.set_state(state["augment_gen"])
        self._gradient_steps = int(state["gradient_steps"])
