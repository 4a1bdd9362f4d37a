"""Behaviour cloning from pixels (the paper's BC baseline, Table I).

A conv encoder of the image (plus an MLP embedding of proprio where the task has it) feeds a
tanh-Gaussian policy head; both are trained end to end to maximise the log-likelihood of the
dataset's actions on single transitions:

    loss = -E_(o, a) ~ D [ log pi(a | encoder(o)) ]

Dataset actions can sit exactly on the bounds of [-1, 1] (the collector's SAC policy is
tanh-squashed); the tanh density is infinite there, so actions are clipped to
(-1 + eps, 1 - eps) first (`action_eps`). Images get a random shift of up to `augment_pad`
pixels (DrQ), which regularises the encoder on small datasets; 0 turns it off. Evaluation
acts with the mode, tanh(mean).

Batch number `step` is sampled with a generator seeded by (seed, step), so it is the same
whether it was prefetched (a background thread samples the next batch from the store while
the current update runs) or loaded after a resume.

The paper gives no BC hyperparameters; the defaults are the common ones for pixel BC
(batch 256, Adam 3e-4, 100k steps) with the paper's encoder (Appendix C) and the authors'
4 x 256 actor. `config_for` scales them down for the `cpu` and `smoke` profiles.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from lompo_bench.registry import register

from .augment import random_shift
from .base import Algorithm, BatchPolicy, DataSpec, Policy
from .encoders import ObservationEncoder
from .networks import TanhGaussianActor, adam
from .precision import DEFAULT_PRECISION, acting_precision, autocast, check_precision


@dataclass
class BCConfig:
    steps: int = 100_000  # gradient steps
    batch_size: int = 256
    lr: float = 3e-4
    weight_decay: float = 0.0
    grad_clip: float = 100.0
    encoder_depth: int = 32  # conv channels depth * [1, 2, 4, 8(, 8)] (Appendix C)
    actor_hidden: int = 256
    actor_layers: int = 4
    augment_pad: int = 4  # random shift of up to this many pixels; 0: no augmentation
    action_eps: float = 1e-4  # dataset actions are clipped to (-1 + eps, 1 - eps) for the tanh log-prob
    precision: str = DEFAULT_PRECISION  # "bf16": the fast path (precision.py); "fp32" turns it off

    def __post_init__(self):
        check_precision(self.precision)
        for name in ("steps", "batch_size", "encoder_depth", "actor_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.action_eps < 1:
            raise ValueError(f"action_eps must be in (0, 1), got {self.action_eps}")


PROFILE_SCALING = {
    # cpu: measured at 64 px on this project's 2-core machine (under load): 0.17 CPU-s per
    # update at batch 64, 3 CPU-s per 500-step evaluation episode, so 15k updates and the
    # runner's 11 evaluations of 10 episodes fit in about 30-50 minutes.
    "cpu": dict(steps=15_000, batch_size=64),
    "smoke": dict(steps=20, batch_size=8, encoder_depth=8, actor_hidden=32, actor_layers=2),
}


def to_tensors(obs: dict, device) -> dict[str, torch.Tensor]:
    """Numpy observation batch -> tensors on `device` (images stay uint8 until the encoder)."""
    out = {"image": torch.as_tensor(obs["image"]).to(device, non_blocking=True)}
    if "proprio" in obs:
        out["proprio"] = torch.as_tensor(obs["proprio"], dtype=torch.float32).to(device, non_blocking=True)
    return out


class BCPolicy(BatchPolicy):
    def __init__(self, encoder: ObservationEncoder, actor: TanhGaussianActor, device, precision: str = DEFAULT_PRECISION):
        self.encoder, self.actor, self.device, self.precision = encoder, actor, device, precision

    @torch.no_grad()
    def act_batch(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        batch = to_tensors({k: v for k, v in obs.items() if k in ("image", "proprio")}, self.device)
        with autocast(acting_precision(self.precision, self.device), self.device):
            action = self.actor.mode(self.encoder(batch))
        return action.float().cpu().numpy()


@register
class BC(Algorithm):
    """Behaviour cloning from images: conv encoder + tanh-Gaussian policy, max log-likelihood."""

    name = "bc"
    Config = BCConfig
    step_fields = ("steps",)

    @classmethod
    def config_for(cls, profile: str, spec: DataSpec) -> BCConfig:
        return dataclasses.replace(cls.Config(), **PROFILE_SCALING.get(profile, {}))

    def __init__(self, config: BCConfig, spec: DataSpec, device: str = "cpu", seed: int = 0):
        super().__init__(config, spec, device, seed)
        with torch.random.fork_rng(devices=[]):  # the seed alone fixes the initial weights
            torch.manual_seed(seed)
            self.encoder = ObservationEncoder(spec.image_shape, spec.proprio_dim, depth=config.encoder_depth).to(device)
            self.actor = TanhGaussianActor(self.encoder.out_dim, spec.action_dim, config.actor_hidden,
                                           config.actor_layers).to(device)
        self.params = list(self.encoder.parameters()) + list(self.actor.parameters())
        self.optim = adam(self.params, lr=config.lr, weight_decay=config.weight_decay)
        self.augment_gen = torch.Generator(device="cpu").manual_seed(seed)
        self._gradient_steps = 0
        self._prefetcher: ThreadPoolExecutor | None = None
        self._pending = None  # ((dataset id, step), Future) of the next batch, sampled on a thread

    def total_steps(self) -> int:
        return self.config.steps

    def update(self, obs: dict[str, torch.Tensor], action: torch.Tensor) -> dict[str, torch.Tensor]:
        """One gradient step on a batch already on the device, under the config's precision
        (the loss is fp32 either way). Metrics stay on the device."""
        cfg = self.config
        if cfg.augment_pad > 0:
            obs = {**obs, "image": random_shift(obs["image"], cfg.augment_pad, generator=self.augment_gen)}
        target = action.float().clamp(-1 + cfg.action_eps, 1 - cfg.action_eps)
        with autocast(cfg.precision, self.device):
            features = self.encoder(obs)
            log_prob = self.actor.log_prob(features, target)
        loss = -log_prob.float().mean()
        self.optim.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
        self.optim.step()
        self._gradient_steps += 1
        with torch.no_grad(), autocast(cfg.precision, self.device):
            action_mse = (self.actor.mode(features.detach()).float() - target).pow(2).mean()
        return {"bc_loss": loss.detach(), "action_mse": action_mse, "grad_norm": grad_norm.detach()}

    def _load_batch(self, dataset, step: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Transition batch number `step`, on the host: a pure function of (seed, step), so
        prefetching it early or resuming from a checkpoint cannot change what a run sees."""
        batch = dataset.sample_transitions(self.config.batch_size, np.random.default_rng([self.seed, step]))
        pin = str(self.device).startswith("cuda")  # page-locked memory: the copy to the GPU runs asynchronously
        obs = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch["obs"].items()}
        action = torch.from_numpy(np.ascontiguousarray(batch["action"], dtype=np.float32))
        if pin:
            obs, action = {k: v.pin_memory() for k, v in obs.items()}, action.pin_memory()
        return obs, action

    def _batch(self, dataset, step: int):
        """Batch `step` (prefetched during the previous update where possible); queues step + 1."""
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] == (id(dataset), step):
            batch = pending[1].result()
        else:
            self._drain(pending)
            batch = self._load_batch(dataset, step)
        if step + 1 < self.total_steps():
            if self._prefetcher is None:
                self._prefetcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bc-batches")
            self._pending = ((id(dataset), step + 1), self._prefetcher.submit(self._load_batch, dataset, step + 1))
        return batch

    @staticmethod
    def _drain(pending) -> None:
        """Cancel or wait out a queued batch (the store is read by one thread at a time)."""
        if pending is not None:
            pending[1].cancel() or pending[1].exception()

    def train_step(self, dataset, step: int) -> dict[str, float]:
        obs, action = self._batch(dataset, step)
        obs = {k: v.to(self.device, non_blocking=True) for k, v in obs.items()}
        return {k: float(v) for k, v in self.update(obs, action.to(self.device, non_blocking=True)).items()}

    @torch.no_grad()
    def action_error(self, obs: dict[str, np.ndarray], action: np.ndarray) -> float:
        """Mean squared error of the deterministic policy's actions against `action`."""
        with autocast(self.config.precision, self.device):
            predicted = self.actor.mode(self.encoder(to_tensors(obs, self.device))).float()
        return float((predicted.cpu() - torch.as_tensor(action, dtype=torch.float32)).pow(2).mean())

    def policy(self) -> Policy:
        return BCPolicy(self.encoder, self.actor, self.device, self.config.precision)

    def state_dict(self) -> dict:
        return {"encoder": self.encoder.state_dict(), "actor": self.actor.state_dict(),
                "optim": self.optim.state_dict(), "seed": self.seed,  # the seed names the batch stream
                "augment_gen": self.augment_gen.get_state(), "gradient_steps": self._gradient_steps}

    def load_state_dict(self, state: dict) -> None:
        self.encoder.load_state_dict(state["encoder"])
        self.actor.load_state_dict(state["actor"])
        self.optim.load_state_dict(state["optim"])
        self._drain(self._pending)
        self._pending = None
        self.seed = int(state["seed"])
        self.augment_gen.set_state(state["augment_gen"])
        self._gradient_steps = int(state["gradient_steps"])
