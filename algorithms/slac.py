"""Offline SLAC: stochastic latent actor-critic (Lee et al. 2020) trained only from the dataset.

The paper's "Offline SLAC" baseline (Table I): SLAC's sequential latent variable model, critic
and actor, with every update drawn from the offline dataset and no environment interaction
during training.

Model (SLAC's factorisation, two latent levels z = (z1, z2), z1 32-d, z2 256-d):

    p(z1_0) = N(0, I)                      q(z1_0 | x_0)
    p(z2_0 | z1_0)                         q(z2_0 | z1_0)             = p(z2_0 | z1_0)
    p(z1_t+1 | z2_t, a_t+1)                q(z1_t+1 | x_t+1, z2_t, a_t+1)
    p(z2_t+1 | z1_t+1, z2_t, a_t+1)        q(z2_t+1 | z1_t+1, z2_t, a_t+1) = p(z2_t+1 | ...)
    p(x_t | z_t): image decoder (Gaussian, std `decoder_std`), plus proprio where present
    p(r_t+1 | z_t, a_t+1, z_t+1): reward model

(actions are indexed as in the dataset: row t holds the action that led into x_t.) Every
conditional is a diagonal Gaussian from a 2 x 256 MLP; z2's posterior *is* its prior, so only
z1 pays a KL. The model maximises the ELBO on windows of `sequence_length + 1` rows:
sum_t [log p(x_t | z_t) + log p(r_t | ...) - KL(q(z1_t | ...) || p(z1_t | ...))].

Agent (SAC, automatic entropy tuning, the shared `agents.SAC`):
  - critic Q(z_t, a) on latent samples from the model's posterior over the window (the model
    is not trained by the critic: samples are detached);
  - actor pi(a | x_t-tau+1..t, a_t-tau+2..t) on the observation history: the encoder features
    of the last tau = `sequence_length` frames and the tau - 1 actions between them, as in SLAC
    (features detached: only the model loss trains the encoder).
  The transition the agent learns from is the last step of each window: z_tau-1, a_tau, r_tau,
  z_tau; the terminal flag of row tau stops bootstrapping. A fraction (tau - 1) / horizon of
  the windows instead teach an earlier step k < tau - 1 with the history padded as at the start
  of an episode (see below), as SLAC's replay buffer holds padded start-of-episode sequences.

Schedule: `model_pretrain_steps` of model updates only (SLAC's initial model training), then
`joint_steps` iterations of one model update and one SAC update each.

Evaluation: the policy keeps the history of features and actions between `act` calls. At the
start of an episode the history is padded with copies of the first frame's features and zero
actions (SLAC pads with zeros; copies of the first frame keep the padding in the encoder's
feature distribution). Training builds the same padded histories (`history_at`), treating a
window's first row as an episode start.

Deviations from SLAC, on purpose: the conv encoder/decoder are the suite's shared ones sized by
image size (the LOMPO paper's Appendix C), with proprio embedded/decoded where the task has it;
decoder log-likelihood uses the shared [-0.5, 0.5] pixel scale. Defaults are SLAC's (sequence
length 8, model lr 1e-4, actor/critic lr 3e-4, model batch 32 windows, RL batch 256, gamma
0.99, tau 5e-3, 100k model pretraining steps); `config_for` scales them for `cpu`/`smoke`.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import nn
from torch.distributions import Normal, kl_divergence
from torch.nn import functional as F

from lompo_bench.registry import register

from .augment import random_shift
from .base import Algorithm, BatchPolicy, DataSpec, Policy
from .bc import to_tensors
from .agents import SAC, SACBatch, SACConfig
from .encoders import ConvDecoder, ObservationEncoder, image_log_likelihood
from .networks import adam, mlp
from .precision import DEFAULT_PRECISION, acting_precision, autocast, check_precision


@dataclass
class SLACConfig:
    model_pretrain_steps: int = 100_000  # model-only updates before the agent starts (SLAC)
    joint_steps: int = 100_000  # iterations of one model update + one SAC update
    sequence_length: int = 8  # tau: frames in the actor's history; windows have tau + 1 rows
    model_batch_size: int = 32  # windows per model update
    rl_batch_size: int = 256  # windows per SAC update
    model_lr: float = 1e-4
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4
    init_alpha: float = 1.0
    target_entropy: Optional[float] = None  # None: -action_dim
    gamma: float = 0.99
    tau: float = 5e-3
    z1_dim: int = 32
    z2_dim: int = 256
    model_hidden: int = 256
    model_layers: int = 2
    decoder_std: float = math.sqrt(0.1)  # fixed std of the image likelihood (SLAC)
    encoder_depth: int = 32  # conv channels depth * [1, 2, 4, 8(, 8)] (Appendix C)
    actor_hidden: int = 256
    actor_layers: int = 2
    critic_hidden: int = 256
    critic_layers: int = 2
    grad_clip: float = 100.0
    augment_pad: int = 0  # random shift of model/agent windows (whole window moves as one); SLAC: none
    precision: str = DEFAULT_PRECISION  # "bf16": the fast path (precision.py); "fp32" turns it off

    def __post_init__(self):
        check_precision(self.precision)
        for name in ("sequence_length", "model_batch_size", "rl_batch_size", "z1_dim", "z2_dim", "model_hidden",
                     "encoder_depth", "actor_hidden", "critic_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.model_pretrain_steps < 0 or self.joint_steps < 0 or self.model_pretrain_steps + self.joint_steps < 1:
            raise ValueError("model_pretrain_steps and joint_steps must be >= 0 and add up to at least 1")
        if self.decoder_std <= 0:
            raise ValueError(f"decoder_std must be > 0, got {self.decoder_std}")

    def sac_config(self) -> SACConfig:
        return SACConfig.from_config(self)


PROFILE_SCALING = {
    # cpu: 1,500 model + 2,500 joint steps, 64 px: ~26 min a walker run on one core beside another
    # job, evaluations included (~70 min before the bf16 fast path, when a model update of 8 windows
    # and a SAC update of 32 windows each took ~0.7 s; the decoder's transposed convolutions dominate)
    "cpu": dict(model_pretrain_steps=1_500, joint_steps=2_500, model_batch_size=8, rl_batch_size=32),
    "smoke": dict(model_pretrain_steps=4, joint_steps=6, sequence_length=3, model_batch_size=4, rl_batch_size=4,
                  z1_dim=4, z2_dim=8, model_hidden=32, encoder_depth=8, actor_hidden=32, critic_hidden=32),
}


class GaussianHead(nn.Module):
    """Inputs (concatenated) -> diagonal Gaussian; std = softplus(.) + 1e-5 (SLAC). The output
    layer is fp32 (the fast path keeps means, stds and so every KL and log-prob in fp32)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int, layers: int):
        super().__init__()
        self.net = mlp(in_dim, 2 * out_dim, hidden, layers, act="leaky_relu", fp32_out=True)

    def forward(self, *inputs: torch.Tensor) -> Normal:
        mean, raw_std = self.net(torch.cat(inputs, -1)).chunk(2, -1)
        return Normal(mean, F.softplus(raw_std) + 1e-5)


class SLACModel(nn.Module):
    """SLAC's sequential latent variable model over windows of observations and actions."""

    def __init__(self, spec: DataSpec, cfg: SLACConfig):
        super().__init__()
        z1, z2, a, h, n = cfg.z1_dim, cfg.z2_dim, spec.action_dim, cfg.model_hidden, cfg.model_layers
        self.z1_dim, self.z2_dim = z1, z2
        self.encoder = ObservationEncoder(spec.image_shape, spec.proprio_dim, depth=cfg.encoder_depth)
        self.z1_posterior_init = GaussianHead(self.encoder.out_dim, z1, h, n)  # q(z1_0 | x_0)
        self.z2_init = GaussianHead(z1, z2, h, n)  # p(z2_0 | z1_0) = q(z2_0 | z1_0)
        self.z1_prior = GaussianHead(z2 + a, z1, h, n)  # p(z1_t+1 | z2_t, a)
        self.z1_posterior = GaussianHead(self.encoder.out_dim + z2 + a, z1, h, n)  # q(z1_t+1 | x_t+1, z2_t, a)
        self.z2_transition = GaussianHead(z1 + z2 + a, z2, h, n)  # p(z2_t+1 | z1_t+1, z2_t, a) = q(...)
        self.reward = GaussianHead(2 * (z1 + z2) + a, 1, h, n)  # p(r | z_t, a, z_t+1)
        self.decoder = ConvDecoder(z1 + z2, spec.image_shape[0], depth=cfg.encoder_depth)
        self.proprio_decoder = mlp(z1 + z2, spec.proprio_dim, h, n, fp32_out=True) if spec.proprio_dim else None
        self.image_scale = 1.0 / cfg.decoder_std**2

    def posterior(self, features: torch.Tensor, actions: torch.Tensor):
        """Filter a window: features (B, L, F), actions (B, L, A) (row t's action led into x_t;
        row 0's is unused). Returns z (B, L, z1 + z2) sampled from the posterior and the KL of
        q(z1_t) from p(z1_t) per step (B, L)."""
        q = self.z1_posterior_init(features[:, 0])
        z1 = q.rsample()
        z2 = self.z2_init(z1).rsample()
        kls = [kl_divergence(q, Normal(torch.zeros_like(z1), torch.ones_like(z1))).sum(-1)]
        zs = [torch.cat([z1, z2], -1)]
        for t in range(1, features.shape[1]):
            a = actions[:, t]
            p = self.z1_prior(z2, a)
            q = self.z1_posterior(features[:, t], z2, a)
            z1 = q.rsample()
            z2 = self.z2_transition(z1, z2, a).rsample()
            kls.append(kl_divergence(q, p).sum(-1))
            zs.append(torch.cat([z1, z2], -1))
        return torch.stack(zs, 1), torch.stack(kls, 1)

    def loss(self, obs: dict[str, torch.Tensor], actions: torch.Tensor, rewards: torch.Tensor):
        """Negative ELBO per window, averaged over the batch (summed over time and dims).
        Returns (loss, features (B, L, F) for reuse, metrics)."""
        features = self.encoder(obs)
        z, kl = self.posterior(features, actions)
        image_ll = self.image_scale * image_log_likelihood(self.decoder(z), obs["image"])  # (B, L)
        log_lik = image_ll
        if self.proprio_decoder is not None:
            proprio_ll = -0.5 * (self.proprio_decoder(z) - obs["proprio"]).pow(2).sum(-1)
            log_lik = log_lik + proprio_ll
        reward_ll = self.reward(z[:, :-1], actions[:, 1:], z[:, 1:]).log_prob(rewards[:, 1:, None]).squeeze(-1)
        loss = (kl.sum(1) - log_lik.sum(1) - reward_ll.sum(1)).mean()
        metrics = {"model_loss": loss.detach(), "kl": kl.sum(1).mean().detach(),
                   "image_nll": -image_ll.sum(1).mean().detach(), "reward_nll": -reward_ll.sum(1).mean().detach()}
        return loss, features, metrics


def history(features: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Actor input: features (B, tau, F) of tau frames and actions (B, tau - 1, A) between them."""
    return torch.cat([features.flatten(1), actions.flatten(1)], -1)


def history_at(features: torch.Tensor, actions: torch.Tensor, end: torch.Tensor, tau: int) -> torch.Tensor:
    """The actor's input for the history ending at row `end` (B,) of each window, as if the
    episode started at row 0: frames before row 0 are copies of row 0 and the actions before
    row 1 are zero, exactly what `SLACPolicy` holds during its first tau - 1 steps.

    features (B, L, F), actions (B, L, A) (row t's action led into x_t)."""
    b = features.shape[0]
    slots = torch.arange(tau, device=features.device)
    frame_rows = (slots[None] - (tau - 1) + end[:, None]).clamp(min=0)  # (B, tau)
    action_rows = slots[None, 1:] - (tau - 1) + end[:, None]  # (B, tau - 1); < 1: before the episode
    batch_index = torch.arange(b, device=features.device)[:, None]
    frames = features[batch_index, frame_rows]
    acts = actions[batch_index, action_rows.clamp(min=0)] * (action_rows >= 1)[..., None].to(actions.dtype)
    return history(frames, acts)


class SLACPolicy(BatchPolicy):
    """Acts on the history of the last tau frames' features and the actions between them."""

    def __init__(self, encoder: ObservationEncoder, actor, sequence_length: int, action_dim: int, device,
                 precision: str = DEFAULT_PRECISION):
        self.encoder, self.actor, self.device, self.precision = encoder, actor, device, precision
        self.tau, self.action_dim = sequence_length, action_dim
        self.reset()

    def reset(self, n: int = 1) -> None:
        self.n = n
        self.features: deque = deque(maxlen=self.tau)
        self.actions: deque = deque(maxlen=self.tau - 1)
        self.last_action: Optional[torch.Tensor] = None

    @torch.no_grad()
    def act_batch(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        with autocast(acting_precision(self.precision, self.device), self.device):
            return self._act(obs)

    def _act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        f = self.encoder(to_tensors({k: v for k, v in obs.items() if k in ("image", "proprio")}, self.device))
        if f.shape[0] != self.n:
            raise ValueError(f"act_batch got {f.shape[0]} observations after reset({self.n})")
        if self.last_action is None:  # first step: pad with the first frame and zero actions
            self.features.extend([f] * self.tau)
            self.actions.extend([torch.zeros(self.n, self.action_dim, device=self.device)] * (self.tau - 1))
        else:
            self.features.append(f)
            if self.tau > 1:
                self.actions.append(self.last_action)
        feats = torch.stack(list(self.features), 1)
        acts = torch.stack(list(self.actions), 1) if self.tau > 1 else feats.new_zeros(self.n, 0, self.action_dim)
        action = self.actor.mode(history(feats, acts))
        self.last_action = action
        return action.float().cpu().numpy()


@register
class SLAC(Algorithm):
    """Offline SLAC: SLAC's latent variable model, latent critic and history actor, offline."""

    name = "slac"
    Config = SLACConfig
    step_fields = ("model_pretrain_steps", "joint_steps")

    @classmethod
    def config_for(cls, profile: str, spec: DataSpec) -> SLACConfig:
        return dataclasses.replace(cls.Config(), **PROFILE_SCALING.get(profile, {}))

    def __init__(self, config: SLACConfig, spec: DataSpec, device: str = "cpu", seed: int = 0):
        super().__init__(config, spec, device, seed)
        self.model = SLACModel(spec, config).to(device)
        self.model_optim = adam(self.model.parameters(), lr=config.model_lr)
        tau, feature_dim = config.sequence_length, self.model.encoder.out_dim
        self.sac = SAC(config.z1_dim + config.z2_dim, spec.action_dim, config.sac_config(),
                       actor_in_dim=tau * feature_dim + (tau - 1) * spec.action_dim).to(device)
        self.keys = ("image", "proprio", "action", "reward", "is_terminal") if spec.proprio_dim else \
            ("image", "action", "reward", "is_terminal")
        self.rng = np.random.default_rng(seed)  # which windows each batch samples
        self.augment_gen = torch.Generator(device="cpu").manual_seed(seed)
        self._gradient_steps = 0

    def total_steps(self) -> int:
        return self.config.model_pretrain_steps + self.config.joint_steps

    def sample(self, dataset, batch_size: int) -> dict[str, torch.Tensor]:
        """A batch of windows of tau + 1 rows as tensors on the device (images stay uint8)."""
        w = dataset.sample_windows(batch_size, self.config.sequence_length + 1, self.rng, keys=self.keys)
        dev = self.device
        out = {"image": torch.as_tensor(w["image"]).to(dev, non_blocking=True)}
        if self.config.augment_pad > 0:
            out["image"] = random_shift(out["image"], self.config.augment_pad, generator=self.augment_gen)
        for k in self.keys[1:]:
            out[k] = torch.as_tensor(w[k], dtype=torch.float32).to(dev, non_blocking=True)
        return out

    @staticmethod
    def _obs(batch: dict) -> dict:
        return {k: batch[k] for k in ("image", "proprio") if k in batch}

    def update_model(self, batch: dict) -> dict[str, torch.Tensor]:
        with autocast(self.config.precision, self.device):
            loss, _, metrics = self.model.loss(self._obs(batch), batch["action"], batch["reward"])
        self.model_optim.zero_grad(set_to_none=True)
        loss.backward()
        metrics["model_grad_norm"] = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip).detach()
        self.model_optim.step()
        return metrics

    @torch.no_grad()
    def model_loss(self, batch: dict) -> float:
        """Negative ELBO of a batch of windows (from `sample`), without updating anything."""
        with autocast(self.config.precision, self.device):
            return float(self.model.loss(self._obs(batch), batch["action"], batch["reward"])[0])

    def agent_batch(self, batch: dict) -> SACBatch:
        """The SAC batch of a window batch: transition k -> k + 1 with k = tau - 1 (the window's
        last step), or, for a fraction (tau - 1) / horizon of the windows (as often as SLAC's
        replay buffer holds them), a random k < tau - 1 with the actor's histories padded as at
        the start of an episode (`history_at`), so the policy has trained on what it sees
        during the first tau - 1 steps of every evaluation episode."""
        tau = self.config.sequence_length
        with torch.no_grad(), autocast(self.config.precision, self.device):  # the model is a fixed filter here
            features = self.model.encoder(self._obs(batch))
            z, _ = self.model.posterior(features, batch["action"])
        b, device = features.shape[0], features.device
        k = torch.full((b,), tau - 1, device=device)
        if tau > 1:
            padded = torch.rand(b, device=device) < (tau - 1) / max(self.spec.horizon, tau)
            k = torch.where(padded, torch.randint(0, tau - 1, (b,), device=device), k)
        rows = torch.arange(b, device=device)
        actions = batch["action"]
        return SACBatch(obs=z[rows, k], action=actions[rows, k + 1], reward=batch["reward"][rows, k + 1],
                        next_obs=z[rows, k + 1], not_done=1.0 - batch["is_terminal"][rows, k + 1],
                        actor_obs=history_at(features, actions, k, tau),
                        next_actor_obs=history_at(features, actions, k + 1, tau))

    def update_agent(self, batch: dict) -> dict[str, torch.Tensor]:
        with autocast(self.config.precision, self.device):
            return self.sac.update(self.agent_batch(batch))

    def train_step(self, dataset, step: int) -> dict[str, float]:
        cfg = self.config
        metrics = self.update_model(self.sample(dataset, cfg.model_batch_size))
        if step >= cfg.model_pretrain_steps:
            metrics.update(self.update_agent(self.sample(dataset, cfg.rl_batch_size)))
        self._gradient_steps += 1
        return {k: float(v) for k, v in metrics.items()}

    def policy(self) -> Policy:
        return SLACPolicy(self.model.encoder, self.sac.actor, self.config.sequence_length, self.spec.action_dim,
                          self.device, self.config.precision)

    @torch.no_grad()
    def sample_figures(self, dataset, out_dir) -> list:
        """model_samples.png: real frames of one window above the model's reconstructions."""
        from pathlib import Path

        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        batch = self.sample(dataset, 1)
        obs = self._obs(batch)
        with autocast(self.config.precision, self.device):
            z, _ = self.model.posterior(self.model.encoder(obs), batch["action"])
            recon = ConvDecoder.to_uint8(self.model.decoder(z))[0].cpu().numpy()
        real = obs["image"][0].cpu().numpy()
        length = real.shape[0]
        fig, axes = plt.subplots(2, length, figsize=(1.2 * length, 2.6), squeeze=False)
        for t in range(length):
            for row, frames in enumerate((real, recon)):
                axes[row, t].imshow(frames[t])
                axes[row, t].axis("off")
        axes[0, 0].set_title("data", fontsize=8, loc="left")
        axes[1, 0].set_title("model posterior", fontsize=8, loc="left")
        path = Path(out_dir) / "model_samples.png"
        fig.savefig(path, dpi=80, bbox_inches="tight")
        plt.close(fig)
        return [path]

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "model_optim": self.model_optim.state_dict(),
                "sac": self.sac.state_dict(), "sac_optim": self.sac.optim_state_dict(),
                "rng": self.rng.bit_generator.state, "augment_gen": self.augment_gen.get_state(),
                "gradient_steps": self._gradient_steps}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.model_optim.load_state_dict(state["model_optim"])
        self.sac.load_state_dict(state["sac"])
        self.sac.load_optim_state_dict(state["sac_optim"])
        self.rng.bit_generator.state = state["rng"]
        self.augment_gen.set_state(state["augment_gen"])
        self._gradient_steps = int(state["gradient_steps"])
